package top

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/charmbracelet/x/exp/teatest/v2"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// flow is a dashboard running on the fake cluster in a teatest program.
// The terminal output holds only what changed between frames, so the
// flows look at the screen the model renders, recorded as messages pass
// (tea.WithFilter sees the model before each message; ticks come every
// refreshEvery).
type flow struct {
	*teatest.TestModel
	screen atomic.Value
}

// start runs the dashboard on the fake cluster, its streams feeding a
// tracker as in the command.
func start(t *testing.T, f *fakeSource, w, h int) *flow {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := newTracker(time.Now())
	done := make(chan struct{})
	go func() { defer close(done); feed(ctx, f, tr, time.Now) }()
	t.Cleanup(func() { cancel(); <-done })
	fl := &flow{}
	fl.screen.Store("")
	record := tea.WithFilter(func(m tea.Model, msg tea.Msg) tea.Msg {
		fl.screen.Store(ansi.Strip(m.(Model).Render()))
		return msg
	})
	fl.TestModel = teatest.NewTestModel(t, NewModel("http://fake", f, tr.snapshot, t0),
		teatest.WithInitialTermSize(w, h), teatest.WithProgramOptions(record))
	return fl
}

func waitFor(t *testing.T, fl *flow, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := fl.screen.Load().(string)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(s, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("screen lacks %q after 5s:\n%s", want, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func final(t *testing.T, tm *flow) Model {
	t.Helper()
	if err := tm.Quit(); err != nil {
		t.Fatal(err)
	}
	return tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(Model)
}

func TestFlowNavigateAndDetail(t *testing.T) {
	f := newFake()
	tm := start(t, f, 80, 24)
	waitFor(t, tm, "Recent jobs (3)", "echo-1")
	tm.Send(press("tab"))
	tm.Send(press("tab"))
	tm.Send(press("j"))
	tm.Send(press("enter"))
	waitFor(t, tm, "Job job-done", "result   hello back")
	tm.Send(press("esc"))
	tm.Send(press("tab"))
	m := final(t, tm)
	if m.DetailID != "" || m.Focus != PaneWorkers || m.Cursor[PaneJobs] != 1 {
		t.Errorf("detail %q focus %v cursor %v", m.DetailID, m.Focus, m.Cursor)
	}
}

func TestFlowLiveDecisionsAndFilter(t *testing.T) {
	f := newFake()
	tm := start(t, f, 100, 30)
	waitFor(t, tm, "Pools (1)")
	f.decisions <- decision("job-x", cortexv1.Decision_DECISION_DENY, "deny-sys-destroy", "sys.destroy")
	f.decisions <- decision("job-y", cortexv1.Decision_DECISION_ALLOW, "allow-jobs", "job.echo")
	f.events <- job("job-new", cortexv1.JobState_JOB_STATE_PENDING, "job.echo", 0)
	waitFor(t, tm, "Safety decisions (2)", "deny-sys-destroy", "Recent jobs (4)")
	tm.Send(press("d"))
	waitFor(t, tm, "denials only (1)")
	tm.Type("/")
	tm.Type("held")
	tm.Send(press("enter"))
	waitFor(t, tm, "filter: held", "Recent jobs (1)")
	m := final(t, tm)
	if m.Filter != "held" || len(m.visibleJobs()) != 1 || !m.DenialsOnly {
		t.Errorf("filter %q jobs %d denials %v", m.Filter, len(m.visibleJobs()), m.DenialsOnly)
	}
}

func TestFlowResize(t *testing.T) {
	f := newFake()
	tm := start(t, f, 120, 40)
	waitFor(t, tm, "tab pane  ↑↓/jk move")
	tm.Send(tea.WindowSizeMsg{Width: 80, Height: 24})
	waitFor(t, tm, "tab:pane  ↑↓/jk:move")
	m := final(t, tm)
	if m.Width != 80 || m.Height != 24 {
		t.Fatalf("size %dx%d", m.Width, m.Height)
	}
	if n := strings.Count(m.Render(), "\n") + 1; n != 24 {
		t.Errorf("%d lines at 80x24", n)
	}
}

func TestFlowUnreachableThenBack(t *testing.T) {
	f := newFake()
	f.setDown(errorString("dial tcp 127.0.0.1:7470: connection refused"))
	tm := start(t, f, 80, 24)
	waitFor(t, tm, "cluster unreachable at http://fake: dial tcp 127.0.0.1:7470: connection refused;", "retrying in ")
	f.setDown(nil)
	waitFor(t, tm, "Pools (1)", "echo-1")
	m := final(t, tm)
	if m.Err != nil || !m.Connected {
		t.Errorf("err %v connected %v", m.Err, m.Connected)
	}
	if bytes.Contains([]byte(ansi.Strip(m.Render())), []byte("unreachable")) {
		t.Error("banner still shown")
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }
