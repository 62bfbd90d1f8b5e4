//go:build chaos

package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/test/internal/harness"
)

// The components the test knows how to kill, in the default order.
var defaultKills = []string{"worker", "scheduler", "gateway", "safety", "nats", "redis"}

// downtime is how long a killed component stays down.
const downtime = time.Second

// Every sleepEvery-th job is a job.sleep of sleepFor rather than a job.echo
// (5 per batch of 100): with 10,000 jobs over 40s about 25 sleep jobs are
// running at any time (with 2,000, about 5), so a killed worker leaves
// attempts in flight for another worker to take over or the reconciler to
// retry, and killed NATS or Redis interrupts running jobs, while the run
// stays about as long.
const (
	sleepEvery = 20
	sleepFor   = 2 * time.Second
)

// cluster is the system under test: its processes and how to reach them.
type cluster struct {
	h         *harness.Harness
	natsURL   string
	redisAddr string
	gwURL     string
	procs     map[string]*harness.Proc
	rdb       *redis.Client
	st        *store.Store

	mu     sync.Mutex
	killed []harness.KillEvent
	// failed lists the kills and restarts that did not work.
	failed []string
}

func TestChaos(t *testing.T) {
	jobs := harness.EnvInt(t, "CHAOS_JOBS", 10000)
	submitFor := harness.EnvDuration(t, "CHAOS_SUBMIT", 40*time.Second)
	settleFor := harness.EnvDuration(t, "CHAOS_SETTLE", 90*time.Second)
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

	root := harness.ModuleRoot(t)
	bin := t.TempDir()
	cortexctl := harness.Build(t, root, bin, "cortexctl", "./cmd/cortexctl")
	natsBin := harness.Build(t, root, bin, "nats-server", "github.com/nats-io/nats-server/v2")

	logDir := os.Getenv("CHAOS_LOGDIR")
	keep := " (kept)"
	if logDir == "" {
		logDir, keep = t.TempDir(), " (removed at the end: set CHAOS_LOGDIR to keep them)"
	} else if err := os.MkdirAll(logDir, 0o750); err != nil { //nolint:gosec // the person running the test names it
		t.Fatal(err)
	}
	data := t.TempDir()

	h := harness.New(t)
	c := startCluster(t, h, cortexctl, natsBin, redisBin, logDir, data)
	t.Logf("cluster up: NATS %s, Redis %s, gateway %s, logs in %s%s", c.natsURL, c.redisAddr, c.gwURL, logDir, keep)

	ev := harness.WatchEvents(t, h, c.natsURL)

	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	sub := harness.NewSubmitter(h, c.gwURL, "chaos", runID, jobs, submitFor)
	sub.SleepEvery, sub.SleepFor = sleepEvery, sleepFor
	h.Logf("submitting %d jobs on %s (every %dth a %s of %s) in batches of %d over ~%s; killing in turn: %s",
		jobs, harness.Topic, sleepEvery, harness.SleepTopic, sleepFor, harness.BatchSize, submitFor, strings.Join(kills, ","))

	var wg sync.WaitGroup
	var killLog []string
	wg.Go(sub.Run)
	wg.Go(func() { killLog = c.chaos(kills, submitFor) })
	wg.Wait()
	submitDone := time.Since(h.T0)
	h.Logf("submitting done: %d of %d accepted; kills done", sub.Accepted(), jobs)

	// Wait until every accepted job is terminal (bounded).
	settleStart := time.Now()
	pending := harness.Settle(h, c.st, sub.IDs(), settleFor)
	settled := time.Since(settleStart)

	// Let the last events arrive before counting them.
	time.Sleep(500 * time.Millisecond)
	c.mu.Lock()
	killed, failed := slices.Clone(c.killed), slices.Clone(c.failed)
	c.mu.Unlock()
	r := harness.Verify(h, c.st, sub, ev, killed)
	r.Kills = killLog
	r.KillFailures = failed
	r.PendingAfterSettle = pending
	r.SubmitTook, r.SettleTook = submitDone, settled
	r.UnexpectedExits = h.Unexpected()
	t.Log("\n" + r.String("chaos", jobs, kills))

	for _, p := range r.Problems() {
		t.Error(p)
	}
}

// startCluster starts NATS, Redis and the components, each ready.
func startCluster(t *testing.T, h *harness.Harness, cortexctl, natsBin, redisBin, logDir, data string) *cluster {
	natsPort, redisPort, gwPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	c := &cluster{
		h:         h,
		natsURL:   fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		redisAddr: fmt.Sprintf("127.0.0.1:%d", redisPort),
		gwURL:     fmt.Sprintf("http://127.0.0.1:%d", gwPort),
		procs:     map[string]*harness.Proc{},
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

	add := func(p *harness.Proc) {
		c.procs[p.Name] = h.Add(p)
		if err := h.Start(p); err != nil {
			t.Fatal(err)
		}
	}
	add(&harness.Proc{Name: "nats", Path: natsBin, LogPath: logPath("nats"),
		Args:  []string{"-js", "-sd", natsDir, "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort)},
		Ready: harness.TCPReady(fmt.Sprintf("127.0.0.1:%d", natsPort))})
	add(&harness.Proc{Name: "redis", Path: redisBin, LogPath: logPath("redis"),
		Args: []string{"--appendonly", "yes", "--appendfsync", "everysec", "--dir", redisDir,
			"--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--save", ""},
		Ready: harness.RedisReady(c.redisAddr)})
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
		add(&harness.Proc{Name: name, Path: cortexctl, Args: args, LogPath: logPath(name),
			Ready: harness.LogReady(h, name, logPath(name), marker, 15*time.Second)})
	}
	add(&harness.Proc{Name: "gateway", Path: cortexctl, LogPath: logPath("gateway"),
		Args:  daemon("gateway", "--listen", fmt.Sprintf("127.0.0.1:%d", gwPort)),
		Ready: harness.HTTPReady(c.gwURL + "/readyz")})

	c.rdb = redis.NewClient(&redis.Options{Addr: c.redisAddr, PoolSize: 32})
	t.Cleanup(func() { _ = c.rdb.Close() })
	c.st = store.New(c.rdb, store.Options{})
	return c
}

// chaos kills with SIGKILL and restarts each component of kills in turn,
// spread over the submitting window so that jobs are in flight. It returns
// what it did, one line per kill, and records in c.failed each kill or
// restart that did not work.
func (c *cluster) chaos(kills []string, window time.Duration) []string {
	if len(kills) == 0 {
		return nil
	}
	first := 4 * time.Second
	gap := (window - first - 2*time.Second) / time.Duration(len(kills))
	gap = max(gap, 3*time.Second)
	var out []string
	for i, k := range kills {
		time.Sleep(time.Until(c.h.SubmitStart().Add(first + time.Duration(i)*gap)))
		name := k // "worker" kills the first worker; the second keeps serving
		p := c.procs[name]
		pid, err := c.h.Kill(p)
		if err != nil {
			line := fmt.Sprintf("%s kill -9 %s: KILL FAILED: %v", c.h.Since(), name, err)
			c.h.Log(line)
			c.fail(line)
			out = append(out, line)
			continue
		}
		killedAt := time.Now()
		c.mu.Lock()
		c.killed = append(c.killed, harness.KillEvent{Name: name, At: killedAt})
		c.mu.Unlock()
		time.Sleep(downtime)
		err = c.h.Start(p)
		line := fmt.Sprintf("+%5.1fs kill -9 %s (pid %d), down %.1fs, ready again at %s (%.1fs after the kill)",
			killedAt.Sub(c.h.T0).Seconds(), name, pid, downtime.Seconds(), c.h.Since(), time.Since(killedAt).Seconds())
		if err != nil {
			line += fmt.Sprintf("; RESTART FAILED: %v", err)
			c.fail(line)
		}
		c.h.Log(line)
		out = append(out, line)
	}
	return out
}

// fail records a kill or restart that did not work.
func (c *cluster) fail(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = append(c.failed, line)
}
