package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
)

// The reconciler. The bus alone does not keep the promise that every job
// the gateway accepted ends in exactly one final state: a component can die
// between recording a change and handing the job on. So every live job has
// a deadline in the store (store.Due), and every reconcileEvery the
// reconciler acts on those past it:
//
//   - PENDING (never handed on, or handed to a scheduler that died with it
//     queued): its deadline is put off and it goes to the submit stream
//     again; a scheduler already holding it drops the copy. While the
//     safety checks do not reach a kernel (Gate), it is held back, due.
//     A scheduler puts off the deadlines of the jobs it holds queued
//     (waiting for capacity or a worker) every half Redrive, so that only
//     the jobs of a scheduler that died come due;
//   - DISPATCHED or RUNNING whose lease ran out (the worker died and the
//     stream could not redeliver it, or the dispatch never reached the
//     stream): the attempt ends TIMEOUT, and the job is retried with
//     backoff while it has attempts left, else it ends TIMEOUT in the
//     dead-letter queue. After the store was out of reach for a third of
//     a lease or more, for a lease from when it answers again, no lease
//     is taken to have run out: the workers could not renew theirs
//     meanwhile, and each renews within a third of a lease once it can.
//
// Every action is a compare-and-set on the state and attempt, so several
// schedulers may reconcile at once: one wins, the others change nothing.

// dueBatch bounds the jobs per shard the reconciler takes per round.
const dueBatch = 200

func (s *Scheduler) reconcileLoop(ctx context.Context) {
	defer close(s.reconciled)
	tick := time.NewTicker(s.opts.reconcileEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.reconcile(ctx, time.Now())
		}
	}
}

// reconcile tells the other schedulers this one's queue heads (and forgets
// theirs that expired), puts off the re-drive of the jobs it holds queued,
// then acts once on every job past its deadline at now.
func (s *Scheduler) reconcile(ctx context.Context, now time.Time) {
	s.shareHeads(true)
	s.expireHeads(ctx, now)
	s.holdQueued(ctx, now)
	jobs, err := s.store.Due(ctx, now, dueBatch)
	if err != nil {
		if s.storeLost.IsZero() {
			s.storeLost = now
		}
		s.log.Warn("reconcile: read deadlines", "err", err)
		return
	}
	if !s.storeLost.IsZero() {
		// Only an outage long enough for a renewal to be missed earns
		// the workers a grace: short failures now and then do not keep
		// leases from ever running out.
		if now.Sub(s.storeLost) >= s.opts.lease/3 {
			s.storeBack = now
		}
		s.storeLost = time.Time{}
	}
	// Leases that ran out while the store was out of reach wait for their
	// workers to renew them.
	renewing := now.Sub(s.storeBack) < s.opts.lease
	gate, _ := s.checker.(Gate)
	held := 0
	for _, j := range jobs {
		switch j.State {
		case store.Pending:
			if gate != nil && !gate.Answering() {
				// Re-driven now, the job would be denied without a kernel
				// having looked at it; it stays due for the next round.
				held++
				continue
			}
			if err := s.store.PutOffRedrive(ctx, j.ID, j.Attempt, now); err != nil {
				continue // moved on meanwhile
			}
			s.log.Info("reconcile: re-driving a pending job", "trace_id", j.Trace(), "job_id", j.ID, "attempt", j.Attempt)
			s.opts.metrics.Reconciled("redrive")
			s.requeue(ctx, j.Trace(), j.Request(), "redrive-"+strconv.FormatInt(now.UnixMilli(), 10))
		case store.Dispatched, store.Scheduled, store.Running:
			if renewing {
				continue
			}
			why := fmt.Sprintf("the attempt's lease ran out in state %s: its deadline passed with no word of it (its worker died, or the job never reached one)",
				j.State)
			if j.WorkerID != "" {
				why = fmt.Sprintf("the lease of worker %s ran out: its deadline passed with no renewal (the worker stopped without handing it back, died, or lost its connection)",
					j.WorkerID)
			}
			s.log.Info("reconcile: lease expired", "trace_id", j.Trace(), "job_id", j.ID, "attempt", j.Attempt, "state", string(j.State))
			s.opts.metrics.Reconciled("expire")
			s.endAttempt(ctx, j.Trace(), j, j.Attempt, store.Timeout, j.WorkerID, why, false, true)
		}
	}
	if held > 0 {
		s.log.Warn("reconcile: holding pending jobs until the safety kernel answers again", "jobs", held)
	}
}

// holdQueued puts off the re-drive of every job queued here whose
// deadline was last put off (or that was queued) half a Redrive ago,
// holdAtOnce at a time (the store sends those together). A job that moved
// on meanwhile is left as it is.
func (s *Scheduler) holdQueued(ctx context.Context, now time.Time) {
	held := s.place.holding(now.Add(-s.store.Redrive()/2), now)
	for len(held) > 0 && ctx.Err() == nil {
		n := min(len(held), holdAtOnce)
		var wg sync.WaitGroup
		for _, w := range held[:n] {
			wg.Go(func() {
				if err := s.store.PutOffRedrive(ctx, w.req.GetJobId(), w.req.GetAttempt(), now); err != nil && !errors.Is(err, store.ErrConflict) {
					s.place.putOffFailed(w)
				}
			})
		}
		wg.Wait()
		held = held[n:]
	}
}

// holdAtOnce bounds the put-offs of holdQueued in flight.
const holdAtOnce = 256

// maxDeliveries is the part of JetStream's max-deliveries advisory used.
type maxDeliveries struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// onMaxDeliveries dead-letters the jobs of a message its pool's workers
// took MaxDeliver times without acknowledging it (each crashed or hung on
// it): each attempt not ended yet ends FAILED in the dead-letter queue (a
// batch-mate that ended keeps its outcome: the store refuses the move),
// and the message leaves the stream.
func (s *Scheduler) onMaxDeliveries(ctx context.Context, m *nats.Msg) {
	var adv maxDeliveries
	if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
		s.log.Warn("dropped a malformed max-deliveries advisory", "bytes", len(m.Data))
		return
	}
	p, err := s.conn.JobMessage(ctx, adv.StreamSeq)
	if err != nil {
		s.log.Warn("max deliveries: read the job's message", "seq", adv.StreamSeq, "err", err)
		return
	}
	jobs, traces := bus.JobsOf(p)
	for i, req := range jobs {
		why := fmt.Sprintf("delivered %d times to workers of pool %s without an acknowledgement (each crashed, hung or lost its connection on it); "+store.DeadLetterNote,
			adv.Deliveries, req.GetPool())
		if s.record(ctx, traces[i], req.GetJobId(), store.Change{To: store.Failed, Attempt: req.GetAttempt(), DeadLetter: true, Reason: why}) != nil {
			s.opts.metrics.Reconciled("dead_letter")
		}
	}
	if len(jobs) == 0 {
		return
	}
	if err := s.conn.DeleteJobMessage(ctx, adv.StreamSeq); err != nil {
		s.log.Warn("max deliveries: remove the job's message", "trace_id", traces[0], "job_id", jobs[0].GetJobId(), "jobs", len(jobs), "err", err)
	}
}
