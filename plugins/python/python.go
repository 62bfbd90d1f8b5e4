// Package python is the plugin of pool code-python (topic
// job.code.python): it runs the job's Python source (the prompt, or the
// payload) with python3 in a subprocess and returns what it printed.
//
// Each run gets its own temporary directory as working directory and HOME
// (removed afterwards), a stripped environment, stdin from /dev/null, a
// wall-clock timeout after which the whole process tree is killed, hard
// rlimits (CPU seconds, address space, file size, processes, open files),
// and a cap on stdout+stderr. Where the kernel allows unprivileged user
// namespaces (Linux), the code also runs in new user, network and PID
// namespaces: no network at all, not even loopback, and no way to outlive
// the run. New probes this once and says what it got (Isolation); a
// Runner without namespaces still runs, with the rest of the limits.
//
// What is NOT isolated: the filesystem (the code reads what its user may
// read and writes where its user may write), CPU and memory beyond the
// rlimits (no cgroup), and, without namespaces, the network. See the
// README's "Python jobs: what is isolated".
//
// The rlimits are set by a short Python preamble (the resource module)
// that then execs a fresh interpreter on the job's code; the limits are
// hard, so the code cannot raise them again. This package must not log
// or return the source beyond the result it produces.
package python

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cortex-os/core/plugins"
)

// Topic is the topic the runner serves, in pool Pool.
const (
	Topic = "job.code.python"
	Pool  = "code-python"
)

// Defaults of Options.
const (
	DefaultTimeout   = 30 * time.Second
	DefaultCPU       = 10 * time.Second
	DefaultMemory    = 512 << 20
	DefaultFileSize  = 16 << 20
	DefaultProcesses = 64
	DefaultOpenFiles = 64
	DefaultOutput    = 1 << 20
)

// nobody is the user and group the code runs as when the worker is root.
const nobody = 65534

// Options configures a Runner. Zero values take the defaults.
type Options struct {
	// Python is the interpreter: a path, or a name looked up in PATH
	// (default "python3").
	Python string
	// Timeout is the wall-clock limit of one run (DefaultTimeout).
	Timeout time.Duration
	// CPU is the CPU time limit, rounded up to whole seconds (DefaultCPU).
	CPU time.Duration
	// Memory is the address-space limit in bytes (DefaultMemory).
	Memory int64
	// FileSize is the largest file the code may write, in bytes
	// (DefaultFileSize).
	FileSize int64
	// Processes bounds the processes and threads of the user the code
	// runs as (RLIMIT_NPROC, DefaultProcesses).
	Processes int
	// OpenFiles bounds the open file descriptors (DefaultOpenFiles).
	OpenFiles int
	// Output caps stdout and stderr together, in bytes (DefaultOutput);
	// what is over is dropped and the result says so.
	Output int
	// NoNamespaces skips the user, network and PID namespaces even where
	// they work.
	NoNamespaces bool
	// Log receives the runner's own messages (nil: none). The code and
	// its output are never logged.
	Log *slog.Logger
}

// Isolation says what a Runner's subprocesses are shut off from.
type Isolation struct {
	// Namespaces is true when the code runs in new user, network and PID
	// namespaces: no network interface but a loopback that is down, and
	// every process of the run ends with it.
	Namespaces bool
	// Why says why there are no namespaces (empty when there are).
	Why string
	// User is who the code runs as.
	User string
}

// String is a one-line summary for banners and logs.
func (i Isolation) String() string {
	if i.Namespaces {
		return "network and PID namespaces, as " + i.User
	}
	return "NO network isolation (" + i.Why + "), as " + i.User
}

// Runner runs Python source. It is a plugins.Handler, safe for concurrent
// use.
type Runner struct {
	opts      Options
	python    string
	isolation Isolation
}

var _ plugins.Handler = (*Runner)(nil)

// New finds the interpreter, checks that it runs, and probes whether
// namespaces work here; without them it warns on opts.Log and carries on.
func New(opts Options) (*Runner, error) {
	opts.Python = firstOf(opts.Python, "python3")
	opts.Timeout = firstOf(opts.Timeout, DefaultTimeout)
	opts.CPU = firstOf(opts.CPU, DefaultCPU)
	opts.Memory = firstOf(opts.Memory, DefaultMemory)
	opts.FileSize = firstOf(opts.FileSize, DefaultFileSize)
	opts.Processes = firstOf(opts.Processes, DefaultProcesses)
	opts.OpenFiles = firstOf(opts.OpenFiles, DefaultOpenFiles)
	opts.Output = firstOf(opts.Output, DefaultOutput)
	if opts.Timeout < 0 || opts.CPU < 0 || opts.Memory < 0 || opts.FileSize < 0 || opts.Processes < 0 || opts.OpenFiles < 0 || opts.Output < 0 {
		return nil, errors.New("python: limits must be positive")
	}
	path, err := exec.LookPath(opts.Python)
	if err != nil {
		return nil, fmt.Errorf("python interpreter %q: %w (install python3, or give its path)", opts.Python, err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("python interpreter %q: %w", opts.Python, err)
	}
	r := &Runner{opts: opts, python: path}
	r.isolation.User = "the worker's user"
	if os.Geteuid() == 0 {
		r.isolation.User = "nobody (65534)"
	}
	if os.Geteuid() == 0 {
		if err := othersMayEnter(os.TempDir()); err != nil {
			return nil, fmt.Errorf("python: the code runs as nobody (the worker is root) in a directory under %s, but %w; set TMPDIR to a directory others may enter, such as /tmp", os.TempDir(), err)
		}
	}
	if err := r.probe(false); err != nil {
		if errors.Is(err, fs.ErrPermission) && os.Geteuid() == 0 {
			err = fmt.Errorf("%w (the worker runs as root, so the code runs as nobody, who may not read it: give an interpreter outside root's home, e.g. /usr/bin/python3)", err)
		}
		return nil, fmt.Errorf("python interpreter %s does not run: %w", path, err)
	}
	switch {
	case opts.NoNamespaces:
		r.isolation.Why = "namespaces turned off"
	default:
		if err := r.probe(true); err != nil {
			r.isolation.Why = "user namespaces are not available here: " + err.Error()
		} else {
			r.isolation.Namespaces = true
		}
	}
	if !r.isolation.Namespaces && opts.Log != nil {
		opts.Log.Warn("python jobs run WITHOUT network isolation; they can reach the network", "why", r.isolation.Why, "python", path)
	}
	return r, nil
}

// othersMayEnter checks that every directory from / to dir lets others
// through (o+x).
func othersMayEnter(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("others may not enter %s (mode %s)", d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func firstOf[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Isolation says what the runner's subprocesses are shut off from.
func (r *Runner) Isolation() Isolation { return r.isolation }

// Python is the interpreter's absolute path.
func (r *Runner) Python() string { return r.python }

// probeScript passes only in a network namespace of its own: the one
// interface there is the loopback.
const probeScript = `import socket, sys
names = [n for _, n in socket.if_nameindex()]
sys.exit(0 if names == ["lo"] else 3)`

// probe runs a tiny script under the sandbox, with namespaces or not.
func (r *Runner) probe(namespaces bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src := "pass"
	if namespaces {
		src = probeScript
	}
	res, err := r.run(ctx, []byte(src), namespaces, nil)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("the probe exited with status %d: %s", res.ExitCode, lastLine(res.Stderr))
	}
	return nil
}

// Output is a run's result, stored as the job's output in JSON.
type Output struct {
	// ExitCode is the interpreter's exit status (-1 when it was killed
	// by a signal).
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed it, if one did.
	Signal string `json:"signal,omitempty"`
	// Stdout and Stderr are what it wrote, cut at the output cap.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Truncated is true when the output cap cut stdout or stderr.
	Truncated bool `json:"truncated"`
	// Network says whether the code could reach a network: "none" in a
	// namespace of its own, "host" otherwise.
	Network string `json:"network"`
	// Millis is the run's wall-clock time.
	Millis int64 `json:"duration_ms"`
}

// ExitError is the error of a run that exited with a non-zero status or
// was killed by a signal. It is deterministic: the same code fails the
// same way, so it is not worth retrying.
type ExitError struct {
	Output *Output
	// Limit names the limit that killed the run, when one did.
	Limit string
}

func (e *ExitError) Error() string {
	var b strings.Builder
	if e.Output.Signal != "" {
		fmt.Fprintf(&b, "python was killed by %s", e.Output.Signal)
	} else {
		fmt.Fprintf(&b, "python exited with status %d", e.Output.ExitCode)
	}
	if e.Limit != "" {
		fmt.Fprintf(&b, " (%s)", e.Limit)
	}
	if last := lastLine(e.Output.Stderr); last != "" {
		fmt.Fprintf(&b, ": %s", last)
	}
	return b.String()
}

// TimeoutError is the error of a run killed at its wall-clock limit. It
// matches context.DeadlineExceeded, so the attempt is recorded TIMEOUT.
type TimeoutError struct {
	Limit  time.Duration
	Output *Output
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the code ran past its wall-clock limit of %s and was killed", e.Limit)
}

// Is reports whether target is context.DeadlineExceeded.
func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// lastLine is the last non-empty line of s, at most 200 bytes: the line a
// Python traceback ends with.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 200 {
		l = strings.ToValidUTF8(l[:200], "") + "…"
	}
	return l
}

// Handle runs the job's source: its payload, or else its prompt. The
// result is Output as JSON; while the code runs, what it prints goes to
// job.Stream (stdout and stderr as they come). A non-zero exit is a
// permanent *ExitError (the same code fails the same way: the job is not
// retried), as is a job with no source; a run past the timeout is a
// *TimeoutError, which the worker records TIMEOUT.
func (r *Runner) Handle(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
	src := job.Payload
	if src == nil {
		src = []byte(job.Prompt)
	}
	if len(strings.TrimSpace(string(src))) == 0 {
		return nil, plugins.Permanent(errors.New("no Python source: send the code as the prompt (or the payload)"))
	}
	out, err := r.runLive(ctx, src, job.Stream)
	var exit *ExitError
	if errors.As(err, &exit) {
		return nil, plugins.Permanent(err)
	}
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return &plugins.Result{Output: string(b) + "\n"}, nil
}

// Run runs src and returns what it printed. The error is an *ExitError
// for a non-zero exit, a *TimeoutError past the wall-clock limit, the
// context's cause when ctx ended first, and any other error when the
// interpreter could not be started.
func (r *Runner) Run(ctx context.Context, src []byte) (*Output, error) {
	return r.runLive(ctx, src, nil)
}

// runLive is Run that also copies stdout and stderr to live as the code
// writes them.
func (r *Runner) runLive(ctx context.Context, src []byte, live io.Writer) (*Output, error) {
	out, err := r.run(ctx, src, r.isolation.Namespaces, live)
	if err != nil {
		return nil, err
	}
	switch {
	case out.timedOut:
		return nil, &TimeoutError{Limit: r.opts.Timeout, Output: &out.Output}
	case out.ExitCode != 0:
		return nil, &ExitError{Output: &out.Output, Limit: r.limitHit(out)}
	}
	return &out.Output, nil
}

// limitHit names the limit a failed run most likely died of. As the init
// of its PID namespace the interpreter ignores SIGXCPU, and dies of the
// SIGKILL at the hard limit a second later; Python ignores SIGXFSZ and
// fails the write instead.
func (r *Runner) limitHit(o *runOutput) string {
	last := lastLine(o.Stderr)
	switch {
	case o.Signal == "SIGXCPU" || o.Signal == "SIGKILL" && o.cpu >= time.Duration(cpuSeconds(r.opts.CPU))*time.Second:
		return fmt.Sprintf("CPU time limit of %ds", cpuSeconds(r.opts.CPU))
	case o.Signal == "SIGXFSZ" || strings.Contains(last, "File too large"):
		return fmt.Sprintf("file size limit of %d bytes", r.opts.FileSize)
	case strings.Contains(last, "MemoryError"):
		return fmt.Sprintf("memory limit of %d bytes", r.opts.Memory)
	}
	return ""
}

type runOutput struct {
	Output
	timedOut bool
	// cpu is the CPU time the run used.
	cpu time.Duration
}

// preamble sets the hard limits given as arguments, then replaces itself
// with a fresh interpreter running main.py. It runs with -I -S: no site
// packages, no environment, nothing of the user's.
const preamble = `import os, resource, sys
cpu, mem, fsize, nproc, nofile = (int(a) for a in sys.argv[1:6])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
os.execv(sys.argv[6], [sys.argv[6], "-I", "-u", "main.py"])`

func cpuSeconds(d time.Duration) int64 { return int64((d + time.Second - 1) / time.Second) }

// run runs src in the sandbox; what it prints, within the output cap, also
// goes to live as it comes (when live is not nil).
func (r *Runner) run(ctx context.Context, src []byte, namespaces bool, live io.Writer) (*runOutput, error) {
	dir, err := os.MkdirTemp("", "cortex-python-")
	if err != nil {
		return nil, fmt.Errorf("python: temporary directory: %w", err)
	}
	defer r.removeAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "main.py"), src, 0o600); err != nil {
		return nil, fmt.Errorf("python: write the source: %w", err)
	}
	root := os.Geteuid() == 0
	if root {
		for _, p := range []string{dir, filepath.Join(dir, "main.py")} {
			if err := os.Chown(p, nobody, nobody); err != nil {
				return nil, fmt.Errorf("python: give the temporary directory to nobody: %w", err)
			}
		}
	}
	runCtx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, r.python, "-I", "-S", "-c", preamble, //nolint:gosec // the interpreter is the operator's
		strconv.FormatInt(cpuSeconds(r.opts.CPU), 10),
		strconv.FormatInt(r.opts.Memory, 10),
		strconv.FormatInt(r.opts.FileSize, 10),
		strconv.Itoa(r.opts.Processes),
		strconv.Itoa(r.opts.OpenFiles),
		r.python)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir, "TMPDIR=" + dir, "LANG=C.UTF-8"}
	capped := &capWriter{limit: r.opts.Output, live: live}
	stdout, stderr := capped.stream(), capped.stream()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if cmd.SysProcAttr, err = sysProcAttr(namespaces, root); err != nil {
		return nil, err
	}
	// The whole process group: the interpreter and what it started.
	cmd.Cancel = func() error { return killGroup(cmd.Process) }
	// A child that escaped the group and holds the pipes open cannot
	// keep the run going past this.
	cmd.WaitDelay = time.Second
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if cmd.Process != nil {
		// What the code left running in the background goes too (in a PID
		// namespace, the kernel has seen to it already).
		_ = killGroup(cmd.Process)
	}
	res := &runOutput{Output: Output{
		Stdout: stdout.String(), Stderr: stderr.String(), Truncated: capped.truncated(),
		Network: "host", Millis: took.Milliseconds(),
	}}
	if namespaces {
		res.Network = "none"
	}
	if ps := cmd.ProcessState; ps != nil {
		res.cpu = ps.UserTime() + ps.SystemTime()
	}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return nil, context.Cause(ctx)
	case runCtx.Err() != nil:
		res.timedOut, res.ExitCode, res.Signal = true, -1, "SIGKILL"
		return res, nil
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = signalName(ws.Signal())
		}
		return res, nil
	case errors.Is(err, exec.ErrWaitDelay):
		// The code exited; a process it left behind held the pipes.
		return res, nil
	case err != nil:
		return nil, fmt.Errorf("python: start %s: %w", r.python, err)
	}
	return res, nil
}

// removeAll removes the run's directory even where the code took away its
// own permissions on parts of it.
func (r *Runner) removeAll(dir string) {
	if os.RemoveAll(dir) == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			_ = os.Chmod(p, 0o700) //nolint:gosec // a directory needs x to be emptied; it is removed next
		}
		return nil
	})
	if err := os.RemoveAll(dir); err != nil && r.opts.Log != nil {
		r.opts.Log.Warn("python: temporary directory not removed", "dir", dir, "err", err)
	}
}

// signalName names s: SIGKILL, SIGXCPU (the CPU limit), SIGXFSZ (the file
// size limit)...
func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}

// capWriter shares one byte budget between the streams it makes, and
// copies what it keeps to live.
type capWriter struct {
	mu    sync.Mutex
	limit int
	used  int
	cut   bool
	live  io.Writer
}

type capStream struct {
	c      *capWriter
	buf    strings.Builder
	marked bool // the stream ends with truncMarker
}

func (c *capWriter) stream() *capStream { return &capStream{c: c} }

func (c *capWriter) truncated() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cut
}

// Write keeps what fits in the budget and drops the rest; it never fails,
// so the code is never stopped by a full pipe.
func (s *capStream) Write(p []byte) (int, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	keep := min(len(p), max(s.c.limit-s.c.used, 0))
	s.buf.Write(p[:keep])
	s.c.used += keep
	if s.c.live != nil && keep > 0 {
		_, _ = s.c.live.Write(p[:keep]) // best effort: the result has it all
	}
	if keep < len(p) && !s.marked {
		s.c.cut, s.marked = true, true
		s.buf.WriteString(truncMarker)
	}
	return len(p), nil
}

// truncMarker ends a stream the output cap cut.
const truncMarker = "\n…[output truncated]\n"

func (s *capStream) String() string {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return strings.ToValidUTF8(s.buf.String(), "\uFFFD")
}

var _ io.Writer = (*capStream)(nil)
