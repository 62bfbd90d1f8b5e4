package scheduler

import (
	"container/heap"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Placement. An allowed job joins its pool's queue, and leaves it for the
// live, non-draining worker of the pool with the most free slots (ties: the
// fewest jobs in flight, then round robin), on that worker's own subject
// (bus.WorkerSubject). Nothing is ever placed beyond a worker's max
// parallel jobs: a job that finds no free slot waits in the queue, PENDING,
// and the queue is served higher priority first, first come first served
// within a priority, whenever capacity appears: a heartbeat (a worker came,
// or came back) or the end of a job.
//
// A worker's free slots are its max parallel jobs (from its heartbeats, via
// the registry) less the jobs this scheduler placed on it that have not
// ended. The scheduler learns that a job ended from sys.job.event, which
// carries every change whoever made it (the worker records COMPLETED
// itself; the scheduler retries and fails; the gateway cancels): an attempt
// ends when its job is terminal, or PENDING or awaiting approval at a later
// attempt. Results alone would miss completions and cancels. The
// heartbeats' active_jobs are not used: they are up to an interval old, so
// a worker that just finished its jobs would look busy for seconds. When a
// worker expires (three missed heartbeats), what was in flight on it is
// forgotten, so a dead worker does not hold capacity forever.
//
// Limits: each scheduler counts only its own placements, so several
// schedulers may together give a worker more than its max parallel jobs
// (the worker's own slots then hold the extra in its queue); an end event
// that is lost (events are best effort) keeps its slot taken until the
// worker expires.

// flight is one attempt placed on a worker and not yet ended.
type flight struct {
	worker  string
	pool    string
	attempt uint32
}

// waiting is one allowed attempt in a pool's queue.
type waiting struct {
	traceID string
	req     *cortexv1.JobRequest
	verdict *store.Verdict
	seq     uint64
}

// queue is a pool's waiting jobs: higher priority first, then by arrival.
type queue []*waiting

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if pi, pj := q[i].req.GetPriority(), q[j].req.GetPriority(); pi != pj {
		return pi > pj
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(*waiting)) }
func (q *queue) Pop() any {
	old := *q
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return w
}

// placement is the scheduler's queues and its view of capacity.
type placement struct {
	reg *registry.Registry

	mu       sync.Mutex
	queues   map[string]*queue
	seq      uint64
	inFlight map[string]int    // per worker id
	flights  map[string]flight // per job id
	rr       map[string]uint64 // round robin position per pool
}

func newPlacement(reg *registry.Registry) *placement {
	return &placement{reg: reg, queues: map[string]*queue{}, inFlight: map[string]int{},
		flights: map[string]flight{}, rr: map[string]uint64{}}
}

// pick is one job taken from a queue for a worker, its slot reserved.
type pick struct {
	w      *waiting
	worker string
}

// take queues w (when not nil) and takes from pool's queue as many jobs as
// the pool's workers have free slots, reserving a slot for each. It
// reports whether the pool has a live worker.
func (pl *placement) take(pool string, w *waiting) (picks []pick, live bool) {
	snap := pl.reg.Snapshot()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.forgetExpiredLocked(snap)
	q := pl.queues[pool]
	if q == nil {
		q = &queue{}
		pl.queues[pool] = q
	}
	if w != nil {
		pl.seq++
		w.seq = pl.seq
		heap.Push(q, w)
	}
	var workers []registry.Worker
	for _, x := range snap.Workers {
		if x.Pool == pool && x.State == registry.Live {
			workers = append(workers, x)
		}
	}
	for q.Len() > 0 {
		best := -1
		bestFree, bestIn := 0, 0
		n := len(workers)
		for k := range n {
			i := (k + int(pl.rr[pool]%uint64(max(n, 1)))) % n
			in := pl.inFlight[workers[i].ID]
			free := workers[i].MaxParallel - in
			if free <= 0 {
				continue
			}
			if best < 0 || free > bestFree || free == bestFree && in < bestIn {
				best, bestFree, bestIn = i, free, in
			}
		}
		if best < 0 {
			break
		}
		pl.rr[pool]++
		x := heap.Pop(q).(*waiting)
		id := workers[best].ID
		pl.releaseLocked(x.req.GetJobId())
		pl.flights[x.req.GetJobId()] = flight{worker: id, pool: pool, attempt: x.req.GetAttempt()}
		pl.inFlight[id]++
		picks = append(picks, pick{w: x, worker: id})
	}
	return picks, len(workers) > 0
}

// forgetExpiredLocked drops what was in flight on workers the registry no
// longer lists.
func (pl *placement) forgetExpiredLocked(snap registry.Snapshot) {
	if len(pl.inFlight) == 0 {
		return
	}
	listed := make(map[string]bool, len(snap.Workers))
	for _, w := range snap.Workers {
		listed[w.ID] = true
	}
	gone := false
	for id := range pl.inFlight {
		if !listed[id] {
			delete(pl.inFlight, id)
			gone = true
		}
	}
	if gone {
		for job, f := range pl.flights {
			if !listed[f.worker] {
				delete(pl.flights, job)
			}
		}
	}
}

func (pl *placement) releaseLocked(jobID string) (flight, bool) {
	f, ok := pl.flights[jobID]
	if !ok {
		return f, false
	}
	delete(pl.flights, jobID)
	if pl.inFlight[f.worker]--; pl.inFlight[f.worker] <= 0 {
		delete(pl.inFlight, f.worker)
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
func ended(j *cortexv1.Job, attempt uint32) bool {
	st := store.StateOf(j.GetState())
	switch {
	case st.Terminal():
		return true
	case st == store.Pending || st == store.AwaitingApproval:
		return j.GetAttempt() > attempt
	}
	return false
}

// onJobEvent frees the slot of an attempt that ended and places what waits
// in its pool.
func (s *Scheduler) onJobEvent(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	j := p.GetJobEvent().GetJob()
	if j == nil {
		return bus.WrongPayload(p, "a job event")
	}
	s.noteEnded(ctx, j)
	return nil
}

// noteEnded frees the slot of j's placed attempt if j says it ended.
func (s *Scheduler) noteEnded(ctx context.Context, j *cortexv1.Job) {
	s.place.mu.Lock()
	f, ok := s.place.flights[j.GetJobId()]
	s.place.mu.Unlock()
	if !ok || !ended(j, f.attempt) {
		return
	}
	if pool, ok := s.place.release(j.GetJobId(), f.attempt); ok {
		s.placeWaiting(ctx, pool, nil)
	}
}

// onHeartbeat feeds the registry and places what waits in the worker's
// pool, which may have gained capacity.
func (s *Scheduler) onHeartbeat(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	if err := s.reg.Observe(p); err != nil {
		return err
	}
	s.placeWaiting(ctx, p.GetHeartbeat().GetPool(), nil)
	return nil
}

// placeWaiting queues w (when not nil) in pool and dispatches every job of
// the pool's queue that has a free slot now: DISPATCHED is recorded before
// the job is published on its worker's subject. A job that must wait
// because the pool has no live worker gets the reason recorded.
func (s *Scheduler) placeWaiting(ctx context.Context, pool string, w *waiting) {
	picks, live := s.place.take(pool, w)
	placed := false
	for _, pk := range picks {
		placed = placed || pk.w == w
		s.send(ctx, pool, pk)
	}
	if w != nil && !placed && !live {
		id := w.req.GetJobId()
		reason := fmt.Sprintf("waiting for a live worker in pool %s (none has sent a heartbeat in the last %s)",
			pool, registry.MissedBeats*registry.DefaultInterval)
		j, err := s.store.SetPendingReason(ctx, id, w.req.GetAttempt(), pool, reason, time.Now())
		if err != nil {
			// Placed meanwhile, or cancelled: its own state says more.
			s.log.Info("pending reason not recorded", "job_id", id, "err", err)
			return
		}
		if err := s.conn.PublishJobEvent(w.traceID, j.Proto()); err != nil {
			s.log.Warn("publish job event", "job_id", id, "err", err)
		}
	}
}

// send records one placed job DISPATCHED to its worker and publishes it on
// the worker's subject; a job that cannot be recorded (cancelled while it
// waited) gives its slot back.
func (s *Scheduler) send(ctx context.Context, pool string, pk pick) {
	req, id := pk.w.req, pk.w.req.GetJobId()
	if s.record(ctx, pk.w.traceID, id, store.Change{To: store.Dispatched, Attempt: req.GetAttempt(), Pool: pool, WorkerID: pk.worker, Safety: pk.w.verdict}) == nil {
		if _, ok := s.place.release(id, req.GetAttempt()); ok {
			defer s.placeWaiting(ctx, pool, nil)
		}
		return
	}
	req.Pool = pool
	err := s.conn.Publish(bus.WorkerSubject(pool, pk.worker), &cortexv1.BusPacket{
		TraceId: pk.w.traceID,
		Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req},
	})
	if err != nil {
		s.record(ctx, pk.w.traceID, id, store.Change{To: store.Failed, Attempt: req.GetAttempt(), Reason: "dispatch failed: " + err.Error()})
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
