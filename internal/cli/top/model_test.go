package top

import (
	"connectrpc.com/connect/v2"
	"errors"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// step applies msgs to m with Update, as the program would.
func step(t *testing.T, m Model, msgs ...tea.Msg) Model {
	t.Helper()
	for _, msg := range msgs {
		nm, _ := m.Update(msg)
		m = nm.(Model)
	}
	return m
}

func press(s string) tea.KeyPressMsg {
	switch s {
	case "tab":
		return tea.KeyPressMsg{Code: tea.KeyTab}
	case "shift+tab":
		return tea.KeyPressMsg{Code: tea.KeyTab, Mod: tea.ModShift}
	case "enter":
		return tea.KeyPressMsg{Code: tea.KeyEnter}
	case "esc":
		return tea.KeyPressMsg{Code: tea.KeyEscape}
	case "down":
		return tea.KeyPressMsg{Code: tea.KeyDown}
	}
	r := []rune(s)[0]
	return tea.KeyPressMsg{Code: r, Text: s}
}

// listed is a model that has listed the fake cluster and had one tick.
func listed(t *testing.T) (Model, *fakeSource) {
	f := newFake()
	m := NewModel("http://gw", f, nil, t0)
	st := Stats{Decisions: []*cortexv1.SafetyDecisionEvent{
		decision("job-denied", cortexv1.Decision_DECISION_DENY, "deny-sys-destroy", "sys.destroy"),
		decision("job-done", cortexv1.Decision_DECISION_ALLOW, "allow-jobs", "job.echo"),
	}, InPerSec: 12, OutPerSec: 11, InSpark: []int{1, 5, 12}, Backlog: 4, Queue: map[string]int{"job.echo": 3},
		P99: map[string]time.Duration{"echo": 42 * time.Millisecond}}
	m = step(t, m, listedMsg{At: t0, Pools: f.pools, Workers: f.workers, Jobs: f.jobs}, tickMsg{Now: t0, Stats: st})
	return m, f
}

func screen(m Model) string { return ansi.Strip(m.Render()) }

func TestUpdateTabCycles(t *testing.T) {
	m, _ := listed(t)
	want := []Pane{PaneDecisions, PaneJobs, PaneWorkers, PanePools}
	for _, w := range want {
		m = step(t, m, press("tab"))
		if m.Focus != w {
			t.Fatalf("focus = %v, want %v", m.Focus, w)
		}
	}
	if m = step(t, m, press("shift+tab")); m.Focus != PaneWorkers {
		t.Errorf("shift+tab: focus = %v, want Workers", m.Focus)
	}
}

func TestUpdateCursorClamps(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("tab"), press("tab"), press("j"), press("down"), press("j"), press("j"))
	if got := m.Cursor[PaneJobs]; got != 2 {
		t.Errorf("cursor = %d, want 2 (3 jobs)", got)
	}
	m = step(t, m, press("k"), press("k"), press("k"))
	if got := m.Cursor[PaneJobs]; got != 0 {
		t.Errorf("cursor = %d, want 0", got)
	}
}

func TestUpdateFilter(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("/"), press("d"), press("e"), press("n"))
	if !m.Filtering || m.Filter != "den" {
		t.Fatalf("filtering=%v filter=%q", m.Filtering, m.Filter)
	}
	m = step(t, m, press("enter"))
	if m.Filtering || len(m.visibleJobs()) != 1 || m.visibleJobs()[0].GetJobId() != "job-denied" {
		t.Fatalf("after enter: filtering=%v jobs=%v", m.Filtering, m.visibleJobs())
	}
	m = step(t, m, press("esc"))
	if m.Filter != "" || len(m.visibleJobs()) != 3 {
		t.Errorf("esc did not clear the filter: %q", m.Filter)
	}
}

func TestUpdateDenialsOnly(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("d"))
	ds := m.visibleDecisions()
	if len(ds) != 1 || ds[0].GetVerdict().GetDecision() != cortexv1.Decision_DECISION_DENY {
		t.Fatalf("denials only: %v", ds)
	}
	if !strings.Contains(screen(m), "denials only (1)") {
		t.Errorf("title does not say denials only:\n%s", screen(m))
	}
}

func TestUpdatePauseKeepsStats(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("p"), tickMsg{Now: t0.Add(time.Second), Stats: Stats{InPerSec: 999}})
	if m.Stats.InPerSec != 12 || !m.Now.Equal(t0.Add(time.Second)) {
		t.Errorf("paused: in=%v now=%v", m.Stats.InPerSec, m.Now)
	}
	if !strings.Contains(screen(m), "[PAUSED]") {
		t.Error("no [PAUSED] in the header")
	}
	m = step(t, m, press("p"), tickMsg{Now: t0, Stats: Stats{InPerSec: 999}})
	if m.Stats.InPerSec != 999 {
		t.Error("unpaused, stats not taken")
	}
}

func TestUpdateDetail(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("tab"), press("tab"), press("j"))
	nm, cmd := m.Update(press("enter"))
	m = nm.(Model)
	if m.DetailID != "job-done" || cmd == nil {
		t.Fatalf("detail id %q, cmd %v", m.DetailID, cmd)
	}
	msg := cmd().(detailMsg)
	if msg.Job.GetJobId() != "job-done" || msg.Result.GetText() != "hello back" {
		t.Fatalf("detail: %v", msg)
	}
	m = step(t, m, msg)
	s := screen(m)
	for _, want := range []string{"Job job-done", "COMPLETED", "PENDING +0µs → COMPLETED +1s", "result   hello back", "allow-jobs"} {
		if !strings.Contains(s, want) {
			t.Errorf("detail lacks %q:\n%s", want, s)
		}
	}
	if m = step(t, m, press("esc")); m.DetailID != "" {
		t.Error("esc did not close the detail")
	}
}

func TestUpdateApproveConfirms(t *testing.T) {
	m, f := listed(t)
	m = step(t, m, press("tab"), press("tab"), press("j"), press("j"), press("a"))
	if m.Confirm == nil || m.Confirm.Verb != "approve" || m.Confirm.ID != "job-held" {
		t.Fatalf("confirm = %+v", m.Confirm)
	}
	if !strings.Contains(screen(m), "approve job job-held? [y/N]") {
		t.Errorf("no question on screen:\n%s", screen(m))
	}
	// Anything but y declines and calls nothing.
	nm, cmd := m.Update(press("n"))
	if m = nm.(Model); m.Confirm != nil || cmd != nil {
		t.Fatalf("n: confirm %+v cmd %v", m.Confirm, cmd)
	}
	m = step(t, m, press("a"))
	nm, cmd = m.Update(press("y"))
	m = nm.(Model)
	m = step(t, m, cmd())
	if len(f.actions) != 1 || f.actions[0] != "approve job-held" {
		t.Errorf("actions = %v", f.actions)
	}
	if !strings.Contains(m.Flash, "approve job-held: now PENDING") {
		t.Errorf("flash = %q", m.Flash)
	}
}

func TestUpdateActionsRefused(t *testing.T) {
	m, _ := listed(t)
	m = step(t, m, press("tab"), press("tab"), press("j"), press("a"))
	if m.Confirm != nil || !strings.Contains(m.Flash, "not awaiting approval") {
		t.Errorf("approve of a completed job: confirm %+v flash %q", m.Confirm, m.Flash)
	}
	m = step(t, m, press("c"))
	if m.Confirm != nil || !strings.Contains(m.Flash, "already ended COMPLETED") {
		t.Errorf("cancel of a completed job: flash %q", m.Flash)
	}
	m = step(t, m, press("D"))
	if m.Confirm != nil || !strings.Contains(m.Flash, "select a worker first") {
		t.Errorf("drain outside the workers pane: confirm %+v flash %q", m.Confirm, m.Flash)
	}
}

func TestUpdateDrainConfirms(t *testing.T) {
	m, f := listed(t)
	m = step(t, m, press("tab"), press("tab"), press("tab"), press("D"))
	if m.Confirm == nil || m.Confirm.Verb != "drain" || m.Confirm.ID == "" {
		t.Fatalf("confirm = %+v (focus %v)", m.Confirm, m.Focus)
	}
	id := m.Confirm.ID
	if !strings.Contains(screen(m), "drain worker "+id+"? [y/N]") {
		t.Errorf("no question on screen:\n%s", screen(m))
	}
	nm, cmd := m.Update(press("y"))
	m = step(t, nm.(Model), cmd())
	if len(f.actions) != 1 || f.actions[0] != "drain "+id {
		t.Errorf("actions = %v", f.actions)
	}
	if !strings.Contains(m.Flash, "worker "+id+" asked to drain") {
		t.Errorf("flash = %q", m.Flash)
	}
}

func TestUpdateUnreachableBacksOff(t *testing.T) {
	m := NewModel("http://gw", newFake(), nil, t0)
	down := errors.New("connection refused")
	var delays []time.Duration
	for i := range 6 {
		at := t0.Add(time.Duration(i) * time.Minute)
		nm, cmd := m.Update(listedMsg{At: at, Err: down})
		m = nm.(Model)
		if cmd == nil {
			t.Fatal("no retry scheduled")
		}
		delays = append(delays, m.RetryIn)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays = %v, want %v", delays, want)
		}
	}
	m = step(t, m, tickMsg{Now: t0.Add(5*time.Minute + 5*time.Second)})
	if s := screen(m); !strings.Contains(s, "cluster unreachable at http://gw: connection refused; retrying in 10s") {
		t.Errorf("no banner:\n%s", s)
	}
	m = step(t, m, listedMsg{At: t0, Pools: newFake().pools})
	if m.Err != nil || m.RetryIn != time.Second || strings.Contains(screen(m), "unreachable") {
		t.Errorf("reconnected but err=%v retry=%v", m.Err, m.RetryIn)
	}
}

func TestViewFitsTheTerminal(t *testing.T) {
	m, _ := listed(t)
	for _, size := range [][2]int{{80, 24}, {100, 30}, {200, 60}, {40, 10}} {
		m = step(t, m, tea.WindowSizeMsg{Width: size[0], Height: size[1]})
		lines := strings.Split(m.Render(), "\n")
		if len(lines) != size[1] {
			t.Errorf("%dx%d: %d lines", size[0], size[1], len(lines))
		}
		for i, l := range lines {
			if w := ansi.StringWidth(l); w > size[0] {
				t.Errorf("%dx%d: line %d is %d wide: %q", size[0], size[1], i, w, ansi.Strip(l))
			}
		}
	}
	m = step(t, m, tea.WindowSizeMsg{Width: 80, Height: 24})
	s := screen(m)
	for _, want := range []string{"in     12/s", "backlog 4", "echo", "6/8", "75%", "42ms", "DENY", "deny-sys-destroy",
		"AWAITING_APPROVAL", "echo-1", "2s ago", "oldest worker 1h00m", "q:quit"} {
		if !strings.Contains(s, want) {
			t.Errorf("80x24 lacks %q:\n%s", want, s)
		}
	}
}

func TestSparkline(t *testing.T) {
	if got := sparkline([]int{0, 1, 2, 4}, 6); got != "▁▁▁▂▄█" {
		t.Errorf("sparkline = %q", got)
	}
	if got := sparkline(nil, 3); got != "▁▁▁" {
		t.Errorf("empty sparkline = %q", got)
	}
}

// A gateway that answers with an error (its store is down) is not
// "unreachable", and a retry that is due says so rather than "in 0s".
func TestBannerTellsAnAnswerFromNoAnswer(t *testing.T) {
	m := NewModel("http://gw", newFake(), nil, t0)
	storeDown := connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again").WithRemote()
	m = step(t, m, listedMsg{At: t0, Err: storeDown})
	m = step(t, m, tickMsg{Now: t0.Add(m.RetryIn)})
	want := "the gateway answers but cannot serve, at http://gw: unavailable: the job store is unavailable, try again; retrying now"
	if s := screen(m); !strings.Contains(strings.Join(strings.Fields(s), " "), want) {
		t.Errorf("banner for an answered error, want %q:\n%s", want, s)
	}
}
