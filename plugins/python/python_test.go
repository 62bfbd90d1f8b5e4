package python_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/python"
)

// interpreter is the python3 the tests run: /usr/bin/python3 where it is,
// as in CI, else the one in PATH.
func interpreter(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("these tests need python3 (CI installs it): %v", err)
	}
	return p
}

func newRunner(t *testing.T, opts python.Options) *python.Runner {
	t.Helper()
	opts.Python = interpreter(t)
	r, err := python.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func run(t *testing.T, r *python.Runner, src string) (*python.Output, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return r.Run(ctx, []byte(src))
}

func TestHelloWorld(t *testing.T) {
	r := newRunner(t, python.Options{})
	res, err := r.Handle(context.Background(), &plugins.Job{ID: "j1", Topic: python.Topic, Prompt: "import sys\nprint('hello')\nprint('warn', file=sys.stderr)"})
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	var out python.Output
	if err := json.Unmarshal([]byte(res.Output), &out); err != nil {
		t.Fatalf("the result is not the documented JSON: %v\n%s", err, res.Output)
	}
	if out.ExitCode != 0 || out.Stdout != "hello\n" || out.Stderr != "warn\n" || out.Truncated {
		t.Errorf("output = %+v, want exit 0, stdout hello, stderr warn", out)
	}
}

func TestPayloadIsTheSource(t *testing.T) {
	r := newRunner(t, python.Options{})
	res, err := r.Handle(context.Background(), &plugins.Job{Prompt: "", Payload: []byte("print(6*7)")})
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if !strings.Contains(res.Output, `"stdout": "42\n"`) {
		t.Errorf("output = %s, want stdout 42", res.Output)
	}
}

func TestNoSource(t *testing.T) {
	r := newRunner(t, python.Options{})
	_, err := r.Handle(context.Background(), &plugins.Job{Prompt: "  \n"})
	if err == nil || !strings.Contains(err.Error(), "no Python source") || !plugins.IsPermanent(err) {
		t.Fatalf("Handle(empty) = %v, want a clear, permanent error", err)
	}
}

// syncBuffer is a job's Stream in a test.
type syncBuffer struct {
	mu     sync.Mutex
	b      strings.Builder
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func TestHandleStreamsOutput(t *testing.T) {
	r := newRunner(t, python.Options{Output: 23})
	live := &syncBuffer{}
	_, err := r.Handle(context.Background(), &plugins.Job{Prompt: "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.05)\nprint('x' * 100)", Stream: live})
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	// What the code printed, as it printed it, within the output cap.
	if got := live.b.String(); got != "line 0\nline 1\nline 2\nxx" || live.writes < 3 {
		t.Errorf("streamed %q in %d writes, want the three lines one by one and the output cut at 23 bytes", got, live.writes)
	}
}

func TestHandleFailuresArePermanentButTimeouts(t *testing.T) {
	r := newRunner(t, python.Options{Timeout: time.Second})
	_, err := r.Handle(context.Background(), &plugins.Job{Prompt: "import sys; sys.exit(2)"})
	if !plugins.IsPermanent(err) || err.Error() != "python exited with status 2" {
		t.Errorf("exit 2: %v (permanent %v), want a permanent failure", err, plugins.IsPermanent(err))
	}
	_, err = r.Handle(context.Background(), &plugins.Job{Prompt: "import time; time.sleep(60)"})
	if plugins.IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("timeout: %v (permanent %v), want a timeout another attempt may get past", err, plugins.IsPermanent(err))
	}
}

func TestBadInterpreter(t *testing.T) {
	_, err := python.New(python.Options{Python: filepath.Join(t.TempDir(), "no-such-python")})
	if err == nil || !strings.Contains(err.Error(), "no-such-python") {
		t.Fatalf("New(missing python) = %v, want an error naming it", err)
	}
	_, err = python.New(python.Options{Python: "/bin/false"})
	if err == nil || !strings.Contains(err.Error(), "does not run") {
		t.Fatalf("New(/bin/false) = %v, want 'does not run'", err)
	}
}

func TestExitCodes(t *testing.T) {
	r := newRunner(t, python.Options{})
	for _, tc := range []struct {
		src  string
		code int
		msg  string
	}{
		{"import sys; sys.exit(3)", 3, "python exited with status 3"},
		{"raise ValueError('bad value')", 1, "python exited with status 1: ValueError: bad value"},
		{"import ctypes; ctypes.string_at(0)", -1, "python was killed by SIGSEGV"},
	} {
		_, err := run(t, r, tc.src)
		var exit *python.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("Run(%q) = %v, want an *ExitError", tc.src, err)
		}
		if exit.Output.ExitCode != tc.code || err.Error() != tc.msg {
			t.Errorf("Run(%q): exit %d, %q; want %d, %q", tc.src, exit.Output.ExitCode, err, tc.code, tc.msg)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run(%q): an exit is not a timeout", tc.src)
		}
	}
}

func TestStrippedEnvironmentAndOwnDirectory(t *testing.T) {
	t.Setenv("CORTEX_TEST_SECRET", "do-not-leak")
	r := newRunner(t, python.Options{})
	out, err := run(t, r, `import json, os
open("scratch.txt", "w").write("x")
os.mkdir("locked"); open("locked/f", "w").write("y"); os.chmod("locked", 0)
print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid()}))`)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var got struct {
		Env map[string]string
		Cwd string
		UID int
	}
	if err := json.Unmarshal([]byte(out.Stdout), &got); err != nil {
		t.Fatalf("stdout %q: %v", out.Stdout, err)
	}
	want := map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": got.Cwd, "TMPDIR": got.Cwd, "LANG": "C.UTF-8"}
	if fmt.Sprint(got.Env) != fmt.Sprint(want) {
		t.Errorf("environment = %v, want only %v", got.Env, want)
	}
	if !strings.HasPrefix(filepath.Base(got.Cwd), "cortex-python-") {
		t.Errorf("cwd = %s, want a temporary directory of its own", got.Cwd)
	}
	if _, err := os.Stat(got.Cwd); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the run's directory %s is still there after it (stat: %v)", got.Cwd, err)
	}
	if os.Geteuid() == 0 && got.UID == 0 {
		t.Errorf("the code ran as root; want nobody when the worker is root")
	}
}

func TestTimeoutKillsEveryProcess(t *testing.T) {
	for _, ns := range []bool{true, false} {
		t.Run(fmt.Sprintf("namespaces=%v", ns), func(t *testing.T) {
			r := newRunner(t, python.Options{Timeout: time.Second, NoNamespaces: !ns})
			marker := fmt.Sprintf("cortex-test-marker-%d-%v", os.Getpid(), ns)
			_, err := run(t, r, fmt.Sprintf(`import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", %q])
print("started", flush=True)
time.sleep(120)`, marker))
			var te *python.TimeoutError
			if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Run(sleep) = %v, want a *TimeoutError matching DeadlineExceeded", err)
			}
			if te.Output.Stdout != "started\n" {
				t.Errorf("stdout before the kill = %q, want it kept", te.Output.Stdout)
			}
			if want := "the code ran past its wall-clock limit of 1s and was killed"; err.Error() != want {
				t.Errorf("error = %q, want %q", err, want)
			}
			gone(t, marker)
		})
	}
}

// TestNothingOutlivesTheRun: a process the code leaves running in the
// background when it exits is killed with the run.
func TestNothingOutlivesTheRun(t *testing.T) {
	for _, ns := range []bool{true, false} {
		t.Run(fmt.Sprintf("namespaces=%v", ns), func(t *testing.T) {
			r := newRunner(t, python.Options{NoNamespaces: !ns})
			marker := fmt.Sprintf("cortex-test-daemon-%d-%v", os.Getpid(), ns)
			_, err := run(t, r, fmt.Sprintf(`import os, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", %q],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("left it running")`, marker))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			gone(t, marker)
		})
	}
}

// gone waits for the process whose command line holds marker to end;
// killing is asynchronous, so it looks for a while.
func gone(t *testing.T, marker string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for pid := alive(marker); pid != ""; pid = alive(marker) {
		if time.Now().After(deadline) {
			t.Fatalf("process %s started by the code outlived the run", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive returns the pid of a process whose command line holds marker.
func alive(marker string) string {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), marker) {
			return e.Name()
		}
	}
	return ""
}

func TestCPULimit(t *testing.T) {
	r := newRunner(t, python.Options{CPU: time.Second, Timeout: time.Minute})
	_, err := run(t, r, "while True: pass")
	var exit *python.ExitError
	if !errors.As(err, &exit) || exit.Limit != "CPU time limit of 1s" {
		t.Fatalf("Run(busy loop) = %v, want an *ExitError naming the CPU limit", err)
	}
}

func TestMemoryLimit(t *testing.T) {
	r := newRunner(t, python.Options{Memory: 256 << 20})
	_, err := run(t, r, "x = bytearray(1 << 30)")
	var exit *python.ExitError
	if !errors.As(err, &exit) || exit.Limit != "memory limit of 268435456 bytes" || !strings.HasSuffix(err.Error(), ": MemoryError") {
		t.Fatalf("Run(1 GiB) = %v, want an *ExitError naming the memory limit", err)
	}
}

func TestFileSizeLimit(t *testing.T) {
	r := newRunner(t, python.Options{FileSize: 1 << 20})
	_, err := run(t, r, `open("big", "wb").write(b"x" * (2 << 20))`)
	var exit *python.ExitError
	if !errors.As(err, &exit) || exit.Limit != "file size limit of 1048576 bytes" {
		t.Fatalf("Run(2 MiB file) = %v, want an *ExitError naming the file size limit", err)
	}
}

func TestLimitsCannotBeRaised(t *testing.T) {
	r := newRunner(t, python.Options{})
	for _, res := range []string{"RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE"} {
		_, err := run(t, r, fmt.Sprintf("import resource; resource.setrlimit(resource.%s, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))", res))
		if err == nil || !strings.Contains(err.Error(), "not allowed to raise maximum limit") {
			t.Errorf("raising %s: %v, want it refused", res, err)
		}
	}
}

func TestOpenFilesLimit(t *testing.T) {
	r := newRunner(t, python.Options{OpenFiles: 16})
	_, err := run(t, r, `fs = [open("f%d" % i, "w") for i in range(32)]`)
	if err == nil || !strings.Contains(err.Error(), "Too many open files") {
		t.Fatalf("Run(32 files) = %v, want 'Too many open files'", err)
	}
}

func TestOutputCap(t *testing.T) {
	r := newRunner(t, python.Options{Output: 1000})
	// The streams are read concurrently: either may take the budget first.
	out, err := run(t, r, "import sys\nprint('e' * 99, file=sys.stderr)\nfor _ in range(30): print('o' * 99)")
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !out.Truncated {
		t.Errorf("Truncated = false for 3100 bytes over a 1000 byte cap")
	}
	const marker = "\n…[output truncated]\n"
	kept := len(strings.TrimSuffix(out.Stdout, marker)) + len(strings.TrimSuffix(out.Stderr, marker))
	if kept != 1000 {
		t.Errorf("kept %d bytes of output, want the cap, 1000", kept)
	}
	if !strings.HasSuffix(out.Stdout, marker) {
		t.Errorf("stdout %q does not end with the truncation marker", out.Stdout)
	}
}

// TestNetwork checks what the runner says about itself, and with
// namespaces on, that a listener on the host's loopback is out of reach;
// with them off, the same connection works, which shows the check could
// fail.
func TestNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	connect := fmt.Sprintf(`import socket
try:
    socket.create_connection(("127.0.0.1", %d), timeout=5).close()
    print("connected")
except OSError as e:
    print("refused:", e)`, ln.Addr().(*net.TCPAddr).Port)

	off := newRunner(t, python.Options{NoNamespaces: true})
	if iso := off.Isolation(); iso.Namespaces || iso.Why != "namespaces turned off" {
		t.Errorf("NoNamespaces: isolation %+v", iso)
	}
	out, err := run(t, off, connect)
	if err != nil || out.Stdout != "connected\n" || out.Network != "host" {
		t.Fatalf("without namespaces: %+v, %v; want connected over the host network", out, err)
	}

	r := newRunner(t, python.Options{})
	iso := r.Isolation()
	t.Logf("isolation here: %s", iso)
	out, err = run(t, r, connect)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !iso.Namespaces {
		if iso.Why == "" || out.Network != "host" {
			t.Errorf("no namespaces: isolation %+v, network %q; want a reason and network host", iso, out.Network)
		}
		return
	}
	if out.Network != "none" || !strings.HasPrefix(out.Stdout, "refused:") {
		t.Errorf("with namespaces: network %q, stdout %q; want the host's loopback out of reach", out.Network, out.Stdout)
	}
}

func TestCancel(t *testing.T) {
	r := newRunner(t, python.Options{})
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("stopped by the test")
	go func() {
		time.Sleep(200 * time.Millisecond)
		cancel(stop)
	}()
	_, err := r.Run(ctx, []byte("import time; time.sleep(120)"))
	if !errors.Is(err, stop) {
		t.Fatalf("Run after cancel = %v, want the context's cause", err)
	}
}
