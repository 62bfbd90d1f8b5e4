// Package middleware wraps plugins.Handler values the way net/http
// middleware wraps an http.Handler: Recover turns a panic into a failed
// attempt, Timeout bounds how long a handler may run, Metrics records how
// long each call took and how it ended. Chain applies several in order.
//
// The worker runtime wraps every built-in handler with Chain(h,
// Recover(log), Metrics(rec), Timeout(d)); a custom worker may do the same
// with its own handlers. This package is public API: it depends on the
// standard library and package plugins only, never on CortexOS internals,
// and it never logs or returns a job's prompt or payload.
package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/cortex-os/core/plugins"
)

// Middleware returns a Handler that runs next with something added.
type Middleware func(next plugins.Handler) plugins.Handler

// Chain wraps h with mws; the first one is the outermost, so
// Chain(h, Recover(log), Timeout(d)) recovers panics of the timeout
// middleware and of h.
func Chain(h plugins.Handler, mws ...Middleware) plugins.Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// PanicError is the error Recover returns for a handler that panicked.
type PanicError struct {
	// Value is what the handler passed to panic.
	Value any
	// Stack is the goroutine's stack where it panicked.
	Stack []byte
}

// Error says that the handler panicked, and with what: it becomes the
// attempt's reason, which only the job's tenant reads.
func (e *PanicError) Error() string { return fmt.Sprintf("the handler panicked: %v", e.Value) }

// Recover turns a panic in next into a *PanicError, so that the attempt is
// recorded FAILED with a clear reason instead of taking the worker down.
// It logs the job id, topic and the panic value's type at error level, and
// the stack at debug level; never the panic value itself, which may quote
// the prompt. A nil log logs nothing.
func Recover(log *slog.Logger) Middleware {
	return func(next plugins.Handler) plugins.Handler {
		return plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (res *plugins.Result, err error) {
			defer func() {
				v := recover()
				if v == nil {
					return
				}
				pe := &PanicError{Value: v, Stack: debug.Stack()}
				if log != nil {
					log.ErrorContext(ctx, "handler panicked", "job_id", job.ID, "topic", job.Topic, "panic_type", fmt.Sprintf("%T", v))
					log.DebugContext(ctx, "handler panic stack", "job_id", job.ID, "topic", job.Topic, "stack", string(pe.Stack))
				}
				res, err = nil, pe
			}()
			return next.Handle(ctx, job)
		})
	}
}

// TimeoutError is the cause of the context Timeout gives its handler when
// the limit passes, and the error Timeout returns then. It matches
// context.DeadlineExceeded (errors.Is), so that the worker records the
// attempt TIMEOUT.
type TimeoutError struct {
	// Limit is the Timeout middleware's limit.
	Limit time.Duration
}

// Error names the limit.
func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the handler ran past its limit of %s", e.Limit)
}

// Is reports whether target is context.DeadlineExceeded.
func (e *TimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// Timeout runs next with a context that ends after d (or sooner, when the
// job's own context ends). A handler must return when its context ends;
// if the limit passed, the error wraps a *TimeoutError (and the handler's
// own error), whatever the handler returned. Timeout does not abandon
// a handler that ignores its context: it waits for it, because a handler
// still running after its result was recorded would run unaccounted for.
// d <= 0 means no limit.
func Timeout(d time.Duration) Middleware {
	return func(next plugins.Handler) plugins.Handler {
		if d <= 0 {
			return next
		}
		return plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
			limit := &TimeoutError{Limit: d}
			ctx, cancel := context.WithTimeoutCause(ctx, d, limit)
			defer cancel()
			res, err := next.Handle(ctx, job)
			if errors.Is(context.Cause(ctx), limit) {
				switch {
				case errors.Is(err, limit):
					// The handler returned its context's cause: it says it.
					return nil, err
				case err == nil:
					err = errors.New("its result came after the limit and was dropped")
				}
				return nil, fmt.Errorf("%w: %w", limit, err)
			}
			return res, err
		})
	}
}

// Recorder receives one observation per handler call. Implementations must
// be safe for concurrent use.
type Recorder interface {
	// ObserveHandler records that a handler for topic ended with outcome
	// after took. Outcomes: "ok", "error", "timeout" (the error matches
	// context.DeadlineExceeded), "cancelled" (context.Canceled) and
	// "panic" (a *PanicError, when Recover runs inside Metrics).
	ObserveHandler(topic, outcome string, took time.Duration)
}

// Metrics records each call of next in rec: its topic, outcome and
// duration. Put it outside Timeout to see the time a call was cut at; it
// records a panic whether Recover is inside or outside it. A nil rec
// records nothing.
func Metrics(rec Recorder) Middleware {
	return func(next plugins.Handler) plugins.Handler {
		if rec == nil {
			return next
		}
		return plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (res *plugins.Result, err error) {
			start := time.Now()
			outcome := "panic"
			defer func() { rec.ObserveHandler(job.Topic, outcome, time.Since(start)) }()
			res, err = next.Handle(ctx, job)
			outcome = Outcome(err)
			return res, err
		})
	}
}

// Outcome names how a handler call that returned err ended, as Metrics
// records it.
func Outcome(err error) string {
	var pe *PanicError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &pe):
		return "panic"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "error"
}
