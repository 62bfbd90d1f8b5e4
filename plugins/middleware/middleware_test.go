package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/middleware"
)

const privatePrompt = "the prompt is private: hunter2"

func job() *plugins.Job {
	return &plugins.Job{ID: "job-1", Topic: "job.test", Prompt: privatePrompt}
}

func TestRecover(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := middleware.Recover(log)(plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
		panic("cannot handle " + j.Prompt)
	}))
	res, err := h.Handle(context.Background(), job())
	var pe *middleware.PanicError
	if res != nil || !errors.As(err, &pe) {
		t.Fatalf("Handle = %v, %v; want a *PanicError", res, err)
	}
	if !strings.HasPrefix(err.Error(), "the handler panicked: cannot handle") {
		t.Errorf("reason %q does not say the handler panicked", err)
	}
	if !bytes.Contains(pe.Stack, []byte("middleware_test.TestRecover")) {
		t.Errorf("stack does not show where it panicked:\n%s", pe.Stack)
	}
	out := logs.String()
	for _, want := range []string{"level=ERROR msg=\"handler panicked\" job_id=job-1 topic=job.test panic_type=string", "level=DEBUG msg=\"handler panic stack\"", "TestRecover"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("the prompt reached the log:\n%s", out)
	}
}

func TestRecoverPassesResults(t *testing.T) {
	boom := errors.New("boom")
	for _, want := range []error{nil, boom} {
		h := middleware.Recover(nil)(plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
			return &plugins.Result{Output: "out"}, want
		}))
		res, err := h.Handle(context.Background(), job())
		if !errors.Is(err, want) || res == nil || res.Output != "out" {
			t.Errorf("Handle = %v, %v; want out, %v", res, err, want)
		}
	}
}

func TestTimeout(t *testing.T) {
	h := middleware.Timeout(10 * time.Millisecond)(plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
		<-ctx.Done()
		return nil, context.Cause(ctx)
	}))
	_, err := h.Handle(context.Background(), job())
	var te *middleware.TimeoutError
	if !errors.As(err, &te) || te.Limit != 10*time.Millisecond || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Handle = %v, want a *TimeoutError of 10ms that is DeadlineExceeded", err)
	}
	if err.Error() != "the handler ran past its limit of 10ms" {
		t.Errorf("reason = %q", err)
	}
}

func TestTimeoutDropsALateResult(t *testing.T) {
	h := middleware.Timeout(time.Millisecond)(plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
		<-ctx.Done() // a handler that returns a result regardless
		return &plugins.Result{Output: "late"}, nil
	}))
	res, err := h.Handle(context.Background(), job())
	if res != nil || !errors.Is(err, context.DeadlineExceeded) || err.Error() != "the handler ran past its limit of 1ms: its result came after the limit and was dropped" {
		t.Fatalf("Handle = %v, %v; want no result and a timeout", res, err)
	}
}

func TestTimeoutLeavesOtherEndsAlone(t *testing.T) {
	// The job's own context ends first: its cause, not a TimeoutError.
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("cancelled by the user")
	cancel(stop)
	h := middleware.Timeout(time.Hour)(plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
		return nil, context.Cause(ctx)
	}))
	_, err := h.Handle(ctx, job())
	var te *middleware.TimeoutError
	if !errors.Is(err, stop) || errors.As(err, &te) {
		t.Errorf("Handle = %v, want the job's own cause", err)
	}
	// No limit: the handler is called as is.
	fast := plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
		return &plugins.Result{Output: "ok"}, nil
	})
	if res, err := middleware.Timeout(0)(fast).Handle(context.Background(), job()); err != nil || res.Output != "ok" {
		t.Errorf("Timeout(0) = %v, %v", res, err)
	}
}

type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) ObserveHandler(topic, outcome string, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		outcome += "(negative duration)"
	}
	r.seen = append(r.seen, topic+" "+outcome)
}

var _ middleware.Recorder = (*recorder)(nil)

func TestMetricsOutcomes(t *testing.T) {
	rec := &recorder{}
	results := []func(ctx context.Context) (*plugins.Result, error){
		func(context.Context) (*plugins.Result, error) { return &plugins.Result{}, nil },
		func(context.Context) (*plugins.Result, error) { return nil, errors.New("bad") },
		func(ctx context.Context) (*plugins.Result, error) { <-ctx.Done(); return nil, ctx.Err() },
		func(context.Context) (*plugins.Result, error) { return nil, context.Canceled },
		func(context.Context) (*plugins.Result, error) { panic("oops") },
	}
	for _, f := range results {
		h := middleware.Chain(plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) { return f(ctx) }),
			middleware.Recover(nil), middleware.Metrics(rec), middleware.Timeout(time.Millisecond))
		_, _ = h.Handle(context.Background(), job())
	}
	// Metrics outside Recover sees the panic go by.
	h := middleware.Chain(plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) { panic("oops") }),
		middleware.Metrics(rec), middleware.Recover(nil))
	_, err := h.Handle(context.Background(), job())
	var pe *middleware.PanicError
	if !errors.As(err, &pe) {
		t.Errorf("Recover inside Metrics: %v, want a *PanicError", err)
	}
	want := "job.test ok,job.test error,job.test timeout,job.test cancelled,job.test panic,job.test panic"
	if got := strings.Join(rec.seen, ","); got != want {
		t.Errorf("recorded %s\nwant     %s", got, want)
	}
}

func TestChainOrder(t *testing.T) {
	var order []string
	mw := func(name string) middleware.Middleware {
		return func(next plugins.Handler) plugins.Handler {
			return plugins.HandlerFunc(func(ctx context.Context, j *plugins.Job) (*plugins.Result, error) {
				order = append(order, name)
				return next.Handle(ctx, j)
			})
		}
	}
	h := middleware.Chain(plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
		order = append(order, "handler")
		return nil, nil
	}), mw("first"), mw("second"))
	_, _ = h.Handle(context.Background(), job())
	if got := strings.Join(order, " "); got != "first second handler" {
		t.Errorf("order = %s, want first second handler", got)
	}
}
