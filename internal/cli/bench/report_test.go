package bench_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/bench"
	"github.com/cortex-os/core/internal/cli/cmdutil"
)

// The report says how the jobs that did not complete ended.
func TestReportSaysHowJobsEnded(t *testing.T) {
	r := &bench.Report{Jobs: 10, Completed: 7, NotDone: 3, Others: map[string]int{"DENIED": 2, "FAILED": 1},
		Elapsed: time.Second, Latencies: []time.Duration{time.Millisecond}}
	var out strings.Builder
	r.Print(&out)
	for _, want := range []string{"10 (7 completed, 3 did not complete)", "not done    2 DENIED, 1 FAILED (why: cortexctl jobs list --state denied --state failed -o wide)", "throughput  10 jobs/s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

// Latencies print with about four figures, whatever their size.
func TestReportRoundsLatencies(t *testing.T) {
	r := &bench.Report{Jobs: 4, Completed: 4, Elapsed: time.Second, Latencies: []time.Duration{
		3114321 * time.Nanosecond, 12345678 * time.Nanosecond, 456789012 * time.Nanosecond, 2437812345 * time.Nanosecond}}
	var out strings.Builder
	r.Print(&out)
	want := "latency     p50 12.35ms  p90 456.8ms  p99 456.8ms  max 2.438s  (submit to result)"
	if !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, out.String())
	}
}

// Each bad flag value is refused with its own reason, exit status 2, before
// anything is submitted; --rate Inf made a ticker panic.
func TestBenchRefusesBadFlags(t *testing.T) {
	for args, says := range map[string]string{
		"-n 0":                  "-n 0: submit at least 1 job",
		"-c 0":                  "-c 0: use at least 1 client",
		"--batch 5000":          "--batch 5000: a batch holds 1 to 1000 jobs",
		"--batch 10 --rate -1":  "--rate -1: give a number of jobs a second",
		"--batch 10 --rate Inf": "--rate +Inf: give a number of jobs a second",
		"--batch 10 --rate NaN": "--rate NaN: give a number of jobs a second",
		"--rate 100":            "--rate paces batched submits: add --batch",
	} {
		var out, errOut bytes.Buffer
		cmd := bench.NewCmdBench(&cmdutil.Factory{In: strings.NewReader(""), Out: &out, ErrOut: &errOut, Server: "http://127.0.0.1:1"})
		cmd.SetArgs(strings.Fields(args))
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		err := cmd.Execute()
		var usage *cmdutil.UsageError
		if !errors.As(err, &usage) || !strings.Contains(err.Error(), says) {
			t.Errorf("bench %s: %v, want a usage error saying %q", args, err, says)
		}
		if out.Len() > 0 || errOut.Len() > 0 {
			t.Errorf("bench %s wrote %q %q before refusing", args, out.String(), errOut.String())
		}
	}
}

// A run in which no job completed fails: its figures measure nothing.
func TestBenchFailsWhenNoJobCompleted(t *testing.T) {
	var out, errOut bytes.Buffer
	cmd := bench.NewCmdBench(&cmdutil.Factory{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs([]string{"--inprocess", "-n", "20", "-c", "2", "--topic", "sys.destroy"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "none of the 20 jobs completed") {
		t.Errorf("bench of a denied topic: %v, want an error saying none completed", err)
	}
	if !strings.Contains(out.String(), "0 completed") || !strings.Contains(out.String(), "DENIED") {
		t.Errorf("report:\n%s\nwant 0 completed and the DENIED count", out.String())
	}
}
