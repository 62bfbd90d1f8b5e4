package harness

import (
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/store"
)

// TestTwoOutcomes checks the check itself: a record that shows two
// outcomes is caught, one that shows one is not.
func TestTwoOutcomes(t *testing.T) {
	at := time.Unix(1700000000, 0)
	base := func() *store.Job {
		return &store.Job{ID: "j", State: store.Completed, Attempt: 1, MaxAttempts: 2, Version: 4,
			Entered:  map[store.State]time.Time{store.Pending: at, store.Dispatched: at, store.Running: at, store.Completed: at},
			Attempts: []store.AttemptRecord{{Attempt: 1, State: store.Completed}}}
	}
	cases := []struct {
		name   string
		change func(j *store.Job)
		want   string // "" for one outcome, else a part of the finding
	}{
		{"one outcome", func(*store.Job) {}, ""},
		{"a retry, then completed", func(j *store.Job) {
			j.Attempt = 2
			j.Attempts = []store.AttemptRecord{{Attempt: 1, State: store.Failed}, {Attempt: 2, State: store.Completed}}
		}, ""},
		{"entered two terminal states", func(j *store.Job) { j.Entered[store.Failed] = at }, "also entered COMPLETED and FAILED"},
		{"ran again after completing", func(j *store.Job) {
			j.State, j.Attempt = store.Failed, 2
			j.Attempts = []store.AttemptRecord{{Attempt: 1, State: store.Completed}, {Attempt: 2, State: store.Failed}}
		}, "attempt 1 had COMPLETED"},
		{"attempt recorded otherwise", func(j *store.Job) {
			j.Attempts = []store.AttemptRecord{{Attempt: 1, State: store.Timeout}}
		}, "recorded as TIMEOUT"},
		{"no attempt", func(j *store.Job) { j.Attempt = 0 }, "attempt 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := base()
			tc.change(j)
			got := twoOutcomes(j)
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Errorf("twoOutcomes = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRanWithoutAllow checks the fail-closed check itself: a job that ran
// needs an ALLOW verdict recorded for the attempt that ran.
func TestRanWithoutAllow(t *testing.T) {
	at := time.Unix(1700000000, 0)
	allow := store.Verdict{Decision: "ALLOW", Rule: "allow-jobs"}
	base := func() *store.Job {
		return &store.Job{ID: "j", State: store.Completed, Attempt: 1, WorkerID: "w1", Safety: allow,
			Entered: map[store.State]time.Time{store.Pending: at, store.Dispatched: at, store.Completed: at}}
	}
	cases := []struct {
		name   string
		change func(j *store.Job)
		ran    bool
		want   string // "" for allowed, else a part of the finding
	}{
		{"completed, allowed", func(*store.Job) {}, true, ""},
		{"running, allowed", func(j *store.Job) { j.State = store.Running }, true, ""},
		{"retried, then allowed again", func(j *store.Job) {
			j.Attempt = 2
			j.Attempts = []store.AttemptRecord{{Attempt: 1, State: store.Timeout, EndedAt: at.Add(-time.Second)}}
		}, true, ""},
		{"denied, never ran", func(j *store.Job) {
			j.State, j.WorkerID, j.Safety = store.Denied, "", store.Verdict{Decision: "DENY"}
		}, false, ""},
		{"completed without a verdict", func(j *store.Job) { j.Safety = store.Verdict{} }, true, `verdict is ""`},
		{"completed, denied", func(j *store.Job) { j.Safety = store.Verdict{Decision: "DENY", Rule: "fail-closed"} }, true, `verdict is "DENY"`},
		{"failed on its worker without a verdict", func(j *store.Job) {
			j.State, j.Safety = store.Failed, store.Verdict{}
		}, true, `verdict is ""`},
		{"never dispatched", func(j *store.Job) { delete(j.Entered, store.Dispatched) }, true, "never entered DISPATCHED"},
		{"the ALLOW is an earlier attempt's", func(j *store.Job) {
			j.Attempt = 2
			j.Attempts = []store.AttemptRecord{{Attempt: 1, State: store.Timeout, EndedAt: at.Add(time.Second)}}
		}, true, "its ALLOW is that attempt's"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := base()
			tc.change(j)
			if got := ranAttempt(j); got != tc.ran {
				t.Fatalf("ranAttempt = %v, want %v", got, tc.ran)
			}
			if !tc.ran {
				return
			}
			got := ranWithoutAllow(j)
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Errorf("ranWithoutAllow = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestProblems checks that a run fails for each broken promise beyond the
// accepted jobs' outcomes, saying which, and passes when none is broken.
func TestProblems(t *testing.T) {
	good := func() *Report { return &Report{submitted: 1000, accepted: 1000, ran: 990} }
	cases := []struct {
		name   string
		change func(r *Report)
		want   string // "" for no problem, else a part of the one problem
	}{
		{"all good", func(*Report) {}, ""},
		{"a few never accepted", func(r *Report) { r.accepted, r.neverAccepted = 950, 50 }, ""},
		{"nothing accepted", func(r *Report) {
			r.accepted, r.neverAccepted, r.callErrs = 0, 1000, map[string]int{"HTTP 404: not found": 10}
		}, "no job was accepted: the gateway answered none of the 1000 submitted jobs with a job id (call errors: HTTP 404"},
		{"few accepted", func(r *Report) { r.accepted, r.neverAccepted = 400, 600 }, "only 400 of 1000 submitted jobs (40.0%) were accepted"},
		{"lost", func(r *Report) { r.unknown = 2 }, "2 accepted jobs lost"},
		{"ran without ALLOW", func(r *Report) { r.ranWithoutAllow = 3 }, "not fail-closed: 3 of the 990 jobs that ran"},
		{"restart failed", func(r *Report) {
			r.KillFailures = []string{"kill -9 safety (pid 7); RESTART FAILED: safety exited while starting"}
		}, "did not work: kill -9 safety (pid 7); RESTART FAILED"},
		{"exited by itself", func(r *Report) {
			r.UnexpectedExits = []string{"worker2 (pid 9) exited by itself after 3.0s: exit status 2; its last lines:\n    panic: boom"}
		}, "exited without being killed: worker2 (pid 9) exited by itself after 3.0s: exit status 2; its last lines:\n    panic: boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.change(r)
			got := r.Problems()
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("Problems = %q, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want)):
				t.Errorf("Problems = %q, want one with %q", got, tc.want)
			}
		})
	}
}
