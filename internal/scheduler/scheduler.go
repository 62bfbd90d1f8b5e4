// Package scheduler owns the decision path of every job: it takes submits
// from the bus, asks the safety kernel, records a denial or routes the job
// to a pool and dispatches it, and records the outcome the worker reports.
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
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Store is what the scheduler needs from the memory fabric.
type Store interface {
	Transition(ctx context.Context, id string, c store.Change, now time.Time) error
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
	router      *Router
	log         *slog.Logger
	concurrency int
	submits     *bus.Subscription
}

// New wires a scheduler.
func New(conn *bus.Conn, st Store, checker Checker, router *Router, log *slog.Logger) *Scheduler {
	return &Scheduler{conn: conn, store: st, checker: checker, router: router, log: log, concurrency: DefaultConcurrency}
}

// Start consumes submits and results until the connection is closed. It
// returns once the subscriptions are in place. Handlers run on a context
// that outlives ctx, so what was received is finished during a drain.
func (s *Scheduler) Start(ctx context.Context) error {
	hctx := context.WithoutCancel(ctx)
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
	id := req.GetJobId()
	decision, err := s.checker.Check(ctx, &cortexv1.CheckRequest{
		JobId:      id,
		Topic:      req.GetTopic(),
		TenantId:   req.GetTenantId(),
		Attempt:    req.GetAttempt(),
		Labels:     req.GetLabels(),
		PromptSize: req.GetPromptSize(),
	})
	if err != nil || decision.GetDecision() != cortexv1.Decision_DECISION_ALLOW {
		c := store.Change{To: store.Denied, Rule: decision.GetRule(), Reason: decision.GetReason()}
		if err != nil {
			c = store.Change{To: store.Denied, Rule: bus.RuleFailClosed, Reason: "safety check failed: " + err.Error()}
		}
		s.record(ctx, id, c)
		return nil
	}
	pool, ok := s.router.Pool(req.GetTopic())
	if !ok {
		s.record(ctx, id, store.Change{To: store.Failed, Reason: fmt.Sprintf(
			"no pool serves topic %s; routable topics: %s", req.GetTopic(), strings.Join(s.router.Topics(), ", "))})
		return nil
	}
	if !s.record(ctx, id, store.Change{To: store.Dispatched, Pool: pool}) {
		return nil
	}
	req.Pool = pool
	err = s.conn.Publish(bus.JobSubject(pool, req.GetTopic()), &cortexv1.BusPacket{
		TraceId: p.GetTraceId(),
		Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req},
	})
	if err != nil {
		s.record(ctx, id, store.Change{To: store.Failed, Reason: "dispatch failed: " + err.Error()})
	}
	return nil
}

func (s *Scheduler) onResult(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
	res := p.GetJobResult()
	if res == nil {
		return bus.WrongPayload(p, "a job result")
	}
	c := store.Change{To: store.Completed, WorkerID: res.GetWorkerId()}
	if res.GetState() == cortexv1.JobState_JOB_STATE_FAILED {
		c = store.Change{To: store.Failed, WorkerID: res.GetWorkerId(), Reason: res.GetError()}
	}
	s.record(ctx, res.GetJobId(), c)
	return nil
}

// record applies a transition and reports whether it took effect. A refused
// transition (a duplicate or stale packet) is logged and changes nothing.
func (s *Scheduler) record(ctx context.Context, id string, c store.Change) bool {
	err := s.store.Transition(ctx, id, c, time.Now())
	switch {
	case err == nil:
		return true
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
		s.log.Info("transition refused", "job_id", id, "to", string(c.To), "err", err)
	default:
		s.log.Error("record job state", "job_id", id, "to", string(c.To), "err", err)
	}
	return false
}
