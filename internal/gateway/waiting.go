package gateway

import (
	"fmt"

	"github.com/cortex-os/core/internal/registry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// A job that waits behind busy workers has no reason on its record: the
// scheduler writes one only when it queues a job in a pool with no live
// worker (a write per waiting job would cost the store most when it is
// busiest). What the gateway reads of a PENDING job without a reason is
// given one here, from the workers' last heartbeats, when its pool is
// full, or has no live worker any more (its last drained or died while the
// job waited): the answer to "why does my job wait?". Nothing is stored.

// explainWait fills in the reason of the PENDING jobs among js that have
// none and whose pool's live workers, as of their last heartbeats, run
// as many jobs as they may, or that has none, and the pool the reason
// names. Without a worker registry it changes nothing.
func (g *Gateway) explainWait(js ...*cortexv1.Job) {
	if g.workers == nil {
		return
	}
	var snap *registry.Snapshot
	for _, j := range js {
		if j.GetState() != cortexv1.JobState_JOB_STATE_PENDING || j.GetReason() != "" {
			continue
		}
		if snap == nil {
			s := g.workers.Snapshot()
			snap = &s
		}
		pool := g.poolOf(j)
		if j.Reason = waitReason(*snap, pool); j.Reason != "" && j.GetPool() == "" {
			j.Pool = pool
		}
	}
}

// poolOf is the pool of job j: the one it was routed to, else its topic's.
func (g *Gateway) poolOf(j *cortexv1.Job) string {
	if j.GetPool() != "" {
		return j.GetPool()
	}
	pool, _ := g.router.Pool(j.GetTopic())
	return pool
}

// waitReason says why a job of pool waits, if the pool is full or has no
// live worker in snap; "" when it has room (the job is on its way).
func waitReason(snap registry.Snapshot, pool string) string {
	if pool == "" {
		return ""
	}
	p, _ := snap.Pool(pool)
	switch {
	case p.Workers == 0 && p.Draining > 0:
		return fmt.Sprintf("waiting for a worker in pool %s: its live workers are draining and take no new jobs (as of their last heartbeats)", pool)
	case p.Workers == 0:
		return fmt.Sprintf("waiting for a live worker in pool %s: none is live (as of the workers' last heartbeats)", pool)
	case p.Active < p.Capacity:
		return ""
	}
	if p.Workers == 1 {
		slots := "slots"
		if p.Capacity == 1 {
			slots = "slot"
		}
		return fmt.Sprintf("waiting for capacity in pool %s: its live worker runs %d of its %d %s (as of its last heartbeat)",
			pool, p.Active, p.Capacity, slots)
	}
	return fmt.Sprintf("waiting for capacity in pool %s: its %d live workers run %d of their %d slots (as of their last heartbeats)",
		pool, p.Workers, p.Active, p.Capacity)
}
