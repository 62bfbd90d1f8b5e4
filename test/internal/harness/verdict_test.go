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
