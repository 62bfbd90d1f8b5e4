package cli_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"go.yaml.in/yaml/v3"

	"github.com/cortex-os/core/internal/cli"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/client"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
	"github.com/cortex-os/core/plugins/llm/llmtest"
)

// TestMain lets the test binary run as cortexctl, so that the scripts run
// cortexctl as real, separate processes (signals, exit codes, streams), and
// as expect-exit (see expectExit).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"cortexctl": func() {
			os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
		},
		"expect-exit": expectExit,
	})
}

// expect-exit [-stdout FILE] [-stderr FILE] N COMMAND [ARGS...] runs
// COMMAND, passes SIGINT and SIGTERM on to it, and exits 0 when COMMAND
// exits with status N (1 otherwise). It is for background commands, whose
// status testscript only sees as success or failure: `exec expect-exit 130
// cortexctl tail &tail&`, then `kill -INT tail` and `wait tail`. With
// -stdout or -stderr, that stream of COMMAND goes to FILE as it is written,
// so that wait-file can follow a command that is still running. With
// -closed-output, both streams of COMMAND are a pipe nobody reads, as when
// the reader of `cortexctl up | tee` has gone: each write to them fails.
func expectExit() {
	fs := flag.NewFlagSet("expect-exit", flag.ExitOnError)
	stdout := fs.String("stdout", "", "write the command's standard output to this file")
	stderr := fs.String("stderr", "", "write the command's standard error to this file")
	closed := fs.Bool("closed-output", false, "give the command a closed pipe as standard output and error")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() < 2 {
		fmt.Fprintln(os.Stderr, "usage: expect-exit [-stdout FILE] [-stderr FILE] [-closed-output] N COMMAND [ARGS...]")
		os.Exit(2)
	}
	want, err := strconv.Atoi(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "expect-exit: N must be a number, not %q\n", fs.Arg(0))
		os.Exit(2)
	}
	cmd := exec.Command(fs.Arg(1), fs.Args()[2:]...) //nolint:gosec // the script names the command to run
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	for _, redirect := range []struct {
		path   string
		stream *io.Writer
	}{{*stdout, &cmd.Stdout}, {*stderr, &cmd.Stderr}} {
		if redirect.path == "" {
			continue
		}
		f, err := os.Create(redirect.path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "expect-exit:", err)
			os.Exit(2)
		}
		defer f.Close()
		*redirect.stream = f
	}
	var unread *os.File
	if *closed {
		r, w, err := os.Pipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, "expect-exit:", err)
			os.Exit(2)
		}
		_ = r.Close()
		cmd.Stdout, cmd.Stderr, unread = w, w, w
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "expect-exit:", err)
		os.Exit(2)
	}
	if unread != nil {
		_ = unread.Close()
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	_ = cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != want {
		fmt.Fprintf(os.Stderr, "expect-exit: %s exited with status %d (%s), want %d\n", fs.Arg(1), got, cmd.ProcessState, want)
		os.Exit(1)
	}
	os.Exit(0)
}

const (
	// scriptTimeout bounds a whole script, background processes included.
	scriptTimeout = 2 * time.Minute
	// readyTimeout bounds wait-ready.
	readyTimeout = 10 * time.Second
	// jobTimeout bounds each job of jobs-on-worker, and wait-state.
	jobTimeout = 10 * time.Second
	// fileTimeout bounds wait-file and sync-events.
	fileTimeout = 10 * time.Second
	// pollEvery is how often the waiting commands look again.
	pollEvery = 25 * time.Millisecond
)

// TestScripts runs the top-level testdata/script/*.txtar. Each script has its own $WORK,
// with the contexts file, HOME and the config directory inside it.
//
// Under go test a command's stdout and stderr are pipes, never terminals:
// the scripts check the piped behaviour (no ANSI escapes, no spinner, the
// same JSON every time). Colours and the spinner on a terminal are tested in
// internal/cli/output.
func TestScripts(t *testing.T) {
	deadline := time.Now().Add(scriptTimeout)
	if d, ok := t.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("..", "..", "testdata", "script"),
		RequireExplicitExec: true,
		Deadline:            deadline,
		Setup: func(env *testscript.Env) error {
			env.Setenv("CORTEX_CONTEXT_FILE", filepath.Join(env.WorkDir, "contexts.json"))
			env.Setenv("HOME", filepath.Join(env.WorkDir, "home"))
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(env.WorkDir, "config"))
			// Under -race every process sleeps 1s before it exits
			// (atexit_sleep_ms); the scripts start a few hundred.
			env.Setenv("GORACE", strings.TrimSpace("atexit_sleep_ms=0 "+os.Getenv("GORACE")))
			// The interpreter of python.txtar: the system's, which a
			// worker running as root can hand to nobody.
			env.Setenv("PYTHON", "/usr/bin/python3")
			env.Values[fakeLLMKey{}] = &fakeLLM{}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"wait-ready":     cmdWaitReady,
			"ctx-env":        cmdCtxEnv,
			"jobs-on-worker": cmdJobsOnWorker,
			"exit-code":      cmdExitCode,
			"stdout-env":     cmdStdoutEnv,
			"wait-state":     cmdWaitState,
			"wait-file":      cmdWaitFile,
			"wait-stdout":    cmdWaitStdout,
			"wait-record":    cmdWaitRecord,
			"sync-events":    cmdSyncEvents,
			"bigfile":        cmdBigfile,
			"fake-llm":       cmdFakeLLM,
		},
	})
}

// loadContext reads the script's context file ($CORTEX_CONTEXT_FILE). It
// decodes the file itself rather than calling client.LoadContext, which
// reads the process environment: scripts run in parallel, each with its own
// file.
func loadContext(ts *testscript.TestScript) (client.Context, error) {
	var c client.Context
	path := ts.Getenv("CORTEX_CONTEXT_FILE")
	if path == "" {
		return c, errors.New("CORTEX_CONTEXT_FILE is not set")
	}
	cfg, err := client.ReadConfig(path)
	if err != nil {
		return c, err
	}
	if c, err = cfg.Lookup(cfg.Current); err != nil {
		return c, err
	}
	if c.Server == "" {
		return c, fmt.Errorf("context %s has no server", path)
	}
	return c, nil
}

// wait-ready polls until the context file exists and the gateway it names
// answers 200 on /healthz, for at most readyTimeout.
func cmdWaitReady(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: wait-ready")
	}
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		c, err := loadContext(ts)
		if err == nil {
			var base string
			if base, err = client.NormalizeServer(c.Server); err == nil {
				err = healthy(hc, base+"/healthz")
				if err == nil {
					ts.Logf("gateway %s is ready", base)
					return
				}
			}
		}
		last = err
		if time.Now().After(deadline) {
			ts.Fatalf("stack not ready after %s: %v", readyTimeout, last)
		}
		<-tick.C
	}
}

func healthy(hc *http.Client, url string) error {
	res, err := hc.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	return nil
}

// ctx-env sets NATS_URL, REDIS_URL, SERVER and API_KEY from the context file.
func cmdCtxEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: ctx-env")
	}
	c, err := loadContext(ts)
	ts.Check(err)
	for k, v := range map[string]string{"NATS_URL": c.NATSURL, "REDIS_URL": c.RedisURL, "SERVER": c.Server, "API_KEY": c.APIKey} {
		if v == "" {
			ts.Fatalf("context has no value for %s", k)
		}
		ts.Setenv(k, v)
	}
}

// jobs-on-worker N WORKER_ID submits up to N job.echo jobs one after
// another and passes once one of them was completed by WORKER_ID. Every job
// must complete.
func cmdJobsOnWorker(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: jobs-on-worker N WORKER_ID")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 {
		ts.Fatalf("jobs-on-worker: N must be a positive number, not %q", args[0])
	}
	want := args[1]
	c, err := loadContext(ts)
	ts.Check(err)
	gw, err := client.New(c.Server, c.APIKey)
	ts.Check(err)
	seen := map[string]int{}
	for i := 1; i <= n; i++ {
		st, err := runEcho(gw, fmt.Sprintf("job %d", i))
		if err != nil {
			ts.Fatalf("job %d of %d: %v", i, n, err)
		}
		seen[st.GetWorkerId()]++
		if st.GetWorkerId() == want {
			ts.Logf("job %d of %d (%s) completed by %s; workers so far: %v", i, n, st.GetJobId(), want, seen)
			return
		}
	}
	ts.Fatalf("none of %d jobs was completed by %s; completed by: %v", n, want, seen)
}

// runEcho submits one job.echo job and waits for it to complete.
func runEcho(gw cortexv1connect.GatewayServiceClient, prompt string) (*cortexv1.Job, error) {
	ctx, cancel := context.WithTimeout(context.Background(), jobTimeout)
	defer cancel()
	res, err := gw.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: prompt})
	if err != nil {
		return nil, fmt.Errorf("submit: %w", err)
	}
	st, err := job.WaitForEnd(ctx, gw, res.GetJobId(), nil)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", res.GetJobId(), err)
	}
	if st.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		return nil, fmt.Errorf("job %s ended %s (worker %q, rule %q, reason %q), want COMPLETED",
			st.GetJobId(), job.StateName(st.GetState()), st.GetWorkerId(), st.GetSafety().GetRule(), st.GetReason())
	}
	out, err := gw.GetResult(ctx, &cortexv1.GetResultRequest{JobId: st.GetJobId()})
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", st.GetJobId(), err)
	}
	if out.GetText() != prompt {
		return nil, fmt.Errorf("job %s: result %q, want %q", st.GetJobId(), out.GetText(), prompt)
	}
	return st, nil
}

// exit-code N COMMAND [ARGS...] runs COMMAND and checks that it exits with
// status N; its stdout and stderr are then checked as after exec.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exit-code N COMMAND [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exit-code: N must be a number, not %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("%s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

// stdout-env NAME [REGEXP] sets $NAME to the last command's standard output
// (which must be one line, such as a job id), or with REGEXP to what the
// first group of REGEXP (else all of it) matched in that output.
func cmdStdoutEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: stdout-env NAME [REGEXP]")
	}
	out := ts.ReadFile("stdout")
	if len(args) == 1 {
		v := strings.TrimSuffix(out, "\n")
		if v == "" || strings.Contains(v, "\n") {
			ts.Fatalf("stdout-env: stdout is not one line: %q", out)
		}
		ts.Setenv(args[0], v)
		return
	}
	v, ok := firstMatch(ts, args[1], out)
	if !ok {
		ts.Fatalf("stdout-env: no match for %q in stdout", args[1])
	}
	ts.Setenv(args[0], v)
}

// firstMatch returns the first group of pattern (else the whole match) in
// s; like stdout, ^ and $ match at line ends.
func firstMatch(ts *testscript.TestScript, pattern, s string) (string, bool) {
	re, err := regexp.Compile("(?m)" + pattern)
	ts.Check(err)
	m := re.FindStringSubmatch(s)
	if m == nil {
		return "", false
	}
	return m[len(m)-1], true
}

// gateway returns a client of the gateway the script's commands use:
// $CORTEX_SERVER and $CORTEX_API_KEY when the script set them, else the
// current context's.
func gateway(ts *testscript.TestScript) cortexv1connect.GatewayServiceClient {
	server, key := ts.Getenv("CORTEX_SERVER"), ts.Getenv("CORTEX_API_KEY")
	if server == "" || key == "" {
		c, err := loadContext(ts)
		ts.Check(err)
		server, key = cmp.Or(server, c.Server), cmp.Or(key, c.APIKey)
	}
	gw, err := client.New(server, key)
	ts.Check(err)
	return gw
}

// wait-state JOB_ID STATE polls the job (see gateway) until it is in STATE
// (RUNNING, PENDING, ...), for at most jobTimeout. It fails at once if the
// job finishes in another state.
func cmdWaitState(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: wait-state JOB_ID STATE")
	}
	v, ok := cortexv1.JobState_value["JOB_STATE_"+strings.ToUpper(args[1])]
	if !ok {
		ts.Fatalf("wait-state: no state %q", args[1])
	}
	want := cortexv1.JobState(v)
	gw := gateway(ts)
	ctx, cancel := context.WithTimeout(context.Background(), jobTimeout)
	defer cancel()
	for {
		res, err := gw.GetJob(ctx, &cortexv1.GetJobRequest{JobId: args[0]})
		if err != nil {
			ts.Fatalf("wait-state %s %s: %v", args[0], args[1], err)
		}
		got := res.GetJob().GetState()
		switch {
		case got == want:
			return
		case job.Terminal(got):
			ts.Fatalf("wait-state: job %s ended %s (%s), want %s", args[0], job.StateName(got), res.GetJob().GetReason(), args[1])
		}
		select {
		case <-ctx.Done():
			ts.Fatalf("wait-state: job %s still %s after %s, want %s", args[0], job.StateName(got), jobTimeout, args[1])
		case <-time.After(pollEvery):
		}
	}
}

// wait-file FILE REGEXP [NAME] polls FILE (written by a background command,
// see expect-exit -stdout) until REGEXP matches its content, for at most
// fileTimeout; with NAME, it sets $NAME as stdout-env does.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: wait-file FILE REGEXP [NAME]")
	}
	deadline := time.Now().Add(fileTimeout)
	for {
		b, _ := os.ReadFile(ts.MkAbs(args[0]))
		if v, ok := firstMatch(ts, args[1], string(b)); ok {
			if len(args) == 3 {
				ts.Setenv(args[2], v)
			}
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("wait-file: no match for %q in %s after %s; it holds:\n%s", args[1], args[0], fileTimeout, b)
		}
		time.Sleep(pollEvery)
	}
}

// wait-stdout REGEXP COMMAND [ARGS...] runs COMMAND (as exec does) again
// and again, every pollEvery*4, until it succeeds and REGEXP matches its
// standard output, for at most fileTimeout; stdout and stderr are then the
// last run's. It is for state that changes by itself a moment after the
// script acts, such as a policy file the safety kernel reloads once it has
// changed on disk: wait-stdout '^Policy: +new ' cortexctl policy show.
func cmdWaitStdout(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: wait-stdout REGEXP COMMAND [ARGS...]")
	}
	re, err := regexp.Compile("(?m)" + args[0])
	ts.Check(err)
	deadline := time.Now().Add(fileTimeout)
	for {
		err := ts.Exec(args[1], args[2:]...)
		out := ts.ReadFile("stdout")
		if err == nil && re.MatchString(out) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("wait-stdout: no match for %q in the output of %s after %s (last error: %v); it printed:\n%s", args[0], args[1], fileTimeout, err, out)
		}
		time.Sleep(4 * pollEvery)
	}
}

// wait-record json|yaml FILE [KEY=VALUE...] polls FILE (the stdout of a
// stream: tail, jobs watch, jobs list --watch) until all of it reads as a
// stream of records in that format, JSON Lines (one object a line) or YAML
// documents that each start with "---", and one record has every top-level
// KEY with VALUE (compared as text), for at most fileTimeout.
func cmdWaitRecord(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || args[0] != "json" && args[0] != "yaml" {
		ts.Fatalf("usage: wait-record json|yaml FILE [KEY=VALUE...]")
	}
	want, err := job.ParseLabels(args[2:])
	ts.Check(err)
	deadline := time.Now().Add(fileTimeout)
	for {
		b, _ := os.ReadFile(ts.MkAbs(args[1]))
		recs, err := streamRecords(args[0], string(b))
		if err == nil {
			for _, rec := range recs {
				if hasFields(rec, want) {
					ts.Logf("wait-record: %d records in %s", len(recs), args[1])
					return
				}
			}
			err = fmt.Errorf("none of its %d records has %v", len(recs), want)
		}
		if time.Now().After(deadline) {
			ts.Fatalf("wait-record: %s after %s: %v; it holds:\n%s", args[1], fileTimeout, err, b)
		}
		time.Sleep(pollEvery)
	}
}

// streamRecords reads s as a stream of records in format: JSON Lines, or
// YAML documents that each start with "---".
func streamRecords(format, s string) ([]map[string]any, error) {
	var recs []map[string]any
	if format == "json" {
		if s != "" && !strings.HasSuffix(s, "\n") {
			return nil, errors.New("the last line is not whole")
		}
		for i, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return nil, fmt.Errorf("line %d is not one JSON object: %w: %q", i+1, err, line)
			}
			if rec == nil {
				return nil, fmt.Errorf("line %d is not a JSON object: %q", i+1, line)
			}
			recs = append(recs, rec)
		}
		return recs, nil
	}
	dec := yaml.NewDecoder(strings.NewReader(s))
	for {
		var rec map[string]any
		err := dec.Decode(&rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("yaml document %d: %w", len(recs)+1, err)
		}
		if rec == nil {
			return nil, fmt.Errorf("yaml document %d is empty", len(recs)+1)
		}
		recs = append(recs, rec)
	}
	if n := strings.Count("\n"+s, "\n---\n"); n != len(recs) || !strings.HasPrefix(s, "---\n") {
		return nil, fmt.Errorf("%d yaml documents, %d of them starting with ---", len(recs), n)
	}
	return recs, nil
}

// hasFields reports whether rec has every key of want, with its value.
func hasFields(rec map[string]any, want map[string]string) bool {
	for k, v := range want {
		got, ok := rec[k]
		if !ok || fmt.Sprint(got) != v {
			return false
		}
	}
	return true
}

// sync-events FILE TOPIC [KEY=VALUE...] makes sure that a background event
// stream (tail, jobs list --watch) writing to FILE is live: every 250ms it
// submits a probe job on TOPIC with the labels and the prompt "0s" (which
// job.echo echoes and job.sleep sleeps for; see gateway for where it goes)
// until one of the probes' ids shows in FILE, for at most fileTimeout.
// Choose TOPIC and labels that the stream's filter lets through; the
// probes stay in its output.
func cmdSyncEvents(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: sync-events FILE TOPIC [KEY=VALUE...]")
	}
	labels, err := job.ParseLabels(args[2:])
	ts.Check(err)
	gw := gateway(ts)
	ctx, cancel := context.WithTimeout(context.Background(), fileTimeout)
	defer cancel()
	var ids []string
	for {
		res, err := gw.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: args[1], Prompt: "0s", Labels: labels})
		if err != nil {
			ts.Fatalf("sync-events: submit a probe: %v", err)
		}
		ids = append(ids, res.GetJobId())
		for range 10 {
			b, _ := os.ReadFile(ts.MkAbs(args[0]))
			for _, id := range ids {
				if strings.Contains(string(b), id) {
					ts.Logf("sync-events: probe %s seen in %s after %d probes", id, args[0], len(ids))
					return
				}
			}
			select {
			case <-ctx.Done():
				ts.Fatalf("sync-events: none of %d probes showed in %s within %s; it holds:\n%s", len(ids), args[0], fileTimeout, b)
			case <-time.After(pollEvery):
			}
		}
	}
}

// bigfile FILE SIZE writes SIZE bytes of "a" to FILE, for inputs too large
// to spell out in a script.
func cmdBigfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: bigfile FILE SIZE")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 0 {
		ts.Fatalf("bigfile: SIZE must be a number of bytes, not %q", args[1])
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(strings.Repeat("a", n)), 0o600))
}

// fakeLLM holds a script's fake OpenAI-compatible upstream.
type fakeLLM struct{ s *llmtest.Server }

type fakeLLMKey struct{}

// fake-llm start NAME KEY runs a fake OpenAI-compatible upstream (see
// llmtest) in the test process, wanting API key KEY, and sets $NAME to its
// base URL; it stops with the script. fake-llm hold makes the streams that
// start next wait before each word, fake-llm step lets one word out,
// fake-llm release lets them go on, and fake-llm fail STATUS
// [RETRY_AFTER] answers the next call with STATUS.
func cmdFakeLLM(ts *testscript.TestScript, neg bool, args []string) {
	f, _ := ts.Value(fakeLLMKey{}).(*fakeLLM)
	if neg || len(args) == 0 || f == nil {
		ts.Fatalf("usage: fake-llm start NAME KEY | hold | step | release | fail STATUS [RETRY_AFTER]")
	}
	if args[0] != "start" && f.s == nil {
		ts.Fatalf("fake-llm %s: run fake-llm start first", args[0])
	}
	switch {
	case args[0] == "start" && len(args) == 3:
		f.s = llmtest.NewServer(llmtest.Options{Key: args[2]})
		ts.Defer(f.s.Close)
		ts.Setenv(args[1], f.s.URL)
	case args[0] == "hold" && len(args) == 1:
		f.s.Hold()
	case args[0] == "step" && len(args) == 1:
		f.s.Step()
	case args[0] == "release" && len(args) == 1:
		f.s.Release()
	case args[0] == "fail" && (len(args) == 2 || len(args) == 3):
		status, err := strconv.Atoi(args[1])
		if err != nil {
			ts.Fatalf("fake-llm fail: STATUS must be a number, not %q", args[1])
		}
		fault := llmtest.Fault{Status: status}
		if len(args) == 3 {
			fault.RetryAfter = args[2]
		}
		f.s.Fail(fault)
	default:
		ts.Fatalf("usage: fake-llm start NAME KEY | hold | step | release | fail STATUS [RETRY_AFTER]")
	}
}
