package top

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

const (
	// refreshEvery is how often the screen takes the tracker's stats: the
	// dashboard redraws at most this often, however fast events come.
	refreshEvery = 250 * time.Millisecond
	// pollEvery is how often pools, workers and jobs are listed again.
	pollEvery = 2 * time.Second
	// minRetry and maxRetry bound the backoff against an unreachable gateway.
	minRetry = time.Second
	maxRetry = 15 * time.Second
	// listJobs is how many of the newest jobs each poll lists.
	listJobs = 50
	// maxJobs caps the recent jobs shown.
	maxJobs = 200
	// callTimeout bounds one request.
	callTimeout = 5 * time.Second
)

// Pane is one of the dashboard's lists.
type Pane int

// The panes, in tab order.
const (
	PanePools Pane = iota
	PaneDecisions
	PaneJobs
	PaneWorkers
	numPanes
)

func (p Pane) String() string {
	return [...]string{"Pools", "Safety decisions", "Recent jobs", "Workers"}[p]
}

// Messages. Each is a plain value, so Update can be tested on its own.
type (
	// tickMsg brings the tracker's stats, refreshEvery.
	tickMsg struct {
		Now   time.Time
		Stats Stats
	}
	// pollMsg asks for the lists again.
	pollMsg struct{}
	// listedMsg is the answer to a poll.
	listedMsg struct {
		At      time.Time
		Pools   []*cortexv1.PoolInfo
		Workers []*cortexv1.WorkerInfo
		Jobs    []*cortexv1.Job
		Err     error
	}
	// detailMsg is a job's record and, when it completed, its output.
	detailMsg struct {
		Job    *cortexv1.Job
		Result *cortexv1.GetResultResponse
		Err    error
	}
	// actionMsg is the gateway's answer to an action.
	actionMsg struct {
		Verb string
		ID   string
		Job  *cortexv1.Job
		Err  error
	}
)

// action is an action waiting for confirmation.
type action struct {
	Verb string // approve, reject, cancel, drain (ID is then a worker's)
	ID   string
}

// Model is the dashboard: what it shows and where the cursor is. Update
// returns a new Model and the commands to run; the commands do the I/O.
type Model struct {
	Server string
	src    Source
	// stats reads the tracker (nil in tests that send tickMsg themselves).
	stats func(time.Time) Stats

	Width, Height int
	Now           time.Time

	Focus  Pane
	Cursor [numPanes]int

	Filter      string
	Filtering   bool
	DenialsOnly bool
	Paused      bool
	Help        bool

	Stats   Stats
	Pools   []*cortexv1.PoolInfo
	Workers []*cortexv1.WorkerInfo
	Jobs    []*cortexv1.Job
	listed  []*cortexv1.Job

	// Err is why the last poll failed (nil when the cluster answers);
	// Retry is when the next attempt is due, RetryIn the delay.
	Err     error
	Retry   time.Time
	RetryIn time.Duration
	// Connected is set by the first poll that succeeds.
	Connected bool

	Detail       *cortexv1.Job
	DetailResult *cortexv1.GetResultResponse
	DetailID     string
	DetailErr    error

	Confirm *action
	Flash   string
}

// NewModel returns a dashboard of server, reading src, with stats from
// the tracker that stats reads.
func NewModel(server string, src Source, stats func(time.Time) Stats, now time.Time) Model {
	return Model{Server: server, src: src, stats: stats, Now: now, Width: 80, Height: 24, RetryIn: minRetry}
}

// Init lists the cluster and starts the refresh ticks.
func (m Model) Init() tea.Cmd { return tea.Batch(m.poll(), m.tick()) }

func (m Model) tick() tea.Cmd {
	stats := m.stats
	return tea.Tick(refreshEvery, func(t time.Time) tea.Msg {
		var st Stats
		if stats != nil {
			st = stats(t)
		}
		return tickMsg{Now: t, Stats: st}
	})
}

// call runs f on the source in a command, bounded by callTimeout (none
// without a source).
func (m Model) call(f func(ctx context.Context, src Source) tea.Msg) tea.Cmd {
	src := m.src
	if src == nil {
		return nil
	}
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		return f(ctx, src)
	}
}

func (m Model) poll() tea.Cmd {
	return m.call(func(ctx context.Context, src Source) tea.Msg {
		msg := listedMsg{At: time.Now()}
		if msg.Pools, msg.Err = src.Pools(ctx); msg.Err != nil {
			return msg
		}
		if msg.Workers, msg.Err = src.Workers(ctx); msg.Err != nil {
			return msg
		}
		msg.Jobs, msg.Err = src.Jobs(ctx, listJobs)
		return msg
	})
}

func (m Model) loadDetail(id string) tea.Cmd {
	return m.call(func(ctx context.Context, src Source) tea.Msg {
		j, err := src.Job(ctx, id)
		if err != nil {
			return detailMsg{Err: err}
		}
		msg := detailMsg{Job: j}
		if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
			msg.Result, _ = src.Result(ctx, id)
		}
		return msg
	})
}

func (m Model) run(a action) tea.Cmd {
	return m.call(func(ctx context.Context, src Source) tea.Msg {
		msg := actionMsg{Verb: a.Verb, ID: a.ID}
		switch a.Verb {
		case "approve":
			msg.Job, msg.Err = src.Approve(ctx, a.ID)
		case "reject":
			msg.Job, msg.Err = src.Reject(ctx, a.ID, "rejected from cortexctl top")
		case "cancel":
			msg.Job, msg.Err = src.Cancel(ctx, a.ID, "cancelled from cortexctl top")
		case "drain":
			msg.Err = src.Drain(ctx, a.ID)
		}
		return msg
	})
}

// Update applies msg.
func (m Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.Width, m.Height = msg.Width, msg.Height
		return m, nil
	case tickMsg:
		m.Now = msg.Now
		if !m.Paused {
			m.Stats = msg.Stats
			m.mergeJobs()
		}
		return m, m.tick()
	case pollMsg:
		return m, m.poll()
	case listedMsg:
		return m.listed0(msg)
	case detailMsg:
		if msg.Err != nil {
			m.DetailErr = msg.Err
			return m, nil
		}
		if msg.Job.GetJobId() == m.DetailID {
			m.Detail, m.DetailResult = msg.Job, msg.Result
		}
		return m, nil
	case actionMsg:
		if msg.Err != nil {
			m.Flash = fmt.Sprintf("%s %s failed: %v", msg.Verb, msg.ID, msg.Err)
			return m, nil
		}
		if msg.Verb == "drain" {
			m.Flash = fmt.Sprintf("worker %s asked to drain: it takes no new jobs", msg.ID)
			return m, nil
		}
		m.Flash = fmt.Sprintf("%s %s: now %s", msg.Verb, msg.ID, stateName(msg.Job.GetState()))
		if m.DetailID == msg.ID {
			m.Detail = msg.Job
		}
		return m, nil
	case tea.KeyPressMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m Model) listed0(msg listedMsg) (tea.Model, tea.Cmd) {
	if msg.Err != nil {
		m.Err = msg.Err
		if m.Retry.IsZero() || !msg.At.Before(m.Retry) {
			if m.Retry.IsZero() {
				m.RetryIn = minRetry
			} else {
				m.RetryIn = min(m.RetryIn*2, maxRetry)
			}
		}
		m.Retry = msg.At.Add(m.RetryIn)
		return m, tea.Tick(m.RetryIn, func(time.Time) tea.Msg { return pollMsg{} })
	}
	m.Err, m.Retry, m.RetryIn, m.Connected = nil, time.Time{}, minRetry, true
	if !m.Paused {
		m.Pools, m.Workers, m.listed = msg.Pools, msg.Workers, msg.Jobs
		slices.SortFunc(m.Pools, func(a, b *cortexv1.PoolInfo) int { return strings.Compare(a.GetPool(), b.GetPool()) })
		slices.SortFunc(m.Workers, func(a, b *cortexv1.WorkerInfo) int {
			return strings.Compare(a.GetPool()+"/"+a.GetWorkerId(), b.GetPool()+"/"+b.GetWorkerId())
		})
		m.mergeJobs()
	}
	return m, tea.Tick(pollEvery, func(time.Time) tea.Msg { return pollMsg{} })
}

// mergeJobs joins the listed jobs and the streamed ones, the newest
// version of each, most recently changed first.
func (m *Model) mergeJobs() {
	byID := make(map[string]*cortexv1.Job, len(m.listed)+len(m.Stats.Jobs))
	for _, list := range [][]*cortexv1.Job{m.listed, m.Stats.Jobs} {
		for _, j := range list {
			if old, ok := byID[j.GetJobId()]; !ok || j.GetVersion() >= old.GetVersion() {
				byID[j.GetJobId()] = j
			}
		}
	}
	jobs := make([]*cortexv1.Job, 0, len(byID))
	for _, j := range byID {
		jobs = append(jobs, j)
	}
	slices.SortFunc(jobs, func(a, b *cortexv1.Job) int {
		if c := b.GetUpdatedAt().AsTime().Compare(a.GetUpdatedAt().AsTime()); c != 0 {
			return c
		}
		return strings.Compare(a.GetJobId(), b.GetJobId())
	})
	if len(jobs) > maxJobs {
		jobs = jobs[:maxJobs]
	}
	m.Jobs = jobs
}

func (m Model) key(k tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	key := k.String()
	if key == "ctrl+c" {
		return m, tea.Quit
	}
	if m.Confirm != nil {
		a := *m.Confirm
		m.Confirm = nil
		if key == "y" || key == "Y" {
			m.Flash = a.Verb + " " + a.ID + "…"
			return m, m.run(a)
		}
		m.Flash = a.Verb + " " + a.ID + ": not done"
		return m, nil
	}
	if m.Filtering {
		switch key {
		case "enter":
			m.Filtering = false
		case "esc":
			m.Filtering, m.Filter = false, ""
		case "backspace":
			if r := []rune(m.Filter); len(r) > 0 {
				m.Filter = string(r[:len(r)-1])
			}
		default:
			if k.Text != "" {
				m.Filter += k.Text
			}
		}
		m.clampCursors()
		return m, nil
	}
	if m.Help {
		m.Help = false
		if key == "q" {
			return m, tea.Quit
		}
		return m, nil
	}
	m.Flash = ""
	switch key {
	case "q":
		return m, tea.Quit
	case "?":
		m.Help = true
	case "esc":
		switch {
		case m.DetailID != "":
			m.closeDetail()
		case m.Filter != "":
			m.Filter = ""
		}
	case "tab":
		if m.DetailID == "" {
			m.Focus = (m.Focus + 1) % numPanes
		}
	case "shift+tab":
		if m.DetailID == "" {
			m.Focus = (m.Focus + numPanes - 1) % numPanes
		}
	case "down", "j":
		m.Cursor[m.Focus]++
		m.clampCursors()
	case "up", "k":
		m.Cursor[m.Focus]--
		m.clampCursors()
	case "/":
		m.Filtering = true
	case "p":
		m.Paused = !m.Paused
	case "d":
		m.DenialsOnly = !m.DenialsOnly
		m.clampCursors()
	case "enter":
		if m.DetailID != "" {
			m.closeDetail()
			return m, nil
		}
		if id := m.selectedJobID(); id != "" {
			m.DetailID = id
			return m, m.loadDetail(id)
		}
	case "a", "r", "c":
		return m.ask(map[string]string{"a": "approve", "r": "reject", "c": "cancel"}[key])
	case "D":
		if m.Focus != PaneWorkers {
			m.Flash = "select a worker first (tab to Workers)"
			return m, nil
		}
		if ws := m.visibleWorkers(); m.Cursor[PaneWorkers] < len(ws) {
			m.Confirm = &action{Verb: "drain", ID: ws[m.Cursor[PaneWorkers]].GetWorkerId()}
		}
	}
	return m, nil
}

func (m *Model) closeDetail() {
	m.DetailID, m.Detail, m.DetailResult, m.DetailErr = "", nil, nil, nil
}

// ask asks to confirm verb on the selected job, when it can apply.
func (m Model) ask(verb string) (tea.Model, tea.Cmd) {
	j := m.selectedJob()
	if j == nil {
		m.Flash = "select a job first (tab to Recent jobs or Safety decisions)"
		return m, nil
	}
	st := j.GetState()
	switch {
	case verb != "cancel" && st != cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL:
		m.Flash = fmt.Sprintf("job %s is %s, not awaiting approval", j.GetJobId(), stateName(st))
		return m, nil
	case verb == "cancel" && terminal(st):
		m.Flash = fmt.Sprintf("job %s already ended %s", j.GetJobId(), stateName(st))
		return m, nil
	}
	m.Confirm = &action{Verb: verb, ID: j.GetJobId()}
	return m, nil
}

// selectedJobID is the job under the cursor (or in the detail view).
func (m Model) selectedJobID() string {
	if m.DetailID != "" {
		return m.DetailID
	}
	switch m.Focus {
	case PaneJobs:
		if js := m.visibleJobs(); m.Cursor[PaneJobs] < len(js) {
			return js[m.Cursor[PaneJobs]].GetJobId()
		}
	case PaneDecisions:
		if ds := m.visibleDecisions(); m.Cursor[PaneDecisions] < len(ds) {
			return ds[m.Cursor[PaneDecisions]].GetJobId()
		}
	}
	return ""
}

func (m Model) selectedJob() *cortexv1.Job {
	id := m.selectedJobID()
	if id == "" {
		return nil
	}
	if m.Detail != nil && m.Detail.GetJobId() == id {
		return m.Detail
	}
	for _, j := range m.Jobs {
		if j.GetJobId() == id {
			return j
		}
	}
	return nil
}

func (m *Model) clampCursors() {
	n := [numPanes]int{len(m.visiblePools()), len(m.visibleDecisions()), len(m.visibleJobs()), len(m.visibleWorkers())}
	for p := range numPanes {
		m.Cursor[p] = max(min(m.Cursor[p], n[p]-1), 0)
	}
}

func (m Model) match(fields ...string) bool {
	if m.Filter == "" {
		return true
	}
	f := strings.ToLower(m.Filter)
	for _, s := range fields {
		if strings.Contains(strings.ToLower(s), f) {
			return true
		}
	}
	return false
}

func (m Model) visiblePools() []*cortexv1.PoolInfo {
	return filter(m.Pools, func(p *cortexv1.PoolInfo) bool { return m.match(p.GetPool(), strings.Join(p.GetTopics(), ",")) })
}

func (m Model) visibleWorkers() []*cortexv1.WorkerInfo {
	return filter(m.Workers, func(w *cortexv1.WorkerInfo) bool { return m.match(w.GetWorkerId(), w.GetPool()) })
}

func (m Model) visibleJobs() []*cortexv1.Job {
	return filter(m.Jobs, func(j *cortexv1.Job) bool {
		return m.match(j.GetJobId(), j.GetTopic(), stateName(j.GetState()), j.GetPool(), j.GetTenantId(), j.GetReason())
	})
}

// visibleDecisions are the recent decisions that match the filter or,
// denials only, the recent denials that do (kept apart by the tracker, so
// the allows that follow a denial do not push it out of this view).
func (m Model) visibleDecisions() []*cortexv1.SafetyDecisionEvent {
	ds := m.Stats.Decisions
	if m.DenialsOnly {
		ds = withDenials(m.Stats)
	}
	return filter(ds, func(d *cortexv1.SafetyDecisionEvent) bool {
		if m.DenialsOnly && !denied(d) {
			return false
		}
		v := d.GetVerdict()
		return m.match(d.GetJobId(), decisionName(v.GetDecision()), v.GetRule(), v.GetReason(), d.GetTopic(), d.GetTenantId())
	})
}

func filter[T any](s []T, keep func(T) bool) []T {
	var out []T
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

func stateName(s cortexv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

func decisionName(d cortexv1.Decision) string {
	return strings.TrimPrefix(d.String(), "DECISION_")
}
