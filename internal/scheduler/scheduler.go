// Package scheduler owns the decision path of every job: it takes submits
// from the durable submit stream, asks the safety kernel, records a denial
// or routes the job to a pool, queues it by priority and releases it into
// the pool's durable job stream while the pool has free capacity
// (placement.go), records the failures workers report and retries them
// with exponential backoff and jitter through the safety gate again, and
// runs the reconciler (reconcile.go), which re-drives jobs that waited too
// long and ends attempts whose lease ran out. Workers record completions
// themselves. After every change it makes it publishes a job event. It
// owns the interfaces it needs (Store, Checker) and never runs jobs.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Store is what the scheduler needs from the memory fabric.
type Store interface {
	Transition(ctx context.Context, id string, c store.Change, now time.Time) (*store.Job, error)
	TransitionMany(ctx context.Context, moves []store.Move, now time.Time) []store.Moved
	Get(ctx context.Context, id string) (*store.Job, error)
	SetPendingReason(ctx context.Context, id string, attempt uint32, pool, reason string, now time.Time) (*store.Job, error)
	Due(ctx context.Context, now time.Time, limit int) ([]*store.Job, error)
	PutOffRedrive(ctx context.Context, id string, attempt uint32, now time.Time) error
	// Redrive is how long a PENDING job may wait before the reconciler
	// re-drives it.
	Redrive() time.Duration
}

// Checker asks for safety decisions on several attempts at once (those
// that arrived together travel together): answer i is that of rs[i],
// traces[i] being its trace. Anything but an ALLOW answer, including none,
// keeps the job from running.
type Checker interface {
	CheckAll(ctx context.Context, rs []*cortexv1.CheckRequest, traces []string) []*cortexv1.CheckResponse
}

// Gate is what a Checker may also say: whether its checks reach a kernel
// now (a safety client's circuit breaker is closed). While they do not,
// the reconciler holds PENDING jobs back rather than re-drive them into
// denials; jobs submitted meanwhile still fail closed.
type Gate interface {
	Answering() bool
}

var _ Store = (*store.Store)(nil)

// Defaults for Options.
const (
	// DefaultConcurrency bounds the submits and results handled at once.
	DefaultConcurrency = 256
	// DefaultRetryBase is the first retry's backoff; each retry doubles it,
	// up to DefaultRetryMax, and jitter takes up to half of it off.
	DefaultRetryBase = time.Second
	DefaultRetryMax  = 5 * time.Minute
	// DefaultReconcileEvery is how often the reconciler looks for jobs past
	// their deadline.
	DefaultReconcileEvery = time.Second
	// DefaultLease is how long a placed job may go unstarted, or a started
	// one without news, before its slot is given back (the reconciler ends
	// the attempt at the store's deadline, twice this).
	DefaultLease = store.DefaultLease
)

// Scheduler routes jobs from submit to dispatch and records outcomes.
type Scheduler struct {
	conn    *bus.Conn
	store   Store
	checker Checker
	router  *routing.Router
	log     *slog.Logger
	opts    options
	submits *bus.Consumer
	subs    []*nats.Subscription
	// reg is the scheduler's own worker registry, fed by heartbeats.
	reg   *registry.Registry
	place *placement
	// stopReconcile ends the reconciler; reconciled is closed when it has.
	stopReconcile context.CancelFunc
	reconciled    chan struct{}
	// storeLost is when the reconciler's reads of the deadlines began to
	// fail (zero: the last one worked), and storeBack when one worked
	// again after they had failed for a third of a lease or more, the
	// time between a worker's renewals (only the reconciler's goroutine
	// uses them).
	storeLost time.Time
	storeBack time.Time
}

type options struct {
	registry       registry.Options
	concurrency    int
	retryBase      time.Duration
	retryMax       time.Duration
	reconcileEvery time.Duration
	lease          time.Duration
	metrics        *telemetry.Metrics
}

// Option configures a Scheduler.
type Option func(*options)

// WithClock sets the clock of the scheduler's worker registry (for tests
// that expire workers).
func WithClock(now func() time.Time) Option { return func(o *options) { o.registry.Now = now } }

// WithRetryBackoff sets the first retry's backoff and the most any retry
// waits.
func WithRetryBackoff(base, most time.Duration) Option {
	return func(o *options) { o.retryBase, o.retryMax = base, most }
}

// WithReconcileEvery sets how often the reconciler runs.
func WithReconcileEvery(d time.Duration) Option { return func(o *options) { o.reconcileEvery = d } }

// WithMetrics records denials, dispatches, final failures, reconciler
// actions and the pools' gauges in m.
func WithMetrics(m *telemetry.Metrics) Option { return func(o *options) { o.metrics = m } }

// WithLease sets the lease (DefaultLease).
func WithLease(d time.Duration) Option { return func(o *options) { o.lease = d } }

// New wires a scheduler. It keeps its own worker registry, fed by
// heartbeats from Start on, to place jobs.
func New(conn *bus.Conn, st Store, checker Checker, router *routing.Router, log *slog.Logger, opts ...Option) *Scheduler {
	o := options{registry: registry.Options{Log: log}, concurrency: DefaultConcurrency, retryBase: DefaultRetryBase,
		retryMax: DefaultRetryMax, reconcileEvery: DefaultReconcileEvery, lease: DefaultLease}
	for _, f := range opts {
		f(&o)
	}
	reg := registry.New(o.registry)
	s := &Scheduler{conn: conn, store: st, checker: checker, router: router, log: log, opts: o,
		reg: reg, place: newPlacement(reg, 2*o.lease)}
	o.metrics.Pools(s.poolStats)
	o.metrics.Dropped("scheduler", conn.Dropped)
	return s
}

// poolStats are the pools' gauges: live workers and their capacity from
// the registry, and the jobs waiting in this scheduler's queues. Every
// pool the routes name has them, at 0 while it has no worker, so that an
// alert on a pool without workers fires for one that never had any.
func (s *Scheduler) poolStats() []telemetry.PoolStat {
	by := map[string]*telemetry.PoolStat{}
	stat := func(pool string) *telemetry.PoolStat {
		if by[pool] == nil {
			by[pool] = &telemetry.PoolStat{Pool: pool}
		}
		return by[pool]
	}
	for _, pool := range s.router.Pools() {
		stat(pool)
	}
	for _, w := range s.reg.Snapshot().Workers {
		if w.State == registry.Live {
			p := stat(w.Pool)
			p.Workers++
			p.Capacity += w.MaxParallel
		}
	}
	s.place.mu.Lock()
	for pool, q := range s.place.queues {
		stat(pool).Queued = q.Len()
	}
	s.place.mu.Unlock()
	out := make([]telemetry.PoolStat, 0, len(by))
	for _, p := range by {
		out = append(out, *p)
	}
	return out
}

// Start consumes submits and results and starts the reconciler. It
// returns once the consumers are in place. Handlers run on a context that
// outlives ctx, so what was received is finished during a drain.
func (s *Scheduler) Start(ctx context.Context) error {
	hctx := context.WithoutCancel(ctx)
	// Heartbeats first, in order (the registry wants them so), and the
	// job events that free slots, before any job is taken.
	if _, err := s.conn.Subscribe(hctx, bus.SubjectHeartbeatAll, "", 1, s.onHeartbeat); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if err := registry.AskBeats(s.conn); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if _, err := s.conn.SubscribeJobEvents(hctx, s.opts.concurrency, s.onJobEvent); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if _, err := s.conn.Subscribe(hctx, bus.SubjectJobResult, bus.QueueScheduler, s.opts.concurrency, s.onResult); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if _, err := s.conn.Subscribe(hctx, bus.SubjectQueueHeads, "", 1, s.onQueueHeads); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	sub, err := s.conn.NATS().QueueSubscribe(bus.SubjectMaxDeliveries, bus.QueueScheduler, func(m *nats.Msg) { s.onMaxDeliveries(hctx, m) })
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	s.subs = append(s.subs, sub)
	s.submits, err = s.conn.Consume(ctx, bus.StreamSubmit, jetstream.ConsumerConfig{
		Durable:       bus.ConsumerScheduler,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 10 * s.opts.concurrency,
	}, s.opts.concurrency, s.onSubmit)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if err := s.conn.Flush(ctx); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	rctx, stop := context.WithCancel(hctx)
	s.stopReconcile, s.reconciled = stop, make(chan struct{})
	go s.reconcileLoop(rctx)
	return nil
}

// StopSubmits stops taking new jobs and returns once those received are
// decided, the jobs still waiting in its queues are handed back to the
// submit stream (for another scheduler, or this one when it comes back),
// and the reconciler has stopped. Results are still recorded until Close.
func (s *Scheduler) StopSubmits() {
	if s.submits != nil {
		s.submits.Stop()
		s.submits = nil
		s.handBack()
		s.shareHeads(false) // none left: the others hold back no longer
		s.place.stop()
	}
	if s.stopReconcile != nil {
		s.stopReconcile()
		<-s.reconciled
		s.stopReconcile = nil
	}
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

// handBack empties the pools' queues into the submit stream.
func (s *Scheduler) handBack() {
	waiting := s.place.drain()
	if len(waiting) == 0 {
		return
	}
	ds := make([]bus.Durable, len(waiting))
	for i, w := range waiting {
		ds[i] = bus.Submit(w.traceID, w.req, fmt.Sprintf("handback-%d", time.Now().UnixNano()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ds = bus.Batched(ds, 0)
	for i, err := range s.conn.PublishDurables(ctx, ds) {
		if err != nil {
			// The jobs are PENDING in the store: the reconciler re-drives them.
			s.log.Warn("hand queued jobs back; the reconciler will", "message", ds[i].MsgID, "err", err)
		}
	}
	s.log.Info("handed queued jobs back to the submit stream", "jobs", len(waiting))
}

// Conn is the scheduler's bus connection.
func (s *Scheduler) Conn() *bus.Conn { return s.conn }

// Close stops taking submits, finishes what it holds, and closes the
// connection (which drains the result subscription).
func (s *Scheduler) Close() {
	s.StopSubmits()
	s.conn.Close()
}

// onSubmit takes one job from the submit stream: a retry whose backoff has
// not passed is asked for again when it has; a job this scheduler already
// holds (a re-drive of it) is dropped; any other goes through the gate.
// The message is acked once the job is decided and queued: from there the
// store's deadline, watched by the reconciler, covers it.
func (s *Scheduler) onSubmit(ctx context.Context, p *cortexv1.BusPacket, d bus.Delivery) error {
	if b := p.GetJobBatch(); b != nil {
		s.dispatch(ctx, b.GetTraceIds(), b.GetJobs())
		d.Ack()
		return nil
	}
	req := p.GetJobRequest()
	if req == nil {
		return bus.WrongPayload(p, "a job request or a job batch")
	}
	if nb := req.GetNotBefore(); nb != nil {
		wait := time.Until(nb.AsTime())
		if wait > maxNotBefore {
			// No retry backs off that long: it would sit in the stream.
			return fmt.Errorf("%w: job request not before %s, over %s ahead", bus.ErrMalformed, nb.AsTime().UTC().Format(time.RFC3339), maxNotBefore)
		}
		if wait > 0 {
			d.Nak(wait)
			return nil
		}
	}
	s.dispatch(ctx, []string{p.GetTraceId()}, []*cortexv1.JobRequest{req})
	d.Ack()
	return nil
}

// dispatch takes attempts of PENDING jobs that arrived together (a batched
// hand-off, or one job) through the safety gate together and queues the
// allowed ones in their pools, released together as their slots allow;
// the others are recorded in one round trip. An attempt this scheduler
// already holds is dropped. traces[i] is the trace of reqs[i].
func (s *Scheduler) dispatch(ctx context.Context, traces []string, reqs []*cortexv1.JobRequest) {
	var ts []string
	var rs []*cortexv1.JobRequest
	for i, req := range reqs {
		if !s.place.holds(req.GetJobId(), req.GetAttempt()) {
			ts, rs = append(ts, traces[i]), append(rs, req)
		}
	}
	if len(rs) == 0 {
		return
	}
	checks := make([]*cortexv1.CheckRequest, len(rs))
	for i, req := range rs {
		checks[i] = &cortexv1.CheckRequest{
			JobId:         req.GetJobId(),
			Topic:         req.GetTopic(),
			TenantId:      req.GetTenantId(),
			Attempt:       req.GetAttempt(),
			Labels:        req.GetLabels(),
			PromptSize:    req.GetPromptSize(),
			Priority:      req.GetPriority(),
			ContextPtr:    req.GetContextPtr(),
			Approved:      req.GetApproved(),
			ApprovedRule:  req.GetApprovedRule(),
			BinaryPayload: req.GetBinaryPayload(),
		}
	}
	decisions := s.checker.CheckAll(ctx, checks, ts)
	var allowed []placed
	var moves []store.Move
	var moveTraces []string
	for i, req := range rs {
		w := &waiting{traceID: ts[i], req: req}
		decision := noDecision
		if i < len(decisions) && decisions[i] != nil {
			decision = decisions[i]
		}
		pool, c := s.decided(w, decision)
		if c == nil {
			allowed = append(allowed, placed{pool: pool, w: w})
			continue
		}
		moves = append(moves, store.Move{ID: req.GetJobId(), Change: *c})
		moveTraces = append(moveTraces, ts[i])
	}
	if len(moves) > 0 {
		s.recordMany(ctx, moveTraces, moves)
	}
	s.placeAll(ctx, allowed)
}

// maxNotBefore bounds how far ahead a submitted attempt may be held back
// (a retry's backoff is at most its retry maximum, minutes).
const maxNotBefore = 24 * time.Hour

// noDecision stands in for an answer the checker did not give.
var noDecision = &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: bus.RuleFailClosed,
	Reason: "safety check failed: the checker gave no decision"}

// decided reads the decision on w's attempt: its verdict goes on w, and
// either the pool to queue it in, or (for anything but ALLOW, and a topic
// no pool serves) the change that ends its attempt there.
func (s *Scheduler) decided(w *waiting, decision *cortexv1.CheckResponse) (string, *store.Change) {
	req := w.req
	verdict := &store.Verdict{
		Decision: strings.TrimPrefix(decision.GetDecision().String(), "DECISION_"),
		Rule:     decision.GetRule(),
		Reason:   decision.GetReason(),
		Policy:   decision.GetPolicyVersion(),
	}
	w.verdict = verdict
	switch decision.GetDecision() {
	case cortexv1.Decision_DECISION_ALLOW:
	case cortexv1.Decision_DECISION_REQUIRE_APPROVAL:
		return "", &store.Change{To: store.AwaitingApproval, Attempt: req.GetAttempt(), Safety: verdict,
			Reason: fmt.Sprintf("waiting for a person to approve (rule %s: %s); run: cortexctl approve %s, or cortexctl reject %s",
				verdict.Rule, verdict.Reason, req.GetJobId(), req.GetJobId())}
	default:
		if verdict.Decision != "DENY" {
			verdict.Reason = fmt.Sprintf("decision %s is not ALLOW: %s", verdict.Decision, verdict.Reason)
			verdict.Decision = "DENY"
		}
		return "", &store.Change{To: store.Denied, Attempt: req.GetAttempt(), Reason: verdict.Reason, Safety: verdict}
	}
	pool, ok := s.router.Pool(req.GetTopic())
	if !ok {
		return "", &store.Change{To: store.Failed, Attempt: req.GetAttempt(), Safety: verdict, Reason: fmt.Sprintf(
			"no pool serves topic %s; routable topics: %s", req.GetTopic(), strings.Join(s.router.Topics(), ", "))}
	}
	return pool, nil
}

func (s *Scheduler) onResult(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	res := p.GetJobResult()
	if res == nil {
		return bus.WrongPayload(p, "a job result")
	}
	id, attempt := res.GetJobId(), res.GetAttempt()
	switch res.GetState() {
	case cortexv1.JobState_JOB_STATE_COMPLETED:
		size := res.GetResultSize()
		s.record(ctx, p.GetTraceId(), id, store.Change{To: store.Completed, Attempt: attempt, WorkerID: res.GetWorkerId(), Holder: res.GetWorkerId(), ResultSize: &size})
	case cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		s.failed(ctx, p.GetTraceId(), res)
	default:
		return fmt.Errorf("%w: result state %s", bus.ErrMalformed, res.GetState())
	}
	return nil
}

// failed records a failed or timed-out attempt a worker reported.
func (s *Scheduler) failed(ctx context.Context, traceID string, res *cortexv1.JobResult) {
	end := store.Failed
	if res.GetState() == cortexv1.JobState_JOB_STATE_TIMEOUT {
		end = store.Timeout
	}
	j, err := s.store.Get(ctx, res.GetJobId())
	if err != nil {
		s.log.Info("result for an unknown job", "trace_id", traceID, "job_id", res.GetJobId(), "err", err)
		return
	}
	s.endAttempt(ctx, traceID, j, res.GetAttempt(), end, res.GetWorkerId(), res.GetError(), res.GetPermanent(), false)
}

// endAttempt ends attempt of job j as end (FAILED or TIMEOUT) for why: the
// job is retried after a backoff while it has attempts left, through the
// submit stream and so the safety gate, unless the handler said another
// attempt would end the same (permanent); otherwise it ends so and is
// listed in the dead-letter queue. A stale attempt changes nothing; with overdue,
// neither does a job whose deadline has moved (it was started, or
// extended, since it was read).
func (s *Scheduler) endAttempt(ctx context.Context, traceID string, j *store.Job, attempt uint32, end store.State, workerID, why string, permanent, overdue bool) {
	if j.Attempt == attempt && attempt < j.MaxAttempts && !permanent {
		wait := backoff(attempt, s.opts.retryBase, s.opts.retryMax)
		due := time.Now().Add(wait)
		retry := s.record(ctx, traceID, j.ID, store.Change{
			To: store.Pending, Attempt: attempt, Retry: true, Outcome: end, Due: due, Overdue: overdue, Holder: workerID,
			Reason: fmt.Sprintf("attempt %d of %d ended %s: %s; retrying in %s", attempt, j.MaxAttempts, end, why, wait.Round(time.Millisecond)),
		})
		if retry != nil {
			req := retry.Request()
			req.NotBefore = timestamppb.New(due)
			s.requeue(ctx, traceID, req, fmt.Sprint(retry.Version))
		}
		return
	}
	left := "none left"
	if permanent {
		left = "not retried: the handler says another attempt would end the same"
	}
	s.record(ctx, traceID, j.ID, store.Change{To: end, Attempt: attempt, WorkerID: workerID, Holder: workerID, DeadLetter: true, Overdue: overdue,
		Reason: fmt.Sprintf("%s (attempt %d of %d, %s; %s)", why, attempt, j.MaxAttempts, left, store.DeadLetterNote)})
}

// requeue hands a PENDING job to the schedulers through the submit stream;
// key makes the hand-off unique. When the bus does not take it, the
// reconciler will, at the job's deadline.
func (s *Scheduler) requeue(ctx context.Context, traceID string, req *cortexv1.JobRequest, key string) {
	if err := s.conn.PublishDurable(ctx, bus.Submit(traceID, req, key)); err != nil {
		s.log.Warn("requeue job; the reconciler will", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
	}
}

// backoff is how long retry number attempt waits: base doubled per
// attempt, at most most, less a random part of up to half (jitter, so that
// jobs failed together do not come back together).
func backoff(attempt uint32, base, most time.Duration) time.Duration {
	d := base
	for i := uint32(1); i < attempt && d < most; i++ {
		d *= 2
	}
	d = min(d, most)
	return d - time.Duration(rand.Int64N(int64(d)/2+1)) //nolint:gosec // jitter needs no cryptographic randomness
}

// record applies a transition, publishes the job event, and returns the
// job after the change, or nil when the change did not take effect. A
// refused transition (a duplicate, stale or cancelled job) is logged and
// changes nothing.
func (s *Scheduler) record(ctx context.Context, traceID, id string, c store.Change) *store.Job {
	j, err := s.store.Transition(ctx, id, c, time.Now())
	return s.recorded(ctx, traceID, id, c, j, err)
}

// recorded is record after the store answered.
func (s *Scheduler) recorded(ctx context.Context, traceID, id string, c store.Change, j *store.Job, err error) *store.Job {
	switch {
	case err == nil:
		s.log.Debug("job recorded", "trace_id", traceID, "job_id", id, "state", string(c.To), "attempt", j.Attempt, "pool", j.Pool)
		s.count(j, c)
		pj := j.Proto()
		if err := s.conn.PublishJobEvent(traceID, pj); err != nil {
			s.log.Warn("publish job event", "trace_id", traceID, "job_id", id, "err", err)
		}
		// A change of our own that ends a placed attempt frees its slot
		// now rather than when its event comes back.
		s.noteEnded(ctx, bus.HeadOf(pj))
		return j
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		s.log.Info("transition refused", "trace_id", traceID, "job_id", id, "to", string(c.To), "err", err)
	default:
		s.log.Error("record job state", "trace_id", traceID, "job_id", id, "to", string(c.To), "err", err)
	}
	return nil
}

// count records a change the scheduler made in the metrics.
func (s *Scheduler) count(j *store.Job, c store.Change) {
	m := s.opts.metrics
	switch c.To {
	case store.Denied:
		m.Denied(j.Topic, j.Safety.Rule)
	case store.Dispatched:
		m.Dispatched(j.Pool, j.CreatedAt, j.UpdatedAt)
	case store.Failed, store.Timeout:
		if c.DeadLetter {
			m.Failed(j.Topic, j.Pool, string(c.To))
		}
	}
}

// recordMany applies transitions in one round trip, as record does each,
// and returns each job after its change (nil where it did not take
// effect); traces[i] is the trace of moves[i].
func (s *Scheduler) recordMany(ctx context.Context, traces []string, moves []store.Move) []*store.Job {
	out := make([]*store.Job, len(moves))
	for i, m := range s.store.TransitionMany(ctx, moves, time.Now()) {
		out[i] = s.recorded(ctx, traces[i], moves[i].ID, moves[i].Change, m.Job, m.Err)
	}
	return out
}
