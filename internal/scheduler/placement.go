package scheduler

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Placement. An allowed job joins its pool's queue, and leaves it for the
// pool's durable job stream while the pool has free capacity: the max
// parallel jobs of its live, non-draining workers (from their heartbeats,
// via the registry) less the jobs this scheduler released into the pool
// that have not ended. The queue is served higher priority first, first
// come first served within a priority, whenever capacity appears: a
// heartbeat (a worker came, or came back) or the end of a job; and not
// below the highest priority another scheduler holds queued for the pool
// (heads.go). A job
// waits, PENDING with the reason recorded, while its pool has no live
// worker.
//
// Which worker runs a released job is the workers' business: each pulls
// from its pool's consumer only as many jobs as it has free slots, so the
// least loaded worker takes the most, no worker ever holds more than its
// max parallel jobs, and a job whose worker dies is redelivered to another
// when its lease (the consumer's AckWait) runs out.
//
// The scheduler learns that a job ended from sys.job.event, which carries
// every change whoever made it (the worker records COMPLETED itself; the
// scheduler retries and fails; the gateway cancels): an attempt ends when
// its job is terminal, or PENDING or awaiting approval at a later attempt.
// A queued job that ends while it waits (cancelled, say) leaves its queue
// on that event, so that it is neither counted as waiting nor released.
// Events are best effort: a released job not heard of for its deadline
// (twice the lease) gives its slot back, as do the jobs of a pool that lost
// all its workers. Several schedulers each count their own releases; when
// together they release more than a pool can run, the extra waits in the
// stream (first in, first out) and no worker is overfilled.

// flight is one attempt released into a pool and not yet ended.
type flight struct {
	pool    string
	attempt uint32
	at      time.Time
}

// waiting is one allowed attempt in a pool's queue.
type waiting struct {
	traceID string
	req     *cortexv1.JobRequest
	verdict *store.Verdict
	// priority is the request's, and seq its arrival, for the queue's
	// order (held here: a heap compares often, and the request is further
	// away in memory).
	priority int32
	seq      uint64
	// pool is the queue it waits in, and index its place in that heap
	// (kept by the heap's methods), so that it can leave from anywhere.
	pool  string
	index int
	// held is when its re-drive was last put off, or when it was queued.
	held time.Time
}

// queue is a pool's waiting jobs: higher priority first, then by arrival.
type queue []*waiting

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if pi, pj := q[i].priority, q[j].priority; pi != pj {
		return pi > pj
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *queue) Push(x any) {
	w := x.(*waiting)
	w.index = len(*q)
	*q = append(*q, w)
}
func (q *queue) Pop() any {
	old := *q
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	w.index = -1
	return w
}

// placement is the scheduler's queues and its view of capacity.
type placement struct {
	reg *registry.Registry
	// stale is how long a released job may go unheard of before its slot
	// is given back.
	stale time.Duration

	mu       sync.Mutex
	queues   map[string]*queue
	queued   map[string]*waiting // per job id
	seq      uint64
	inFlight map[string]int       // per pool
	flights  map[string]flight    // per job id
	swept    map[string]time.Time // per pool: when stale flights were last looked for
	// peers is the other schedulers' queue heads, by sender; shared is
	// this one's, as last told to them; sending is, per pool, the highest
	// priority of the jobs its placer took and has not yet stored in the
	// pool's stream, which count as queued until then (heads.go).
	peers   map[string]peerHeads
	shared  map[string]int32
	sending map[string]int32
	// sharing orders the tellings of this scheduler's heads.
	sharing sync.Mutex
	// placing holds the pools whose placer runs, and again those asked to
	// look once more while it did (see kick); once stopped, no placer
	// starts.
	placing, again map[string]bool
	placers        sync.WaitGroup
	stopped        bool
}

func newPlacement(reg *registry.Registry, stale time.Duration) *placement {
	return &placement{reg: reg, stale: stale, queues: map[string]*queue{}, queued: map[string]*waiting{},
		inFlight: map[string]int{}, flights: map[string]flight{}, swept: map[string]time.Time{},
		peers: map[string]peerHeads{}, sending: map[string]int32{}, placing: map[string]bool{}, again: map[string]bool{}}
}

// holds reports whether this scheduler has attempt of a job queued or
// released: a second copy of it (a re-drive) is not taken again.
func (pl *placement) holds(jobID string, attempt uint32) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if w, ok := pl.queued[jobID]; ok && w.req.GetAttempt() == attempt {
		return true
	}
	f, ok := pl.flights[jobID]
	return ok && f.attempt == attempt
}

// queueLocked returns pool's queue, made if new.
func (pl *placement) queueLocked(pool string) *queue {
	q := pl.queues[pool]
	if q == nil {
		q = &queue{}
		pl.queues[pool] = q
	}
	return q
}

// enqueue queues w in pool's queue, unless that attempt or a later one of
// the job already waits; an earlier one it replaces (its attempt is over).
// It reports whether the pool has a live worker.
func (pl *placement) enqueue(pool string, w *waiting) (live bool) {
	_, _, live = pl.reg.Capacity(pool)
	pl.mu.Lock()
	defer pl.mu.Unlock()
	id := w.req.GetJobId()
	if old, ok := pl.queued[id]; ok {
		if old.req.GetAttempt() >= w.req.GetAttempt() {
			return live
		}
		pl.unqueueLocked(old)
	}
	pl.seq++
	w.seq, w.priority, w.pool = pl.seq, w.req.GetPriority(), pool
	if w.held.IsZero() {
		w.held = deadlineSetBy(id)
	}
	pl.queued[id] = w
	heap.Push(pl.queueLocked(pool), w)
	return live
}

// holding returns the queued jobs whose re-drive was last put off (or
// whose deadline was set, as far as deadlineSetBy knows) before since,
// noting now as their put-off: the scheduler puts off their re-drive, so
// that no reconciler hands a job this scheduler holds to another one.
func (pl *placement) holding(since, now time.Time) []*waiting {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []*waiting
	for _, w := range pl.queued {
		if w.held.Before(since) {
			w.held = now
			out = append(out, w)
		}
	}
	return out
}

// deadlineSetBy is a time by which a job's redrive deadline was set: its
// creation, read from its id (a UUIDv7 starts with its Unix milliseconds),
// which is no later than its creation, a re-drive or a retry set it; now
// for an id that is not a UUIDv7.
func deadlineSetBy(id string) time.Time {
	now := time.Now()
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 {
		return now
	}
	if created := time.Unix(u.Time().UnixTime()); created.Before(now) {
		return created
	}
	return now
}

// putOffFailed has w's re-drive put off again at the next round: the
// store did not take this one.
func (pl *placement) putOffFailed(w *waiting) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	w.held = time.Time{}
}

// unqueueLocked takes w out of its queue.
func (pl *placement) unqueueLocked(w *waiting) {
	heap.Remove(pl.queues[w.pool], w.index)
	delete(pl.queued, w.req.GetJobId())
}

// maxJobsPerMessage bounds the jobs released together in one message of a
// pool's stream.
const maxJobsPerMessage = 64

// jobsPerMessage is how many released jobs share one message of a pool's
// stream: a quarter of the slots of its smallest live worker, so that a
// worker fills its free slots from a few messages and a small worker
// (fewer than 8 slots) takes its jobs one message each, as the balance
// between workers needs.
func jobsPerMessage(smallest int) int { return min(max(smallest/4, 1), maxJobsPerMessage) }

// take takes from pool's queue as many jobs as the pool has free capacity,
// counting each as released, and says how many may share a message. Jobs
// of lower priority than another scheduler's head for the pool stay
// (heads.go).
func (pl *placement) take(pool string, now time.Time) (picks []*waiting, perMessage int) {
	capacity, smallest, live := pl.reg.Capacity(pool)
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.forgetStaleLocked(pool, live, now)
	q := pl.queueLocked(pool)
	floor := pl.peerTopLocked(pool, now)
	for q.Len() > 0 && pl.inFlight[pool] < capacity && (*q)[0].priority >= floor {
		x := heap.Pop(q).(*waiting)
		id := x.req.GetJobId()
		delete(pl.queued, id)
		pl.releaseLocked(id)
		pl.flights[id] = flight{pool: pool, attempt: x.req.GetAttempt(), at: now}
		pl.inFlight[pool]++
		picks = append(picks, x)
		pl.sending[pool] = max(pl.sending[pool], x.priority)
	}
	return picks, jobsPerMessage(smallest)
}

// stop lets no placer start and waits for those running.
func (pl *placement) stop() {
	pl.mu.Lock()
	pl.stopped = true
	pl.mu.Unlock()
	pl.placers.Wait()
}

// drain empties every queue and returns what waited.
func (pl *placement) drain() []*waiting {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var out []*waiting
	for _, q := range pl.queues {
		for q.Len() > 0 {
			out = append(out, heap.Pop(q).(*waiting))
		}
	}
	clear(pl.queued)
	return out
}

// sweepEvery spaces the looks for stale flights of a pool: each look goes
// over every flight.
const sweepEvery = time.Second

// forgetStaleLocked gives back the slots of pool's released jobs not heard
// of for too long, and all of them when the pool has no live worker. It
// looks at most once per sweepEvery unless the pool has no live worker.
func (pl *placement) forgetStaleLocked(pool string, live bool, now time.Time) {
	if pl.inFlight[pool] == 0 || live && now.Sub(pl.swept[pool]) < sweepEvery {
		return
	}
	pl.swept[pool] = now
	for id, f := range pl.flights {
		if f.pool == pool && (!live || now.Sub(f.at) > pl.stale) {
			pl.releaseLocked(id)
		}
	}
}

func (pl *placement) releaseLocked(jobID string) (flight, bool) {
	f, ok := pl.flights[jobID]
	if !ok {
		return f, false
	}
	delete(pl.flights, jobID)
	if pl.inFlight[f.pool]--; pl.inFlight[f.pool] <= 0 {
		delete(pl.inFlight, f.pool)
	}
	return f, true
}

// release frees the slot held by attempt of job, if it holds one, and
// returns its pool.
func (pl *placement) release(jobID string, attempt uint32) (string, bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if f, ok := pl.flights[jobID]; !ok || f.attempt != attempt {
		return "", false
	}
	f, _ := pl.releaseLocked(jobID)
	return f.pool, true
}

// ended reports whether a job event means that attempt of the job is over.
// A final state at an earlier attempt is an old event (a dead letter given
// another attempt since): it ends nothing.
func ended(j bus.EventHead, attempt uint32) bool {
	st := store.StateOf(j.State)
	switch {
	case st.Terminal():
		return j.Attempt >= attempt
	case st == store.Pending || st == store.AwaitingApproval:
		return j.Attempt > attempt
	}
	return false
}

// onJobEvent frees the slots of attempts that ended, drops from the queues
// the jobs that ended while they waited, and places what waits in the
// pools that gained a slot. It reads only the events' heads: the rest of a
// record is not its business.
func (s *Scheduler) onJobEvent(ctx context.Context, ev *bus.EventPacket) error {
	for _, j := range ev.Heads {
		s.noteEnded(ctx, j)
	}
	return nil
}

// noteEnded acts on j if it says that an attempt this scheduler holds
// ended: a released one frees its slot, and its pool is placed again; a
// queued one (cancelled, say, while it waited) leaves its queue, so it is
// no longer counted as waiting, nor ever released.
func (s *Scheduler) noteEnded(ctx context.Context, j bus.EventHead) {
	if pool, freed := s.place.forget(j); freed {
		s.kick(ctx, pool)
	}
}

// forget drops j's queued attempt and frees the slot of its released one,
// each if j says it ended, and returns the pool of a freed slot.
func (pl *placement) forget(j bus.EventHead) (pool string, freed bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if w, ok := pl.queued[j.JobID]; ok && ended(j, w.req.GetAttempt()) {
		pl.unqueueLocked(w)
	}
	if f, ok := pl.flights[j.JobID]; ok && ended(j, f.attempt) {
		pl.releaseLocked(j.JobID)
		return f.pool, true
	}
	return "", false
}

// onHeartbeat feeds the registry and places what waits in the worker's
// pool, which may have gained capacity.
func (s *Scheduler) onHeartbeat(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	if err := s.reg.Observe(p); err != nil {
		return err
	}
	s.kick(ctx, p.GetHeartbeat().GetPool())
	return nil
}

// placed is an allowed job and the pool it is queued in.
type placed struct {
	pool string
	w    *waiting
}

// placeAll queues jobs in their pools, then has each pool's placer release
// what has a free slot: jobs that arrived together leave together. A job
// that must wait because its pool has no live worker gets the reason
// recorded.
func (s *Scheduler) placeAll(ctx context.Context, jobs []placed) {
	var pools []string
	var idle []placed
	for _, p := range jobs {
		if !s.place.enqueue(p.pool, p.w) {
			idle = append(idle, p)
		}
		if !slices.Contains(pools, p.pool) {
			pools = append(pools, p.pool)
		}
	}
	for _, pool := range pools {
		s.kick(ctx, pool)
	}
	// At once, so that the store sends the reasons together.
	var wg sync.WaitGroup
	for _, p := range idle {
		wg.Go(func() { s.noteWaiting(ctx, p) })
	}
	wg.Wait()
}

// noteWaiting records why p's job waits: its pool has no live worker.
func (s *Scheduler) noteWaiting(ctx context.Context, p placed) {
	id := p.w.req.GetJobId()
	reason := idleReason(p.pool, s.reg.Draining(p.pool))
	j, err := s.store.SetPendingReason(ctx, id, p.w.req.GetAttempt(), p.pool, reason, time.Now())
	if err != nil {
		// Placed meanwhile, or cancelled: its own state says more.
		s.log.Info("pending reason not recorded", "trace_id", p.w.traceID, "job_id", id, "err", err)
		return
	}
	if err := s.conn.PublishJobEvent(p.w.traceID, j.Proto()); err != nil {
		s.log.Warn("publish job event", "trace_id", p.w.traceID, "job_id", id, "err", err)
	}
}

// idleReason says why a job waits in pool, which has no live worker:
// draining counts its workers that still heartbeat but take no new jobs.
func idleReason(pool string, draining int) string {
	switch draining {
	case 0:
		return fmt.Sprintf("waiting for a live worker in pool %s (none has sent a heartbeat in the last %s)",
			pool, registry.MissedBeats*registry.DefaultInterval)
	case 1:
		return fmt.Sprintf("waiting for a worker in pool %s: its 1 live worker is draining and takes no new jobs", pool)
	}
	return fmt.Sprintf("waiting for a worker in pool %s: its %d live workers are draining and take no new jobs", pool, draining)
}

// kick has pool's placer release what its queue holds while the pool has
// free slots. One placer runs per pool: a kick while it runs makes it look
// again when done, so the slots freed and jobs queued while it sent are
// released together, in one round trip to the store and one to the bus:
// the busier the pool, the bigger the batches, and no timer adds latency.
func (s *Scheduler) kick(ctx context.Context, pool string) {
	pl := s.place
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.stopped {
		return
	}
	if pl.placing[pool] {
		pl.again[pool] = true
		return
	}
	pl.placing[pool] = true
	pl.placers.Add(1)
	go func() {
		defer pl.placers.Done()
		for {
			if picks, per := pl.take(pool, time.Now()); len(picks) > 0 {
				s.send(ctx, pool, picks, per)
				pl.mu.Lock()
				delete(pl.sending, pool)
				pl.mu.Unlock()
			}
			s.shareHeads(false)
			pl.mu.Lock()
			if !pl.again[pool] {
				delete(pl.placing, pool)
				pl.mu.Unlock()
				return
			}
			delete(pl.again, pool)
			pl.mu.Unlock()
		}
	}()
}

// send records released jobs DISPATCHED to pool and stores them in the
// pool's job stream, up to perMessage jobs of one topic per message, all
// in flight at once. A job that cannot be recorded (cancelled while it
// waited) gives its slot back; one the stream does not take goes back to
// PENDING for the reconciler to re-drive.
func (s *Scheduler) send(ctx context.Context, pool string, picks []*waiting, perMessage int) {
	moves := make([]store.Move, len(picks))
	traces := make([]string, len(picks))
	for i, w := range picks {
		traces[i] = w.traceID
		moves[i] = store.Move{ID: w.req.GetJobId(), Change: store.Change{To: store.Dispatched, Attempt: w.req.GetAttempt(), Pool: pool, Safety: w.verdict}}
	}
	var ds []bus.Durable
	sent := map[string]*waiting{}
	freed := false
	for i, m := range s.recordMany(ctx, traces, moves) {
		w := picks[i]
		req, id := w.req, w.req.GetJobId()
		if m == nil {
			_, ok := s.place.release(id, req.GetAttempt())
			freed = freed || ok
			continue
		}
		req.Pool = pool
		ds = append(ds, bus.Durable{
			Subject: bus.JobSubject(pool, req.GetTopic()),
			MsgID:   fmt.Sprintf("%s:%d", id, req.GetAttempt()),
			Packet:  &cortexv1.BusPacket{TraceId: w.traceID, Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}},
		})
		sent[id] = w
	}
	// Released together, the jobs of a topic may share messages.
	slices.SortStableFunc(ds, func(a, b bus.Durable) int { return strings.Compare(a.Subject, b.Subject) })
	ds = bus.Batched(ds, perMessage)
	for i, err := range s.conn.PublishDurables(ctx, ds) {
		if err == nil {
			continue
		}
		jobs, _ := bus.JobsOf(ds[i].Packet)
		for _, req := range jobs {
			w := sent[req.GetJobId()]
			s.log.Warn("dispatch to the job stream; the reconciler will retry", "trace_id", w.traceID, "job_id", req.GetJobId(), "err", err)
			s.record(ctx, w.traceID, req.GetJobId(), store.Change{To: store.Pending, Attempt: req.GetAttempt(),
				Reason: "the bus did not take the job at dispatch; it will be dispatched again: " + err.Error()})
			_, ok := s.place.release(req.GetJobId(), req.GetAttempt())
			freed = freed || ok
		}
	}
	if freed {
		s.kick(ctx, pool)
	}
}

// Workers is the scheduler's worker registry now.
func (s *Scheduler) Workers() registry.Snapshot { return s.reg.Snapshot() }

// Waiting counts the jobs of pool waiting for a free slot.
func (s *Scheduler) Waiting(pool string) int {
	s.place.mu.Lock()
	defer s.place.mu.Unlock()
	if q := s.place.queues[pool]; q != nil {
		return q.Len()
	}
	return 0
}
