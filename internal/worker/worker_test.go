package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/middleware"
)

type rig struct {
	natsURL string
	w       *worker.Worker
	st      *store.Store
	conn    *bus.Conn
	results chan *cortexv1.JobResult
	beats   chan *cortexv1.Heartbeat

	mu     sync.Mutex
	events []*cortexv1.Job
}

// event notes a job event. The worker records a completion itself and says
// so with an event; failures go to the scheduler as results.
func (r *rig) event(j *cortexv1.Job) {
	r.mu.Lock()
	r.events = append(r.events, j)
	r.mu.Unlock()
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		r.results <- &cortexv1.JobResult{JobId: j.GetJobId(), Attempt: j.GetAttempt(), WorkerId: j.GetWorkerId(),
			State: j.GetState(), ResultSize: j.GetResultSize()}
	}
}

func newRig(t *testing.T, handlers map[string]plugins.Handler) *rig {
	t.Helper()
	return newRigWith(t, worker.Options{ID: "w-1", Pool: "p", MaxParallel: 3, Handlers: handlers})
}

func newRigWith(t *testing.T, opts worker.Options) *rig {
	t.Helper()
	return newRigResults(t, opts, 10)
}

// newRigResults is newRigWith with room for results results.
func newRigResults(t *testing.T, opts worker.Options, results int) *rig {
	t.Helper()
	return newRigVia(t, opts, results, nil)
}

// newRigVia is newRigResults whose worker reaches Redis at the address
// via returns for Redis's own (the rig's store keeps the direct way).
func newRigVia(t *testing.T, opts worker.Options, results int, via func(addr string) string) *rig {
	t.Helper()
	natsURL := bustest.StartJetStream(t)
	mr := miniredis.RunT(t)
	// Long timeouts: miniredis shares a loaded CI machine with -race.
	newStore := func(addr string) *store.Store {
		rdb := redis.NewClient(&redis.Options{Addr: addr, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
		t.Cleanup(func() { _ = rdb.Close() })
		return store.New(rdb, store.Options{})
	}
	r := &rig{natsURL: natsURL, st: newStore(mr.Addr()), results: make(chan *cortexv1.JobResult, results), beats: make(chan *cortexv1.Heartbeat, 10)}
	workerStore := r.st
	if via != nil {
		workerStore = newStore(via(mr.Addr()))
	}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	for subject, f := range map[string]func(*cortexv1.BusPacket){
		bus.SubjectJobResult:    func(p *cortexv1.BusPacket) { r.results <- p.GetJobResult() },
		bus.SubjectHeartbeatAll: func(p *cortexv1.BusPacket) { r.beats <- p.GetHeartbeat() },
		bus.SubjectJobEvent: func(p *cortexv1.BusPacket) {
			for _, j := range bus.EventJobs(p) {
				r.event(j)
			}
		},
	} {
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
			if p, err := bus.Decode(m.Data); err == nil {
				f(p)
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	log := slog.New(slog.DiscardHandler)
	r.conn, err = bus.Connect(natsURL, "test", log)
	if err != nil {
		t.Fatal(err)
	}
	r.w, err = worker.New(r.conn, workerStore, opts, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.w.Stop)
	return r
}

// dispatch records a job as the scheduler would, sends it to the pool and
// waits for its result.
func (r *rig) dispatch(t *testing.T, id, topic, prompt string) *cortexv1.JobResult {
	t.Helper()
	r.send(t, id, topic, prompt)
	return r.result(t, id)
}

func (r *rig) send(t *testing.T, id, topic, prompt string) {
	t.Helper()
	r.sendJob(t, store.NewJob{ID: id, Topic: topic, Input: prompt})
}

// sendJob records j (tenant "t") and dispatches its first attempt to pool
// p, as the gateway and the scheduler would.
func (r *rig) sendJob(t *testing.T, j store.NewJob) {
	t.Helper()
	r.sendJobTo(t, j, bus.JobSubject("p", j.Topic))
}

// sendJobTo is sendJob on a given subject.
func (r *rig) sendJobTo(t *testing.T, j store.NewJob, subject string) {
	t.Helper()
	r.sendJobsTo(t, []store.NewJob{j}, subject)
}

// sendJobs is sendJob for many jobs, stored in the pool's stream together.
func (r *rig) sendJobs(t *testing.T, jobs []store.NewJob) {
	t.Helper()
	r.sendJobsTo(t, jobs, bus.JobSubject("p", jobs[0].Topic))
}

func (r *rig) sendJobsTo(t *testing.T, jobs []store.NewJob, subject string) {
	t.Helper()
	r.sendJobsPacked(t, jobs, subject, 1)
}

// sendJobsPacked is sendJobsTo with up to perMessage jobs in one message,
// as the scheduler packs the jobs it releases together.
func (r *rig) sendJobsPacked(t *testing.T, jobs []store.NewJob, subject string, perMessage int) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	var ds []bus.Durable
	for i := range jobs {
		jobs[i].Tenant = "t"
	}
	created := r.st.CreateJobs(ctx, jobs, now)
	for i, j := range jobs {
		if created[i].Err != nil {
			t.Fatal(created[i].Err)
		}
		rec, err := r.st.Transition(ctx, j.ID, store.Change{To: store.Dispatched, Attempt: 1, Pool: "p"}, now)
		if err != nil {
			t.Fatal(err)
		}
		req := rec.Request()
		req.Pool = "p"
		ds = append(ds, bus.Durable{Subject: subject, MsgID: j.ID + ":1", Packet: &cortexv1.BusPacket{TraceId: "trace-" + j.ID, Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}}})
	}
	if perMessage > 1 {
		ds = bus.Batched(ds, perMessage)
	}
	for _, err := range r.conn.PublishDurables(ctx, ds) {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// startWorker starts another worker on the rig's store and NATS server.
func (r *rig) startWorker(t *testing.T, opts worker.Options) *worker.Worker {
	t.Helper()
	conn, err := bus.Connect(r.natsURL, opts.ID, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(conn, r.st, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

func (r *rig) cancel(t *testing.T, id string) {
	t.Helper()
	err := r.conn.Publish(bus.SubjectJobCancel, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobCancel{
		JobCancel: &cortexv1.JobCancel{JobId: id, Reason: "cancelled by test"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.conn.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) result(t *testing.T, id string) *cortexv1.JobResult {
	t.Helper()
	select {
	case res := <-r.results:
		if res.GetJobId() != id {
			t.Fatalf("result for job %s (%v), want one for %s", res.GetJobId(), res, id)
		}
		return res
	case <-time.After(5 * time.Second):
		t.Fatalf("no result for job %s", id)
		return nil
	}
}

// waitEvent polls until a job event says id entered state.
func (r *rig) waitEvent(t *testing.T, id string, state cortexv1.JobState) *cortexv1.Job {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		r.mu.Lock()
		for _, e := range r.events {
			if e.GetJobId() == id && e.GetState() == state {
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
	}
	t.Fatalf("no %s event for job %s", state, id)
	return nil
}

var echo = plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
	return &plugins.Result{Output: j.Prompt + string(j.Payload)}, nil
})

func TestWorkerRunsHandlersAndReports(t *testing.T) {
	r := newRig(t, map[string]plugins.Handler{
		"job.upper": plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
			return &plugins.Result{Output: j.Prompt + "!"}, nil
		}),
		"job.fail": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
			return nil, errors.New("model refused")
		}),
		"job.panic": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
			panic("plugin bug")
		}),
	})
	hb := <-r.beats
	if hb.GetWorkerId() != "w-1" || hb.GetPool() != "p" || hb.GetMaxParallelJobs() != 3 || len(hb.GetTopics()) != 3 {
		t.Errorf("first heartbeat: %v", hb)
	}

	res := r.dispatch(t, "j-ok", "job.upper", "hi")
	if res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED ||
		res.GetWorkerId() != "w-1" || res.GetAttempt() != 1 || res.GetResultSize() != uint64(len("hi!")) {
		t.Fatalf("ok job: %v", res)
	}
	ctx := context.Background()
	j, out, err := r.st.Output(ctx, "j-ok")
	if err != nil {
		t.Fatal(err)
	}
	if j.State != store.Completed || j.WorkerID != "w-1" || out != "hi!" {
		t.Errorf("store after the worker ran it: %+v, output %q; want COMPLETED with the handler's output", j, out)
	}

	for topic, want := range map[string]string{
		"job.fail":  "handler for job.fail: model refused",
		"job.panic": "handler for job.panic: the handler panicked: plugin bug",
		"job.none":  "no handler for topic job.none",
	} {
		res := r.dispatch(t, "j-"+topic, topic, "x")
		if res.GetState() != cortexv1.JobState_JOB_STATE_FAILED || !strings.HasPrefix(res.GetError(), want) {
			t.Errorf("%s: %v, want FAILED with %q", topic, res, want)
		}
	}
}

// TestWorkerMiddleware: every handler is measured, and a handler's own
// limit (middleware.Timeout) ends the attempt TIMEOUT with its reason.
func TestWorkerMiddleware(t *testing.T) {
	m := telemetry.NewMetrics()
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", Metrics: m, Handlers: map[string]plugins.Handler{
		"job.echo": echo,
		"job.limit": middleware.Timeout(time.Millisecond)(plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
			<-ctx.Done()
			return nil, context.Cause(ctx)
		})),
		"job.panic": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) { panic("bug") }),
	}})
	res := r.dispatch(t, "j-limit", "job.limit", "x")
	if res.GetState() != cortexv1.JobState_JOB_STATE_TIMEOUT || !strings.HasPrefix(res.GetError(), "handler for job.limit: the handler ran past its limit of 1ms") {
		t.Errorf("handler past its own limit: %v, want TIMEOUT with the limit as the reason", res)
	}
	for _, id := range []string{"j-1", "j-2"} {
		if res := r.dispatch(t, id, "job.echo", "x"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
			t.Fatalf("echo: %v", res)
		}
	}
	if res := r.dispatch(t, "j-panic", "job.panic", "x"); res.GetState() != cortexv1.JobState_JOB_STATE_FAILED {
		t.Fatalf("panic: %v", res)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`cortex_handler_seconds_count{outcome="ok",topic="job.echo"} 2`,
		`cortex_handler_seconds_count{outcome="timeout",topic="job.limit"} 1`,
		`cortex_handler_seconds_count{outcome="panic",topic="job.panic"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestWorkerRefusesBadOptions(t *testing.T) {
	h := map[string]plugins.Handler{"job.x": plugins.HandlerFunc(nil)}
	for name, o := range map[string]worker.Options{
		"bad pool":    {Pool: "a.b", Handlers: h},
		"no handlers": {Pool: "p"},
		"bad id":      {Pool: "p", ID: "w 1", Handlers: h},
		"negative":    {Pool: "p", MaxParallel: -1, Handlers: h},
		"too many":    {Pool: "p", MaxParallel: 10001, Handlers: h},
	} {
		if _, err := worker.New(nil, nil, o, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("%s: New accepted %+v", name, o)
		}
	}
}

func TestStopFinishesRunningJobs(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	r := newRig(t, map[string]plugins.Handler{
		"job.slow": plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
			close(started)
			<-release
			return &plugins.Result{Output: "done"}, nil
		}),
	})
	if got := r.w.Stopping(); got != "no job is running" {
		t.Errorf("Stopping with no job: %q", got)
	}
	r.send(t, "j-slow", "job.slow", "x")
	<-started
	if got, want := r.w.Stopping(), "1 job is running: up to 10s for it to finish, then it goes back to the stream for another worker"; got != want {
		t.Errorf("Stopping with a job running: %q, want %q", got, want)
	}
	stopped := make(chan struct{})
	go func() { r.w.Stop(); close(stopped) }()
	select {
	case <-stopped:
		t.Fatal("Stop returned while a job was still running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-stopped
	if res := r.result(t, "j-slow"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("job running at Stop: %v, want its result reported as COMPLETED", res)
	}
}

// TestStopHandsBackJobsThatOutliveTheGrace: a job still running when the
// shutdown grace runs out is not reported (it did not fail): it goes back
// to the stream, and another worker of the pool takes it over and runs it.
func TestStopHandsBackJobsThatOutliveTheGrace(t *testing.T) {
	started := make(chan struct{}, 2)
	handlers := map[string]plugins.Handler{
		"job.hang": plugins.HandlerFunc(func(ctx context.Context, j *plugins.Job) (*plugins.Result, error) {
			started <- struct{}{}
			if j.Prompt == "hang" {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return &plugins.Result{Output: "done"}, nil
		}),
	}
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", ShutdownGrace: 20 * time.Millisecond, Lease: 300 * time.Millisecond, Handlers: handlers})
	r.send(t, "j-hang", "job.hang", "hang")
	<-started
	r.w.Stop()
	select {
	case res := <-r.results:
		t.Fatalf("a job handed back was reported: %v", res)
	case <-time.After(100 * time.Millisecond):
	}
	if j, _ := r.st.Get(context.Background(), "j-hang"); j.State != store.Running || j.WorkerID != "w-1" {
		t.Fatalf("job handed back: %+v, want still RUNNING on w-1 until another worker takes it", j)
	}
	// A second worker takes it over; this time the handler finishes.
	handlers["job.hang"] = plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
		return &plugins.Result{Output: "done"}, nil
	})
	r.startWorker(t, worker.Options{ID: "w-2", Pool: "p", Lease: 300 * time.Millisecond, Handlers: handlers})
	if res := r.result(t, "j-hang"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetWorkerId() != "w-2" {
		t.Fatalf("job taken over: %v, want COMPLETED on w-2", res)
	}
	// Its record says it was handed back, not that a lease ran out.
	if j, _ := r.st.Get(context.Background(), "j-hang"); j.Reason != "handed back by worker w-1 as it stopped; run again on worker w-2" {
		t.Errorf("reason %q, want the hand-back", j.Reason)
	}
}

// TestADeadWorkersJobIsTakenOver: a worker that stops acknowledging a job
// (its connection died) loses it when the lease runs out: another worker
// takes the RUNNING attempt over and records the one outcome; the first
// learns from the store that the job is no longer its and stops it.
func TestADeadWorkersJobIsTakenOver(t *testing.T) {
	var calls atomic.Int32
	stopped := make(chan error, 1)
	handlers := map[string]plugins.Handler{
		"job.slow": plugins.HandlerFunc(func(ctx context.Context, j *plugins.Job) (*plugins.Result, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done()
				stopped <- context.Cause(ctx)
				return nil, ctx.Err()
			}
			return &plugins.Result{Output: "second"}, nil
		}),
	}
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", Lease: 300 * time.Millisecond, Handlers: handlers})
	r.send(t, "j-1", "job.slow", "x")
	for deadline := time.Now().Add(5 * time.Second); calls.Load() == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the job never started")
		}
	}
	// w-1's connection dies: no more in-progress acks reach the stream.
	r.conn.NATS().Close()
	r.startWorker(t, worker.Options{ID: "w-2", Pool: "p", Lease: 300 * time.Millisecond, Handlers: handlers})
	if res := r.result(t, "j-1"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetWorkerId() != "w-2" {
		t.Fatalf("job: %v, want COMPLETED by w-2", res)
	}
	j, out, err := r.st.Output(context.Background(), "j-1")
	if err != nil || j.State != store.Completed || j.WorkerID != "w-2" || out != "second" || j.Attempt != 1 {
		t.Fatalf("record %+v, output %q, %v; want attempt 1 COMPLETED by w-2 with its output", j, out, err)
	}
	select {
	case cause := <-stopped:
		if !strings.Contains(fmt.Sprint(cause), "no longer this worker's") {
			t.Errorf("w-1's job stopped for %v, want: no longer this worker's", cause)
		}
	case <-time.After(5 * time.Second):
		t.Error("w-1 went on running a job it lost")
	}
}

func TestTimeoutReportsTimeout(t *testing.T) {
	ended := make(chan error, 1)
	r := newRig(t, map[string]plugins.Handler{
		"job.hang": plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
			<-ctx.Done()
			ended <- ctx.Err()
			return nil, ctx.Err()
		}),
		"job.echo": echo,
	})
	r.sendJob(t, store.NewJob{ID: "j-hang", Topic: "job.hang", Input: "x", Timeout: 20 * time.Millisecond})
	res := r.result(t, "j-hang")
	if res.GetState() != cortexv1.JobState_JOB_STATE_TIMEOUT || !strings.Contains(res.GetError(), "timeout of 20ms") ||
		res.GetResultPtr() != "" || res.GetAttempt() != 1 {
		t.Fatalf("job that ran past its timeout: %v, want TIMEOUT", res)
	}
	if err := <-ended; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("handler's context ended with %v, want DeadlineExceeded", err)
	}

	// A job that finishes within its timeout is not affected by it.
	r.sendJob(t, store.NewJob{ID: "j-quick", Topic: "job.echo", Input: "x", Timeout: time.Hour})
	if res := r.result(t, "j-quick"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("job within its timeout: %v, want COMPLETED", res)
	}
}

// blocker is a handler that announces each job it runs and holds it until
// the job's context ends or release is closed.
type blocker struct {
	running chan runningJob
	release chan struct{}
}

type runningJob struct {
	id    string
	ctx   context.Context
	ended chan error
}

func newBlocker() *blocker {
	return &blocker{running: make(chan runningJob, 10), release: make(chan struct{})}
}

func (b *blocker) Handle(ctx context.Context, j *plugins.Job) (*plugins.Result, error) {
	rj := runningJob{id: j.ID, ctx: ctx, ended: make(chan error, 1)}
	b.running <- rj
	select {
	case <-ctx.Done():
		rj.ended <- context.Cause(ctx)
		return nil, ctx.Err()
	case <-b.release:
		rj.ended <- nil
		return &plugins.Result{Output: "released"}, nil
	}
}

// wantCancelled waits until the job's handler ended with its context
// cancelled rather than released.
func (rj runningJob) wantCancelled(t *testing.T) {
	t.Helper()
	select {
	case cause := <-rj.ended:
		if cause == nil {
			t.Fatalf("job %s finished instead of being cancelled", rj.id)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("job %s was not cancelled", rj.id)
	}
}

func (b *blocker) next(t *testing.T, id string) runningJob {
	t.Helper()
	select {
	case rj := <-b.running:
		if rj.id != id {
			t.Fatalf("handler started job %s, want %s", rj.id, id)
		}
		return rj
	case <-time.After(5 * time.Second):
		t.Fatalf("job %s never reached its handler", id)
		return runningJob{}
	}
}

func TestCancelStopsRunningJobAndReportsNothing(t *testing.T) {
	b := newBlocker()
	r := newRig(t, map[string]plugins.Handler{"job.block": b, "job.echo": echo})
	r.send(t, "j-cancel", "job.block", "x")
	rj := b.next(t, "j-cancel")
	// The gateway records the cancel, then tells the workers.
	if _, err := r.st.Transition(context.Background(), "j-cancel", store.Change{To: store.Cancelled, Reason: "by test"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.cancel(t, "j-cancel")
	select {
	case err := <-rj.ended:
		if err == nil || !errors.Is(rj.ctx.Err(), context.Canceled) {
			t.Fatalf("handler ended with cause %v, ctx err %v; want its context cancelled", err, rj.ctx.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cancelled job's handler kept running")
	}
	// A result for the cancelled job would be out before the next job's:
	// result fails on any result but the one it waits for.
	if res := r.dispatch(t, "j-after", "job.echo", "x"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("job after the cancel: %v", res)
	}
	if j, _ := r.st.Get(context.Background(), "j-cancel"); j.State != store.Cancelled {
		t.Errorf("cancelled job is now %s", j.State)
	}
}

func TestCancelForJobNotRunningIsIgnored(t *testing.T) {
	b := newBlocker()
	r := newRig(t, map[string]plugins.Handler{"job.block": b})
	r.send(t, "j-keep", "job.block", "x")
	keep := b.next(t, "j-keep")
	r.send(t, "j-stop", "job.block", "x")
	stop := b.next(t, "j-stop")

	r.cancel(t, "j-unknown")
	r.cancel(t, "j-stop")
	// Cancels are handled in order, so once j-stop has ended the cancel
	// for j-unknown has been handled too.
	stop.wantCancelled(t)
	if err := keep.ctx.Err(); err != nil {
		t.Fatalf("cancels for other jobs ended j-keep's context: %v", err)
	}
	close(b.release)
	if res := r.result(t, "j-keep"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("j-keep: %v, want COMPLETED", res)
	}
}

// TestRunningEventIsPublished: a job still running after quickJob is
// recorded RUNNING, and its watchers told, while it runs.
func TestRunningEventIsPublished(t *testing.T) {
	release := make(chan struct{})
	var began atomic.Int64 // when the handler began, µs
	r := newRig(t, map[string]plugins.Handler{"job.hold": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
		began.Store(time.Now().UnixMicro())
		<-release
		return &plugins.Result{Output: "ok"}, nil
	})})
	r.send(t, "j-1", "job.hold", "hi")
	ev := r.waitEvent(t, "j-1", cortexv1.JobState_JOB_STATE_RUNNING)
	close(release)
	if ev.GetWorkerId() != "w-1" || ev.GetAttempt() != 1 || ev.GetTenantId() != "t" || ev.GetTopic() != "job.hold" || ev.GetPool() != "p" {
		t.Errorf("RUNNING event %v", ev)
	}
	if res := r.result(t, "j-1"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("result %v", res)
	}
	j, err := r.st.Get(context.Background(), "j-1")
	if err != nil {
		t.Fatal(err)
	}
	// RUNNING records when the worker started the job, before its
	// handler began, not when it was recorded (a while later).
	if ran := j.Entered[store.Running]; ran.Before(j.Entered[store.Dispatched]) || ran.UnixMicro() > began.Load() {
		t.Errorf("entered RUNNING at %v, dispatched at %v, the handler began at %v: want the start",
			ran, j.Entered[store.Dispatched], time.UnixMicro(began.Load()))
	}
}

// TestQuickJobGoesStraightToCompleted: a job that ends at once is recorded
// COMPLETED straight from DISPATCHED, one event, with its worker and the
// time it started on the record as a RUNNING step would have left them.
func TestQuickJobGoesStraightToCompleted(t *testing.T) {
	r := newRig(t, map[string]plugins.Handler{"job.echo": echo})
	if res := r.dispatch(t, "j-1", "job.echo", "hi"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetWorkerId() != "w-1" {
		t.Fatalf("result %v", res)
	}
	j, out, err := r.st.Output(context.Background(), "j-1")
	if err != nil || out != "hi" || j.WorkerID != "w-1" || j.Entered[store.Running].IsZero() || j.Entered[store.Running].After(j.Entered[store.Completed]) ||
		len(j.Attempts) != 1 || j.Attempts[0].WorkerID != "w-1" {
		t.Fatalf("record %+v, output %q, %v", j, out, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.GetState() == cortexv1.JobState_JOB_STATE_RUNNING {
			t.Fatalf("a quick job was announced RUNNING: %v", e)
		}
	}
}

func TestInputReachesHandler(t *testing.T) {
	binary := []byte{0x00, 0xff, 0x10, '\n', 0x80}
	for _, tc := range []struct {
		name        string
		job         store.NewJob
		wantPrompt  string
		wantPayload []byte
	}{
		{"text", store.NewJob{Input: "hello"}, "hello", nil},
		{"binary", store.NewJob{Input: string(binary), Binary: true}, "", binary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := make(chan *plugins.Job, 1)
			r := newRig(t, map[string]plugins.Handler{
				"job.see": plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
					seen <- j
					return &plugins.Result{Output: "ok"}, nil
				}),
			})
			tc.job.ID, tc.job.Topic = uuid.NewString(), "job.see"
			r.sendJob(t, tc.job)
			if res := r.result(t, tc.job.ID); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
				t.Fatalf("result %v", res)
			}
			j := <-seen
			if j.Prompt != tc.wantPrompt || !bytes.Equal(j.Payload, tc.wantPayload) || (tc.wantPayload == nil) != (j.Payload == nil) {
				t.Errorf("handler saw prompt %q payload %q, want %q and %q", j.Prompt, j.Payload, tc.wantPrompt, tc.wantPayload)
			}
			if j.ID != tc.job.ID || j.Tenant != "t" || j.Attempt != 1 {
				t.Errorf("handler saw job %+v", j)
			}
		})
	}
}

// TestAWorkerRunsNoMoreThanItsSlots: a worker pulls no more jobs than it
// has free slots; every job runs once.
func TestAWorkerRunsNoMoreThanItsSlots(t *testing.T) {
	release := make(chan struct{})
	var running, most atomic.Int32
	r := newRig(t, map[string]plugins.Handler{
		"job.hold": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
			running.Add(-1)
			return &plugins.Result{Output: "ok"}, nil
		}),
	})
	for i := range 6 {
		r.send(t, fmt.Sprintf("j-%d", i), "job.hold", "x")
	}
	for deadline := time.Now().Add(5 * time.Second); running.Load() < 3 && time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
	}
	close(release)
	seen := map[string]bool{}
	for range 6 {
		var res *cortexv1.JobResult
		select {
		case res = <-r.results:
		case <-time.After(5 * time.Second):
			t.Fatalf("results so far %v, want 6", seen)
		}
		if res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || seen[res.GetJobId()] {
			t.Fatalf("result %v (seen %v)", res, seen)
		}
		seen[res.GetJobId()] = true
	}
	if m := most.Load(); m != 3 {
		t.Fatalf("%d jobs ran at once, want MaxParallel 3", m)
	}
}

// TestTwoEqualWorkersSplitTheJobs: two workers of a pool with equal room
// share 10,000 jobs at worst 55/45, and neither ever runs more than its
// max parallel jobs.
func TestTwoEqualWorkersSplitTheJobs(t *testing.T) {
	const jobs, maxParallel = 10000, 4
	var mu sync.Mutex
	count := map[string]int{}
	running := map[string]int{}
	most := map[string]int{}
	handler := func(id string) plugins.Handler {
		return plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
			mu.Lock()
			count[id]++
			running[id]++
			most[id] = max(most[id], running[id])
			mu.Unlock()
			time.Sleep(200 * time.Microsecond)
			mu.Lock()
			running[id]--
			mu.Unlock()
			return &plugins.Result{Output: "ok"}, nil
		})
	}
	r := newRigResults(t, worker.Options{ID: "w-a", Pool: "p", MaxParallel: maxParallel, Handlers: map[string]plugins.Handler{"job.echo": handler("w-a")}}, jobs)
	r.startWorker(t, worker.Options{ID: "w-b", Pool: "p", MaxParallel: maxParallel, Handlers: map[string]plugins.Handler{"job.echo": handler("w-b")}})
	var batch []store.NewJob
	for i := range jobs {
		batch = append(batch, store.NewJob{ID: fmt.Sprintf("j-%05d", i), Topic: "job.echo", Input: "x"})
	}
	r.sendJobs(t, batch)
	for range jobs {
		select {
		case <-r.results:
		case <-time.After(30 * time.Second):
			mu.Lock()
			t.Fatalf("jobs run so far: %v of %d", count, jobs)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	a, b := count["w-a"], count["w-b"]
	t.Logf("split %d/%d; most at once %d and %d", a, b, most["w-a"], most["w-b"])
	if a+b != jobs {
		t.Fatalf("ran %d + %d jobs, want %d", a, b, jobs)
	}
	if min(a, b) < jobs*45/100 {
		t.Errorf("split %d/%d, worse than 55/45", a, b)
	}
	if most["w-a"] > maxParallel || most["w-b"] > maxParallel {
		t.Errorf("most at once %d and %d, want at most %d", most["w-a"], most["w-b"], maxParallel)
	}
}

// TestStopDrains: Stop lets the running job finish and records it before
// it returns, and takes no new job once it said it drains: a job sent then
// stays in the stream for another worker of the pool.
func TestStopDrains(t *testing.T) {
	started, release := make(chan string, 10), make(chan struct{})
	slow := plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
		started <- j.ID
		<-release
		return &plugins.Result{Output: "done"}, nil
	})
	r := newRig(t, map[string]plugins.Handler{"job.slow": slow})
	r.send(t, "j-slow", "job.slow", "x")
	if id := <-started; id != "j-slow" {
		t.Fatalf("started %s", id)
	}
	stopped := make(chan struct{})
	go func() { r.w.Stop(); close(stopped) }()
	for hb := range r.beats {
		if hb.GetDraining() {
			break
		}
	}
	r.send(t, "j-late", "job.slow", "x")
	select {
	case <-stopped:
		t.Fatal("Stop returned while a job was still running")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return once the running job finished")
	}
	if res := r.result(t, "j-slow"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		t.Fatalf("job running at Stop: %v, want COMPLETED", res)
	}
	select {
	case id := <-started:
		t.Fatalf("the draining worker started %s", id)
	default:
	}
	if j, _ := r.st.Get(context.Background(), "j-late"); j.State != store.Dispatched {
		t.Fatalf("job sent during the drain: %s, want still DISPATCHED", j.State)
	}
	r.startWorker(t, worker.Options{ID: "w-2", Pool: "p", Handlers: map[string]plugins.Handler{"job.slow": slow}})
	if id := <-started; id != "j-late" {
		t.Fatalf("w-2 started %s, want j-late", id)
	}
	if res := r.result(t, "j-late"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetWorkerId() != "w-2" {
		t.Fatalf("j-late: %v, want COMPLETED by w-2", res)
	}
}

// poolConsumer is pool p's consumer, on a connection of the test's.
func (r *rig) poolConsumer(t *testing.T) jetstream.Consumer {
	t.Helper()
	nc, err := nats.Connect(r.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(context.Background(), bus.StreamJobs, bus.PoolConsumer("p"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// settledStream waits until the pool's consumer holds no message: every
// one was delivered and acked.
func (r *rig) settledStream(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c := r.poolConsumer(t)
	var info *jetstream.ConsumerInfo
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if info, err = c.Info(ctx); err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
	}
	t.Fatalf("the pool's consumer still holds messages: %+v, %v", info, err)
}

// TestBatchedJobsEachTakeASlot: a message carrying several jobs runs each
// in a slot of its own, never more than MaxParallel at once, and is acked
// once all its jobs are recorded.
func TestBatchedJobsEachTakeASlot(t *testing.T) {
	release := make(chan struct{})
	var running, most atomic.Int32
	r := newRig(t, map[string]plugins.Handler{
		"job.hold": plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
			n := running.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
			running.Add(-1)
			return &plugins.Result{Output: j.ID}, nil
		}),
	})
	var jobs []store.NewJob
	for i := range 10 {
		jobs = append(jobs, store.NewJob{ID: fmt.Sprintf("j-%d", i), Topic: "job.hold", Input: "x"})
	}
	r.sendJobsPacked(t, jobs, bus.JobSubject("p", "job.hold"), 4)
	for deadline := time.Now().Add(5 * time.Second); running.Load() < 3 && time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
	}
	time.Sleep(20 * time.Millisecond) // room for a fourth to start, were it let
	close(release)
	seen := map[string]bool{}
	for range jobs {
		select {
		case res := <-r.results:
			if res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || seen[res.GetJobId()] {
				t.Fatalf("result %v (seen %v)", res, seen)
			}
			seen[res.GetJobId()] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("results so far %v, want 10", seen)
		}
	}
	if m := most.Load(); m != 3 {
		t.Fatalf("%d jobs ran at once, want MaxParallel 3", m)
	}
	for _, j := range jobs {
		if rec, out, err := r.st.Output(context.Background(), j.ID); err != nil || rec.State != store.Completed || out != j.ID {
			t.Fatalf("job %s: %+v, output %q, %v", j.ID, rec, out, err)
		}
	}
	r.settledStream(t)
}

// TestABatchComesBackOnlyForItsUnfinishedJobs: a worker stopping while one
// job of a message outlives the grace hands the whole message back once
// its other jobs are recorded; the worker that takes it runs only the job
// that did not finish, and each job has one outcome.
func TestABatchComesBackOnlyForItsUnfinishedJobs(t *testing.T) {
	var mu sync.Mutex
	runs := map[string][]string{} // job: workers that ran it
	hung := make(chan struct{})
	handler := func(worker string) plugins.Handler {
		return plugins.HandlerFunc(func(ctx context.Context, j *plugins.Job) (*plugins.Result, error) {
			mu.Lock()
			runs[j.ID] = append(runs[j.ID], worker)
			mu.Unlock()
			if j.ID == "j-hang" && worker == "w-1" {
				close(hung)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return &plugins.Result{Output: worker}, nil
		})
	}
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", ShutdownGrace: 20 * time.Millisecond, Lease: 300 * time.Millisecond,
		Handlers: map[string]plugins.Handler{"job.echo": handler("w-1")}})
	jobs := []store.NewJob{{ID: "j-a", Topic: "job.echo", Input: "x"}, {ID: "j-hang", Topic: "job.echo", Input: "x"}, {ID: "j-b", Topic: "job.echo", Input: "x"}}
	r.sendJobsPacked(t, jobs, bus.JobSubject("p", "job.echo"), 3)
	<-hung
	for range 2 {
		if res := <-r.results; res.GetWorkerId() != "w-1" || res.GetJobId() == "j-hang" {
			t.Fatalf("result %v, want j-a and j-b on w-1", res)
		}
	}
	r.w.Stop()
	r.startWorker(t, worker.Options{ID: "w-2", Pool: "p", Lease: 300 * time.Millisecond, Handlers: map[string]plugins.Handler{"job.echo": handler("w-2")}})
	if res := r.result(t, "j-hang"); res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetWorkerId() != "w-2" {
		t.Fatalf("the handed-back job: %v, want COMPLETED on w-2", res)
	}
	r.settledStream(t)
	mu.Lock()
	defer mu.Unlock()
	want := map[string][]string{"j-a": {"w-1"}, "j-b": {"w-1"}, "j-hang": {"w-1", "w-2"}}
	for id, ws := range want {
		if !slices.Equal(runs[id], ws) {
			t.Errorf("job %s ran on %v, want %v", id, runs[id], ws)
		}
		rec, out, err := r.st.Output(context.Background(), id)
		if err != nil || rec.State != store.Completed || out != ws[len(ws)-1] || rec.Attempt != 1 {
			t.Errorf("job %s: %+v, output %q, %v; want attempt 1 COMPLETED by %s", id, rec, out, err, ws[len(ws)-1])
		}
	}
}

// The jobs of one message that have a slot start together, after one read
// of their inputs; the rest start as slots free up, each reading its own.
// Every job runs on its own input either way.
func TestPackedJobsEachRunOnTheirOwnInput(t *testing.T) {
	echo := plugins.HandlerFunc(func(_ context.Context, j *plugins.Job) (*plugins.Result, error) {
		return &plugins.Result{Output: "ran " + j.Prompt}, nil
	})
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", MaxParallel: 3, Handlers: map[string]plugins.Handler{"job.echo": echo}})
	var jobs []store.NewJob
	for i := range 7 {
		jobs = append(jobs, store.NewJob{ID: fmt.Sprintf("j-%d", i), Topic: "job.echo", Input: fmt.Sprintf("input %d", i)})
	}
	r.sendJobsPacked(t, slices.Clone(jobs), bus.JobSubject("p", "job.echo"), len(jobs))
	for range jobs {
		select {
		case res := <-r.results:
			if res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
				t.Fatalf("result %v, want COMPLETED", res)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("not every job of the message completed")
		}
	}
	for _, j := range jobs {
		rec, out, err := r.st.Output(context.Background(), j.ID)
		if err != nil || rec.State != store.Completed || out != "ran "+j.Input {
			t.Errorf("job %s: %+v, output %q, %v; want COMPLETED with %q", j.ID, rec, out, err, "ran "+j.Input)
		}
	}
}

// answerGate is a TCP proxy whose answers (server to client) can be held
// back: a client's requests still reach the server, and are carried out,
// while their answers wait.
type answerGate struct {
	mu   sync.Mutex
	open chan struct{} // closed while answers pass
	held chan struct{} // gets a value when an answer is held back
}

// start proxies a new local address to addr until the test ends.
func (g *answerGate) start(t *testing.T, addr string) string {
	t.Helper()
	g.open, g.held = make(chan struct{}), make(chan struct{}, 1)
	close(g.open)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", addr)
			if err != nil {
				_ = client.Close()
				continue
			}
			g.mu.Lock()
			conns = append(conns, client, server)
			g.mu.Unlock()
			go func() { _, _ = io.Copy(server, client) }()
			go g.answer(client, server)
		}
	}()
	return ln.Addr().String()
}

// answer copies server's answers to client, waiting while they are held.
func (g *answerGate) answer(client, server net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 {
			g.mu.Lock()
			open := g.open
			g.mu.Unlock()
			select {
			case <-open:
			default:
				select {
				case g.held <- struct{}{}:
				default:
				}
				<-open
			}
			if _, err := client.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (g *answerGate) hold() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

// pass lets answers through again; it may be called when they pass.
func (g *answerGate) pass() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

// A cancel that arrives while the worker reads the inputs of the jobs it
// has just taken stops them, though the read answers they are ready: the
// handler of a cancelled job never starts.
func TestCancelDuringTheReadOfInputsStopsTheJob(t *testing.T) {
	g := &answerGate{}
	b := newBlocker()
	r := newRigVia(t, worker.Options{ID: "w-1", Pool: "p", MaxParallel: 3, Handlers: map[string]plugins.Handler{"job.block": b}}, 10,
		func(addr string) string { return g.start(t, addr) })
	ctx := context.Background()
	// A runs, and is recorded RUNNING, before answers are held: nothing
	// else of the worker's asks Redis while B is read.
	r.send(t, "j-a", "job.block", "a")
	a := b.next(t, "j-a")
	r.waitEvent(t, "j-a", cortexv1.JobState_JOB_STATE_RUNNING)

	g.hold()
	defer g.pass() // before the worker stops, should the test end early
	r.send(t, "j-b", "job.block", "b")
	select {
	case <-g.held: // the worker has read B's input; the answer waits
	case <-time.After(5 * time.Second):
		t.Fatal("the worker never read job j-b's input")
	}
	for _, id := range []string{"j-b", "j-a"} {
		if _, err := r.st.Transition(ctx, id, store.Change{To: store.Cancelled, Reason: "by test"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		r.cancel(t, id)
	}
	// Cancels are handled in order: once A's is, so is B's.
	a.wantCancelled(t)
	g.pass()
	// Had B's handler started, it would hold its message (the blocker
	// never returns) and the stream would not settle.
	r.settledStream(t)
	select {
	case rj := <-b.running:
		t.Fatalf("the handler of cancelled job %s started", rj.id)
	default:
	}
	if j, _ := r.st.Get(ctx, "j-b"); j.State != store.Cancelled {
		t.Errorf("j-b is %s, want CANCELLED", j.State)
	}
}

// A job delivered twice, its second delivery skipped while the first still
// runs (the store says the job is RUNNING already), can still be
// cancelled: letting the second go does not forget the first.
func TestCancelReachesAJobDeliveredTwice(t *testing.T) {
	b := newBlocker()
	r := newRig(t, map[string]plugins.Handler{"job.block": b})
	ctx := context.Background()
	r.send(t, "j-twice", "job.block", "x")
	first := b.next(t, "j-twice")
	r.waitEvent(t, "j-twice", cortexv1.JobState_JOB_STATE_RUNNING)

	rec, err := r.st.Get(ctx, "j-twice")
	if err != nil {
		t.Fatal(err)
	}
	req := rec.Request()
	req.Pool = "p"
	dup := bus.Durable{Subject: bus.JobSubject("p", "job.block"), MsgID: "j-twice:again",
		Packet: &cortexv1.BusPacket{TraceId: "trace-again", Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}}}
	for _, err := range r.conn.PublishDurables(ctx, []bus.Durable{dup}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The second delivery is settled (acked: the job moved on without it)
	// while the first still holds its message.
	cons := r.poolConsumer(t)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		info, err := cons.Info(ctx)
		if err == nil && info.NumPending == 0 && info.NumAckPending == 1 && info.Delivered.Consumer >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second delivery was not settled: %+v, %v", info, err)
		}
	}

	if _, err := r.st.Transition(ctx, "j-twice", store.Change{To: store.Cancelled, Reason: "by test"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.cancel(t, "j-twice")
	first.wantCancelled(t)
}
