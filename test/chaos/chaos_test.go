//go:build chaos

package chaos

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// The components the test knows how to kill, in the default order.
var defaultKills = []string{"worker", "scheduler", "gateway", "safety", "nats", "redis"}

const (
	topic     = "job.echo"
	batchSize = 100
	// downtime is how long a killed component stays down.
	downtime = time.Second
	// stallAfter ends the wait for stragglers early when nothing has
	// changed for that long: without a reconciler nothing will.
	stallAfter = 60 * time.Second
)

// cluster is the system under test: its processes and how to reach them.
type cluster struct {
	h         *harness
	natsURL   string
	redisAddr string
	gwURL     string
	procs     map[string]*proc
	rdb       *redis.Client
	st        *store.Store

	mu     sync.Mutex
	killed []killEvent
}

// killEvent is one SIGKILL the test sent.
type killEvent struct {
	name string
	at   time.Time
}

// jobState reads a job the way the store package lays it out, so the test
// follows the layout wherever it goes. It is the only place the test reads
// job records.
func (c *cluster) jobState(ctx context.Context, id string) (*store.Job, error) {
	return c.st.Get(ctx, id)
}

// jobOutcome reads a job and, when it COMPLETED, its output.
func (c *cluster) jobOutcome(ctx context.Context, id string) (*store.Job, string, error) {
	return c.st.Output(ctx, id)
}

func TestChaos(t *testing.T) {
	jobs := envInt(t, "CHAOS_JOBS", 10000)
	submitFor := envDuration(t, "CHAOS_SUBMIT", 40*time.Second)
	settleFor := envDuration(t, "CHAOS_SETTLE", 90*time.Second)
	kills := defaultKills
	if v, ok := os.LookupEnv("CHAOS_KILLS"); ok {
		kills = nil
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" && k != "none" {
				if !slices.Contains(defaultKills, k) {
					t.Fatalf("CHAOS_KILLS: unknown component %q; known: %s", k, strings.Join(defaultKills, ","))
				}
				kills = append(kills, k)
			}
		}
	}
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed (apt-get install redis-server, or run .ci/chaos.sh)")
	}

	root := moduleRoot(t)
	bin := t.TempDir()
	cortexctl := build(t, root, bin, "cortexctl", "./cmd/cortexctl")
	natsBin := build(t, root, bin, "nats-server", "github.com/nats-io/nats-server/v2")

	logDir := os.Getenv("CHAOS_LOGDIR")
	keep := " (kept)"
	if logDir == "" {
		logDir, keep = t.TempDir(), " (removed at the end: set CHAOS_LOGDIR to keep them)"
	} else if err := os.MkdirAll(logDir, 0o750); err != nil { //nolint:gosec // the person running the test names it
		t.Fatal(err)
	}
	data := t.TempDir()

	h := newHarness(t)
	c := startCluster(t, h, cortexctl, natsBin, redisBin, logDir, data)
	t.Logf("cluster up: NATS %s, Redis %s, gateway %s, logs in %s%s", c.natsURL, c.redisAddr, c.gwURL, logDir, keep)

	ev := watchEvents(t, h, c.natsURL)

	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	sub := newSubmitter(h, c.gwURL, runID, jobs, submitFor)
	h.logf("submitting %d jobs on %s in batches of %d over ~%s; killing in turn: %s",
		jobs, topic, batchSize, submitFor, strings.Join(kills, ","))

	var wg sync.WaitGroup
	var killLog []string
	wg.Go(sub.run)
	wg.Go(func() { killLog = c.chaos(kills, submitFor) })
	wg.Wait()
	submitDone := time.Since(h.t0)
	h.logf("submitting done: %d of %d accepted; kills done", sub.accepted(), jobs)

	// Wait until every accepted job is terminal (bounded).
	settleStart := time.Now()
	pending := c.settle(sub.ids(), settleFor)
	settled := time.Since(settleStart)

	// Let the last events arrive before counting them.
	time.Sleep(500 * time.Millisecond)
	r := c.verify(sub, ev)
	r.kills = killLog
	r.pendingAfterSettle = pending
	r.submitTook, r.settleTook = submitDone, settled
	h.mu.Lock()
	r.unexpectedExits = slices.Clone(h.unexpected)
	h.mu.Unlock()
	t.Log("\n" + r.String(jobs, kills))

	if r.failures() > 0 {
		t.Errorf("the guarantee does not hold: %d accepted jobs lost or not terminal, %d with two outcomes, %d completed without their result, %d idempotency keys answered with two job ids",
			r.lost(), r.twoOutcomes(), r.badResult, r.keysTwoIDs)
	}
}

// startCluster starts NATS, Redis and the components, each ready.
func startCluster(t *testing.T, h *harness, cortexctl, natsBin, redisBin, logDir, data string) *cluster {
	natsPort, redisPort, gwPort := freePort(t), freePort(t), freePort(t)
	c := &cluster{
		h:         h,
		natsURL:   fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		redisAddr: fmt.Sprintf("127.0.0.1:%d", redisPort),
		gwURL:     fmt.Sprintf("http://127.0.0.1:%d", gwPort),
		procs:     map[string]*proc{},
	}
	natsDir, redisDir := filepath.Join(data, "nats"), filepath.Join(data, "redis")
	for _, d := range []string{natsDir, redisDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	logPath := func(name string) string { return filepath.Join(logDir, name+".log") }
	daemon := func(cmd string, extra ...string) []string {
		return append([]string{cmd, "--insecure", "--nats-url", c.natsURL,
			"--redis-url", "redis://" + c.redisAddr + "/0", "--log-level", "warn"}, extra...)
	}
	const marker = "SIGTERM stops it"

	add := func(p *proc) {
		c.procs[p.name] = h.add(p)
		if err := h.start(p); err != nil {
			t.Fatal(err)
		}
	}
	add(&proc{name: "nats", path: natsBin, logPath: logPath("nats"),
		args:  []string{"-js", "-sd", natsDir, "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort)},
		ready: tcpReady(fmt.Sprintf("127.0.0.1:%d", natsPort))})
	add(&proc{name: "redis", path: redisBin, logPath: logPath("redis"),
		args: []string{"--appendonly", "yes", "--appendfsync", "everysec", "--dir", redisDir,
			"--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--save", ""},
		ready: redisReady(c.redisAddr)})
	for _, name := range []string{"safety", "scheduler", "worker", "worker2"} {
		var args []string
		switch name {
		case "safety":
			args = daemon("safety")
		case "scheduler":
			// A loaded 2-core machine must not deny jobs for a slow answer.
			// Short leases, so that the attempts of a killed worker are
			// taken over, or given up and retried, well within the run.
			args = daemon("scheduler", "--safety-timeout", "2s", "--lease", "2s")
		default:
			args = daemon("worker", "--pool", "echo", "--lease", "2s")
		}
		add(&proc{name: name, path: cortexctl, args: args, logPath: logPath(name),
			ready: logReady(h, name, logPath(name), marker, 15*time.Second)})
	}
	add(&proc{name: "gateway", path: cortexctl, logPath: logPath("gateway"),
		args:  daemon("gateway", "--listen", fmt.Sprintf("127.0.0.1:%d", gwPort)),
		ready: httpReady(c.gwURL + "/readyz")})

	c.rdb = redis.NewClient(&redis.Options{Addr: c.redisAddr, PoolSize: 32})
	t.Cleanup(func() { _ = c.rdb.Close() })
	c.st = store.New(c.rdb, store.Options{})
	return c
}

// chaos kills with SIGKILL and restarts each component of kills in turn,
// spread over the submitting window so that jobs are in flight. It returns
// what it did, one line per kill.
func (c *cluster) chaos(kills []string, window time.Duration) []string {
	if len(kills) == 0 {
		return nil
	}
	first := 4 * time.Second
	gap := (window - first - 2*time.Second) / time.Duration(len(kills))
	gap = max(gap, 3*time.Second)
	var out []string
	for i, k := range kills {
		time.Sleep(time.Until(c.h.t0Submit().Add(first + time.Duration(i)*gap)))
		name := k // "worker" kills the first worker; the second keeps serving
		p := c.procs[name]
		pid, err := c.h.kill(p)
		if err != nil {
			line := fmt.Sprintf("%s kill -9 %s: %v", c.h.since(), name, err)
			c.h.t.Log(line)
			out = append(out, line)
			continue
		}
		killedAt := time.Now()
		c.mu.Lock()
		c.killed = append(c.killed, killEvent{name, killedAt})
		c.mu.Unlock()
		time.Sleep(downtime)
		err = c.h.start(p)
		line := fmt.Sprintf("+%5.1fs kill -9 %s (pid %d), down %.1fs, ready again at %s (%.1fs after the kill)",
			killedAt.Sub(c.h.t0).Seconds(), name, pid, downtime.Seconds(), c.h.since(), time.Since(killedAt).Seconds())
		if err != nil {
			line += fmt.Sprintf("; RESTART FAILED: %v", err)
		}
		c.h.t.Log(line)
		out = append(out, line)
	}
	return out
}

// t0Submit is when submitting began (the chaos schedule counts from it).
func (h *harness) t0Submit() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.submitStart.IsZero() {
		h.submitStart = time.Now()
	}
	return h.submitStart
}

// settle waits until every id is terminal, at most bound (less when nothing
// changes for stallAfter). It returns how many are still not terminal.
func (c *cluster) settle(ids []string, bound time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	open := ids
	lastChange, lastReport := time.Now(), time.Now()
	for {
		var next []string
		var mu sync.Mutex
		states := map[string]int{}
		parallel(open, 16, func(id string) {
			j, err := c.jobState(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && j.State.Terminal():
				return
			case errors.Is(err, store.ErrNotFound):
				states["(no record)"]++
			case err != nil:
				states["(unreadable)"]++
			default:
				states[string(j.State)]++
			}
			next = append(next, id)
		})
		if len(next) != len(open) {
			lastChange = time.Now()
		}
		open = next
		if len(open) == 0 {
			c.h.logf("settle: every accepted job is terminal")
			return 0
		}
		if time.Since(lastReport) >= 10*time.Second {
			c.h.logf("settle: %d not terminal yet: %s", len(open), fmtCounts(states))
			lastReport = time.Now()
		}
		if time.Since(lastChange) > stallAfter {
			c.h.logf("settle: %d not terminal and nothing changed for %s; giving up waiting: %s", len(open), stallAfter, fmtCounts(states))
			return len(open)
		}
		select {
		case <-ctx.Done():
			c.h.logf("settle: %d still not terminal after %s: %s", len(open), bound, fmtCounts(states))
			return len(open)
		case <-time.After(time.Second):
		}
	}
}

// parallel runs f on every item with n goroutines.
func parallel(items []string, n int, f func(string)) {
	ch := make(chan string)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for it := range ch {
				f(it)
			}
		})
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
}

// --- submitting -------------------------------------------------------------

// submitter submits jobs in paced batches, each job with its own
// idempotency key, and retries what did not get a job id with the same key
// until its deadline.
type submitter struct {
	h        *harness
	url      string
	runID    string
	n        int
	window   time.Duration
	deadline time.Duration
	client   *http.Client

	mu        sync.Mutex
	byKey     map[int]string   // job number -> the first job id it was answered with
	otherIDs  map[int][]string // job number -> different ids a later answer gave
	fresh     int              // next job number never sent
	retry     []retryItem
	inFlight  map[int]bool
	refused   map[int]string // job number -> permanent error
	errCodes  map[string]int // per-job error codes seen
	callErrs  map[string]int // whole-call failures
	batches   int
	dedup     int
	sendTimes []time.Duration
}

type retryItem struct {
	job int
	due time.Time
}

func newSubmitter(h *harness, url, runID string, n int, window time.Duration) *submitter {
	return &submitter{
		h: h, url: url + "/cortex.v1.GatewayService/SubmitJobs", runID: runID, n: n, window: window,
		deadline: window + 60*time.Second,
		client:   &http.Client{Timeout: 15 * time.Second},
		byKey:    map[int]string{}, otherIDs: map[int][]string{}, inFlight: map[int]bool{},
		refused: map[int]string{}, errCodes: map[string]int{}, callErrs: map[string]int{},
	}
}

func (s *submitter) key(i int) string    { return fmt.Sprintf("chaos-%s-%05d", s.runID, i) }
func (s *submitter) prompt(i int) string { return "echo " + s.key(i) }

func (s *submitter) request(i int) *cortexv1.SubmitJobRequest {
	return &cortexv1.SubmitJobRequest{
		Topic:          topic,
		Prompt:         s.prompt(i),
		Labels:         map[string]string{"chaos": s.runID},
		IdempotencyKey: s.key(i),
	}
}

// run submits until every job has an id or the deadline passes.
func (s *submitter) run() {
	start := s.h.t0Submit()
	batches := (s.n + batchSize - 1) / batchSize
	pace := s.window / time.Duration(batches)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	tick := time.NewTicker(pace)
	defer tick.Stop()
	for {
		if time.Since(start) > s.deadline {
			s.h.logf("submit: deadline passed, %d jobs never got an id", s.n-s.accepted()-len(s.refused))
			break
		}
		batch, done := s.next()
		if done {
			break
		}
		if len(batch) > 0 {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				s.send(batch)
			})
		}
		<-tick.C
	}
	wg.Wait()
}

// next takes up to batchSize jobs: retries that are due, then new ones.
// done says there is nothing left to send or wait for.
func (s *submitter) next() (batch []int, done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var keep []retryItem
	for _, r := range s.retry {
		if len(batch) < batchSize && !now.Before(r.due) {
			batch = append(batch, r.job)
		} else {
			keep = append(keep, r)
		}
	}
	s.retry = keep
	for len(batch) < batchSize && s.fresh < s.n {
		batch = append(batch, s.fresh)
		s.fresh++
	}
	for _, j := range batch {
		s.inFlight[j] = true
	}
	return batch, len(batch) == 0 && s.fresh == s.n && len(s.retry) == 0 && len(s.inFlight) == 0
}

func (s *submitter) send(batch []int) {
	req := &cortexv1.SubmitJobsRequest{}
	for _, i := range batch {
		req.Jobs = append(req.Jobs, s.request(i))
	}
	body, err := protojson.Marshal(req)
	if err != nil {
		panic(err)
	}
	t := time.Now()
	resp, err := s.client.Post(s.url, "application/json", bytes.NewReader(body))
	var out cortexv1.SubmitJobsResponse
	if err == nil {
		var b []byte
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
		case resp.StatusCode != http.StatusOK:
			err = fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
		default:
			err = protojson.Unmarshal(b, &out)
			if err == nil && len(out.GetResults()) != len(batch) {
				err = fmt.Errorf("%d results for %d jobs", len(out.GetResults()), len(batch))
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	s.sendTimes = append(s.sendTimes, time.Since(t))
	due := time.Now().Add(500 * time.Millisecond)
	if err != nil {
		s.callErrs[shortErr(err)]++
		for _, i := range batch {
			delete(s.inFlight, i)
			s.retry = append(s.retry, retryItem{i, due})
		}
		return
	}
	for k, res := range out.GetResults() {
		i := batch[k]
		delete(s.inFlight, i)
		id := res.GetJobId()
		switch {
		case id != "":
			if res.GetDeduplicated() {
				s.dedup++
			}
			if prev, ok := s.byKey[i]; !ok {
				s.byKey[i] = id
			} else if prev != id && !slices.Contains(s.otherIDs[i], id) {
				s.otherIDs[i] = append(s.otherIDs[i], id)
			}
		case res.GetErrorCode() == "invalid_argument" || res.GetErrorCode() == "already_exists":
			s.errCodes[res.GetErrorCode()]++
			s.refused[i] = res.GetErrorCode() + ": " + res.GetError()
		default:
			s.errCodes[res.GetErrorCode()]++
			if _, ok := s.byKey[i]; !ok {
				s.retry = append(s.retry, retryItem{i, due})
			}
		}
	}
}

// shortErr groups call errors: the error without addresses and ports.
func shortErr(err error) string {
	msg := err.Error()
	for _, cut := range []string{"connection refused", "connection reset", "EOF", "timeout", "Client.Timeout"} {
		if strings.Contains(msg, cut) {
			return cut
		}
	}
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

func (s *submitter) accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// ids are every job id the gateway answered with, by job number.
func (s *submitter) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for _, i := range slices.Sorted(maps.Keys(s.byKey)) {
		ids = append(ids, s.byKey[i])
		ids = append(ids, s.otherIDs[i]...)
	}
	return ids
}

// --- events -------------------------------------------------------------------

// events records the terminal states announced on sys.job.event, per job.
type events struct {
	mu        sync.Mutex
	terminal  map[string][]store.State // job id -> distinct terminal states announced, in order
	repeats   int                      // terminal events that repeated a state already announced
	received  atomic.Int64
	bad       atomic.Int64
	reconnect atomic.Int64
	dropped   atomic.Int64
}

// watchEvents subscribes to sys.job.event for the whole test, reconnecting
// across NATS restarts. Events are best effort: what is missed while NATS is
// down is missed.
func watchEvents(t *testing.T, h *harness, url string) *events {
	ev := &events{terminal: map[string][]store.State{}}
	nc, err := nats.Connect(url,
		nats.Name("chaos-test"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {}),
		nats.ReconnectHandler(func(*nats.Conn) { ev.reconnect.Add(1) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				ev.dropped.Add(1)
			}
		}),
	)
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.Subscribe("sys.job.event", func(m *nats.Msg) {
		ev.received.Add(1)
		var p cortexv1.BusPacket
		if err := proto.Unmarshal(m.Data, &p); err != nil || p.GetJobEvent().GetJob().GetJobId() == "" {
			ev.bad.Add(1)
			return
		}
		j := p.GetJobEvent().GetJob()
		st := store.StateOf(j.GetState())
		if !st.Terminal() {
			return
		}
		ev.mu.Lock()
		defer ev.mu.Unlock()
		if slices.Contains(ev.terminal[j.GetJobId()], st) {
			ev.repeats++
			return
		}
		ev.terminal[j.GetJobId()] = append(ev.terminal[j.GetJobId()], st)
	})
	if err != nil {
		t.Fatalf("subscribe to sys.job.event: %v", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatalf("NATS flush: %v", err)
	}
	h.logf("watching sys.job.event")
	return ev
}

// --- verdict ------------------------------------------------------------------

// report is what the test found.
type report struct {
	accepted, neverAccepted, refused int
	keysTwoIDs                       int
	byState                          map[store.State]int // terminal states
	nonTerminal                      map[store.State]int // lost: not terminal
	unknown                          int                 // lost: no record at all
	unreadable                       int
	twoOutcomesStore                 int // the record shows two outcomes
	twoOutcomesEvents                int // events announced two different terminal states
	eventDisagrees                   int // the one announced terminal state is not the recorded one
	badResult                        int // COMPLETED without its result, or a wrong one
	attemptsOverMax                  int
	examples                         []string
	lostBy                           map[string]*lostGroup // phase + state -> lost jobs
	reasons                          map[string]int        // FAILED/DENIED/TIMEOUT reasons

	evReceived, evBad, evReconnects, evDropped int64
	evTerminalFor, evRepeats                   int

	batches, dedup int
	errCodes       map[string]int
	callErrs       map[string]int
	slowestBatch   time.Duration

	kills              []string
	unexpectedExits    []string
	pendingAfterSettle int
	submitTook         time.Duration
	settleTook         time.Duration
}

func (r *report) lost() int {
	n := r.unknown + r.unreadable
	for _, v := range r.nonTerminal {
		n += v
	}
	return n
}

func (r *report) twoOutcomes() int {
	return r.twoOutcomesStore + r.twoOutcomesEvents + r.eventDisagrees
}

func (r *report) failures() int {
	return r.lost() + r.twoOutcomes() + r.badResult + r.keysTwoIDs
}

func (r *report) example(format string, args ...any) {
	if len(r.examples) < 12 {
		r.examples = append(r.examples, fmt.Sprintf(format, args...))
	}
}

// verify reads every accepted job and checks that it has exactly one
// outcome.
func (c *cluster) verify(s *submitter, ev *events) *report {
	r := &report{byState: map[store.State]int{}, nonTerminal: map[store.State]int{}, reasons: map[string]int{},
		lostBy: map[string]*lostGroup{}}
	c.mu.Lock()
	killed := slices.Clone(c.killed)
	c.mu.Unlock()
	t0 := c.h.t0
	s.mu.Lock()
	r.accepted = len(s.byKey)
	r.refused = len(s.refused)
	r.neverAccepted = s.n - len(s.byKey) - len(s.refused)
	r.keysTwoIDs = len(s.otherIDs)
	for i, ids := range s.otherIDs {
		r.example("idempotency key %s answered with job ids %s and %s", s.key(i), s.byKey[i], strings.Join(ids, ", "))
	}
	r.batches, r.dedup = s.batches, s.dedup
	r.errCodes, r.callErrs = maps.Clone(s.errCodes), maps.Clone(s.callErrs)
	for _, d := range s.sendTimes {
		r.slowestBatch = max(r.slowestBatch, d)
	}
	prompts := map[string]string{}
	for i, id := range s.byKey {
		prompts[id] = s.prompt(i)
		for _, other := range s.otherIDs[i] {
			prompts[other] = s.prompt(i)
		}
	}
	s.mu.Unlock()

	ev.mu.Lock()
	announced := maps.Clone(ev.terminal)
	r.evRepeats = ev.repeats
	ev.mu.Unlock()
	r.evReceived, r.evBad, r.evReconnects, r.evDropped = ev.received.Load(), ev.bad.Load(), ev.reconnect.Load(), ev.dropped.Load()

	var mu sync.Mutex
	ctx := context.Background()
	parallel(slices.Collect(maps.Keys(prompts)), 16, func(id string) {
		var (
			j   *store.Job
			out string
			err error
		)
		for try := 0; try < 5; try++ {
			if j, out, err = c.jobOutcome(ctx, id); err == nil || errors.Is(err, store.ErrNotFound) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		evStates := announced[id]
		if len(evStates) > 0 {
			r.evTerminalFor++
		}
		if len(evStates) > 1 {
			r.twoOutcomesEvents++
			r.example("job %s: events announced %v", id, evStates)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			r.unknown++
			r.example("job %s: accepted, but there is no record of it", id)
			return
		case err != nil:
			r.unreadable++
			r.example("job %s: unreadable: %v", id, err)
			return
		case !j.State.Terminal():
			r.nonTerminal[j.State]++
			r.noteLost(killed, t0, j)
			r.example("job %s: still %s (attempt %d, version %d, reason %q)", id, j.State, j.Attempt, j.Version, j.Reason)
			return
		}
		r.byState[j.State]++
		if j.State != store.Completed {
			r.reasons[string(j.State)+": "+reasonClass(j.Reason)]++
		}
		if len(evStates) == 1 && evStates[0] != j.State {
			r.eventDisagrees++
			r.example("job %s: recorded %s, but an event announced %s", id, j.State, evStates[0])
		}
		if why := twoOutcomes(j); why != "" {
			r.twoOutcomesStore++
			r.example("job %s: %s", id, why)
		}
		if j.MaxAttempts > 0 && j.Attempt > j.MaxAttempts {
			r.attemptsOverMax++
		}
		if j.State == store.Completed && out != prompts[id] {
			r.badResult++
			r.example("job %s: COMPLETED with output %.60q, want %q", id, out, prompts[id])
		}
	})
	return r
}

// lostGroup is a set of lost jobs created in the same phase of the run, in
// the same state.
type lostGroup struct {
	order    int
	phase    string
	state    store.State
	n        int
	min, max time.Duration // created, since the test began
}

// noteLost counts a job that did not end under the phase it was created
// in: after which kill (the last one before it was created).
func (r *report) noteLost(killed []killEvent, t0 time.Time, j *store.Job) {
	phase, order := "created before the first kill", 0
	for i, k := range killed {
		if !j.CreatedAt.Before(k.at) {
			phase = fmt.Sprintf("created after kill -9 %s (+%.1fs)", k.name, k.at.Sub(t0).Seconds())
			order = i + 1
		}
	}
	key := phase + " " + string(j.State)
	g := r.lostBy[key]
	at := j.CreatedAt.Sub(t0)
	if g == nil {
		g = &lostGroup{order: order, phase: phase, state: j.State, min: at, max: at}
		r.lostBy[key] = g
	}
	g.n++
	g.min, g.max = min(g.min, at), max(g.max, at)
}

// twoOutcomes says how a terminal job's record shows more than one outcome,
// or "" when it shows one.
func twoOutcomes(j *store.Job) string {
	var ended []string
	for st := range j.Entered {
		if st.Terminal() {
			ended = append(ended, string(st))
		}
	}
	if len(ended) > 1 {
		slices.Sort(ended)
		return fmt.Sprintf("%s, but it also entered %s", j.State, strings.Join(ended, " and "))
	}
	for _, a := range j.Attempts {
		if a.Attempt < j.Attempt && a.State == store.Completed {
			return fmt.Sprintf("%s at attempt %d, but attempt %d had COMPLETED", j.State, j.Attempt, a.Attempt)
		}
		if a.Attempt == j.Attempt && a.State.Terminal() && a.State != j.State {
			return fmt.Sprintf("%s, but its attempt %d is recorded as %s", j.State, a.Attempt, a.State)
		}
	}
	if j.Attempt == 0 || j.Version == 0 {
		return fmt.Sprintf("%s with attempt %d and version %d", j.State, j.Attempt, j.Version)
	}
	return ""
}

// reasonClass shortens a reason for counting: no ids, at most 70 chars.
func reasonClass(reason string) string {
	if reason == "" {
		return "(no reason)"
	}
	f := strings.Fields(reason)
	for i, w := range f {
		if len(w) >= 32 && strings.Count(w, "-") >= 4 {
			f[i] = "<id>"
		}
	}
	s := strings.Join(f, " ")
	if len(s) > 70 {
		s = s[:70] + "..."
	}
	return s
}

func fmtCounts[K ~string](m map[K]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.Sorted(maps.Keys(m))
	slices.SortStableFunc(keys, func(a, b K) int { return m[b] - m[a] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func (r *report) String(jobs int, kills []string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	nonTerminal := 0
	for _, v := range r.nonTerminal {
		nonTerminal += v
	}
	p("==================== chaos summary ====================")
	p("jobs submitted (idempotency keys)  %6d", jobs)
	p("kills (SIGKILL + restart)          %s", strings.Join(cmpOr(kills, []string{"none"}), ", "))
	for _, k := range r.kills {
		p("    %s", k)
	}
	p("accepted (answered with a job id)  %6d", r.accepted)
	p("never accepted (gave up retrying)  %6d", r.neverAccepted)
	p("refused for good                   %6d", r.refused)
	p("--- terminal states of accepted jobs (exactly one each) ---")
	for _, st := range []store.State{store.Completed, store.Failed, store.Denied, store.Cancelled, store.Timeout} {
		p("  %-10s                       %6d", st, r.byState[st])
	}
	p("--- failures of the guarantee ---")
	p("LOST: still not terminal           %6d  %s", nonTerminal, fmtCounts(r.nonTerminal))
	groups := slices.Collect(maps.Values(r.lostBy))
	slices.SortFunc(groups, func(a, b *lostGroup) int {
		return cmp.Or(a.order-b.order, strings.Compare(string(a.state), string(b.state)))
	})
	for _, g := range groups {
		p("    %5d %-10s %s; created +%.1fs..+%.1fs", g.n, g.state, g.phase, g.min.Seconds(), g.max.Seconds())
	}
	p("LOST: unknown id (no record)       %6d", r.unknown)
	p("LOST: unreadable record            %6d", r.unreadable)
	p("two outcomes in the record         %6d", r.twoOutcomesStore)
	p("two terminal states in events      %6d", r.twoOutcomesEvents)
	p("event state != recorded state      %6d", r.eventDisagrees)
	p("COMPLETED without its result       %6d", r.badResult)
	p("idempotency keys with two job ids  %6d", r.keysTwoIDs)
	p("--- other facts ---")
	p("attempt above max_attempts         %6d", r.attemptsOverMax)
	p("non-COMPLETED reasons              %s", fmtCounts(r.reasons))
	p("job events received %d (undecodable %d, dropped %d), terminal event for %d of %d accepted jobs, %d repeated terminal events, %d NATS reconnects of the test",
		r.evReceived, r.evBad, r.evDropped, r.evTerminalFor, r.accepted, r.evRepeats, r.evReconnects)
	p("submit: %d batch calls, %d answers deduplicated, slowest call %s; call errors: %s; per-job errors: %s",
		r.batches, r.dedup, r.slowestBatch.Round(time.Millisecond), fmtCounts(r.callErrs), fmtCounts(r.errCodes))
	p("time: submitting and kills ended at +%.1fs, waited %.1fs for jobs to end", r.submitTook.Seconds(), r.settleTook.Seconds())
	if len(r.unexpectedExits) == 0 {
		p("daemons that exited by themselves  none")
	} else {
		p("daemons that exited by themselves  %d (restarted by the test's supervisor):", len(r.unexpectedExits))
		for _, e := range r.unexpectedExits {
			p("  %s", e)
		}
	}
	if len(r.examples) > 0 {
		p("examples:")
		for _, e := range r.examples {
			p("  %s", e)
		}
	}
	p("=======================================================")
	return b.String()
}

func cmpOr[T any](s, def []T) []T {
	if len(s) == 0 {
		return def
	}
	return s
}
