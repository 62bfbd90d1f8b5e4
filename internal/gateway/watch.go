package gateway

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Fan-out tuning. Events are best effort, so a watcher also rereads its job
// from the store when it has heard nothing for watchPoll.
const (
	watcherBuffer = 1024
	watchPoll     = 2 * time.Second
)

// watcher is one open stream's subscription to events of type T.
type watcher[T any] struct {
	// tenant is the tenant whose events are wanted; "" wants every tenant's.
	tenant string
	// head, for a watcher of job events, is what the head of a change must
	// pass before its record is decoded and asked of match (nil: any).
	head    func(bus.EventHead) bool
	match   func(T) bool
	ch      chan T
	dropped atomic.Uint64
	// gaps says the gateway's bus connection came back after an outage
	// (made by follow).
	gaps chan struct{}
}

// hub hands each event to the watchers of its tenant that want it, never
// blocking: a full watcher loses the event and counts it.
type hub[T any] struct {
	mu       sync.RWMutex
	watchers map[*watcher[T]]struct{}
}

func newHub[T any]() *hub[T] { return &hub[T]{watchers: map[*watcher[T]]struct{}{}} }

func (h *hub[T]) add(w *watcher[T]) (remove func()) {
	h.mu.Lock()
	h.watchers[w] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.watchers, w)
		h.mu.Unlock()
	}
}

// gap tells every watcher that events may have been lost.
func (h *hub[T]) gap() {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for w := range h.watchers {
		select {
		case w.gaps <- struct{}{}:
		default: // already told
		}
	}
}

func (h *hub[T]) publish(tenant string, v T) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for w := range h.watchers {
		if (w.tenant == "" || w.tenant == tenant) && w.match(v) {
			w.send(v)
		}
	}
}

// send hands v to w, or counts it lost when w is full.
func (w *watcher[T]) send(v T) {
	select {
	case w.ch <- v:
	default:
		w.dropped.Add(1)
	}
}

// onEvent hands each change of a job event packet to the watchers that
// want it. Their head filters are asked first, of the packet's heads; its
// records are decoded only when some watcher wants one of them (a stream
// of COMPLETED events need not decode the packets of DISPATCHED ones).
// Each watcher gets its changes in the packet's order.
func (g *Gateway) onEvent(_ context.Context, ev *bus.EventPacket) error {
	h := g.jobs
	h.mu.RLock()
	defer h.mu.RUnlock()
	type pick struct {
		w *watcher[*cortexv1.Job]
		i int
	}
	var picks []pick
	for w := range h.watchers {
		for i, hd := range ev.Heads {
			if (w.tenant == "" || w.tenant == hd.TenantID) && (w.head == nil || w.head(hd)) {
				picks = append(picks, pick{w, i})
			}
		}
	}
	if len(picks) == 0 {
		return nil
	}
	jobs, err := ev.Jobs()
	if err != nil {
		return err
	}
	for _, p := range picks {
		if j := jobs[p.i]; p.w.match(j) {
			p.w.send(j)
		}
	}
	return nil
}

// onDecision fans out a kernel's decision, or the decisions of a batch of
// checks (SafetyDecisions), each to its tenant's watchers.
func (g *Gateway) onDecision(_ context.Context, p *cortexv1.BusPacket, _ string) error {
	evs := p.GetSafetyDecisions().GetEvents()
	if ev := p.GetSafetyDecision(); ev != nil {
		evs = []*cortexv1.SafetyDecisionEvent{ev}
	}
	if len(evs) == 0 {
		return bus.WrongPayload(p, "a safety decision or decisions")
	}
	for _, ev := range evs {
		g.decisions.publish(ev.GetTenantId(), ev)
	}
	return nil
}

func terminal(s cortexv1.JobState) bool { return store.StateOf(s).Terminal() }

// errClosing ends streams when the gateway shuts down.
var errClosing = connect.NewError(connect.CodeUnavailable, "the gateway is shutting down; reconnect and watch again")

// WatchJob streams a job of the caller's tenant until it is finished;
// with output, also the pieces of output its handler streams while it
// runs, between the snapshots.
func (g *Gateway) WatchJob(ctx context.Context, req *cortexv1.WatchJobRequest, stream cortexv1connect.GatewayServiceWatchJobServerStream) error {
	id, err := parseJobID(req.GetJobId())
	if err != nil {
		return err
	}
	var pieces <-chan *cortexv1.JobOutput
	if req.GetOutput() {
		ch, stop, err := g.followOutput(ctx, id)
		if err != nil {
			return err
		}
		defer stop()
		pieces = ch
	}
	send := func(o *cortexv1.JobOutput) error { return stream.Send(&cortexv1.WatchJobResponse{Output: o}) }
	return g.watchJob(ctx, id, pieces, send, func(j *cortexv1.Job) error {
		return stream.Send(&cortexv1.WatchJobResponse{Job: j})
	})
}

// watchJob follows job id of the caller's tenant until it is finished:
// its snapshots go to onJob, the first one at once and then after every
// change; the pieces of output on pieces (the caller's subscription, nil
// for none: see followOutput) go to onOutput as they come. Nothing is sent
// for a job the caller does not own.
func (g *Gateway) watchJob(ctx context.Context, id string, pieces <-chan *cortexv1.JobOutput, onOutput func(*cortexv1.JobOutput) error, onJob func(*cortexv1.Job) error) error {
	w := &watcher[*cortexv1.Job]{tenant: tenantFrom(ctx), head: func(h bus.EventHead) bool { return h.JobID == id },
		match: func(*cortexv1.Job) bool { return true }, ch: make(chan *cortexv1.Job, 16)}
	// Listen before reading, so no change falls between the two.
	defer g.jobs.add(w)()
	j, err := g.ownJob(ctx, id)
	if err != nil {
		return err
	}
	cur := j.Proto()
	poll := time.NewTicker(watchPoll)
	defer poll.Stop()
	for {
		if terminal(cur.GetState()) {
			// Output published before the job ended may still be on its
			// way on its own subscription: hand over what has come.
			if err := flushOutput(pieces, onOutput); err != nil {
				return err
			}
		}
		if err := onJob(cur); err != nil {
			return err
		}
		if terminal(cur.GetState()) {
			return nil
		}
		next, err := g.nextChange(ctx, w, poll, id, cur.GetVersion(), pieces, onOutput)
		if err != nil {
			return err
		}
		cur = next
	}
}

// nextChange waits for a version of the job newer than seen, from the bus
// or, when the bus is quiet, from the store, handing the pieces of output
// that come meanwhile to onOutput.
func (g *Gateway) nextChange(ctx context.Context, w *watcher[*cortexv1.Job], poll *time.Ticker, id string, seen uint64,
	pieces <-chan *cortexv1.JobOutput, onOutput func(*cortexv1.JobOutput) error) (*cortexv1.Job, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-g.closing:
			return nil, errClosing
		case o := <-pieces:
			if err := onOutput(o); err != nil {
				return nil, err
			}
		case j := <-w.ch:
			if j.GetVersion() > seen {
				poll.Reset(watchPoll)
				return j, nil
			}
		case <-poll.C:
			j, err := g.store.Get(ctx, id)
			if err != nil {
				return nil, g.readErr(id, err)
			}
			if j.Version > seen {
				return j.Proto(), nil
			}
		}
	}
}

// StreamEvents streams changes of the caller's jobs that match the filter.
func (g *Gateway) StreamEvents(ctx context.Context, req *cortexv1.StreamEventsRequest, stream cortexv1connect.GatewayServiceStreamEventsServerStream) error {
	if err := validateFilter(req.GetTopic(), req.GetStates(), req.GetLabels()); err != nil {
		return err
	}
	window, err := batchWindow(req.GetBatchWindow())
	if err != nil {
		return err
	}
	q := store.Query{Topic: req.GetTopic(), Labels: req.GetLabels()}
	for _, s := range req.GetStates() {
		q.States = append(q.States, store.StateOf(s))
	}
	order := &newest{seen: map[string]uint64{}}
	w := &watcher[*cortexv1.Job]{
		tenant: tenantFrom(ctx),
		head: func(h bus.EventHead) bool {
			return order.pass(h) && (len(q.States) == 0 || slices.Contains(q.States, store.StateOf(h.State)))
		},
		match: func(j *cortexv1.Job) bool {
			return q.Matches(&store.Job{State: store.StateOf(j.GetState()), Topic: j.GetTopic(), Labels: j.GetLabels()})
		},
		ch: make(chan *cortexv1.Job, watcherBuffer),
	}
	var mu sync.Mutex // one Send at a time: events and pieces of output
	send := func(m *cortexv1.StreamEventsResponse) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(m)
	}
	headers := stream.SendHeaders
	if req.GetOutput() {
		pieces, stop, err := g.followTenantOutput(ctx, w.tenant, req.GetTopic())
		if err != nil {
			return err
		}
		defer stop()
		// Headers go first, before either sender may send.
		if err := stream.SendHeaders(); err != nil {
			return err
		}
		headers = func() error { return nil }
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { cancel(); <-done }()
		go func() {
			defer close(done)
			for {
				select {
				case <-ctx.Done():
					return
				case o := <-pieces:
					if send(&cortexv1.StreamEventsResponse{Output: o}) != nil {
						cancel()
						return
					}
				}
			}
		}()
	}
	return follow(ctx, g, g.jobs, w, headers, window, func(js []*cortexv1.Job, dropped uint64, gap bool) error {
		if window == 0 && len(js) == 1 {
			return send(&cortexv1.StreamEventsResponse{Job: js[0], Dropped: dropped, BusGap: gap})
		}
		return send(&cortexv1.StreamEventsResponse{Jobs: js, Dropped: dropped, BusGap: gap})
	})
}

// newest passes a stream the events of each job in the order of their
// versions: the changes of one job are made by several components, whose
// events can cross on the bus (the gateway's PENDING after the worker's
// COMPLETED, say), and one older than what the stream already passed for
// the job is dropped. It remembers up to maxOrdered jobs, then starts
// over.
type newest struct {
	mu   sync.Mutex
	seen map[string]uint64
}

// maxOrdered bounds the jobs a stream remembers the version of.
const maxOrdered = 1 << 16

func (n *newest) pass(j bus.EventHead) bool {
	v := j.Version
	if v == 0 {
		return true // no version to order by
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if last, ok := n.seen[j.JobID]; ok && v <= last {
		return false
	}
	if len(n.seen) >= maxOrdered {
		clear(n.seen)
	}
	n.seen[j.JobID] = v
	return true
}

// Batch windows: the longest a stream may gather events for, and the most
// events one message carries.
const (
	maxBatchWindow = 10 * time.Second
	maxBatch       = 1000
)

// batchWindow checks a stream request's batch window (0 when unset).
func batchWindow(d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > maxBatchWindow {
		return 0, connect.Errorf(connect.CodeInvalidArgument, "batch_window must be between 0 and %s", maxBatchWindow)
	}
	return d.AsDuration(), nil
}

// follow registers w on h and sends what it receives, with the count of
// events dropped since the last send, until the caller hangs up or the
// gateway shuts down: each event at once when window is 0, else the events
// of up to window together (at most maxBatch at a time).
func follow[T any](ctx context.Context, g *Gateway, h *hub[T], w *watcher[T], headers func() error, window time.Duration, send func(batch []T, dropped uint64, gap bool) error) error {
	w.gaps = make(chan struct{}, 1)
	defer h.add(w)()
	if err := headers(); err != nil {
		return err
	}
	var (
		batch []T
		timer *time.Timer
		due   <-chan time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	flush := func(gap bool) error {
		b := batch
		batch, due = nil, nil
		return send(b, w.dropped.Swap(0), gap)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.closing:
			return errClosing
		case <-w.gaps:
			// What is gathered goes with the news, at once.
			if timer != nil {
				timer.Stop()
			}
			if err := flush(true); err != nil {
				return err
			}
		case <-due:
			if err := flush(false); err != nil {
				return err
			}
		case v := <-w.ch:
			batch = append(batch, v)
			switch {
			case window == 0 || len(batch) >= maxBatch:
				if timer != nil {
					timer.Stop()
				}
				if err := flush(false); err != nil {
					return err
				}
			case len(batch) == 1:
				if timer == nil {
					timer = time.NewTimer(window)
				} else {
					timer.Reset(window)
				}
				due = timer.C
			}
		}
	}
}
