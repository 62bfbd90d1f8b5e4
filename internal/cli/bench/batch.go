package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/cli/job"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Batched says how RunBatched submits.
type Batched struct {
	Jobs, Concurrency, Batch int
	// Rate paces submits to this many jobs a second overall (0: as fast as
	// the gateway takes them).
	Rate          float64
	Topic, Prompt string
	// Timeout bounds the wait for the last results.
	Timeout time.Duration
	// Recheck is how long the event stream may bring no job's end, while
	// jobs sent have not ended, before bench reads them from the store
	// (0: defaultRecheck).
	Recheck time.Duration
	// Ended, when not nil, counts the jobs as they end, for progress.
	Ended *atomic.Int64
}

// Reading the store for the ends the event stream did not bring. Events
// are best effort (a NATS restart loses some, a slow reader has some
// skipped) while the job records are the truth.
const (
	// defaultRecheck is Batched.Recheck's default.
	defaultRecheck = 2 * time.Second
	// missedRecheck is how long after the stream said it lost events
	// (skipped ones, or a break) bench reads the store for them, letting
	// the ends on their way come first.
	missedRecheck = 250 * time.Millisecond
	// storeReaders bounds the GetJob calls in flight.
	storeReaders = 16
	// firstChunk and maxChunk bound how many jobs one step of a read asks
	// for; a read goes on, oldest jobs first, while its steps find ends.
	firstChunk = 64
	maxChunk   = 1024
)

// RunBatched submits jobs in batches (SubmitJobs) from b.Concurrency
// clients and follows them all on one event stream, as a high-volume
// producer would. Latency is from the batch's submit to the job's end.
//
// When the stream brings no end for b.Recheck, or says it lost events, or
// breaks (it is opened again, with backoff), the jobs it has not brought
// the end of are read from the store; an end found there counts as of the
// read, which over-estimates its latency, and the report says how many
// came so.
func RunBatched(ctx context.Context, c cortexv1connect.GatewayServiceClient, b Batched) (*Report, error) {
	interrupted := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recheck := b.Recheck
	if recheck <= 0 {
		recheck = defaultRecheck
	}
	t := &tracker{sent: make(map[string]time.Time, b.Jobs), ended: make(map[string]end, b.Jobs), lastEnd: time.Now(), progress: b.Ended}
	listening := make(chan struct{})
	go func() {
		defer close(listening)
		t.listen(ctx, c, &cortexv1.StreamEventsRequest{Topic: b.Topic, States: []cortexv1.JobState{
			cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
			cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT,
		}})
	}()
	// The stream goroutine has ended when RunBatched returns.
	defer func() { cancel(); <-listening }()
	// A probe job proves the stream is listening before the clock starts.
	probe, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: b.Topic, Prompt: b.Prompt})
	if err != nil {
		return nil, err
	}
	if err := t.waitProbe(ctx, c, probe.GetJobId(), 10*time.Second); err != nil {
		return nil, err
	}

	start := time.Now()
	t.mu.Lock()
	t.lastEnd = start
	t.mu.Unlock()
	batches := make(chan int)
	go func() {
		defer close(batches)
		var tick <-chan time.Time
		if b.Rate > 0 {
			t := time.NewTicker(time.Duration(float64(time.Second) * float64(b.Batch) / b.Rate))
			defer t.Stop()
			tick = t.C
		}
		for left := b.Jobs; left > 0; left -= b.Batch {
			if tick != nil {
				select {
				case <-tick:
				case <-ctx.Done():
					return
				}
			}
			select {
			case batches <- min(b.Batch, left):
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, b.Concurrency)
	for range b.Concurrency {
		wg.Go(func() {
			for n := range batches {
				req := &cortexv1.SubmitJobsRequest{Jobs: make([]*cortexv1.SubmitJobRequest, n)}
				for i := range req.Jobs {
					req.Jobs[i] = &cortexv1.SubmitJobRequest{Topic: b.Topic, Prompt: b.Prompt}
				}
				t0 := time.Now()
				res, err := c.SubmitJobs(ctx, req)
				if err == nil {
					err = t.recordSent(res, t0)
				}
				if err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
	submitted := make(chan struct{})
	go func() { wg.Wait(); close(submitted) }()
	// Wait, while submitting and then up to the timeout, until every job
	// sent has ended, reading the store when the stream falls short.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var deadline time.Time
	for {
		select {
		case <-ctx.Done():
			if interrupted.Err() == nil {
				// A client failed (and stopped the others).
				return nil, fmt.Errorf("bench stopped: %w", <-errs)
			}
			// Interrupted: the figures of the jobs sent so far (a client
			// whose call the interruption cut short failed for that only).
			r := t.report(start, 0)
			r.Interrupted, r.Elapsed = true, time.Since(start)
			return r, ctx.Err()
		case <-submitted:
			submitted = nil
			select {
			case err := <-errs:
				return nil, fmt.Errorf("bench stopped: %w", err)
			default:
			}
			deadline = time.Now().Add(b.Timeout)
		case <-tick.C:
		}
		now := time.Now()
		if !deadline.IsZero() && (t.allEnded() || now.After(deadline)) {
			break
		}
		if ids := t.due(now, recheck); len(ids) > 0 {
			t.readStore(ctx, c, ids)
		}
	}
	return t.report(start, b.Jobs), nil
}

// report is what t saw of the jobs sent since start: jobs of them (0: as
// many as were sent).
func (t *tracker) report(start time.Time, jobs int) *Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	if jobs == 0 {
		jobs = len(t.sent)
	}
	r := &Report{Jobs: jobs}
	var last time.Time
	for id, t0 := range t.sent {
		e, ok := t.ended[id]
		if !ok {
			continue
		}
		r.Latencies = append(r.Latencies, e.at.Sub(t0))
		r.ended(e.state)
		if e.fromStore {
			r.FromStore++
		}
		if e.at.After(last) {
			last = e.at
		}
	}
	r.Elapsed = max(last.Sub(start), 0)
	slices.Sort(r.Latencies)
	r.NotDone = jobs - r.Completed
	r.Dropped, r.StreamBreaks = t.dropped, t.breaks
	if t.streamErr != nil {
		r.StreamErr = t.streamErr.Error()
	}
	return r
}

// end is when a job ended and how, as far as bench knows.
type end struct {
	at    time.Time
	state cortexv1.JobState
	// fromStore: the stream did not bring the end; a read of the store
	// found it, at.
	fromStore bool
}

// tracker holds what RunBatched knows of the jobs it sent: when, and
// their ends, from the event stream or the store.
type tracker struct {
	mu    sync.Mutex
	sent  map[string]time.Time
	ended map[string]end
	// open counts the jobs sent whose end is not known.
	open int
	// lastEnd is when the stream last brought an end, lastRead when the
	// last read of the store ended.
	lastEnd, lastRead time.Time
	// missedSince is when the stream first said it lost events (the
	// gateway skipped some, or the stream broke) since the last read of
	// the store for them, missedUpTo when it last did: the jobs sent
	// before then may have lost their ends. Zero: nothing lost.
	missedSince, missedUpTo time.Time
	// heard says the stream has brought a message.
	heard bool
	// progress, when not nil, counts the ends of jobs sent.
	progress *atomic.Int64
	// dropped counts the events the gateway skipped, breaks the times the
	// stream broke; streamErr is why bench stopped opening it again.
	dropped   uint64
	breaks    int
	streamErr error
}

// listen follows the stream req asks for until ctx ends, noting the ends
// it brings, and opens it again, with backoff, whenever it breaks; one
// that fails for good (the request is wrong, say) leaves the ends to the
// reads of the store.
func (t *tracker) listen(ctx context.Context, c cortexv1connect.GatewayServiceClient, req *cortexv1.StreamEventsRequest) {
	var backoff job.Backoff
	for {
		err := t.listenOnce(ctx, c, req, backoff.Reset)
		if ctx.Err() != nil {
			return
		}
		t.mu.Lock()
		t.breaks++
		t.lostEvents(time.Now())
		if lasting(err) {
			t.streamErr = err
		}
		t.mu.Unlock()
		if lasting(err) {
			return
		}
		timer := time.NewTimer(backoff.Next())
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// lasting reports whether opening the stream again would fail the same
// way.
func lasting(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeUnimplemented:
		return true
	}
	return false
}

// listenOnce reads one stream until it fails, calling up at its first
// message.
func (t *tracker) listenOnce(ctx context.Context, c cortexv1connect.GatewayServiceClient, req *cortexv1.StreamEventsRequest, up func()) error {
	s, err := c.StreamEvents(ctx, req)
	if err != nil {
		return err
	}
	defer func() { _ = s.Close() }()
	first := true
	for {
		msg, err := s.Receive()
		if err != nil {
			return err // io.EOF too: the gateway ended the stream
		}
		now := time.Now()
		t.mu.Lock()
		if first {
			first = false
			up()
			// After a break, ends may have come while it was down.
			if t.breaks > 0 {
				t.lostEvents(now)
			}
			t.heard = true
		}
		if msg.GetDropped() > 0 || msg.GetBusGap() {
			// Skipped for a slow reader, or lost while the gateway was off
			// the bus: the store has the ends.
			t.dropped += msg.GetDropped()
			t.lostEvents(now)
		}
		if j := msg.GetJob(); j != nil {
			t.noteEnd(j, now, false)
		}
		for _, j := range msg.GetJobs() {
			t.noteEnd(j, now, false)
		}
		t.mu.Unlock()
	}
}

// lostEvents notes that the stream said at now it had lost events. Called
// with t.mu held.
func (t *tracker) lostEvents(now time.Time) {
	if t.missedSince.IsZero() {
		t.missedSince = now
	}
	t.missedUpTo = now
}

// noteEnd records j's end, at, unless it is known already or j has not
// ended. Called with t.mu held.
func (t *tracker) noteEnd(j *cortexv1.Job, at time.Time, fromStore bool) bool {
	if !job.Terminal(j.GetState()) {
		return false
	}
	id := j.GetJobId()
	if _, seen := t.ended[id]; seen {
		return false
	}
	t.ended[id] = end{at: at, state: j.GetState(), fromStore: fromStore}
	if _, ok := t.sent[id]; ok {
		t.open--
		if t.progress != nil {
			t.progress.Add(1)
		}
	}
	if !fromStore {
		t.lastEnd = at
	}
	return true
}

// recordSent notes the submit time of every job of a batch answer.
func (t *tracker) recordSent(res *cortexv1.SubmitJobsResponse, t0 time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, one := range res.GetResults() {
		if one.GetError() != "" {
			return fmt.Errorf("a job was refused: %s: %s", one.GetErrorCode(), one.GetError())
		}
		t.sent[one.GetJobId()] = t0
		if _, ok := t.ended[one.GetJobId()]; !ok {
			t.open++
		} else if t.progress != nil {
			t.progress.Add(1) // its end came before its submit's answer
		}
	}
	return nil
}

func (t *tracker) allEnded() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open == 0
}

// due returns the jobs to read from the store now, oldest first: none
// while the stream brings ends; after it has brought none for recheck,
// those sent at least recheck ago; shortly after it said it lost events,
// those sent before it said so.
func (t *tracker) due(now time.Time, recheck time.Duration) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == 0 {
		return nil
	}
	var sentBy time.Time
	switch {
	case !t.missedSince.IsZero() && now.Sub(t.missedSince) >= missedRecheck:
		sentBy = t.missedUpTo
		t.missedSince, t.missedUpTo = time.Time{}, time.Time{}
	case now.Sub(t.lastEnd) >= recheck && now.Sub(t.lastRead) >= recheck:
		sentBy = now.Add(-recheck)
	default:
		return nil
	}
	// Nothing to read counts as a read: the next look is recheck on.
	t.lastRead = now
	var ids []string
	for id, t0 := range t.sent {
		if _, ok := t.ended[id]; !ok && !t0.After(sentBy) {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b string) int { return t.sent[a].Compare(t.sent[b]) })
	return ids
}

// readStore reads the jobs ids (oldest first) from the store and notes
// those that ended, a chunk at a time, storeReaders at once; it stops at
// a chunk that finds no end (the younger jobs are likely running still)
// or at an error (the gateway is down: the next read tries again).
func (t *tracker) readStore(ctx context.Context, c cortexv1connect.GatewayServiceClient, ids []string) {
	defer func() {
		t.mu.Lock()
		t.lastRead = time.Now()
		t.mu.Unlock()
	}()
	for chunk := firstChunk; len(ids) > 0; chunk = min(2*chunk, maxChunk) {
		n := min(chunk, len(ids))
		found, err := t.readChunk(ctx, c, ids[:n])
		ids = ids[n:]
		if err != nil || found == 0 {
			return
		}
	}
}

func (t *tracker) readChunk(ctx context.Context, c cortexv1connect.GatewayServiceClient, ids []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	next := make(chan string)
	var (
		mu    sync.Mutex
		found int
		first error
	)
	var wg sync.WaitGroup
	for range min(storeReaders, len(ids)) {
		wg.Go(func() {
			for id := range next {
				res, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id})
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
						cancel()
					}
					mu.Unlock()
					continue
				}
				t.mu.Lock()
				got := t.noteEnd(res.GetJob(), time.Now(), true)
				t.mu.Unlock()
				if got {
					mu.Lock()
					found++
					mu.Unlock()
				}
			}
		})
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		select {
		case next <- id:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return found, first
}

// waitProbe waits until the stream has brought the end of job id. One the
// stream missed but the store has ended will do: the reads of the store
// make up for a lossy stream.
func (t *tracker) waitProbe(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; time.Sleep(time.Millisecond) {
		t.mu.Lock()
		_, ok := t.ended[id]
		heard, serr := t.heard, t.streamErr
		t.mu.Unlock()
		switch {
		case ok:
			return nil
		case serr != nil && !heard:
			return fmt.Errorf("event stream: %w", serr)
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			if res, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id}); err == nil && job.Terminal(res.GetJob().GetState()) {
				return nil
			}
			return errors.New("the event stream did not see the probe job: timed out")
		}
	}
}
