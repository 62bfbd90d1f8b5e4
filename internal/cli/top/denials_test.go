package top

import (
	"fmt"
	"strings"
	"testing"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// A denial stays in the denials-only view however many allows follow it
// (the reported bug: 256 later decisions pushed it out).
func TestDenialsOutliveLaterAllows(t *testing.T) {
	tr := newTracker(t0)
	tr.observeDecision(decision("job-denied", cortexv1.Decision_DECISION_DENY, "deny-sys-destroy", "sys.destroy"), 0)
	for i := range 3 * recentCap {
		tr.observeDecision(decision(fmt.Sprint("job-", i), cortexv1.Decision_DECISION_ALLOW, "allow-jobs", "job.echo"), 0)
	}
	m := step(t, NewModel("http://gw", nil, nil, t0), tickMsg{Now: t0, Stats: tr.snapshot(t0)}, press("d"))
	ds := m.visibleDecisions()
	if len(ds) != 1 || ds[0].GetJobId() != "job-denied" {
		t.Fatalf("denials only after %d allows: %d decisions, want job-denied", 3*recentCap, len(ds))
	}
	if s := screen(m); !strings.Contains(s, "denials only (1)") || !strings.Contains(s, "deny-sys-destroy") {
		t.Errorf("screen does not show the denial:\n%s", s)
	}
	// All decisions: still the newest recentCap, the denial gone from them.
	if m = step(t, m, press("d")); len(m.visibleDecisions()) != recentCap {
		t.Errorf("all decisions: %d, want %d", len(m.visibleDecisions()), recentCap)
	}
}

// The denials kept are the newest recentCap, in their own bounded list,
// newest first, whether allows come between them or not.
func TestDenialsBounded(t *testing.T) {
	tr := newTracker(t0)
	for i := range 5000 {
		tr.observeDecision(decision(fmt.Sprint("deny-", i), cortexv1.Decision_DECISION_DENY, "r", "t"), 0)
		tr.observeDecision(decision(fmt.Sprint("allow-", i), cortexv1.Decision_DECISION_ALLOW, "r", "t"), 0)
	}
	if len(tr.denials) > 2*recentCap || len(tr.decisions) > 2*recentCap {
		t.Errorf("kept %d denials, %d decisions", len(tr.denials), len(tr.decisions))
	}
	st := tr.snapshot(t0)
	if len(st.Denials) != recentCap || st.Denials[0].GetJobId() != "deny-4999" || st.Denials[recentCap-1].GetJobId() != fmt.Sprint("deny-", 5000-recentCap) {
		t.Fatalf("snapshot: %d denials, newest %s", len(st.Denials), st.Denials[0].GetJobId())
	}
	m := step(t, NewModel("http://gw", nil, nil, t0), tickMsg{Now: t0, Stats: st}, press("d"))
	if n := len(m.visibleDecisions()); n != recentCap {
		t.Errorf("denials only: %d, want %d (no duplicates of those among the recent decisions)", n, recentCap)
	}
}

// --once prints the denials seen while it listened even when more than
// recentCap allows came after them.
func TestOnceKeepsDenials(t *testing.T) {
	tr := newTracker(t0)
	tr.observeDecision(decision("job-denied", cortexv1.Decision_DECISION_DENY, "deny-sys-destroy", "sys.destroy"), 0)
	for i := range 2 * recentCap {
		tr.observeDecision(decision(fmt.Sprint("job-", i), cortexv1.Decision_DECISION_ALLOW, "allow-jobs", "job.echo"), 0)
	}
	ds := withDenials(tr.snapshot(t0))
	if len(ds) != recentCap+1 || ds[0].GetJobId() != fmt.Sprint("job-", 2*recentCap-1) || ds[recentCap].GetJobId() != "job-denied" {
		t.Errorf("once decisions: %d, first %s, last %s", len(ds), ds[0].GetJobId(), ds[len(ds)-1].GetJobId())
	}
}
