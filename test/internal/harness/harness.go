// Package harness runs CortexOS's process-level tests (test/chaos,
// test/multinode): it starts real processes (cortexctl daemons,
// nats-server, redis-server), kills them with SIGKILL and restarts them,
// submits jobs through the gateway with idempotency keys, and checks
// afterwards that every accepted job reached exactly one terminal state.
// Only those tests import it; the product must not.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// readyTimeout bounds how long a (re)started process may take to be ready.
const readyTimeout = 30 * time.Second

// proc is one supervised process: it can be started, killed with SIGKILL and
// started again with the same arguments. Its output goes to one log file,
// each start marked.
type Proc struct {
	Name    string
	Path    string
	Args    []string
	LogPath string
	// Ready returns nil once this start of the process is ready; since is
	// the log offset where this start's output begins.
	Ready func(ctx context.Context, since int64) error

	mu     sync.Mutex
	cur    *run
	starts int
	// exits records the exits that the harness did not cause.
	exits []string
}

// run is one start of a proc.
type run struct {
	cmd    *exec.Cmd
	since  int64 // log offset where this run's output begins
	at     time.Time
	done   chan struct{}
	err    error       // Wait's answer, once done is closed
	killed atomic.Bool // the harness killed it on purpose
}

// harness owns every process of a test and the test's clock.
type Harness struct {
	t *testing.T
	// T0 is when the test began.
	T0      time.Time
	closing atomic.Bool

	mu    sync.Mutex
	procs []*Proc
	// unexpected lists the processes that exited without being killed,
	// as they happened.
	unexpected []string
	// submitStart is when submitting began: the kills are timed from it.
	submitStart time.Time
}

// New returns a harness that kills every process it started when the test
// ends.
func New(t *testing.T) *Harness {
	h := &Harness{t: t, T0: time.Now()}
	t.Cleanup(h.stopAll)
	return h
}

// Since is the time since the test began, for log lines.
func (h *Harness) Since() string {
	return fmt.Sprintf("+%5.1fs", time.Since(h.T0).Seconds())
}

// Logf logs with the time since the test began.
func (h *Harness) Logf(format string, args ...any) {
	h.t.Helper()
	h.t.Logf("%s "+format, append([]any{h.Since()}, args...)...)
}

// Log logs a line as it is.
func (h *Harness) Log(line string) {
	h.t.Helper()
	h.t.Log(line)
}

// Unexpected lists the processes that exited without being killed, as they
// happened (the supervisor started each again).
func (h *Harness) Unexpected() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.unexpected)
}

// Add registers p, to be killed when the test ends.
func (h *Harness) Add(p *Proc) *Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.procs = append(h.procs, p)
	return p
}

// Start starts p and waits until it is ready.
func (h *Harness) Start(p *Proc) error {
	return h.StartAll(p)
}

// StartAll starts every process, then waits until each is ready: for
// servers that are ready only once their peers are up (a NATS cluster).
func (h *Harness) StartAll(ps ...*Proc) error {
	runs := make([]*run, len(ps))
	for i, p := range ps {
		r, err := h.spawn(p)
		if err != nil {
			return err
		}
		runs[i] = r
	}
	for i, p := range ps {
		if err := h.waitReady(p, runs[i]); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts p without waiting for it to be ready.
func (h *Harness) spawn(p *Proc) (*run, error) {
	if h.closing.Load() {
		return nil, errors.New("the test is ending")
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p.mu.Lock()
	p.starts++
	n := p.starts
	p.mu.Unlock()
	fmt.Fprintf(f, "=== harness %s: start #%d: %s %s\n", h.Since(), n, filepath.Base(p.Path), strings.Join(p.Args, " "))
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.Path, p.Args...) //nolint:gosec // the test starts the binaries it built
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	// Its own process group, so a kill reaches whatever it forked (redis
	// forks to rewrite its AOF); and it dies with the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	r := &run{cmd: cmd, since: st.Size(), at: time.Now(), done: make(chan struct{})}
	p.mu.Lock()
	p.cur = r
	p.mu.Unlock()
	go h.watch(p, r)
	return r, nil
}

// watch waits for a run to end. An exit the harness did not cause is
// recorded, and the process is started again a second later, as a
// supervisor (systemd, Kubernetes) would.
func (h *Harness) watch(p *Proc, r *run) {
	r.err = r.cmd.Wait()
	if r.err == nil {
		r.err = errors.New("exit status 0")
	}
	close(r.done)
	if r.killed.Load() || h.closing.Load() {
		return
	}
	msg := fmt.Sprintf("%s %s (pid %d) exited by itself after %.1fs: %v",
		h.Since(), p.Name, r.cmd.Process.Pid, time.Since(r.at).Seconds(), r.err)
	if crash := crashLine(readFrom(p.LogPath, r.since)); crash != "" {
		msg += "; it crashed: " + crash
	}
	msg += "; its last lines:\n" + indent(tailFrom(p.LogPath, r.since, 8))
	p.mu.Lock()
	p.exits = append(p.exits, msg)
	p.mu.Unlock()
	h.mu.Lock()
	h.unexpected = append(h.unexpected, msg)
	h.mu.Unlock()
	h.t.Log(msg)
	time.Sleep(time.Second)
	if h.closing.Load() {
		return
	}
	h.Logf("supervisor: starting %s again", p.Name)
	if _, err := h.spawn(p); err != nil {
		h.Logf("supervisor: %s: %v", p.Name, err)
	}
}

// waitReady waits until run r of p is ready, or fails if it exits first.
func (h *Harness) waitReady(p *Proc, r *run) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-r.done:
			return fmt.Errorf("%s exited while starting: %w; its last lines:\n%s", p.Name, r.err, indent(tailFrom(p.LogPath, r.since, 15)))
		default:
		}
		if last = p.Ready(ctx, r.since); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w; its last lines:\n%s", p.Name, readyTimeout, last, indent(tailFrom(p.LogPath, r.since, 15)))
		case <-r.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL to p's process group and waits until it is gone.
func (h *Harness) Kill(p *Proc) (pid int, err error) {
	p.mu.Lock()
	r := p.cur
	p.mu.Unlock()
	if r == nil {
		return 0, fmt.Errorf("%s is not running", p.Name)
	}
	select {
	case <-r.done:
		return 0, fmt.Errorf("%s had already exited: %w; its last lines:\n%s", p.Name, r.err, indent(tailFrom(p.LogPath, r.since, 8)))
	default:
	}
	r.killed.Store(true)
	pid = r.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		return pid, fmt.Errorf("kill -9 %s (pid %d): %w", p.Name, pid, err)
	}
	select {
	case <-r.done:
		return pid, nil
	case <-time.After(10 * time.Second):
		return pid, fmt.Errorf("%s (pid %d) still there 10s after SIGKILL; its last lines:\n%s", p.Name, pid, indent(tailFrom(p.LogPath, r.since, 8)))
	}
}

// stopAll kills every process (the test's cleanup).
func (h *Harness) stopAll() {
	h.closing.Store(true)
	h.mu.Lock()
	procs := h.procs
	h.mu.Unlock()
	for _, p := range procs {
		p.mu.Lock()
		r := p.cur
		p.mu.Unlock()
		if r == nil {
			continue
		}
		r.killed.Store(true)
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			h.t.Logf("%s (pid %d) did not die", p.Name, r.cmd.Process.Pid)
		}
	}
	if h.t.Failed() {
		for _, p := range procs {
			h.t.Logf("--- last lines of %s (%s):\n%s", p.Name, p.LogPath, indent(tailFrom(p.LogPath, 0, 25)))
		}
	}
}

// --- readiness checks ---------------------------------------------------------

// TCPReady is ready once something accepts connections on addr.
func TCPReady(addr string) func(context.Context, int64) error {
	return func(ctx context.Context, _ int64) error {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// RedisReady is ready once redis answers PING (not while it loads its AOF).
func RedisReady(addr string) func(context.Context, int64) error {
	return func(ctx context.Context, _ int64) error {
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err()
	}
}

// HTTPReady is ready once GET url answers 200.
func HTTPReady(url string) func(context.Context, int64) error {
	return func(ctx context.Context, _ int64) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// LogReady is ready once this start's log holds marker (the daemons say
// "... running; Ctrl-C or SIGTERM stops it" once they are subscribed).
// If the wording changes the check gives up after grace and takes a live
// process as ready, saying so, rather than failing the run.
func LogReady(h *Harness, name, logPath, marker string, grace time.Duration) func(context.Context, int64) error {
	var mu sync.Mutex
	first := map[int64]time.Time{}
	return func(_ context.Context, since int64) error {
		if bytes.Contains(readFrom(logPath, since), []byte(marker)) {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if _, ok := first[since]; !ok {
			first[since] = time.Now()
		}
		if time.Since(first[since]) > grace {
			h.Logf("%s has not printed %q after %s; taking it as ready", name, marker, grace)
			return nil
		}
		return fmt.Errorf("%s has not printed %q yet", name, marker)
	}
}

// --- small helpers --------------------------------------------------------------

// FreePort returns a port on 127.0.0.1 that nothing listens on.
func FreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func readFrom(path string, off int64) []byte {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return nil
	}
	return b[off:]
}

// tailFrom returns the last n lines of path from offset off. Runs of lines
// that differ only in ids and times (a burst of the same error) are shown
// once, with how many there were.
func tailFrom(path string, off int64, n int) string {
	b := bytes.TrimRight(readFrom(path, off), "\n")
	if len(b) == 0 {
		return "(nothing)"
	}
	type group struct {
		line  string
		key   string
		count int
	}
	var groups []group
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 400 {
			l = l[:400] + "..."
		}
		k := logNoise.ReplaceAllString(l, "")
		if len(groups) > 0 && groups[len(groups)-1].key == k {
			groups[len(groups)-1].count++
			groups[len(groups)-1].line = l
			continue
		}
		groups = append(groups, group{line: l, key: k, count: 1})
	}
	if len(groups) > n {
		groups = groups[len(groups)-n:]
	}
	var out []string
	for _, g := range groups {
		if g.count > 1 {
			g.line += fmt.Sprintf("   [%d lines like this]", g.count)
		}
		out = append(out, g.line)
	}
	return strings.Join(out, "\n")
}

// crashLine is the first line of a Go program's crash report in out (a
// panic, a fatal runtime error, a signal's goroutine dump), whose tail
// alone shows only the last goroutine; "" when there is none.
func crashLine(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if crashStart.MatchString(l) {
			return l
		}
	}
	return ""
}

// crashStart matches the line a Go crash report begins with.
var crashStart = regexp.MustCompile(`^(panic: |fatal error: |SIG[A-Z]+: )`)

// logNoise matches what differs between otherwise equal log lines: job ids
// (UUIDs), JSON times, redis's pid:role and time prefix.
var logNoise = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"time":"[^"]*"|^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+|\[\d+\] [\d/]+ [\d:.]+`)

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func EnvInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func EnvDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 40s", name, v)
	}
	return d
}

// ModuleRoot is the folder of the go.mod this test belongs to.
func ModuleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("not inside a Go module")
	}
	return filepath.Dir(mod)
}

// build builds a package of the module graph into dir/name.
func Build(t *testing.T, root, dir, name, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", out, pkg) //nolint:gosec // packages of this module graph
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	t.Logf("built %s in %.1fs", name, time.Since(start).Seconds())
	return out
}

// SubmitStart is when submitting began (kill schedules count from it): the
// first call sets it.
func (h *Harness) SubmitStart() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.submitStart.IsZero() {
		h.submitStart = time.Now()
	}
	return h.submitStart
}
