package cli_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/cortex-os/core/internal/cli"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/client"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// TestMain lets the test binary run as cortexctl, so that the scripts run
// cortexctl as real, separate processes (signals, exit codes, streams).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"cortexctl": func() {
			os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
		},
	})
}

const (
	// scriptTimeout bounds a whole script, background processes included.
	scriptTimeout = 2 * time.Minute
	// readyTimeout bounds wait-ready.
	readyTimeout = 10 * time.Second
	// jobTimeout bounds each job of jobs-on-worker.
	jobTimeout = 10 * time.Second
)

// TestScripts runs the top-level testdata/script/*.txtar. Each script has its own $WORK,
// with the context file, HOME and the config directory inside it.
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
			env.Setenv("CORTEX_CONTEXT_FILE", filepath.Join(env.WorkDir, "context.json"))
			env.Setenv("HOME", filepath.Join(env.WorkDir, "home"))
			env.Setenv("XDG_CONFIG_HOME", filepath.Join(env.WorkDir, "config"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"wait-ready":     cmdWaitReady,
			"ctx-env":        cmdCtxEnv,
			"jobs-on-worker": cmdJobsOnWorker,
			"exit-code":      cmdExitCode,
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
