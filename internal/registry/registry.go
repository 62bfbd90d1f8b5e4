// Package registry keeps the live workers of the cluster from their
// heartbeats (sys.heartbeat.<worker-id>): who they are, which pool and
// topics they serve, how busy they are, and whether they are stopping. A
// worker appears on its first heartbeat and is expired after three missed
// ones (three of its own heartbeat intervals). The registry also counts the
// jobs a scheduler dispatched to a pool since the workers' last heartbeats,
// which those heartbeats could not report yet.
//
// It is pure bookkeeping with an injectable clock; Start only feeds it from
// the bus. It decides nothing: placement is the scheduler's, listing the
// gateway's. It must not import any service package.
package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Defaults and bounds.
const (
	// DefaultInterval is assumed for a heartbeat that does not say when
	// the next one is due (workers older than heartbeat_interval).
	DefaultInterval = 3 * time.Second
	// MaxInterval caps a heartbeat interval, so that a worker that claims
	// a very long one still leaves within 3 × MaxInterval.
	MaxInterval = 5 * time.Minute
	// MissedBeats is how many heartbeats a worker may miss before it is
	// expired: it is gone once 3 × its interval passed without one.
	MissedBeats = 3
	// DefaultMaxWorkers bounds how many workers are kept, so that a flood
	// of made-up worker ids cannot grow the registry without end.
	DefaultMaxWorkers = 10000

	// Bounds on what one heartbeat may hold; longer lists are cut.
	maxListItems = 256
	maxItemBytes = 200
	// dispatchResolution groups NoteDispatched calls made close together
	// into one bucket; maxBuckets bounds a pool's buckets.
	dispatchResolution = 10 * time.Millisecond
	maxBuckets         = 4096
)

// State says whether a worker takes jobs.
type State string

// The states of a listed worker.
const (
	// Live workers send heartbeats and take jobs.
	Live State = "live"
	// Draining workers are stopping: they finish their jobs and take no
	// new ones.
	Draining State = "draining"
)

// Worker is what a worker's last heartbeat said, and when it came.
type Worker struct {
	ID           string
	Pool         string
	State        State
	Active       int
	MaxParallel  int
	CPULoad      float64
	Topics       []string
	Capabilities []string
	Version      string
	Completed    uint64
	Failed       uint64
	// Sender is the bus sender id of the last heartbeat.
	Sender string
	// Interval is the time between the worker's heartbeats.
	Interval time.Duration
	// FirstSeen and LastBeat are when the registry received the first and
	// the last heartbeat (its own clock, not the worker's).
	FirstSeen time.Time
	LastBeat  time.Time
	// Missed counts the heartbeats due since LastBeat (0 to 2; at 3 the
	// worker is gone).
	Missed int
	// Unreported estimates the jobs dispatched to the worker since its
	// last heartbeat (see Registry.NoteDispatched): the pool's dispatches
	// since LastBeat, shared evenly among the pool's live workers, rounded
	// up.
	Unreported int
}

// Free is how many more jobs the worker can take by what is known: its
// capacity less its active jobs and those dispatched since its last
// heartbeat; 0 for a draining worker.
func (w Worker) Free() int {
	if w.State != Live {
		return 0
	}
	return max(0, w.MaxParallel-w.Active-w.Unreported)
}

// Pool sums the workers of one pool.
type Pool struct {
	Name string
	// Workers counts live workers, Draining the stopping ones.
	Workers  int
	Draining int
	// Active and Capacity sum the live workers' active and most parallel
	// jobs.
	Active   int
	Capacity int
	// Unreported estimates the jobs dispatched to the pool that no
	// heartbeat has reported yet (the sum of its workers' Unreported,
	// before rounding).
	Unreported int
	// Topics is every topic a worker of the pool serves, sorted.
	Topics []string
}

// Free is how many more jobs the pool's live workers can take by what is
// known.
func (p Pool) Free() int { return max(0, p.Capacity-p.Active-p.Unreported) }

// Snapshot is the registry at one moment.
type Snapshot struct {
	At time.Time
	// Workers is sorted by pool, then id.
	Workers []Worker
	// Pools is sorted by name.
	Pools []Pool
}

// Pool returns the pool named name, if it has any worker.
func (s Snapshot) Pool(name string) (Pool, bool) {
	i, ok := slices.BinarySearchFunc(s.Pools, name, func(p Pool, n string) int { return cmp.Compare(p.Name, n) })
	if !ok {
		return Pool{}, false
	}
	return s.Pools[i], true
}

// Options configures a Registry.
type Options struct {
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// MaxWorkers bounds the workers kept (DefaultMaxWorkers when zero).
	MaxWorkers int
	// Log gets a warning when the registry is full (discarded when nil).
	Log *slog.Logger
}

// Registry keeps the workers heard from. It is safe for concurrent use.
type Registry struct {
	now        func() time.Time
	maxWorkers int
	log        *slog.Logger

	mu      sync.Mutex
	workers map[string]*Worker
	// dispatched holds, per pool, when jobs were dispatched to it, oldest
	// first, pruned once every live worker has beaten since.
	dispatched map[string][]bucket
	full       bool
}

// bucket counts the dispatches from first to last (at most
// dispatchResolution apart). It counts as after a heartbeat if any of its
// dispatches may be: the estimate errs towards a busier pool.
type bucket struct {
	first, last time.Time
	n           int
}

// New returns an empty registry.
func New(opts Options) *Registry {
	r := &Registry{now: opts.Now, maxWorkers: opts.MaxWorkers, log: opts.Log,
		workers: map[string]*Worker{}, dispatched: map[string][]bucket{}}
	if r.now == nil {
		r.now = time.Now
	}
	if r.maxWorkers <= 0 {
		r.maxWorkers = DefaultMaxWorkers
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r
}

// Subscriber is what Start needs from the bus.
type Subscriber interface {
	Subscribe(ctx context.Context, subject, queue string, concurrency int, h bus.Handler) (*bus.Subscription, error)
	Publish(subject string, p *cortexv1.BusPacket) error
}

var _ Subscriber = (*bus.Conn)(nil)

// Start feeds the registry every heartbeat on bus.SubjectHeartbeatAll
// until the connection closes. Packets that are not usable heartbeats are
// dropped and counted by the connection.
func (r *Registry) Start(ctx context.Context, b Subscriber) error {
	// One at a time keeps a worker's heartbeats in the order they arrive.
	_, err := b.Subscribe(ctx, bus.SubjectHeartbeatAll, "", 1, func(_ context.Context, p *cortexv1.BusPacket, _ string) error {
		return r.Observe(p)
	})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	// Ask the workers to beat now rather than a heartbeat interval later.
	if err := AskBeats(b); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// AskBeats asks every worker for a heartbeat now.
func AskBeats(b interface {
	Publish(subject string, p *cortexv1.BusPacket) error
}) error {
	return b.Publish(bus.SubjectBeatRequest, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_BeatRequest{BeatRequest: &cortexv1.BeatRequest{}}})
}

// ErrNotHeartbeat is wrapped by Observe's error for a packet that is not a
// usable heartbeat.
var ErrNotHeartbeat = errors.New("not a usable heartbeat")

// Observe records one heartbeat packet. A packet without a heartbeat, or
// whose worker id or pool is not a valid subject token, changes nothing
// and is an error wrapping ErrNotHeartbeat (bus.WrongPayload for another
// payload).
func (r *Registry) Observe(p *cortexv1.BusPacket) error {
	hb := p.GetHeartbeat()
	if hb == nil {
		return bus.WrongPayload(p, "a heartbeat")
	}
	if !bus.ValidToken(hb.GetWorkerId()) || !bus.ValidToken(hb.GetPool()) {
		return fmt.Errorf("%w: worker id %.64q or pool %.64q is not valid", ErrNotHeartbeat, hb.GetWorkerId(), hb.GetPool())
	}
	now := r.now()
	interval := hb.GetHeartbeatInterval().AsDuration()
	switch {
	case interval <= 0:
		interval = DefaultInterval
	case interval > MaxInterval:
		interval = MaxInterval
	}
	state := Live
	if hb.GetDraining() {
		state = Draining
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.workers[hb.GetWorkerId()]
	if !ok {
		r.expireLocked(now)
		if len(r.workers) >= r.maxWorkers {
			if !r.full {
				r.log.Warn("worker registry is full; heartbeats of new workers are ignored", "max_workers", r.maxWorkers)
				r.full = true
			}
			return fmt.Errorf("%w: the registry holds %d workers already", ErrNotHeartbeat, r.maxWorkers)
		}
		w = &Worker{ID: hb.GetWorkerId(), FirstSeen: now}
		r.workers[w.ID] = w
	}
	if w.Pool != "" && w.Pool != hb.GetPool() {
		// A worker that moved pools starts afresh in the new one.
		w.FirstSeen = now
	}
	w.Pool = hb.GetPool()
	w.State = state
	w.Active = int(hb.GetActiveJobs())
	w.MaxParallel = int(hb.GetMaxParallelJobs())
	w.CPULoad = max(0, hb.GetCpuLoad())
	w.Topics = boundedList(hb.GetTopics())
	w.Capabilities = boundedList(hb.GetCapabilities())
	w.Version = bounded(hb.GetVersion())
	w.Completed = hb.GetCompletedJobs()
	w.Failed = hb.GetFailedJobs()
	w.Sender = bounded(p.GetSenderId())
	w.Interval = interval
	w.LastBeat = now
	r.pruneLocked(w.Pool)
	return nil
}

func bounded(s string) string {
	if len(s) > maxItemBytes {
		return s[:maxItemBytes]
	}
	return s
}

// boundedList copies l (which belongs to a decoded packet), sorted and
// cut to maxListItems.
func boundedList(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	out := make([]string, 0, min(len(l), maxListItems))
	for _, s := range l[:min(len(l), maxListItems)] {
		out = append(out, bounded(s))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// NoteDispatched records that one job was just dispatched to pool, so
// that the pool's load counts it until its workers' next heartbeats
// report it. The scheduler calls it after each dispatch.
func (r *Registry) NoteDispatched(pool string) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.dispatched[pool]
	if n := len(b); n > 0 {
		// Buckets stay in order even if the clock steps back.
		now = later(now, b[n-1].last)
		if now.Sub(b[n-1].first) < dispatchResolution {
			b[n-1].n++
			b[n-1].last = now
			return
		}
	}
	if len(b) >= maxBuckets {
		// The oldest dispatches are long reported by now.
		b = slices.Delete(b, 0, len(b)-maxBuckets+1)
	}
	r.dispatched[pool] = append(b, bucket{first: now, last: now, n: 1})
}

// Capacity is the max parallel jobs of pool's live workers, that of the
// smallest of them, and whether it has any: what placement asks for every
// job, without a snapshot's copy.
func (r *Registry) Capacity(pool string) (slots, smallest int, live bool) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	for _, w := range r.workers {
		if w.Pool == pool && w.State == Live {
			slots += w.MaxParallel
			if !live || w.MaxParallel < smallest {
				smallest = w.MaxParallel
			}
			live = true
		}
	}
	return slots, smallest, live
}

// Draining counts pool's draining workers: those still heartbeating
// that take no new jobs.
func (r *Registry) Draining(pool string) int {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	n := 0
	for _, w := range r.workers {
		if w.Pool == pool && w.State == Draining {
			n++
		}
	}
	return n
}

// Snapshot returns the live and draining workers, and their pools; it
// forgets the workers that missed three heartbeats.
func (r *Registry) Snapshot() Snapshot {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	s := Snapshot{At: now, Workers: make([]Worker, 0, len(r.workers))}
	live := map[string]int{}
	for _, w := range r.workers {
		if w.State == Live {
			live[w.Pool]++
		}
	}
	pools := map[string]*Pool{}
	unreported := map[string]float64{}
	for _, w := range r.workers {
		c := *w
		c.Topics, c.Capabilities = slices.Clone(w.Topics), slices.Clone(w.Capabilities)
		c.Missed = int(now.Sub(w.LastBeat) / w.Interval)
		p := pools[w.Pool]
		if p == nil {
			p = &Pool{Name: w.Pool}
			pools[w.Pool] = p
		}
		p.Topics = append(p.Topics, w.Topics...)
		if w.State != Live {
			p.Draining++
			s.Workers = append(s.Workers, c)
			continue
		}
		share := float64(dispatchedSince(r.dispatched[w.Pool], w.LastBeat)) / float64(live[w.Pool])
		c.Unreported = ceil(share)
		unreported[w.Pool] += share
		p.Workers++
		p.Active += w.Active
		p.Capacity += w.MaxParallel
		s.Workers = append(s.Workers, c)
	}
	slices.SortFunc(s.Workers, func(a, b Worker) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.ID, b.ID))
	})
	s.Pools = make([]Pool, 0, len(pools))
	for _, p := range pools {
		slices.Sort(p.Topics)
		p.Topics = slices.Compact(p.Topics)
		p.Unreported = ceil(unreported[p.Name])
		s.Pools = append(s.Pools, *p)
	}
	slices.SortFunc(s.Pools, func(a, b Pool) int { return cmp.Compare(a.Name, b.Name) })
	return s
}

func later(a, b time.Time) time.Time {
	if a.Before(b) {
		return b
	}
	return a
}

// ceil rounds a share up, ignoring float noise.
func ceil(f float64) int {
	n := int(f)
	if f-float64(n) > 1e-9 {
		n++
	}
	return n
}

// dispatchedSince counts the dispatches in b at or after t (one at the
// very moment of a heartbeat may not be in it).
func dispatchedSince(b []bucket, t time.Time) int {
	i, _ := slices.BinarySearchFunc(b, t, func(x bucket, t time.Time) int {
		if !x.last.Before(t) {
			return 1
		}
		return -1
	})
	n := 0
	for _, x := range b[i:] {
		n += x.n
	}
	return n
}

// expireLocked forgets the workers that missed MissedBeats heartbeats.
func (r *Registry) expireLocked(now time.Time) {
	for id, w := range r.workers {
		if now.Sub(w.LastBeat) > MissedBeats*w.Interval {
			delete(r.workers, id)
			r.full = false
			r.pruneLocked(w.Pool)
		}
	}
}

// pruneLocked drops the dispatches to pool that every live worker of the
// pool has reported since (all of them when the pool has no live worker
// left, since nothing would report them).
func (r *Registry) pruneLocked(pool string) {
	b := r.dispatched[pool]
	if len(b) == 0 {
		return
	}
	var oldest time.Time
	found := false
	for _, w := range r.workers {
		if w.Pool == pool && w.State == Live && (!found || w.LastBeat.Before(oldest)) {
			oldest, found = w.LastBeat, true
		}
	}
	if !found {
		delete(r.dispatched, pool)
		return
	}
	i := 0
	for i < len(b) && b[i].last.Before(oldest) {
		i++
	}
	if i == len(b) {
		delete(r.dispatched, pool)
		return
	}
	r.dispatched[pool] = b[i:]
}
