//go:build chaos

package chaos

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
type proc struct {
	name    string
	path    string
	args    []string
	logPath string
	// ready returns nil once this start of the process is ready; since is
	// the log offset where this start's output begins.
	ready func(ctx context.Context, since int64) error

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
type harness struct {
	t       *testing.T
	t0      time.Time
	closing atomic.Bool

	mu    sync.Mutex
	procs []*proc
	// unexpected lists the processes that exited without being killed,
	// as they happened.
	unexpected []string
	// submitStart is when submitting began: the kills are timed from it.
	submitStart time.Time
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, t0: time.Now()}
	t.Cleanup(h.stopAll)
	return h
}

// since is the time since the test began, for log lines.
func (h *harness) since() string {
	return fmt.Sprintf("+%5.1fs", time.Since(h.t0).Seconds())
}

func (h *harness) logf(format string, args ...any) {
	h.t.Helper()
	h.t.Logf("%s "+format, append([]any{h.since()}, args...)...)
}

func (h *harness) add(p *proc) *proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.procs = append(h.procs, p)
	return p
}

// start starts p and waits until it is ready.
func (h *harness) start(p *proc) error {
	r, err := h.spawn(p)
	if err != nil {
		return err
	}
	return h.waitReady(p, r)
}

// spawn starts p without waiting for it to be ready.
func (h *harness) spawn(p *proc) (*run, error) {
	if h.closing.Load() {
		return nil, errors.New("the test is ending")
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p.mu.Lock()
	p.starts++
	n := p.starts
	p.mu.Unlock()
	fmt.Fprintf(f, "=== chaos %s: start #%d: %s %s\n", h.since(), n, filepath.Base(p.path), strings.Join(p.args, " "))
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p.path, p.args...) //nolint:gosec // the test starts the binaries it built
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	// Its own process group, so a kill reaches whatever it forked (redis
	// forks to rewrite its AOF); and it dies with the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
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
func (h *harness) watch(p *proc, r *run) {
	r.err = r.cmd.Wait()
	if r.err == nil {
		r.err = errors.New("exit status 0")
	}
	close(r.done)
	if r.killed.Load() || h.closing.Load() {
		return
	}
	msg := fmt.Sprintf("%s %s (pid %d) exited by itself after %.1fs: %v; its last lines:\n%s",
		h.since(), p.name, r.cmd.Process.Pid, time.Since(r.at).Seconds(), r.err, indent(tailFrom(p.logPath, r.since, 8)))
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
	h.logf("supervisor: starting %s again", p.name)
	if _, err := h.spawn(p); err != nil {
		h.logf("supervisor: %s: %v", p.name, err)
	}
}

// waitReady waits until run r of p is ready, or fails if it exits first.
func (h *harness) waitReady(p *proc, r *run) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-r.done:
			return fmt.Errorf("%s exited while starting: %w; its last lines:\n%s", p.name, r.err, indent(tailFrom(p.logPath, r.since, 15)))
		default:
		}
		if last = p.ready(ctx, r.since); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w; its last lines:\n%s", p.name, readyTimeout, last, indent(tailFrom(p.logPath, r.since, 15)))
		case <-r.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kill sends SIGKILL to p's process group and waits until it is gone.
func (h *harness) kill(p *proc) (pid int, err error) {
	p.mu.Lock()
	r := p.cur
	p.mu.Unlock()
	if r == nil {
		return 0, fmt.Errorf("%s is not running", p.name)
	}
	select {
	case <-r.done:
		return 0, fmt.Errorf("%s had already exited", p.name)
	default:
	}
	r.killed.Store(true)
	pid = r.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-r.done:
		return pid, nil
	case <-time.After(10 * time.Second):
		return pid, fmt.Errorf("%s (pid %d) still there 10s after SIGKILL", p.name, pid)
	}
}

// stopAll kills every process (the test's cleanup).
func (h *harness) stopAll() {
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
			h.t.Logf("%s (pid %d) did not die", p.name, r.cmd.Process.Pid)
		}
	}
	if h.t.Failed() {
		for _, p := range procs {
			h.t.Logf("--- last lines of %s (%s):\n%s", p.name, p.logPath, indent(tailFrom(p.logPath, 0, 25)))
		}
	}
}

// --- readiness checks ---------------------------------------------------------

// tcpReady is ready once something accepts connections on addr.
func tcpReady(addr string) func(context.Context, int64) error {
	return func(ctx context.Context, _ int64) error {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// redisReady is ready once redis answers PING (not while it loads its AOF).
func redisReady(addr string) func(context.Context, int64) error {
	return func(ctx context.Context, _ int64) error {
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return rdb.Ping(ctx).Err()
	}
}

// httpReady is ready once GET url answers 200.
func httpReady(url string) func(context.Context, int64) error {
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

// logReady is ready once this start's log holds marker (the daemons say
// "... running; Ctrl-C or SIGTERM stops it" once they are subscribed).
// If the wording changes the check gives up after grace and takes a live
// process as ready, saying so, rather than failing the run.
func logReady(h *harness, name, logPath, marker string, grace time.Duration) func(context.Context, int64) error {
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
			h.logf("%s has not printed %q after %s; taking it as ready", name, marker, grace)
			return nil
		}
		return fmt.Errorf("%s has not printed %q yet", name, marker)
	}
}

// --- small helpers --------------------------------------------------------------

// freePort returns a port on 127.0.0.1 that nothing listens on.
func freePort(t *testing.T) int {
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

// logNoise matches what differs between otherwise equal log lines: job ids
// (UUIDs), JSON times, redis's pid:role and time prefix.
var logNoise = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"time":"[^"]*"|^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+|\[\d+\] [\d/]+ [\d:.]+`)

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func envInt(t *testing.T, name string, def int) int {
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

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
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

// moduleRoot is the folder of the go.mod this test belongs to.
func moduleRoot(t *testing.T) string {
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
func build(t *testing.T, root, dir, name, pkg string) string {
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
