package gateway_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func (f *fixture) heartbeat(t *testing.T, hb *cortexv1.Heartbeat) {
	t.Helper()
	if err := f.other.Publish(bus.HeartbeatSubject(hb.GetWorkerId()), &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: hb}}); err != nil {
		t.Fatal(err)
	}
	if err := f.other.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestListWorkersShowsAWorkerAfterItsHeartbeat(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Workers: registry.New(registry.Options{})})
	ctx := context.Background()
	// Workers are cluster-wide: a read-only key of any tenant lists them.
	c := f.client(t, "key-acme-read")
	res, err := c.ListWorkers(ctx, &cortexv1.ListWorkersRequest{})
	if err != nil || len(res.GetWorkers()) != 0 {
		t.Fatalf("before any heartbeat: %v, %v", res, err)
	}
	f.heartbeat(t, &cortexv1.Heartbeat{
		WorkerId: "echo-1", Pool: "echo", ActiveJobs: 2, MaxParallelJobs: 8, Topics: []string{"job.echo", "job.sleep"},
		Capabilities: []string{"echo", "sleep"}, Version: "v1", CpuLoad: 0.5, CompletedJobs: 3,
		HeartbeatInterval: durationpb.New(time.Minute),
	})
	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "gpu-1", Pool: "gpu", MaxParallelJobs: 1, Draining: true})
	eventually(t, "workers listed", func() bool {
		res, err = c.ListWorkers(ctx, &cortexv1.ListWorkersRequest{})
		return err == nil && len(res.GetWorkers()) == 2
	})
	w := res.GetWorkers()[0]
	if w.GetWorkerId() != "echo-1" || w.GetPool() != "echo" || w.GetState() != cortexv1.WorkerState_WORKER_STATE_LIVE ||
		w.GetActiveJobs() != 2 || w.GetMaxParallelJobs() != 8 || w.GetCpuLoad() != 0.5 || w.GetVersion() != "v1" ||
		!slices.Equal(w.GetTopics(), []string{"job.echo", "job.sleep"}) || !slices.Equal(w.GetCapabilities(), []string{"echo", "sleep"}) ||
		w.GetCompletedJobs() != 3 || w.GetHeartbeatInterval().AsDuration() != time.Minute ||
		time.Since(w.GetLastHeartbeat().AsTime()) > time.Minute || w.GetFirstSeen() == nil {
		t.Errorf("echo-1: %v", w)
	}
	if g := res.GetWorkers()[1]; g.GetWorkerId() != "gpu-1" || g.GetState() != cortexv1.WorkerState_WORKER_STATE_DRAINING {
		t.Errorf("gpu-1: %v", g)
	}

	res, err = f.client(t, "key-globex-1234").ListWorkers(ctx, &cortexv1.ListWorkersRequest{Pool: "gpu"})
	if err != nil || len(res.GetWorkers()) != 1 || res.GetWorkers()[0].GetWorkerId() != "gpu-1" {
		t.Fatalf("pool gpu for another tenant: %v, %v", res, err)
	}
	if _, err := c.ListWorkers(ctx, &cortexv1.ListWorkersRequest{Pool: "job.*"}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad pool filter: %v, want InvalidArgument", err)
	}

	pools, err := c.ListPools(ctx, &cortexv1.ListPoolsRequest{})
	if err != nil || len(pools.GetPools()) != 2 {
		t.Fatalf("ListPools: %v, %v", pools, err)
	}
	if p := pools.GetPools()[0]; p.GetPool() != "echo" || p.GetWorkers() != 1 || p.GetActiveJobs() != 2 || p.GetCapacity() != 8 ||
		!slices.Equal(p.GetTopics(), []string{"job.echo", "job.sleep"}) {
		t.Errorf("pool echo: %v", p)
	}
	if p := pools.GetPools()[1]; p.GetPool() != "gpu" || p.GetWorkers() != 0 || p.GetDrainingWorkers() != 1 || p.GetCapacity() != 0 {
		t.Errorf("pool gpu: %v", p)
	}
}

func TestListWorkersNeedsAKeyAndARegistry(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Workers: registry.New(registry.Options{})})
	if _, err := f.client(t, "").ListWorkers(context.Background(), &cortexv1.ListWorkersRequest{}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("without a key: %v, want Unauthenticated", err)
	}
	bare := newFixture(t, gateway.Options{Keys: keys})
	if _, err := bare.client(t, "key-acme-1234").ListPools(context.Background(), &cortexv1.ListPoolsRequest{}); connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Errorf("without a registry: %v, want Unimplemented", err)
	}
}

// A pool that routes lead to is listed before any worker of it is heard
// from, with no workers, so that a job waiting for one has a pool to show.
func TestListPoolsShowsRoutedPoolsWithoutWorkers(t *testing.T) {
	router, err := routing.NewRouter(map[string]string{"job.echo": "echo", "job.chat.*": "chat"})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, gateway.Options{Keys: keys, Workers: registry.New(registry.Options{}), Router: router})
	c := f.client(t, "key-acme-read")
	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "echo-1", Pool: "echo", MaxParallelJobs: 8, Topics: []string{"job.echo"}})
	var pools *cortexv1.ListPoolsResponse
	eventually(t, "pool echo heard from", func() bool {
		pools, err = c.ListPools(context.Background(), &cortexv1.ListPoolsRequest{})
		return err == nil && len(pools.GetPools()) == 2 && pools.GetPools()[1].GetWorkers() == 1
	})
	if p := pools.GetPools()[0]; p.GetPool() != "chat" || p.GetWorkers() != 0 || p.GetCapacity() != 0 || !slices.Equal(p.GetTopics(), []string{"job.chat.*"}) {
		t.Errorf("routed pool without workers: %v, want chat with no workers and its routed topics", p)
	}
	if p := pools.GetPools()[1]; p.GetPool() != "echo" || p.GetCapacity() != 8 {
		t.Errorf("pool echo: %v", p)
	}
}

// A PENDING job behind a full pool has no reason on its record; reading it
// gives one, from the workers' heartbeats. A pool with room gives none, and
// a recorded reason stays as it is.
func TestPendingJobInAFullPoolSaysItWaitsForCapacity(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Workers: registry.New(registry.Options{})})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	var pools [2]string
	reasons := func() (string, string) {
		t.Helper()
		got, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id})
		if err != nil {
			t.Fatal(err)
		}
		list, err := c.ListJobs(ctx, &cortexv1.ListJobsRequest{})
		if err != nil || len(list.GetJobs()) != 1 {
			t.Fatalf("list: %v, %v", list, err)
		}
		pools = [2]string{got.GetJob().GetPool(), list.GetJobs()[0].GetPool()}
		return got.GetJob().GetReason(), list.GetJobs()[0].GetReason()
	}
	full := "waiting for capacity in pool echo: its live worker runs 2 of its 2 slots (as of its last heartbeat)"
	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "echo-1", Pool: "echo", ActiveJobs: 2, MaxParallelJobs: 2, HeartbeatInterval: durationpb.New(time.Minute)})
	eventually(t, "the full pool explained", func() bool { get, list := reasons(); return get == full && list == full })
	if pools != [2]string{"echo", "echo"} {
		t.Errorf("pools %q, want the pool the reason names", pools)
	}

	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "echo-1", Pool: "echo", ActiveJobs: 1, MaxParallelJobs: 2, HeartbeatInterval: durationpb.New(time.Minute)})
	eventually(t, "no reason once the pool has room", func() bool { get, list := reasons(); return get == "" && list == "" })

	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "echo-1", Pool: "echo", ActiveJobs: 2, MaxParallelJobs: 2, HeartbeatInterval: durationpb.New(time.Minute)})
	if _, err := f.st.SetPendingReason(ctx, id, 1, "echo", "a reason of the scheduler's", time.Now()); err != nil {
		t.Fatal(err)
	}
	if get, list := reasons(); get != "a reason of the scheduler's" || list != get {
		t.Errorf("a recorded reason read as %q and %q, want it as recorded", get, list)
	}
}

// A PENDING job whose pool has no live worker any more (its last drained,
// or died, while the job waited in a queue) says so, though the scheduler
// recorded no reason when it queued the job.
func TestPendingJobInAPoolWithoutLiveWorkersSaysSo(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Workers: registry.New(registry.Options{})})
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	reason := func() string {
		t.Helper()
		got, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetJob().GetReason()
	}
	if got, want := reason(), "waiting for a live worker in pool echo: none is live (as of the workers' last heartbeats)"; got != want {
		t.Errorf("reason %q, want %q", got, want)
	}
	f.heartbeat(t, &cortexv1.Heartbeat{WorkerId: "echo-1", Pool: "echo", MaxParallelJobs: 2, Draining: true, HeartbeatInterval: durationpb.New(time.Minute)})
	draining := "waiting for a worker in pool echo: its live workers are draining and take no new jobs (as of their last heartbeats)"
	eventually(t, "the draining pool explained", func() bool { return reason() == draining })
}
