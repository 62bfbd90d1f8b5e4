package harness

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cortex-os/core/internal/store"
)

// stallAfter ends the wait for stragglers early when nothing has changed
// for that long: without a reconciler nothing will.
const stallAfter = 60 * time.Second

// MinAcceptedShare is the share of the submitted jobs the gateway must
// answer with a job id. The submitter retries every job for a minute after
// the submitting window, so a run whose gateway works accepts them all
// (measured: 2000 of 2000, 10000 of 10000, with every kill); far fewer means
// the jobs never got in, and a check of the accepted ones proves little.
const MinAcceptedShare = 0.9

// KillEvent is one SIGKILL the test sent.
type KillEvent struct {
	Name string
	At   time.Time
}

// Settle waits until every id is terminal, at most bound (less when nothing
// changes for stallAfter). It returns how many are still not terminal.
func Settle(h *Harness, st *store.Store, ids []string, bound time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	open := ids
	lastChange, lastReport := time.Now(), time.Now()
	for {
		var next []string
		var mu sync.Mutex
		states := map[string]int{}
		Parallel(open, 16, func(id string) {
			j, err := st.Get(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && j.State.Terminal():
				return
			case errors.Is(err, store.ErrNotFound):
				states["(no record)"]++
			case err != nil:
				states["(unreadable)"]++
			default:
				states[string(j.State)]++
			}
			next = append(next, id)
		})
		if len(next) != len(open) {
			lastChange = time.Now()
		}
		open = next
		if len(open) == 0 {
			h.Logf("settle: every accepted job is terminal")
			return 0
		}
		if time.Since(lastReport) >= 10*time.Second {
			h.Logf("settle: %d not terminal yet: %s", len(open), fmtCounts(states))
			lastReport = time.Now()
		}
		if time.Since(lastChange) > stallAfter {
			h.Logf("settle: %d not terminal and nothing changed for %s; giving up waiting: %s", len(open), stallAfter, fmtCounts(states))
			return len(open)
		}
		select {
		case <-ctx.Done():
			h.Logf("settle: %d still not terminal after %s: %s", len(open), bound, fmtCounts(states))
			return len(open)
		case <-time.After(time.Second):
		}
	}
}

// Parallel runs f on every item with n goroutines.
func Parallel(items []string, n int, f func(string)) {
	ch := make(chan string)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for it := range ch {
				f(it)
			}
		})
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
}

// Report is what the test found.
type Report struct {
	submitted                        int
	accepted, neverAccepted, refused int
	KeysTwoIDs                       int
	byState                          map[store.State]int // terminal states
	nonTerminal                      map[store.State]int // lost: not terminal
	unknown                          int                 // lost: no record at all
	unreadable                       int
	twoOutcomesStore                 int // the record shows two outcomes
	twoOutcomesEvents                int // events announced two different terminal states
	eventDisagrees                   int // the one announced terminal state is not the recorded one
	BadResult                        int // COMPLETED without its result, or a wrong one
	ran                              int // jobs whose current attempt ran: COMPLETED, or with a worker recorded
	ranWithoutAllow                  int // of those, the ones without an ALLOW verdict for that attempt
	attemptsOverMax                  int
	sleeps, sleepsCompleted          int // accepted job.sleep jobs, and how many of them COMPLETED
	reran                            int // jobs at a later attempt than their first
	takenOver                        int // jobs another worker took over from one that stopped answering
	examples                         []string
	lostBy                           map[string]*lostGroup // phase + state -> lost jobs
	reasons                          map[string]int        // FAILED/DENIED/TIMEOUT reasons

	evReceived, evBad, evReconnects, evDropped int64
	evTerminalFor, evRepeats                   int

	batches, dedup int
	errCodes       map[string]int
	callErrs       map[string]int
	slowestBatch   time.Duration

	Kills []string
	// KillFailures are the kills and restarts that did not work, each
	// naming the component (and the tail of its log when there is one).
	KillFailures       []string
	UnexpectedExits    []string
	PendingAfterSettle int
	SubmitTook         time.Duration
	SettleTook         time.Duration
}

func (r *Report) Lost() int {
	n := r.unknown + r.unreadable
	for _, v := range r.nonTerminal {
		n += v
	}
	return n
}

func (r *Report) TwoOutcomes() int {
	return r.twoOutcomesStore + r.twoOutcomesEvents + r.eventDisagrees
}

// Problems lists every way the run broke a promise, one message each; none
// when it kept them all. Beyond the accepted jobs' outcomes, a run must
// have got its jobs in (at least MinAcceptedShare of them accepted), every
// job that ran must have been allowed by the safety kernel (fail-closed),
// every kill and restart the test asked for must have worked, and no
// component may have exited without being killed.
func (r *Report) Problems() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	switch {
	case r.accepted == 0:
		add("no job was accepted: the gateway answered none of the %d submitted jobs with a job id (call errors: %s; per-job errors: %s)",
			r.submitted, fmtCounts(r.callErrs), fmtCounts(r.errCodes))
	case float64(r.accepted) < MinAcceptedShare*float64(r.submitted):
		add("only %d of %d submitted jobs (%.1f%%) were accepted, below the %.0f%% a working gateway reaches (call errors: %s; per-job errors: %s)",
			r.accepted, r.submitted, r.acceptedPercent(), 100*MinAcceptedShare, fmtCounts(r.callErrs), fmtCounts(r.errCodes))
	}
	if n := r.Lost() + r.TwoOutcomes() + r.BadResult + r.KeysTwoIDs; n > 0 {
		add("the guarantee does not hold: %d accepted jobs lost or not terminal, %d with two outcomes, %d completed without their result, %d idempotency keys answered with two job ids",
			r.Lost(), r.TwoOutcomes(), r.BadResult, r.KeysTwoIDs)
	}
	if r.ranWithoutAllow > 0 {
		add("not fail-closed: %d of the %d jobs that ran have no ALLOW safety verdict for the attempt that ran", r.ranWithoutAllow, r.ran)
	}
	for _, f := range r.KillFailures {
		add("a kill or restart the test asked for did not work: %s", f)
	}
	for _, e := range r.UnexpectedExits {
		add("a component exited without being killed: %s", e)
	}
	return out
}

func (r *Report) example(format string, args ...any) {
	if len(r.examples) < 12 {
		r.examples = append(r.examples, fmt.Sprintf(format, args...))
	}
}

// Verify reads every accepted job and checks that it has exactly one
// outcome, and that it ran only if the safety kernel allowed it.
func Verify(h *Harness, st *store.Store, s *Submitter, ev *Events, killed []KillEvent) *Report {
	r := &Report{byState: map[store.State]int{}, nonTerminal: map[store.State]int{}, reasons: map[string]int{},
		lostBy: map[string]*lostGroup{}}
	t0 := h.T0
	s.mu.Lock()
	r.submitted = s.n
	r.accepted = len(s.byKey)
	r.refused = len(s.refused)
	r.neverAccepted = s.n - len(s.byKey) - len(s.refused)
	r.KeysTwoIDs = len(s.otherIDs)
	for i, ids := range s.otherIDs {
		r.example("idempotency key %s answered with job ids %s and %s", s.key(i), s.byKey[i], strings.Join(ids, ", "))
	}
	r.batches, r.dedup = s.batches, s.dedup
	r.errCodes, r.callErrs = maps.Clone(s.errCodes), maps.Clone(s.callErrs)
	for _, d := range s.sendTimes {
		r.slowestBatch = max(r.slowestBatch, d)
	}
	wants := map[string]string{} // job id -> the output it must complete with
	sleeps := map[string]bool{}  // job id -> it is a job.sleep
	for i, first := range s.byKey {
		for _, id := range append([]string{first}, s.otherIDs[i]...) {
			wants[id] = s.want(i)
			sleeps[id] = s.sleeps(i)
		}
	}
	s.mu.Unlock()

	ev.mu.Lock()
	announced := maps.Clone(ev.terminal)
	r.evRepeats = ev.repeats
	ev.mu.Unlock()
	r.evReceived, r.evBad, r.evReconnects, r.evDropped = ev.received.Load(), ev.bad.Load(), ev.reconnect.Load(), ev.dropped.Load()

	var mu sync.Mutex
	ctx := context.Background()
	Parallel(slices.Collect(maps.Keys(wants)), 16, func(id string) {
		var (
			j   *store.Job
			out string
			err error
		)
		for try := 0; try < 5; try++ {
			if j, out, err = st.Output(ctx, id); err == nil || errors.Is(err, store.ErrNotFound) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		evStates := announced[id]
		if len(evStates) > 0 {
			r.evTerminalFor++
		}
		if len(evStates) > 1 {
			r.twoOutcomesEvents++
			r.example("job %s: events announced %v", id, evStates)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			r.unknown++
			r.example("job %s: accepted, but there is no record of it", id)
			return
		case err != nil:
			r.unreadable++
			r.example("job %s: unreadable: %v", id, err)
			return
		case !j.State.Terminal():
			r.nonTerminal[j.State]++
			r.noteLost(killed, t0, j)
			r.example("job %s: still %s (attempt %d, version %d, reason %q)", id, j.State, j.Attempt, j.Version, j.Reason)
			return
		}
		r.byState[j.State]++
		if j.State != store.Completed {
			r.reasons[string(j.State)+": "+reasonClass(j.Reason)]++
		}
		if sleeps[id] {
			r.sleeps++
			if j.State == store.Completed {
				r.sleepsCompleted++
			}
		}
		if j.Attempt > 1 {
			r.reran++
		}
		if strings.HasPrefix(j.Reason, takenOverReason) {
			r.takenOver++
		}
		if ranAttempt(j) {
			r.ran++
			if why := ranWithoutAllow(j); why != "" {
				r.ranWithoutAllow++
				r.example("job %s: %s", id, why)
			}
		}
		if len(evStates) == 1 && evStates[0] != j.State {
			r.eventDisagrees++
			r.example("job %s: recorded %s, but an event announced %s", id, j.State, evStates[0])
		}
		if why := twoOutcomes(j); why != "" {
			r.twoOutcomesStore++
			r.example("job %s: %s", id, why)
		}
		if j.MaxAttempts > 0 && j.Attempt > j.MaxAttempts {
			r.attemptsOverMax++
		}
		if j.State == store.Completed && out != wants[id] {
			r.BadResult++
			r.example("job %s: COMPLETED with output %.60q, want %q", id, out, wants[id])
		}
	})
	return r
}

// lostGroup is a set of lost jobs created in the same phase of the run, in
// the same state.
type lostGroup struct {
	order    int
	phase    string
	state    store.State
	n        int
	min, max time.Duration // created, since the test began
}

// noteLost counts a job that did not end under the phase it was created
// in: after which kill (the last one before it was created).
func (r *Report) noteLost(killed []KillEvent, t0 time.Time, j *store.Job) {
	phase, order := "created before the first kill", 0
	for i, k := range killed {
		if !j.CreatedAt.Before(k.At) {
			phase = fmt.Sprintf("created after kill -9 %s (+%.1fs)", k.Name, k.At.Sub(t0).Seconds())
			order = i + 1
		}
	}
	key := phase + " " + string(j.State)
	g := r.lostBy[key]
	at := j.CreatedAt.Sub(t0)
	if g == nil {
		g = &lostGroup{order: order, phase: phase, state: j.State, min: at, max: at}
		r.lostBy[key] = g
	}
	g.n++
	g.min, g.max = min(g.min, at), max(g.max, at)
}

// twoOutcomes says how a terminal job's record shows more than one outcome,
// or "" when it shows one.
func twoOutcomes(j *store.Job) string {
	var ended []string
	for st := range j.Entered {
		if st.Terminal() {
			ended = append(ended, string(st))
		}
	}
	if len(ended) > 1 {
		slices.Sort(ended)
		return fmt.Sprintf("%s, but it also entered %s", j.State, strings.Join(ended, " and "))
	}
	for _, a := range j.Attempts {
		if a.Attempt < j.Attempt && a.State == store.Completed {
			return fmt.Sprintf("%s at attempt %d, but attempt %d had COMPLETED", j.State, j.Attempt, a.Attempt)
		}
		if a.Attempt == j.Attempt && a.State.Terminal() && a.State != j.State {
			return fmt.Sprintf("%s, but its attempt %d is recorded as %s", j.State, a.Attempt, a.State)
		}
	}
	if j.Attempt == 0 || j.Version == 0 {
		return fmt.Sprintf("%s with attempt %d and version %d", j.State, j.Attempt, j.Version)
	}
	return ""
}

// takenOverReason begins the reason a worker records when it takes over an
// attempt whose worker stopped answering for it (the store's start script).
const takenOverReason = "taken over from worker"

// ranAttempt says whether the job's current attempt ran on a worker: it
// COMPLETED, or records a worker (a retry drops the worker of the attempt
// it ends, so a recorded worker ran this attempt).
func ranAttempt(j *store.Job) bool {
	return j.State == store.Completed || j.WorkerID != ""
}

// ranWithoutAllow says how a job whose current attempt ran lacks an ALLOW
// verdict for that attempt, or "" when it has one. The record keeps the
// verdict of the last safety check (decision, rule, safety_reason, policy),
// written by the scheduler with the move to DISPATCHED, the only way to a
// worker; an attempt that ran must have entered DISPATCHED after the
// attempt before it ended, or the verdict it shows is an earlier attempt's.
func ranWithoutAllow(j *store.Job) string {
	if j.Safety.Decision != "ALLOW" {
		return fmt.Sprintf("%s on worker %q at attempt %d, but its safety verdict is %q (rule %q: %s)",
			j.State, j.WorkerID, j.Attempt, j.Safety.Decision, j.Safety.Rule, j.Safety.Reason)
	}
	dispatched, ok := j.Entered[store.Dispatched]
	if !ok {
		return fmt.Sprintf("%s on worker %q at attempt %d, but it never entered DISPATCHED, where its verdict is recorded",
			j.State, j.WorkerID, j.Attempt)
	}
	for _, a := range j.Attempts {
		if a.Attempt == j.Attempt-1 && dispatched.Before(a.EndedAt) {
			return fmt.Sprintf("%s on worker %q at attempt %d, but it last entered DISPATCHED before attempt %d ended: its ALLOW is that attempt's",
				j.State, j.WorkerID, j.Attempt, a.Attempt)
		}
	}
	return ""
}

// reasonClass shortens a reason for counting: no ids, at most 70 chars.
func reasonClass(reason string) string {
	if reason == "" {
		return "(no reason)"
	}
	f := strings.Fields(reason)
	for i, w := range f {
		if len(w) >= 32 && strings.Count(w, "-") >= 4 {
			f[i] = "<id>"
		}
	}
	s := strings.Join(f, " ")
	if len(s) > 70 {
		s = s[:70] + "..."
	}
	return s
}

func fmtCounts[K ~string](m map[K]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.Sorted(maps.Keys(m))
	slices.SortStableFunc(keys, func(a, b K) int { return m[b] - m[a] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func (r *Report) String(title string, jobs int, kills []string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	nonTerminal := 0
	for _, v := range r.nonTerminal {
		nonTerminal += v
	}
	p("==================== %s summary ====================", title)
	p("jobs submitted (idempotency keys)  %6d", jobs)
	p("kills (SIGKILL + restart)          %s", strings.Join(cmpOr(kills, []string{"none"}), ", "))
	for _, k := range r.Kills {
		p("    %s", k)
	}
	p("accepted (answered with a job id)  %6d", r.accepted)
	p("never accepted (gave up retrying)  %6d", r.neverAccepted)
	p("refused for good                   %6d", r.refused)
	p("--- terminal states of accepted jobs (exactly one each) ---")
	for _, st := range []store.State{store.Completed, store.Failed, store.Denied, store.Cancelled, store.Timeout} {
		p("  %-10s                       %6d", st, r.byState[st])
	}
	p("--- failures of the guarantee ---")
	p("LOST: still not terminal           %6d  %s", nonTerminal, fmtCounts(r.nonTerminal))
	groups := slices.Collect(maps.Values(r.lostBy))
	slices.SortFunc(groups, func(a, b *lostGroup) int {
		return cmp.Or(a.order-b.order, strings.Compare(string(a.state), string(b.state)))
	})
	for _, g := range groups {
		p("    %5d %-10s %s; created +%.1fs..+%.1fs", g.n, g.state, g.phase, g.min.Seconds(), g.max.Seconds())
	}
	p("LOST: unknown id (no record)       %6d", r.unknown)
	p("LOST: unreadable record            %6d", r.unreadable)
	p("two outcomes in the record         %6d", r.twoOutcomesStore)
	p("two terminal states in events      %6d", r.twoOutcomesEvents)
	p("event state != recorded state      %6d", r.eventDisagrees)
	p("COMPLETED without its result       %6d", r.BadResult)
	p("idempotency keys with two job ids  %6d", r.KeysTwoIDs)
	p("ran without an ALLOW verdict       %6d  of %d jobs that ran (COMPLETED, or a worker recorded)", r.ranWithoutAllow, r.ran)
	p("accepted share                     %5.1f%%  (at least %.0f%% required)", r.acceptedPercent(), 100*MinAcceptedShare)
	p("kills or restarts that failed      %6d", len(r.KillFailures))
	for _, f := range r.KillFailures {
		p("  %s", f)
	}
	p("--- other facts ---")
	p("%-35s%6d / %d", SleepTopic+" accepted / COMPLETED", r.sleeps, r.sleepsCompleted)
	p("ran again (attempt above 1)        %6d", r.reran)
	p("taken over from a silent worker    %6d", r.takenOver)
	p("attempt above max_attempts         %6d", r.attemptsOverMax)
	p("non-COMPLETED reasons              %s", fmtCounts(r.reasons))
	p("job events received %d (undecodable %d, dropped %d), terminal event for %d of %d accepted jobs, %d repeated terminal events, %d NATS reconnects of the test",
		r.evReceived, r.evBad, r.evDropped, r.evTerminalFor, r.accepted, r.evRepeats, r.evReconnects)
	p("submit: %d batch calls, %d answers deduplicated, slowest call %s; call errors: %s; per-job errors: %s",
		r.batches, r.dedup, r.slowestBatch.Round(time.Millisecond), fmtCounts(r.callErrs), fmtCounts(r.errCodes))
	p("time: submitting and kills ended at +%.1fs, waited %.1fs for jobs to end", r.SubmitTook.Seconds(), r.SettleTook.Seconds())
	if len(r.UnexpectedExits) == 0 {
		p("daemons that exited by themselves  none")
	} else {
		p("daemons that exited by themselves  %d (restarted by the test's supervisor):", len(r.UnexpectedExits))
		for _, e := range r.UnexpectedExits {
			p("  %s", e)
		}
	}
	if len(r.examples) > 0 {
		p("examples:")
		for _, e := range r.examples {
			p("  %s", e)
		}
	}
	p("=======================================================")
	return b.String()
}

// acceptedPercent is the share of the submitted jobs that were accepted, in
// percent.
func (r *Report) acceptedPercent() float64 {
	if r.submitted == 0 {
		return 0
	}
	return 100 * float64(r.accepted) / float64(r.submitted)
}

func cmpOr[T any](s, def []T) []T {
	if len(s) == 0 {
		return def
	}
	return s
}
