package scheduler

import (
	"context"
	"maps"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Priority across schedulers. Each scheduler orders its own queues by
// priority, but with several schedulers a pool's jobs are spread over
// their queues, and each would release the top of its own: a priority 0
// job of one could run before a priority 9 job of another. So each
// scheduler tells the others, on sys.scheduler.queues, the highest
// priority above 0 waiting in each of its pools' queues (its heads),
// whenever they change and every reconcile round while it has any; and it
// releases none of a pool's jobs of lower priority than another
// scheduler's head for that pool. Heads hold for a few rounds without
// news, so a scheduler that died holds the others back no longer. Jobs of
// one priority in different schedulers are each released by their own
// scheduler, first come first served within each. Priority 0 is never
// announced: no job is held back for it, so a cluster whose jobs all have
// the default priority sends nothing.

// minHeadsValid is the least a packet of heads holds for (its valid_for
// is three reconcile rounds), maxHeadsValid the most.
const (
	minHeadsValid = time.Second
	maxHeadsValid = time.Minute
)

// peerHeads is another scheduler's heads: the highest queued priority of
// each of its pools, until the time they stop holding.
type peerHeads struct {
	pools map[string]int32
	until time.Time
}

// headsLocked is this scheduler's heads: for each pool whose queue holds a
// job of priority above 0, or whose placer is storing such jobs in the
// pool's stream (until they are there, the others must not release lower
// ones ahead of them), the highest such priority.
func (pl *placement) headsLocked() map[string]int32 {
	heads := map[string]int32{}
	for pool, q := range pl.queues {
		if q.Len() > 0 && (*q)[0].priority > 0 {
			heads[pool] = (*q)[0].priority
		}
	}
	for pool, priority := range pl.sending {
		if priority > heads[pool] {
			heads[pool] = priority
		}
	}
	return heads
}

// peerTopLocked is the highest priority another scheduler holds queued for
// pool, as of now (0: none above 0).
func (pl *placement) peerTopLocked(pool string, now time.Time) int32 {
	var top int32
	for _, p := range pl.peers {
		if now.Before(p.until) {
			top = max(top, p.pools[pool])
		}
	}
	return top
}

// untold stands for heads that could not be told: no heads equal it, so
// the next shareHeads tells them.
var untold = map[string]int32{"": -1}

// headsValid is how long this scheduler's heads hold at the others.
func (s *Scheduler) headsValid() time.Duration {
	return min(max(3*s.opts.reconcileEvery, minHeadsValid), maxHeadsValid)
}

// shareHeads tells the other schedulers this one's heads if they changed
// since it last did, or, with refresh, if it has any (so that they keep
// holding).
func (s *Scheduler) shareHeads(refresh bool) {
	pl := s.place
	// One at a time, so that the heads go out in the order they were
	// taken, and the last sent is what the others hold.
	pl.sharing.Lock()
	defer pl.sharing.Unlock()
	pl.mu.Lock()
	heads := pl.headsLocked()
	if maps.Equal(heads, pl.shared) && !(refresh && len(heads) > 0) {
		pl.mu.Unlock()
		return
	}
	pl.shared = heads
	pl.mu.Unlock()
	out := &cortexv1.QueueHeads{ValidFor: durationpb.New(s.headsValid())}
	for pool, priority := range heads {
		out.Pools = append(out.Pools, &cortexv1.QueueHead{Pool: pool, Priority: priority})
	}
	if err := s.conn.Publish(bus.SubjectQueueHeads, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_QueueHeads{QueueHeads: out}}); err != nil {
		s.log.Warn("share queue heads", "err", err)
		pl.mu.Lock()
		pl.shared = untold // told to nobody: tell them again next time
		pl.mu.Unlock()
	}
}

// onQueueHeads notes another scheduler's heads, and has the pools whose
// head there fell look at their queues again: what they held back for it
// may go now.
func (s *Scheduler) onQueueHeads(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	// The codec checked the sender, the pools and the priorities.
	h := p.GetQueueHeads()
	if h == nil {
		return bus.WrongPayload(p, "queue heads")
	}
	from := p.GetSenderId()
	if from == s.conn.SenderID() {
		return nil // its own, on a connection that echoes
	}
	valid := min(max(h.GetValidFor().AsDuration(), minHeadsValid), maxHeadsValid)
	pools := make(map[string]int32, len(h.GetPools()))
	for _, head := range h.GetPools() {
		pools[head.GetPool()] = max(pools[head.GetPool()], head.GetPriority())
	}
	pl := s.place
	pl.mu.Lock()
	before := pl.peers[from].pools
	pl.peers[from] = peerHeads{pools: pools, until: time.Now().Add(valid)}
	pl.mu.Unlock()
	for pool, was := range before {
		if pools[pool] < was {
			s.kick(ctx, pool)
		}
	}
	return nil
}

// expireHeads forgets the heads of schedulers not heard from in time, and
// has their pools look at their queues again.
func (s *Scheduler) expireHeads(ctx context.Context, now time.Time) {
	pl := s.place
	pl.mu.Lock()
	var pools []string
	for from, p := range pl.peers {
		if !now.Before(p.until) {
			delete(pl.peers, from)
			for pool := range p.pools {
				pools = append(pools, pool)
			}
		}
	}
	pl.mu.Unlock()
	for _, pool := range pools {
		s.kick(ctx, pool)
	}
}
