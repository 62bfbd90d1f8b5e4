package top

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

var (
	styleTitle   = lipgloss.NewStyle().Bold(true)
	styleFocus   = lipgloss.NewStyle().Bold(true).Reverse(true)
	styleHeader  = lipgloss.NewStyle().Faint(true)
	styleCursor  = lipgloss.NewStyle().Reverse(true)
	styleBanner  = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("15")).Background(lipgloss.Color("1"))
	styleGood    = lipgloss.NewStyle().Foreground(lipgloss.Color("2"))
	styleBad     = lipgloss.NewStyle().Foreground(lipgloss.Color("1"))
	styleWarn    = lipgloss.NewStyle().Foreground(lipgloss.Color("3"))
	styleRunning = lipgloss.NewStyle().Foreground(lipgloss.Color("6"))
)

const helpLine = "tab pane  ↑↓/jk move  / filter  d denials  p pause  enter detail  a/r/c approve/reject/cancel  ? help  q quit"

const shortHelp = "tab:pane  ↑↓/jk:move  /:filter  d:denials  p:pause  enter:detail  ?:help  q:quit"

// View draws the dashboard in exactly Width×Height cells.
func (m Model) View() tea.View {
	v := tea.NewView(m.Render())
	v.AltScreen = true
	return v
}

// Render is the screen as text (with ANSI styles).
func (m Model) Render() string {
	w, h := max(m.Width, 20), max(m.Height, 5)
	var top []string
	top = append(top, m.header()...)
	if b := m.banner(); b != "" {
		// The banner wraps (an error can be long), on at most 4 lines.
		lines := wrapWords(b, w)
		for _, l := range lines[:min(len(lines), 4)] {
			top = append(top, styleBanner.Render(l))
		}
	}
	help := helpLine
	if ansi.StringWidth(help) > w {
		help = shortHelp
	}
	bottom := []string{m.statusLine(), styleHeader.Render(help)}
	room := h - len(top) - len(bottom)
	var body []string
	switch {
	case m.Help:
		body = helpScreen()
	case m.DetailID != "":
		body = m.detailView()
	default:
		body = m.panes(room, w)
	}
	lines := append(top, body...)
	for len(lines) < h-len(bottom) {
		lines = append(lines, "")
	}
	lines = append(lines[:h-len(bottom)], bottom...)
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, w, "…")
	}
	return strings.Join(lines, "\n")
}

func (m Model) header() []string {
	s := m.Stats
	up := "-"
	var first time.Time
	for _, wk := range m.Workers {
		if t := wk.GetFirstSeen().AsTime(); wk.GetFirstSeen() != nil && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	if !first.IsZero() {
		up = output.Elapsed(m.Now.Sub(first).Truncate(time.Second))
	}
	l1 := styleTitle.Render("cortexctl top") + "  " + m.Server + "  oldest worker " + up
	if m.Paused {
		l1 += "  " + styleWarn.Render("[PAUSED]")
	}
	if m.Filter != "" || m.Filtering {
		l1 += "  filter: " + m.Filter
		if m.Filtering {
			l1 += "▏"
		}
	}
	l2 := fmt.Sprintf("in %s/s %s  out %s/s %s  backlog %d", rate(s.InPerSec), sparkline(s.InSpark, 16),
		rate(s.OutPerSec), sparkline(s.OutSpark, 16), s.Backlog)
	if s.Dropped > 0 {
		l2 += fmt.Sprintf("  (%d events skipped)", s.Dropped)
	}
	return []string{l1, l2}
}

func (m Model) banner() string {
	if m.Err != nil {
		// An answer from the gateway (a refused key, its store down) is
		// not an unreachable gateway.
		what, todo := problem(m.Server, m.Err)
		if todo != "" {
			todo += "; "
		}
		retry := "retrying now"
		if in := m.Retry.Sub(m.Now).Round(time.Second); in >= time.Second {
			retry = fmt.Sprintf("retrying in %ds", int(in/time.Second))
		}
		return fmt.Sprintf("%s: %v; %s%s", what, m.Err, todo, retry)
	}
	if !m.Connected {
		return ""
	}
	var down []string
	if e := m.Stats.EventsErr; e != "" {
		down = append(down, "job events: "+e)
	}
	if e := m.Stats.DecisionsErr; e != "" {
		down = append(down, "safety decisions: "+e)
	}
	if len(down) > 0 {
		return "stream down, reconnecting: " + strings.Join(down, "; ")
	}
	return ""
}

// wrapWords breaks plain text s into lines at most w cells wide at its
// spaces only (ansi.Wrap breaks at hyphens too, splitting "--api-key"),
// cutting a word only when it alone is wider than w.
func wrapWords(s string, w int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
		case ansi.StringWidth(line)+1+ansi.StringWidth(word) <= w:
			word = line + " " + word
		default:
			lines = append(lines, line)
		}
		parts := strings.Split(ansi.Hardwrap(word, w, false), "\n")
		lines = append(lines, parts[:len(parts)-1]...)
		line = parts[len(parts)-1]
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

func (m Model) statusLine() string {
	switch {
	case m.Confirm != nil:
		what := "job"
		if m.Confirm.Verb == "drain" {
			what = "worker"
		}
		return styleWarn.Render(fmt.Sprintf("%s %s %s? [y/N]", m.Confirm.Verb, what, m.Confirm.ID))
	case m.Filtering:
		return "filter: type, enter to keep, esc to clear"
	case m.Flash != "":
		return m.Flash
	}
	return ""
}

// sparkline draws the last n values of vs, scaled to the largest.
func sparkline(vs []int, n int) string {
	const bars = "▁▂▃▄▅▆▇█"
	r := []rune(bars)
	if len(vs) > n {
		vs = vs[len(vs)-n:]
	}
	top := 0
	for _, v := range vs {
		top = max(top, v)
	}
	var b strings.Builder
	for range n - len(vs) {
		b.WriteRune(r[0])
	}
	for _, v := range vs {
		i := 0
		if top > 0 {
			i = v * (len(r) - 1) / top
		}
		b.WriteRune(r[i])
	}
	return b.String()
}

// bar draws frac (0..1) as a bar n cells wide.
func bar(frac float64, n int) string {
	full := int(frac*float64(n) + 0.5)
	full = max(min(full, n), 0)
	s := strings.Repeat("█", full) + strings.Repeat("░", n-full)
	switch {
	case frac >= 0.9:
		return styleBad.Render(s)
	case frac >= 0.7:
		return styleWarn.Render(s)
	}
	return styleGood.Render(s)
}

// table is one pane: a header, rows, and which row the cursor is on.
type table struct {
	pane   Pane
	widths []int
	header []string
	rows   [][]string
}

func (m Model) panes(room, width int) []string {
	tabs := [numPanes]table{m.poolTable(), m.decisionTable(), m.jobTable(), m.workerTable()}
	// Pools and workers get up to 4 rows; decisions and jobs share the rest.
	h := [numPanes]int{}
	for _, p := range []Pane{PanePools, PaneWorkers} {
		h[p] = 2 + max(min(len(tabs[p].rows), 4), 1)
	}
	rest := max(room-h[PanePools]-h[PaneWorkers], 6)
	h[PaneDecisions] = rest / 2
	h[PaneJobs] = rest - rest/2
	var out []string
	for p := range numPanes {
		out = append(out, m.renderTable(tabs[p], h[p], width)...)
	}
	return out
}

func (m Model) renderTable(t table, height, width int) []string {
	title := fmt.Sprintf(" %s (%d) ", t.pane, len(t.rows))
	if t.pane == PaneDecisions && m.DenialsOnly {
		title = fmt.Sprintf(" %s: denials only (%d) ", t.pane, len(t.rows))
	}
	if m.Focus == t.pane {
		title = styleFocus.Render(title)
	} else {
		title = styleTitle.Render(title)
	}
	out := []string{title, styleHeader.Render(row(t.widths, t.header, width))}
	n := height - 2
	if n <= 0 {
		return out[:max(height, 0)]
	}
	cur := m.Cursor[t.pane]
	first := 0
	if cur >= n {
		first = cur - n + 1
	}
	if len(t.rows) == 0 {
		out = append(out, styleHeader.Render("  (none yet)"))
	}
	for i := first; i < len(t.rows) && i < first+n; i++ {
		line := row(t.widths, t.rows[i], width)
		if i == cur && m.Focus == t.pane {
			line = styleCursor.Render(ansi.Strip(line))
		}
		out = append(out, line)
	}
	for len(out) < height {
		out = append(out, "")
	}
	return out
}

// row lays cells out in columns of widths; the last takes what is left.
func row(widths []int, cells []string, width int) string {
	var b strings.Builder
	b.WriteString(" ")
	for i, c := range cells {
		if i == len(cells)-1 {
			b.WriteString(c)
			break
		}
		w := widths[i]
		c = ansi.Truncate(c, w, "…")
		b.WriteString(c + strings.Repeat(" ", max(w-ansi.StringWidth(c), 0)+1))
	}
	return ansi.Truncate(b.String(), width, "…")
}

func (m Model) poolTable() table {
	t := table{pane: PanePools, widths: []int{12, 7, 10, 13, 6, 8},
		header: []string{"POOL", "WORKERS", "ACTIVE/CAP", "UTILISATION", "QUEUE", "P99", "TOPICS"}}
	for _, p := range m.visiblePools() {
		frac := 0.0
		if p.GetCapacity() > 0 {
			frac = float64(p.GetActiveJobs()) / float64(p.GetCapacity())
		}
		workers := strconv.Itoa(int(p.GetWorkers()))
		if d := p.GetDrainingWorkers(); d > 0 {
			workers += fmt.Sprintf("+%dd", d)
		}
		p99 := "-"
		if d, ok := m.Stats.P99[p.GetPool()]; ok {
			p99 = fmtDuration(d)
		}
		t.rows = append(t.rows, []string{p.GetPool(), workers, fmt.Sprintf("%d/%d", p.GetActiveJobs(), p.GetCapacity()),
			bar(frac, 8) + fmt.Sprintf(" %3.0f%%", frac*100), strconv.Itoa(poolQueue(p, m.Stats.Queue)), p99,
			strings.Join(p.GetTopics(), ",")})
	}
	return t
}

func (m Model) decisionTable() table {
	t := table{pane: PaneDecisions, widths: []int{8, 8, 16, 12, 10},
		header: []string{"TIME", "DECISION", "RULE", "TOPIC", "TENANT", "REASON"}}
	for _, d := range m.visibleDecisions() {
		v := d.GetVerdict()
		t.rows = append(t.rows, []string{d.GetDecidedAt().AsTime().Local().Format("15:04:05"),
			colourDecision(v.GetDecision()), v.GetRule(), d.GetTopic(), d.GetTenantId(), v.GetReason()})
	}
	return t
}

func (m Model) jobTable() table {
	t := table{pane: PaneJobs, widths: []int{13, 17, 12, 8, 5},
		header: []string{"JOB", "STATE", "TOPIC", "POOL", "AGE", "REASON"}}
	for _, j := range m.visibleJobs() {
		t.rows = append(t.rows, []string{shortID(j.GetJobId()), colourState(j.GetState()), j.GetTopic(), orDash(j.GetPool()),
			output.Age(j.GetCreatedAt().AsTime(), m.Now), j.GetReason()})
	}
	return t
}

func (m Model) workerTable() table {
	t := table{pane: PaneWorkers, widths: []int{20, 12, 9, 10, 5},
		header: []string{"WORKER", "POOL", "STATE", "ACTIVE/MAX", "LOAD", "LAST HEARTBEAT"}}
	for _, w := range m.visibleWorkers() {
		st := output.WorkerState(w.GetState())
		if w.GetState() == cortexv1.WorkerState_WORKER_STATE_DRAINING {
			st = styleWarn.Render(st)
		}
		t.rows = append(t.rows, []string{w.GetWorkerId(), w.GetPool(), st,
			fmt.Sprintf("%d/%d", w.GetActiveJobs(), w.GetMaxParallelJobs()), strconv.FormatFloat(w.GetCpuLoad(), 'f', 2, 64),
			output.Age(w.GetLastHeartbeat().AsTime(), m.Now) + " ago"})
	}
	return t
}

func (m Model) detailView() []string {
	out := []string{styleFocus.Render(" Job "+m.DetailID+" ") + "  (esc or enter: back; a/r approve/reject; c cancel)"}
	if m.DetailErr != nil {
		return append(out, styleBad.Render("could not read the job: "+m.DetailErr.Error()))
	}
	j := m.Detail
	if j == nil {
		return append(out, "loading…")
	}
	out = append(out,
		fmt.Sprintf("state    %s   attempt %d/%d   pool %s   worker %s", colourState(j.GetState()), j.GetAttempt(),
			j.GetMaxAttempts(), orDash(j.GetPool()), orDash(j.GetWorkerId())),
		fmt.Sprintf("topic    %s   tenant %s   priority %d   created %s ago", j.GetTopic(), j.GetTenantId(), j.GetPriority(),
			output.Age(j.GetCreatedAt().AsTime(), m.Now)))
	if r := j.GetReason(); r != "" {
		out = append(out, "reason   "+r)
	}
	if v := j.GetSafety(); v != nil {
		out = append(out, fmt.Sprintf("safety   %s by rule %s: %s", colourDecision(v.GetDecision()), v.GetRule(), v.GetReason()))
	}
	var states []string
	for _, tr := range j.GetTransitions() {
		states = append(states, fmt.Sprintf("%s +%s", stateName(tr.GetState()),
			fmtDuration(tr.GetAt().AsTime().Sub(j.GetCreatedAt().AsTime()))))
	}
	if len(states) > 0 {
		out = append(out, "states   "+strings.Join(states, " → "))
	}
	for _, a := range j.GetAttempts() {
		out = append(out, fmt.Sprintf("attempt  %d %s on %s %s", a.GetAttempt(), stateName(a.GetState()), orDash(a.GetWorkerId()), a.GetReason()))
	}
	if r := m.DetailResult; r != nil {
		text := r.GetText()
		if text == "" && len(r.GetData()) > 0 {
			text = fmt.Sprintf("(%d bytes of binary output)", len(r.GetData()))
		}
		out = append(out, "result   "+strings.ReplaceAll(output.Truncate(text, 200), "\n", "⏎"))
	}
	return out
}

func helpScreen() []string {
	return []string{
		styleTitle.Render(" Keys ") + "  (any key: back)",
		"  tab, shift+tab   next, previous pane",
		"  ↑ ↓, j k         move in the pane",
		"  /                filter every pane (enter keeps it, esc clears)",
		"  d                safety decisions: denials only, or all",
		"  p                pause the display (counting goes on)",
		"  enter            the selected job's detail (from jobs or decisions)",
		"  a, r             approve, reject a job held for approval (asks first)",
		"  c                cancel a job (asks first)",
		"  D                drain the selected worker (admin key; confirmed first)",
		"  q, ctrl+c        quit",
	}
}

func colourState(s cortexv1.JobState) string {
	n := stateName(s)
	switch s {
	case cortexv1.JobState_JOB_STATE_COMPLETED:
		return styleGood.Render(n)
	case cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		return styleBad.Render(n)
	case cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL, cortexv1.JobState_JOB_STATE_CANCELLED:
		return styleWarn.Render(n)
	case cortexv1.JobState_JOB_STATE_RUNNING:
		return styleRunning.Render(n)
	}
	return n
}

func colourDecision(d cortexv1.Decision) string {
	n := decisionName(d)
	switch d {
	case cortexv1.Decision_DECISION_ALLOW:
		return styleGood.Render(n)
	case cortexv1.Decision_DECISION_REQUIRE_APPROVAL:
		return styleWarn.Render(n)
	}
	return styleBad.Render(n)
}

func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return d.Round(10 * time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortID is the end of a job id: ids made close together share their
// beginning (UUIDv7), so the end tells them apart.
func shortID(id string) string {
	if r := []rune(id); len(r) > 13 {
		return "…" + string(r[len(r)-12:])
	}
	return id
}

// rate prints jobs/s in 6 cells: a decimal below 10.
func rate(r float64) string {
	if r < 10 {
		return fmt.Sprintf("%6.1f", r)
	}
	return fmt.Sprintf("%6.0f", r)
}

// poolQueue is the backlog of the topics p serves.
func poolQueue(p *cortexv1.PoolInfo, byTopic map[string]int) int {
	n := 0
	for _, t := range p.GetTopics() {
		n += byTopic[t]
	}
	return n
}
