package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
)

type rig struct {
	w       *worker.Worker
	st      *store.Store
	conn    *bus.Conn
	results chan *cortexv1.JobResult
	beats   chan *cortexv1.Heartbeat
}

func newRig(t *testing.T, handlers map[string]plugins.Handler) *rig {
	return newRigWith(t, worker.Options{ID: "w-1", Pool: "p", MaxParallel: 3, Handlers: handlers})
}

func newRigWith(t *testing.T, opts worker.Options) *rig {
	t.Helper()
	natsURL := bustest.StartServer(t)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	r := &rig{st: store.New(rdb, store.Options{}), results: make(chan *cortexv1.JobResult, 10), beats: make(chan *cortexv1.Heartbeat, 10)}

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	for subject, f := range map[string]func(*cortexv1.BusPacket){
		bus.SubjectJobResult:    func(p *cortexv1.BusPacket) { r.results <- p.GetJobResult() },
		bus.SubjectHeartbeatAll: func(p *cortexv1.BusPacket) { r.beats <- p.GetHeartbeat() },
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
	r.w, err = worker.New(r.conn, r.st, opts, log)
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
	ctx := context.Background()
	now := time.Now()
	if err := r.st.CreateJob(ctx, store.NewJob{ID: id, Topic: topic, Tenant: "t", Prompt: prompt}, now); err != nil {
		t.Fatal(err)
	}
	if err := r.st.Transition(ctx, id, store.Change{To: store.Dispatched, Pool: "p"}, now); err != nil {
		t.Fatal(err)
	}
	err := r.conn.Publish(bus.JobSubject("p", topic), &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{
		JobRequest: &cortexv1.JobRequest{JobId: id, Topic: topic, Attempt: 1, Pool: "p"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) result(t *testing.T, id string) *cortexv1.JobResult {
	t.Helper()
	select {
	case res := <-r.results:
		return res
	case <-time.After(5 * time.Second):
		t.Fatalf("no result for job %s", id)
		return nil
	}
}

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
	if res.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED || res.GetResultPtr() != "redis://res:j-ok" || res.GetWorkerId() != "w-1" {
		t.Fatalf("ok job: %v", res)
	}
	j, _, err := r.st.Get(context.Background(), "j-ok")
	if err != nil {
		t.Fatal(err)
	}
	if j.State != store.Running || j.WorkerID != "w-1" {
		t.Errorf("store after the worker ran it: %+v (the scheduler records the end)", j)
	}
	if err := r.st.Transition(context.Background(), "j-ok", store.Change{To: store.Completed}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, out, _ := r.st.Get(context.Background(), "j-ok"); out != "hi!" {
		t.Errorf("stored result %q, want the handler's output", out)
	}

	for topic, want := range map[string]string{
		"job.fail":  "handler for job.fail: model refused",
		"job.panic": "handler for job.panic: panic: plugin bug",
		"job.none":  "no handler for topic job.none",
	} {
		res := r.dispatch(t, "j-"+topic, topic, "x")
		if res.GetState() != cortexv1.JobState_JOB_STATE_FAILED || len(res.GetError()) < len(want) || res.GetError()[:len(want)] != want {
			t.Errorf("%s: %v, want FAILED with %q", topic, res, want)
		}
	}
}

func TestWorkerRefusesBadOptions(t *testing.T) {
	h := map[string]plugins.Handler{"job.x": plugins.HandlerFunc(nil)}
	for name, o := range map[string]worker.Options{
		"bad pool":    {Pool: "a.b", Handlers: h},
		"no handlers": {Pool: "p"},
		"bad id":      {Pool: "p", ID: "w 1", Handlers: h},
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
	r.send(t, "j-slow", "job.slow", "x")
	<-started
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

func TestStopCancelsJobsAfterGrace(t *testing.T) {
	started := make(chan struct{})
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", ShutdownGrace: 20 * time.Millisecond, Handlers: map[string]plugins.Handler{
		"job.hang": plugins.HandlerFunc(func(ctx context.Context, _ *plugins.Job) (*plugins.Result, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		}),
	}})
	r.send(t, "j-hang", "job.hang", "x")
	<-started
	r.w.Stop()
	if res := r.result(t, "j-hang"); res.GetState() != cortexv1.JobState_JOB_STATE_FAILED {
		t.Fatalf("job that outlived the grace period: %v, want FAILED", res)
	}
}
