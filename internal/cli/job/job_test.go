package job

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// parseSubmit runs submit's flag parsing and returns the request it builds.
func parseSubmit(t *testing.T, stdin string, args ...string) (*SubmitOptions, *cortexv1.SubmitJobRequest, error) {
	t.Helper()
	var got *SubmitOptions
	f := &cmdutil.Factory{In: strings.NewReader(stdin), Out: new(bytes.Buffer), ErrOut: new(bytes.Buffer)}
	cmd := NewCmdSubmit(f, func(_ context.Context, o *SubmitOptions) error { got = o; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	if err := cmd.Execute(); err != nil {
		return nil, nil, err
	}
	req, err := got.request()
	return got, req, err
}

func TestSubmitFlags(t *testing.T) {
	o, req, err := parseSubmit(t, "", "-t", "job.echo", "--prompt", "hi", "-l", "a=1", "--label", "b=2", "--wait",
		"--wait-timeout", "3s", "--priority", "7", "--timeout", "1m", "--max-attempts", "3", "--idempotency-key", "k1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if !o.Wait || o.WaitTimeout != 3*time.Second || o.Output != output.JSON {
		t.Fatalf("options %+v", o)
	}
	if req.GetTopic() != "job.echo" || req.GetPrompt() != "hi" || !reflect.DeepEqual(req.GetLabels(), map[string]string{"a": "1", "b": "2"}) ||
		req.GetPriority() != 7 || req.GetTimeout().AsDuration() != time.Minute || req.GetMaxAttempts() != 3 || req.GetIdempotencyKey() != "k1" {
		t.Fatalf("request %v", req)
	}
}

func TestSubmitLeavesUnsetOptionsToTheServer(t *testing.T) {
	_, req, err := parseSubmit(t, "", "-t", "job.echo", "-p", "hi")
	if err != nil {
		t.Fatal(err)
	}
	if req.Priority != nil || req.MaxAttempts != nil || req.Timeout != nil || req.Payload != nil {
		t.Fatalf("request sets options that were not given: %v", req)
	}
}

func TestSubmitInputSources(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "prompt.txt")
	bin := filepath.Join(dir, "blob.bin")
	if err := os.WriteFile(text, []byte("from a file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte{0xff, 0xfe, 0}, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		stdin   string
		args    []string
		prompt  string
		payload []byte
	}{
		"dash":        {"from stdin", []string{"-t", "job.echo", "-"}, "from stdin", nil},
		"file dash":   {"from stdin", []string{"-t", "job.echo", "--prompt-file", "-"}, "from stdin", nil},
		"file":        {"", []string{"-t", "job.echo", "-f", text}, "from a file\n", nil},
		"binary file": {"", []string{"-t", "job.echo", "-f", bin}, "", []byte{0xff, 0xfe, 0}},
	} {
		_, req, err := parseSubmit(t, tc.stdin, tc.args...)
		if err != nil || req.GetPrompt() != tc.prompt || !bytes.Equal(req.GetPayload(), tc.payload) {
			t.Errorf("%s: request %v, %v; want prompt %q payload %v", name, req, err, tc.prompt, tc.payload)
		}
	}
}

func TestSubmitUsageErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"no topic":          {"-p", "hi"},
		"two inputs":        {"-t", "job.echo", "-p", "hi", "-"},
		"prompt and file":   {"-t", "job.echo", "-p", "hi", "-f", "x"},
		"stray argument":    {"-t", "job.echo", "hello"},
		"bad label":         {"-t", "job.echo", "-l", "novalue"},
		"missing file":      {"-t", "job.echo", "-f", "/nonexistent/prompt"},
		"zero timeout":      {"-t", "job.echo", "--timeout", "0s"},
		"bad output format": {"-t", "job.echo", "-o", "xml"},
	} {
		if _, _, err := parseSubmit(t, "", args...); err == nil {
			t.Errorf("%s: accepted %v", name, args)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels([]string{"team=ml", "empty=", "eq=a=b"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"team": "ml", "empty": "", "eq": "a=b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseLabels = %v, want %v", got, want)
	}
	for _, bad := range []string{"noequals", "=v", "k=\xff", "\xfe=v"} {
		if _, err := ParseLabels([]string{bad}); err == nil {
			t.Errorf("ParseLabels(%q) accepted it", bad)
		}
	}
}

func FuzzParseLabels(f *testing.F) {
	f.Add("team=ml")
	f.Add("=")
	f.Fuzz(func(t *testing.T, s string) {
		labels, err := ParseLabels([]string{s})
		if err == nil && len(labels) != 1 {
			t.Fatalf("ParseLabels(%q) = %v without error", s, labels)
		}
	})
}

func TestParseStates(t *testing.T) {
	got, err := parseStates([]string{"denied", "JOB_STATE_FAILED", "Timeout"})
	want := []cortexv1.JobState{cortexv1.JobState_JOB_STATE_DENIED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_TIMEOUT}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("parseStates = %v, %v", got, err)
	}
	for _, bad := range []string{"", "unspecified", "done"} {
		if _, err := parseStates([]string{bad}); err == nil || !strings.Contains(err.Error(), "CANCELLED") {
			t.Errorf("parseStates(%q) = %v, want an error listing the states", bad, err)
		}
	}
}

func FuzzParseStates(f *testing.F) {
	f.Add("running")
	f.Fuzz(func(t *testing.T, s string) {
		states, err := parseStates([]string{s})
		if err == nil && (len(states) != 1 || states[0] == cortexv1.JobState_JOB_STATE_UNSPECIFIED) {
			t.Fatalf("parseStates(%q) = %v", s, states)
		}
	})
}

func TestEndError(t *testing.T) {
	if err := endError(&cortexv1.Job{State: cortexv1.JobState_JOB_STATE_COMPLETED}); err != nil {
		t.Fatalf("COMPLETED: %v", err)
	}
	denied := &cortexv1.Job{JobId: "j", State: cortexv1.JobState_JOB_STATE_DENIED, Reason: "no", Safety: &cortexv1.SafetyVerdict{Rule: "deny-x"}}
	var nd *cmdutil.JobNotDoneError
	if err := endError(denied); !errors.As(err, &nd) || err.Error() != "job j ended DENIED by rule deny-x: no" {
		t.Fatalf("DENIED: %v", err)
	}
	timeout := &cortexv1.Job{JobId: "j", State: cortexv1.JobState_JOB_STATE_TIMEOUT, Reason: "late", Safety: &cortexv1.SafetyVerdict{Rule: "allow-jobs"}}
	if err := endError(timeout); err == nil || err.Error() != "job j ended TIMEOUT: late" {
		t.Fatalf("TIMEOUT: %v", err)
	}
}

func TestEventLineAndRows(t *testing.T) {
	p := &output.Printer{Format: output.Wide}
	j := &cortexv1.Job{JobId: "j1", Topic: "sys.destroy", State: cortexv1.JobState_JOB_STATE_DENIED, Reason: "never", Attempt: 1,
		Safety: &cortexv1.SafetyVerdict{Rule: "deny-sys-destroy"}, Labels: map[string]string{"b": "2", "a": "1"}}
	if line := eventLine(p, j); !strings.Contains(line, "j1  sys.destroy") || !strings.HasSuffix(line, "DENIED  deny-sys-destroy: never") {
		t.Errorf("event line %q", line)
	}
	row := jobRow(p, j, time.Now())
	if len(row) != len(jobHeader(true)) || row[7] != "a=1,b=2" || row[8] != "deny-sys-destroy: never" || row[5] != "-" {
		t.Errorf("wide row %q", row)
	}
}

// TestSubmitHelpShowsNoOwnDefaults: --priority, --timeout and
// --max-attempts default to the pool's when not given, so their help
// says so and nothing else (cobra adds "(default N)" for a flag whose own
// default is not zero); an explicit value, 1 included, is sent as given.
func TestSubmitHelpShowsNoOwnDefaults(t *testing.T) {
	cmd := NewCmdSubmit(&cmdutil.Factory{}, nil)
	for _, line := range strings.Split(cmd.Flags().FlagUsages(), "\n") {
		for _, name := range []string{"--priority", "--timeout", "--max-attempts"} {
			if strings.Contains(line, name+" ") && (!strings.Contains(line, "default: the pool's") || strings.Count(line, "default") != 1) {
				t.Errorf("help of %s: %q, want only the pool's default", name, line)
			}
		}
	}
	for _, n := range []uint32{1, 3} {
		_, req, err := parseSubmit(t, "", "-t", "job.echo", "-p", "hi", "--max-attempts", fmt.Sprint(n))
		if err != nil || req.MaxAttempts == nil || req.GetMaxAttempts() != n {
			t.Errorf("--max-attempts %d: request %v, %v", n, req, err)
		}
	}
	if _, _, err := parseSubmit(t, "", "-t", "job.echo", "-p", "hi", "--max-attempts", "-1"); err == nil {
		t.Error("--max-attempts -1 accepted")
	}
}

// TestDetailTransitionsCountFromCreation: the store keeps the last time a
// job entered each state, so after a retry the first transition listed is
// the last attempt's PENDING; the offsets still count from the submit.
func TestDetailTransitionsCountFromCreation(t *testing.T) {
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(created.Add(d)) }
	j := &cortexv1.Job{JobId: "j1", Topic: "job.echo", State: cortexv1.JobState_JOB_STATE_COMPLETED, Attempt: 2, MaxAttempts: 2,
		CreatedAt: at(0),
		Transitions: []*cortexv1.JobTransition{
			{State: cortexv1.JobState_JOB_STATE_FAILED, At: at(2 * time.Second)},
			{State: cortexv1.JobState_JOB_STATE_PENDING, At: at(5 * time.Second)},
			{State: cortexv1.JobState_JOB_STATE_RUNNING, At: at(5*time.Second + 250*time.Millisecond)},
			{State: cortexv1.JobState_JOB_STATE_COMPLETED, At: at(7 * time.Second)},
		},
		Attempts: []*cortexv1.AttemptRecord{{Attempt: 1, State: cortexv1.JobState_JOB_STATE_FAILED, EndedAt: at(2 * time.Second)}},
	}
	var b bytes.Buffer
	printDetail(&b, &output.Printer{}, j, nil, created.Add(time.Minute))
	out := b.String()
	for state, offset := range map[string]string{"FAILED": "+2s", "PENDING": "+5s", "RUNNING": "+5.25s", "COMPLETED": "+7s"} {
		if !containsLine(out, state, offset) {
			t.Errorf("transition %s: want offset %s since creation in\n%s", state, offset, out)
		}
	}
	if !strings.Contains(out, "last entered each state") {
		t.Errorf("the transitions' header does not say they are the last entries:\n%s", out)
	}

	// Without a creation time, the offsets count from the first transition.
	j.CreatedAt = nil
	b.Reset()
	printDetail(&b, &output.Printer{}, j, nil, created.Add(time.Minute))
	if out := b.String(); !containsLine(out, "FAILED", "+0s") || !containsLine(out, "COMPLETED", "+5s") {
		t.Errorf("no creation time: want offsets from the first transition in\n%s", b.String())
	}
}

// containsLine reports whether out has a transition line for state ending
// with offset.
func containsLine(out, state, offset string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == state && f[2] == offset {
			return true
		}
	}
	return false
}
