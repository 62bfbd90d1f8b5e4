package top

import (
	"context"
	"slices"
	"sync"
	"time"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

const (
	// rateWindow is the sliding window of jobs/s and p99 latency.
	rateWindow = 10 * time.Second
	// sparkSeconds is how many seconds the sparklines show.
	sparkSeconds = 30
	// latencySamples caps the latencies kept per pool.
	latencySamples = 1024
	// recentCap caps the recent jobs, decisions and denials kept.
	recentCap = 256
	// liveCap caps the unfinished jobs tracked for the backlog; beyond it
	// the oldest are forgotten.
	liveCap = 200_000
	// liveTTL forgets an unfinished job not heard of for this long (an
	// event the gateway dropped).
	liveTTL = 10 * time.Minute
)

// Stats is what the tracker has seen, as of one moment: the header's
// rates, each pool's queue and latency, and the newest jobs, decisions
// and denials, newest first.
type Stats struct {
	At        time.Time
	InPerSec  float64
	OutPerSec float64
	// InSpark and OutSpark are jobs per second, oldest first, one a second.
	InSpark  []int
	OutSpark []int
	// Backlog counts the jobs seen arriving that are not yet running.
	Backlog int
	// Queue is the backlog by topic (a job is routed to a pool by its
	// topic, and PENDING jobs have no pool yet).
	Queue map[string]int
	// P99 is the 99th percentile of created → finished by pool.
	P99       map[string]time.Duration
	Jobs      []*cortexv1.Job
	Decisions []*cortexv1.SafetyDecisionEvent
	// Denials are the newest DENY decisions, kept apart from Decisions so
	// that a stream of allows does not push them out. A denial may be in
	// both (the same pointer).
	Denials []*cortexv1.SafetyDecisionEvent
	// Dropped counts the events and decisions the gateway skipped.
	Dropped uint64
	// EventsErr and DecisionsErr say why a stream is down ("" when up).
	EventsErr, DecisionsErr string
}

type bucket struct {
	sec     int64
	in, out int
}

type sample struct {
	at time.Time
	d  time.Duration
}

type liveJob struct {
	topic string
	state cortexv1.JobState
	seen  time.Time
}

// tracker turns the event and decision streams into Stats. It is safe
// for concurrent use: the streams write, the UI reads a snapshot.
type tracker struct {
	mu        sync.Mutex
	start     time.Time
	buckets   [sparkSeconds + 1]bucket
	live      map[string]liveJob
	lat       map[string][]sample
	jobs      []*cortexv1.Job
	decisions []*cortexv1.SafetyDecisionEvent
	denials   []*cortexv1.SafetyDecisionEvent
	dropped   uint64
	eventsErr string
	decErr    string
}

func newTracker(now time.Time) *tracker {
	return &tracker{start: now, live: map[string]liveJob{}, lat: map[string][]sample{}}
}

func (t *tracker) bucket(now time.Time) *bucket {
	sec := now.Unix()
	b := &t.buckets[sec%int64(len(t.buckets))]
	if b.sec != sec {
		*b = bucket{sec: sec}
	}
	return b
}

// terminal reports whether s is a final state.
func terminal(s cortexv1.JobState) bool {
	switch s {
	case cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
		cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		return true
	}
	return false
}

// queued reports whether a job in s waits to run.
func queued(s cortexv1.JobState) bool {
	switch s {
	case cortexv1.JobState_JOB_STATE_PENDING, cortexv1.JobState_JOB_STATE_SCHEDULED, cortexv1.JobState_JOB_STATE_DISPATCHED:
		return true
	}
	return false
}

// observeJob counts one job event: a PENDING one arrives, a terminal one
// leaves (with its latency counted against its pool).
func (t *tracker) observeJob(j *cortexv1.Job, dropped uint64, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropped += dropped
	t.eventsErr = ""
	if j == nil {
		return
	}
	id, st := j.GetJobId(), j.GetState()
	switch {
	case st == cortexv1.JobState_JOB_STATE_PENDING:
		t.bucket(now).in++
	case terminal(st):
		t.bucket(now).out++
		delete(t.live, id)
		if pool := j.GetPool(); pool != "" && j.GetCreatedAt() != nil && j.GetUpdatedAt() != nil {
			s := t.lat[pool]
			if len(s) >= latencySamples {
				s = s[1:]
			}
			t.lat[pool] = append(s, sample{at: now, d: j.GetUpdatedAt().AsTime().Sub(j.GetCreatedAt().AsTime())})
		}
	}
	if !terminal(st) {
		if len(t.live) >= liveCap {
			t.forgetOldest()
		}
		t.live[id] = liveJob{topic: j.GetTopic(), state: st, seen: now}
	}
	t.jobs = appendCapped(t.jobs, j)
}

func (t *tracker) forgetOldest() {
	var oldest string
	var at time.Time
	for id, l := range t.live {
		if oldest == "" || l.seen.Before(at) {
			oldest, at = id, l.seen
		}
	}
	delete(t.live, oldest)
}

// observeDecision keeps one decision among the recent ones and, a denial,
// among the recent denials too.
func (t *tracker) observeDecision(ev *cortexv1.SafetyDecisionEvent, dropped uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropped += dropped
	t.decErr = ""
	if ev == nil {
		return
	}
	t.decisions = appendCapped(t.decisions, ev)
	if denied(ev) {
		t.denials = appendCapped(t.denials, ev)
	}
}

// denied reports whether ev is a denial.
func denied(ev *cortexv1.SafetyDecisionEvent) bool {
	return ev.GetVerdict().GetDecision() == cortexv1.Decision_DECISION_DENY
}

func (t *tracker) streamDown(events bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	msg := "stream ended"
	if err != nil {
		msg = err.Error()
	}
	if events {
		t.eventsErr = msg
	} else {
		t.decErr = msg
	}
}

// appendCapped appends v, keeping the newest recentCap. The slice is
// copied when it is trimmed, so snapshots handed out stay valid.
func appendCapped[T any](s []T, v T) []T {
	if len(s) >= 2*recentCap {
		s = slices.Clone(s[len(s)-recentCap:])
	}
	return append(s, v)
}

// snapshot returns the Stats as of now.
func (t *tracker) snapshot(now time.Time) Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := Stats{At: now, Queue: map[string]int{}, P99: map[string]time.Duration{}, Dropped: t.dropped,
		EventsErr: t.eventsErr, DecisionsErr: t.decErr}
	sec := now.Unix()
	// The current second is still filling: rates and sparks use whole ones.
	spark := func(get func(bucket) int) []int {
		out := make([]int, sparkSeconds)
		for i := range sparkSeconds {
			s := sec - int64(sparkSeconds-i)
			if b := t.buckets[s%int64(len(t.buckets))]; b.sec == s {
				out[i] = get(b)
			}
		}
		return out
	}
	st.InSpark = spark(func(b bucket) int { return b.in })
	st.OutSpark = spark(func(b bucket) int { return b.out })
	win := int(rateWindow / time.Second)
	if el := int(now.Sub(t.start) / time.Second); el < win {
		win = max(el, 1)
	}
	var in, out int
	for i := sparkSeconds - win; i < sparkSeconds; i++ {
		in += st.InSpark[i]
		out += st.OutSpark[i]
	}
	st.InPerSec, st.OutPerSec = float64(in)/float64(win), float64(out)/float64(win)
	for id, l := range t.live {
		if now.Sub(l.seen) > liveTTL {
			delete(t.live, id)
			continue
		}
		if queued(l.state) {
			st.Backlog++
			st.Queue[l.topic]++
		}
	}
	for pool, samples := range t.lat {
		var ds []time.Duration
		for _, s := range samples {
			if now.Sub(s.at) <= rateWindow {
				ds = append(ds, s.d)
			}
		}
		if len(ds) > 0 {
			st.P99[pool] = percentile(ds, 0.99)
		}
	}
	st.Jobs = newestJobs(t.jobs, recentCap)
	st.Decisions = newestFirst(t.decisions, recentCap)
	st.Denials = newestFirst(t.denials, recentCap)
	return st
}

// newestFirst returns the last n of s (oldest first), newest first.
func newestFirst[T any](s []T, n int) []T {
	out := make([]T, 0, min(len(s), n))
	for i := len(s) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, s[i])
	}
	return out
}

// withDenials returns st's recent decisions followed by the denials that
// are older than all of them, newest first: every decision and denial the
// tracker kept, once each. (The recent decisions are the latest ones, so a
// kept denial not among them came before them.)
func withDenials(st Stats) []*cortexv1.SafetyDecisionEvent {
	in := make(map[*cortexv1.SafetyDecisionEvent]bool, len(st.Decisions))
	for _, d := range st.Decisions {
		in[d] = true
	}
	out := slices.Clip(st.Decisions)
	for _, d := range st.Denials {
		if !in[d] {
			out = append(out, d)
		}
	}
	return out
}

// newestJobs returns the latest event of each job in events (oldest
// first), newest first, at most n.
func newestJobs(events []*cortexv1.Job, n int) []*cortexv1.Job {
	seen := make(map[string]bool, len(events))
	out := make([]*cortexv1.Job, 0, min(len(events), n))
	for i := len(events) - 1; i >= 0 && len(out) < n; i-- {
		if id := events[i].GetJobId(); !seen[id] {
			seen[id] = true
			out = append(out, events[i])
		}
	}
	return out
}

// percentile returns the p-th quantile of ds (sorted in place), nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	i := int(float64(len(ds))*p+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// feed runs both streams into t until ctx ends, opening each again with
// backoff whenever it fails.
func feed(ctx context.Context, src Source, t *tracker, now func() time.Time) {
	var wg sync.WaitGroup
	wg.Go(func() {
		follow(ctx, func(ok func()) error {
			return src.Events(ctx, func(j *cortexv1.Job, d uint64) { ok(); t.observeJob(j, d, now()) })
		}, func(err error) { t.streamDown(true, err) })
	})
	wg.Go(func() {
		follow(ctx, func(ok func()) error {
			return src.Decisions(ctx, func(ev *cortexv1.SafetyDecisionEvent, d uint64) { ok(); t.observeDecision(ev, d) })
		}, func(err error) { t.streamDown(false, err) })
	})
	wg.Wait()
}

// follow calls read until ctx ends, waiting between calls with a backoff
// that a received message (ok) resets.
func follow(ctx context.Context, read func(ok func()) error, down func(error)) {
	delay := minRetry
	for ctx.Err() == nil {
		got := false
		err := read(func() { got = true })
		if ctx.Err() != nil {
			return
		}
		down(err)
		if got {
			delay = minRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, maxRetry)
	}
}
