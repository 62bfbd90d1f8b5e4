//go:build multinode

package multinode

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/test/internal/harness"
)

const (
	nodes = 3
	// redisNodeTimeout is the Redis Cluster's cluster-node-timeout: a
	// master down for longer is marked failed by the others.
	redisNodeTimeout = 5 * time.Second
	// clusterOKTimeout bounds the wait for the Redis Cluster to be whole.
	clusterOKTimeout = 30 * time.Second
)

// system is what the test runs: the servers, the daemons, and how to reach
// them.
type system struct {
	h          *harness.Harness
	nats       []*harness.Proc // n1..n3
	natsURLs   string          // comma-separated, as the daemons get them
	redis      []*harness.Proc // r1..r3, masters
	redisAddrs []string
	gwURL      string
	st         *store.Store

	mu     sync.Mutex
	killed []harness.KillEvent
	back   []backEvent
	// unready lists the gateway's /readyz answers other than 200 while a
	// Redis master was down: the other masters serve their shards, so the
	// gateway must stay in service.
	unready []string
	probes  int
}

// backEvent is a killed node ready again.
type backEvent struct {
	what string
	at   time.Time
}

func TestMultiNode(t *testing.T) {
	jobs := harness.EnvInt(t, "MULTINODE_JOBS", 3000)
	submitFor := harness.EnvDuration(t, "MULTINODE_SUBMIT", 36*time.Second)
	down := harness.EnvDuration(t, "MULTINODE_DOWN", 3*time.Second)
	settleFor := harness.EnvDuration(t, "MULTINODE_SETTLE", 90*time.Second)
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed (apt-get install redis-server, or run .ci/multinode.sh)")
	}
	root := harness.ModuleRoot(t)
	bin := t.TempDir()
	cortexctl := harness.Build(t, root, bin, "cortexctl", "./cmd/cortexctl")
	natsBin := harness.Build(t, root, bin, "nats-server", "github.com/nats-io/nats-server/v2")
	logDir := os.Getenv("MULTINODE_LOGDIR")
	keep := " (kept)"
	if logDir == "" {
		logDir, keep = t.TempDir(), " (removed at the end: set MULTINODE_LOGDIR to keep them)"
	} else if err := os.MkdirAll(logDir, 0o750); err != nil { //nolint:gosec // the person running the test names it
		t.Fatal(err)
	}

	h := harness.New(t)
	s := &system{h: h}
	s.startNATS(t, natsBin, logDir)
	s.startRedis(t, redisBin, logDir)
	s.startDaemons(t, cortexctl, logDir)
	t.Logf("up: NATS %s, Redis Cluster %s, gateway %s, logs in %s%s", s.natsURLs, strings.Join(s.redisAddrs, ","), s.gwURL, logDir, keep)
	s.checkReplicas(t)

	ev := harness.WatchEvents(t, h, s.natsURLs)
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	sub := harness.NewSubmitter(h, s.gwURL, "multinode", runID, jobs, submitFor)
	h.Logf("submitting %d jobs on %s in batches of %d over ~%s; then kill -9 the NATS node leading %s and a Redis master, each down %s",
		jobs, harness.Topic, harness.BatchSize, submitFor, bus.StreamJobs, down)
	var wg sync.WaitGroup
	var killLog []string
	wg.Go(sub.Run)
	wg.Go(func() { killLog = s.chaos(submitFor, down) })
	wg.Wait()
	submitDone := time.Since(h.T0)
	h.Logf("submitting done: %d of %d accepted; kills done", sub.Accepted(), jobs)

	settleStart := time.Now()
	pending := harness.Settle(h, s.st, sub.IDs(), settleFor)
	settled := time.Since(settleStart)
	// Let the last events arrive before counting them.
	time.Sleep(500 * time.Millisecond)

	s.mu.Lock()
	killed, back := slices.Clone(s.killed), slices.Clone(s.back)
	s.mu.Unlock()
	r := harness.Verify(h, s.st, sub, ev, killed)
	r.Kills = killLog
	r.PendingAfterSettle = pending
	r.SubmitTook, r.SettleTook = submitDone, settled
	r.UnexpectedExits = h.Unexpected()
	after := s.completedAfter(sub.IDs(), back)
	t.Log("\n" + r.String("multinode", jobs, []string{"nats (stream leader)", "redis (a master)"}) + after.String())

	for _, p := range r.Problems() {
		t.Error(p)
	}
	if len(back) != 2 {
		t.Errorf("%d of 2 killed nodes came back: %s", len(back), strings.Join(killLog, "; "))
	}
	for _, b := range back {
		if after.n[b.what] == 0 {
			t.Errorf("no job completed after %s came back", b.what)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("gateway /readyz while the Redis master was down: %d of %d probes not ready", len(s.unready), s.probes)
	if s.probes == 0 || len(s.unready) > 0 {
		t.Errorf("the gateway must stay ready while one Redis master is down (the others serve their shards): %d of %d probes failed: %s",
			len(s.unready), s.probes, strings.Join(s.unready, "; "))
	}
}

// --- NATS -------------------------------------------------------------------

// startNATS starts three nats-servers as one cluster with JetStream, each
// ready once its /healthz (JetStream included) answers 200.
func (s *system) startNATS(t *testing.T, natsBin, logDir string) {
	var routes, urls []string
	type node struct{ client, cluster, monitor int }
	ns := make([]node, nodes)
	for i := range ns {
		ns[i] = node{harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)}
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ns[i].cluster))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ns[i].client))
	}
	s.natsURLs = strings.Join(urls, ",")
	for i, n := range ns {
		name := fmt.Sprintf("n%d", i+1)
		dir := filepath.Join(t.TempDir(), name)
		p := s.h.Add(&harness.Proc{Name: name, Path: natsBin, LogPath: filepath.Join(logDir, "nats-"+name+".log"),
			Args: []string{"-js", "-sd", dir, "-a", "127.0.0.1", "-p", strconv.Itoa(n.client), "-n", name,
				"-m", strconv.Itoa(n.monitor), "--cluster_name", "cortex",
				"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", n.cluster), "--routes", strings.Join(routes, ",")},
			Ready: harness.HTTPReady(fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monitor))})
		s.nats = append(s.nats, p)
	}
	// A clustered JetStream server is healthy only once its peers are up.
	if err := s.h.StartAll(s.nats...); err != nil {
		t.Fatal(err)
	}
}

// checkReplicas checks that the daemons made the durable streams with three
// replicas (--stream-replicas 3).
func (s *system) checkReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{bus.StreamSubmit, bus.StreamJobs} {
		info, err := s.streamInfo(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.Replicas != nodes || info.Cluster == nil || len(info.Cluster.Replicas) != nodes-1 {
			t.Fatalf("stream %s: %d replicas configured, cluster %+v; want %d", name, info.Config.Replicas, info.Cluster, nodes)
		}
		s.h.Logf("stream %s: %d replicas, leader %s", name, info.Config.Replicas, info.Cluster.Leader)
	}
}

func (s *system) streamInfo(ctx context.Context, name string) (*jetstream.StreamInfo, error) {
	nc, err := nats.Connect(s.natsURLs, nats.Name("multinode-test"))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return st.Info(ctx)
}

// jobStreamLeader is the NATS node leading the job stream (n1 when it
// cannot be told).
func (s *system) jobStreamLeader() *harness.Proc {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := s.streamInfo(ctx, bus.StreamJobs)
	if err == nil && info.Cluster != nil {
		for _, p := range s.nats {
			if p.Name == info.Cluster.Leader {
				return p
			}
		}
	}
	s.h.Logf("the leader of %s is not known (%v): killing n1", bus.StreamJobs, err)
	return s.nats[0]
}

// --- Redis Cluster ----------------------------------------------------------

// startRedis starts three redis-servers in cluster mode with AOF on, joins
// them as three masters (the Go equivalent of redis-cli --cluster create),
// and waits until the cluster is whole. cluster-require-full-coverage no:
// while a master is down the others keep serving their slots.
func (s *system) startRedis(t *testing.T, redisBin, logDir string) {
	for i := range nodes {
		name := fmt.Sprintf("r%d", i+1)
		port := harness.FreePort(t)
		// The cluster bus listens on port+10000: it must be free too.
		for !portFree(port + 10000) {
			port = harness.FreePort(t)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		dir := filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		p := s.h.Add(&harness.Proc{Name: name, Path: redisBin, LogPath: filepath.Join(logDir, "redis-"+name+".log"),
			Args: []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
				"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", strconv.Itoa(int(redisNodeTimeout.Milliseconds())),
				"--cluster-require-full-coverage", "no",
				"--appendonly", "yes", "--appendfsync", "everysec", "--save", ""},
			Ready: harness.RedisReady(addr)})
		s.redis = append(s.redis, p)
		s.redisAddrs = append(s.redisAddrs, addr)
	}
	if err := s.h.StartAll(s.redis...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterOKTimeout)
	defer cancel()
	if err := createRedisCluster(ctx, s.redisAddrs); err != nil {
		t.Fatal(err)
	}
	if err := waitClusterOK(ctx, s.redisAddrs); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: s.redisAddrs, PoolSize: 32})
	t.Cleanup(func() { _ = rdb.Close() })
	s.st = store.New(rdb, store.Options{})
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// createRedisCluster gives each node an equal range of the 16384 slots and
// its own config epoch, and introduces the others to the first.
func createRedisCluster(ctx context.Context, addrs []string) error {
	first := redis.NewClient(&redis.Options{Addr: addrs[0]})
	defer first.Close()
	for i, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr})
		lo, hi := i*16384/len(addrs), (i+1)*16384/len(addrs)-1
		err := c.ClusterAddSlotsRange(ctx, lo, hi).Err()
		if err == nil {
			err = c.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err()
		}
		_ = c.Close()
		if err != nil {
			return fmt.Errorf("redis node %s: %w", addr, err)
		}
	}
	for _, addr := range addrs[1:] {
		host, port, _ := net.SplitHostPort(addr)
		if err := first.ClusterMeet(ctx, host, port).Err(); err != nil {
			return fmt.Errorf("CLUSTER MEET %s: %w", addr, err)
		}
	}
	return nil
}

// waitClusterOK waits until every node says the cluster is whole: state
// ok, every slot served, every node known.
func waitClusterOK(ctx context.Context, addrs []string) error {
	var last error
	for {
		last = clusterOK(ctx, addrs)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Redis Cluster is not whole: %w", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func clusterOK(ctx context.Context, addrs []string) error {
	for _, addr := range addrs {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		info, err := c.ClusterInfo(ctx).Result()
		_ = c.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		for _, want := range []string{"cluster_state:ok", "cluster_slots_ok:16384", fmt.Sprintf("cluster_known_nodes:%d", len(addrs))} {
			if !strings.Contains(info, want) {
				return fmt.Errorf("%s: no %s", addr, want)
			}
		}
	}
	return nil
}

// --- daemons ----------------------------------------------------------------

// startDaemons starts the safety kernel, a scheduler, two workers and the
// gateway, each pointed at the three NATS servers and the Redis Cluster.
func (s *system) startDaemons(t *testing.T, cortexctl, logDir string) {
	gwPort := harness.FreePort(t)
	s.gwURL = fmt.Sprintf("http://127.0.0.1:%d", gwPort)
	redisURL := "redis://" + s.redisAddrs[0] + "?addr=" + strings.Join(s.redisAddrs[1:], "&addr=")
	daemon := func(cmd string, extra ...string) []string {
		return append([]string{cmd, "--insecure", "--nats-url", s.natsURLs, "--redis-url", redisURL, "--redis-cluster",
			"--log-level", "warn"}, extra...)
	}
	logPath := func(name string) string { return filepath.Join(logDir, name+".log") }
	const marker = "SIGTERM stops it"
	start := func(p *harness.Proc) {
		if err := s.h.Start(s.h.Add(p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"safety", "scheduler", "worker1", "worker2"} {
		var args []string
		switch name {
		case "safety":
			args = daemon("safety", "--metrics-listen", "127.0.0.1:0")
		case "scheduler":
			// As in the chaos test: a loaded 2-core machine must not deny
			// jobs for a slow answer, and short leases let the jobs of a
			// lost attempt be taken over within the run.
			args = daemon("scheduler", "--metrics-listen", "127.0.0.1:0", "--stream-replicas", "3", "--safety-timeout", "2s", "--lease", "2s")
		default:
			args = daemon("worker", "--metrics-listen", "127.0.0.1:0", "--stream-replicas", "3", "--pool", "echo", "--lease", "2s")
		}
		start(&harness.Proc{Name: name, Path: cortexctl, Args: args, LogPath: logPath(name),
			Ready: harness.LogReady(s.h, name, logPath(name), marker, 15*time.Second)})
	}
	start(&harness.Proc{Name: "gateway", Path: cortexctl, LogPath: logPath("gateway"),
		Args:  daemon("gateway", "--stream-replicas", "3", "--listen", fmt.Sprintf("127.0.0.1:%d", gwPort)),
		Ready: harness.HTTPReady(s.gwURL + "/readyz")})
}

// --- the kills --------------------------------------------------------------

// chaos kills the NATS node leading the job stream, then a Redis master,
// each with SIGKILL, and starts each again after down; it returns what it
// did, one line per kill.
func (s *system) chaos(window, down time.Duration) []string {
	steps := []struct {
		at   time.Duration
		what string
		proc func() *harness.Proc
		// whole waits, after the restart, for the node to be back in its
		// cluster.
		whole func(context.Context) error
	}{
		{window / 5, "nats", s.jobStreamLeader, nil},
		{window * 11 / 20, "redis", func() *harness.Proc { return s.redis[1] }, func(ctx context.Context) error {
			return waitClusterOK(ctx, s.redisAddrs)
		}},
	}
	var out []string
	for _, st := range steps {
		time.Sleep(time.Until(s.h.SubmitStart().Add(st.at)))
		p := st.proc()
		pid, err := s.h.Kill(p)
		if err != nil {
			out = append(out, s.say("%s kill -9 %s (%s): %v", s.h.Since(), p.Name, st.what, err))
			continue
		}
		killedAt := time.Now()
		s.mu.Lock()
		s.killed = append(s.killed, harness.KillEvent{Name: st.what + " " + p.Name, At: killedAt})
		s.mu.Unlock()
		if st.what == "redis" {
			s.probeReady(down)
		} else {
			time.Sleep(down)
		}
		err = s.h.Start(p)
		if err == nil && st.whole != nil {
			ctx, cancel := context.WithTimeout(context.Background(), clusterOKTimeout)
			err = st.whole(ctx)
			cancel()
		}
		line := fmt.Sprintf("+%5.1fs kill -9 %s %s (pid %d), down %.1fs, back at %s (%.1fs after the kill)",
			killedAt.Sub(s.h.T0).Seconds(), st.what, p.Name, pid, down.Seconds(), s.h.Since(), time.Since(killedAt).Seconds())
		if err != nil {
			line += fmt.Sprintf("; RESTART FAILED: %v", err)
		} else {
			s.mu.Lock()
			s.back = append(s.back, backEvent{what: st.what + " " + p.Name, at: time.Now()})
			s.mu.Unlock()
		}
		out = append(out, s.say("%s", line))
	}
	return out
}

// probeReady asks the gateway's /readyz every 200ms for d and records
// every answer that is not 200.
func (s *system) probeReady(d time.Duration) {
	ready := harness.HTTPReady(s.gwURL + "/readyz")
	for end := time.Now().Add(d); time.Now().Before(end); {
		err := ready(context.Background(), 0)
		s.mu.Lock()
		s.probes++
		if err != nil {
			s.unready = append(s.unready, err.Error())
		}
		s.mu.Unlock()
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *system) say(format string, args ...any) string {
	line := fmt.Sprintf(format, args...)
	s.h.Log(line)
	return line
}

// afterCounts is how many jobs completed after each killed node came back.
type afterCounts struct {
	order []string
	n     map[string]int
	err   error
}

func (a afterCounts) String() string {
	var b strings.Builder
	for _, what := range a.order {
		fmt.Fprintf(&b, "completed after %-22s back %6d\n", what, a.n[what])
	}
	if a.err != nil {
		fmt.Fprintf(&b, "(some records were unreadable: %v)\n", a.err)
	}
	return b.String()
}

// completedAfter counts, for each node that came back, the jobs that
// completed after it did.
func (s *system) completedAfter(ids []string, back []backEvent) afterCounts {
	a := afterCounts{n: map[string]int{}}
	counts := make([]atomic.Int64, len(back))
	var errMu sync.Mutex
	ctx := context.Background()
	harness.Parallel(ids, 16, func(id string) {
		j, err := s.st.Get(ctx, id)
		if err != nil {
			errMu.Lock()
			a.err = errors.Join(a.err, err)
			errMu.Unlock()
			return
		}
		done, ok := j.Entered[store.Completed]
		if !ok || j.State != store.Completed {
			return
		}
		for i, b := range back {
			if done.After(b.at) {
				counts[i].Add(1)
			}
		}
	})
	for i, b := range back {
		a.order = append(a.order, b.what)
		a.n[b.what] = int(counts[i].Load())
	}
	return a
}
