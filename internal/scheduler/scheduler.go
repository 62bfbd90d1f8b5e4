// Package scheduler owns the decision path of every job: it takes submits
// from the bus, asks the safety kernel, records a denial or routes the job
// to a pool and places it on the least loaded live worker of that pool
// (placement.go: it waits, PENDING, while no worker has a free slot), and records the failures workers report,
// retrying a failed attempt while the job has attempts left (through the
// safety gate again); workers record completions themselves. After every change it makes it publishes a job event.
// It owns the interfaces it needs (Store, Checker) and never runs jobs.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Store is what the scheduler needs from the memory fabric.
type Store interface {
	Transition(ctx context.Context, id string, c store.Change, now time.Time) (*store.Job, error)
	Get(ctx context.Context, id string) (*store.Job, error)
	SetPendingReason(ctx context.Context, id string, attempt uint32, pool, reason string, now time.Time) (*store.Job, error)
}

// Checker asks for a safety decision. Anything but an ALLOW answer,
// including an error, keeps the job from running.
type Checker interface {
	Check(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error)
}

var _ Store = (*store.Store)(nil)

// DefaultConcurrency bounds the submits and results handled at once.
const DefaultConcurrency = 256

// Scheduler routes jobs from submit to dispatch and records outcomes.
type Scheduler struct {
	conn        *bus.Conn
	store       Store
	checker     Checker
	router      *routing.Router
	log         *slog.Logger
	concurrency int
	submits     *bus.Subscription
	// reg is the scheduler's own worker registry, fed by heartbeats.
	reg   *registry.Registry
	place *placement
}

// Option configures a Scheduler.
type Option func(*registry.Options)

// WithClock sets the clock of the scheduler's worker registry (for tests
// that expire workers).
func WithClock(now func() time.Time) Option { return func(o *registry.Options) { o.Now = now } }

// New wires a scheduler. It keeps its own worker registry, fed by
// heartbeats from Start on, to place jobs.
func New(conn *bus.Conn, st Store, checker Checker, router *routing.Router, log *slog.Logger, opts ...Option) *Scheduler {
	ro := registry.Options{Log: log}
	for _, o := range opts {
		o(&ro)
	}
	reg := registry.New(ro)
	return &Scheduler{conn: conn, store: st, checker: checker, router: router, log: log, concurrency: DefaultConcurrency,
		reg: reg, place: newPlacement(reg)}
}

// Start consumes submits and results until the connection is closed. It
// returns once the subscriptions are in place. Handlers run on a context
// that outlives ctx, so what was received is finished during a drain.
func (s *Scheduler) Start(ctx context.Context) error {
	hctx := context.WithoutCancel(ctx)
	// Heartbeats first, in order (the registry wants them so), and the
	// job events that free slots, before any job is taken.
	if _, err := s.conn.Subscribe(hctx, bus.SubjectHeartbeatAll, "", 1, s.onHeartbeat); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if _, err := s.conn.Subscribe(hctx, bus.SubjectJobEvent, "", s.concurrency, s.onJobEvent); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	var err error
	s.submits, err = s.conn.Subscribe(hctx, bus.SubjectJobSubmit, bus.QueueScheduler, s.concurrency, s.onSubmit)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if _, err := s.conn.Subscribe(hctx, bus.SubjectJobResult, bus.QueueScheduler, s.concurrency, s.onResult); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if err := s.conn.Flush(ctx); err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	return nil
}

// StopSubmits stops taking new jobs and returns once those received are
// decided and dispatched. Results are still recorded until Close.
func (s *Scheduler) StopSubmits() {
	if s.submits != nil {
		s.submits.Drain()
	}
}

// Conn is the scheduler's bus connection.
func (s *Scheduler) Conn() *bus.Conn { return s.conn }

// Close stops taking submits and results, finishes what it holds and
// closes the connection.
func (s *Scheduler) Close() { s.conn.Close() }

func (s *Scheduler) onSubmit(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	req := p.GetJobRequest()
	if req == nil {
		return bus.WrongPayload(p, "a job request")
	}
	s.dispatch(ctx, p.GetTraceId(), req)
	return nil
}

// dispatch takes one attempt of a PENDING job through the safety gate and
// hands it to its pool.
func (s *Scheduler) dispatch(ctx context.Context, traceID string, req *cortexv1.JobRequest) {
	id := req.GetJobId()
	decision, err := s.checker.Check(ctx, &cortexv1.CheckRequest{
		JobId:         id,
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
	})
	verdict := &store.Verdict{
		Decision: strings.TrimPrefix(decision.GetDecision().String(), "DECISION_"),
		Rule:     decision.GetRule(),
		Reason:   decision.GetReason(),
		Policy:   decision.GetPolicyVersion(),
	}
	switch {
	case err != nil:
		verdict = &store.Verdict{Decision: "DENY", Rule: bus.RuleFailClosed, Reason: "safety check failed: " + err.Error()}
		s.record(ctx, traceID, id, store.Change{To: store.Denied, Attempt: req.GetAttempt(), Reason: verdict.Reason, Safety: verdict})
		return
	case decision.GetDecision() == cortexv1.Decision_DECISION_REQUIRE_APPROVAL:
		s.record(ctx, traceID, id, store.Change{To: store.AwaitingApproval, Attempt: req.GetAttempt(), Safety: verdict,
			Reason: fmt.Sprintf("waiting for a person to approve (rule %s: %s); run: cortexctl approve %s, or cortexctl reject %s",
				verdict.Rule, verdict.Reason, id, id)})
		return
	case decision.GetDecision() != cortexv1.Decision_DECISION_ALLOW:
		if verdict.Decision != "DENY" {
			verdict.Reason = fmt.Sprintf("decision %s is not ALLOW: %s", verdict.Decision, verdict.Reason)
			verdict.Decision = "DENY"
		}
		s.record(ctx, traceID, id, store.Change{To: store.Denied, Attempt: req.GetAttempt(), Reason: verdict.Reason, Safety: verdict})
		return
	}
	pool, ok := s.router.Pool(req.GetTopic())
	if !ok {
		s.record(ctx, traceID, id, store.Change{To: store.Failed, Attempt: req.GetAttempt(), Safety: verdict, Reason: fmt.Sprintf(
			"no pool serves topic %s; routable topics: %s", req.GetTopic(), strings.Join(s.router.Topics(), ", "))})
		return
	}
	s.placeWaiting(ctx, pool, &waiting{traceID: traceID, req: req, verdict: verdict})
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
		s.record(ctx, p.GetTraceId(), id, store.Change{To: store.Completed, Attempt: attempt, WorkerID: res.GetWorkerId(), ResultSize: &size})
	case cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		s.failed(ctx, p.GetTraceId(), res)
	default:
		return fmt.Errorf("%w: result state %s", bus.ErrMalformed, res.GetState())
	}
	return nil
}

// failed records a failed or timed-out attempt: the job is retried while it
// has attempts left, and ends FAILED or TIMEOUT otherwise.
func (s *Scheduler) failed(ctx context.Context, traceID string, res *cortexv1.JobResult) {
	id, attempt := res.GetJobId(), res.GetAttempt()
	end := store.Failed
	if res.GetState() == cortexv1.JobState_JOB_STATE_TIMEOUT {
		end = store.Timeout
	}
	j, err := s.store.Get(ctx, id)
	if err == nil && j.Attempt == attempt && attempt < j.MaxAttempts {
		retry := s.record(ctx, traceID, id, store.Change{
			To: store.Pending, Attempt: attempt, Retry: true, Outcome: end,
			Reason: fmt.Sprintf("attempt %d of %d ended %s: %s; retrying", attempt, j.MaxAttempts, end, res.GetError()),
		})
		if retry != nil {
			s.dispatch(ctx, traceID, retry.Request())
		}
		return
	}
	s.record(ctx, traceID, id, store.Change{To: end, Attempt: attempt, WorkerID: res.GetWorkerId(), Reason: res.GetError()})
}

// record applies a transition, publishes the job event, and returns the
// job after the change, or nil when the change did not take effect. A
// refused transition (a duplicate, stale or cancelled job) is logged and
// changes nothing.
func (s *Scheduler) record(ctx context.Context, traceID, id string, c store.Change) *store.Job {
	j, err := s.store.Transition(ctx, id, c, time.Now())
	switch {
	case err == nil:
		pj := j.Proto()
		if err := s.conn.PublishJobEvent(traceID, pj); err != nil {
			s.log.Warn("publish job event", "job_id", id, "err", err)
		}
		// A change of our own that ends a placed attempt frees its slot
		// now rather than when its event comes back.
		s.noteEnded(ctx, pj)
		return j
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		s.log.Info("transition refused", "job_id", id, "to", string(c.To), "err", err)
	default:
		s.log.Error("record job state", "job_id", id, "to", string(c.To), "err", err)
	}
	return nil
}
