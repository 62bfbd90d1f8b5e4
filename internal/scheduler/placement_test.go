package scheduler_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/telemetry/telemetrytest"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// end says that attempt 1 of job id ended COMPLETED, as a worker would:
// it records it and publishes the event.
func (r *rig) end(t *testing.T, id string) {
	t.Helper()
	r.endAs(t, id, store.Completed)
}

// endAs records that attempt 1 of job id ended in state, as its worker or
// the gateway (a cancel) would, and publishes the event.
func (r *rig) endAs(t *testing.T, id string, state store.State) {
	t.Helper()
	j, err := r.st.Transition(context.Background(), id, store.Change{To: state, Attempt: 1}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.publish(t, bus.SubjectJobEvent, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{Job: j.Proto()}}})
}

// submitPriority submits a job of topic job.echo with a priority.
func (r *rig) submitPriority(t *testing.T, id string, priority int32) {
	t.Helper()
	r.st.seed(id, "job.echo", store.Pending, 1, 1)
	r.st.mu.Lock()
	r.st.jobs[id].Priority = priority
	j := clone(r.st.jobs[id])
	r.st.mu.Unlock()
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{JobRequest: j.Request()}})
}

func (r *rig) waitWaiting(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if r.s.Waiting("echo") == n {
			return
		}
	}
	t.Fatalf("%d jobs wait, want %d", r.s.Waiting("echo"), n)
}

func (r *rig) expectDispatch(t *testing.T, id string) {
	t.Helper()
	req := r.nextDispatch(t)
	if req.GetJobId() != id {
		t.Fatalf("dispatched %s, want %s", req.GetJobId(), id)
	}
	if j, _ := r.st.Get(context.Background(), id); j.State != store.Dispatched || j.Pool != "echo" {
		t.Fatalf("job %s: %+v, want DISPATCHED to pool echo", id, j)
	}
}

// The split of a pool's jobs between its workers is the workers' doing
// (each pulls only what it has room for): internal/worker tests it with
// two real workers. These tests hold the scheduler's side: it releases no
// more jobs into a pool than its live workers have room for, in priority
// order.

// TestCapacityLimit: a pool whose one worker has room for two gets no
// third job before one of its two ends.
func TestCapacityLimit(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-1", "echo", 2, false)
	r.waitWorker(t, "w-1", true)
	for _, id := range []string{"j1", "j2"} {
		r.submit(t, id, "job.echo", 1)
		r.expectDispatch(t, id)
	}
	r.submit(t, "j3", "job.echo", 1)
	r.waitWaiting(t, 1)
	r.noDispatch(t)
	if j, _ := r.st.Get(context.Background(), "j3"); j.State != store.Pending || j.Reason != "" {
		t.Fatalf("j3: %+v, want PENDING (behind busy workers, no reason needed)", j)
	}
	r.end(t, "j1")
	r.expectDispatch(t, "j3")
	r.waitWaiting(t, 0)
}

// TestHigherPriorityOvertakes: with the only slot busy, a high priority
// job queued after a low one is dispatched first.
func TestHigherPriorityOvertakes(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-1", "echo", 1, false)
	r.waitWorker(t, "w-1", true)
	r.submitPriority(t, "busy", 0)
	r.expectDispatch(t, "busy")
	r.submitPriority(t, "low", 1)
	r.waitWaiting(t, 1)
	r.submitPriority(t, "low-2", 1)
	r.waitWaiting(t, 2)
	r.submitPriority(t, "high", 9)
	r.waitWaiting(t, 3)
	r.end(t, "busy")
	r.expectDispatch(t, "high")
	r.end(t, "high")
	r.expectDispatch(t, "low")
	r.end(t, "low")
	r.expectDispatch(t, "low-2")
}

// TestNoLiveWorkerKeepsJobPendingWithReason: a job for a pool without a
// live worker waits PENDING, says why, and goes out on the first
// heartbeat.
func TestNoLiveWorkerKeepsJobPendingWithReason(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.submit(t, "j1", "job.echo", 1)
	ev := r.waitEvent(t, "j1", store.Pending)
	if !strings.Contains(ev.GetReason(), "waiting for a live worker in pool echo") {
		t.Fatalf("event reason %q", ev.GetReason())
	}
	if j, _ := r.st.Get(context.Background(), "j1"); j.State != store.Pending || !strings.Contains(j.Reason, "none has sent a heartbeat in the last 9s") {
		t.Fatalf("j1: %+v, want PENDING with the reason", j)
	}
	r.noDispatch(t)
	r.beat(t, "w-1", "echo", 4, false)
	r.expectDispatch(t, "j1")
}

// TestExpiredWorkerReturnsItsCapacity: jobs in flight in a pool whose
// workers all expired no longer count against it when a worker comes back.
func TestExpiredWorkerReturnsItsCapacity(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r := newBareRig(t, answer(allow, nil), "", scheduler.WithClock(clock))
	r.beat(t, "w-1", "echo", 1, false)
	r.waitWorker(t, "w-1", true)
	r.submit(t, "lost", "job.echo", 1)
	r.expectDispatch(t, "lost")
	// The worker dies with the job; nothing tells its end.
	mu.Lock()
	now = now.Add(10 * time.Second)
	mu.Unlock()
	r.submit(t, "j2", "job.echo", 1)
	ev := r.waitEvent(t, "j2", store.Pending)
	if !strings.Contains(ev.GetReason(), "waiting for a live worker") {
		t.Fatalf("j2 reason %q", ev.GetReason())
	}
	// It comes back (restarted): its one slot is free again.
	r.beat(t, "w-1", "echo", 1, false)
	r.expectDispatch(t, "j2")
}

// TestDrainingWorkerGetsNothingNew: a draining worker's slots do not
// count: jobs wait for the live worker's.
func TestDrainingWorkerGetsNothingNew(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-live", "echo", 2, false)
	r.beat(t, "w-drain", "echo", 10, true)
	r.waitWorker(t, "w-live", true)
	for _, id := range []string{"j1", "j2"} {
		r.submit(t, id, "job.echo", 1)
		r.expectDispatch(t, id)
	}
	r.submit(t, "j3", "job.echo", 1)
	r.waitWaiting(t, 1)
	r.noDispatch(t)
	r.end(t, "j2")
	r.expectDispatch(t, "j3")
}

// TestReleasedJobsShareMessages: jobs released together go to the pool's
// stream a few per message, a quarter of the smallest worker's slots each,
// and every one of them once.
func TestReleasedJobsShareMessages(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	var mu sync.Mutex
	var sizes []int
	sub, err := r.client.Subscribe(bus.PoolSubjects("echo"), func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Errorf("undecodable dispatch: %v", err)
			return
		}
		jobs, _ := bus.JobsOf(p)
		mu.Lock()
		sizes = append(sizes, len(jobs))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	// Ten jobs wait for a worker; one with 16 slots comes, and takes them
	// in one release.
	for i := range 10 {
		r.submit(t, fmt.Sprintf("j%d", i), "job.echo", 1)
	}
	r.waitWaiting(t, 10)
	r.beat(t, "w-1", "echo", 16, false)
	got := map[string]int{}
	for range 10 {
		got[r.nextDispatch(t).GetJobId()]++
	}
	r.noDispatch(t)
	if len(got) != 10 {
		t.Fatalf("dispatched %v, want each of the 10 jobs once", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, []int{4, 4, 2}) {
		t.Fatalf("messages of %v jobs, want 4, 4 and 2", sizes)
	}
}

// TestJobCancelledWhileQueuedLeavesTheQueue: a job cancelled while it
// waits for a worker is no longer counted as waiting, is never dispatched
// when a worker comes, and takes no slot from the jobs behind it.
func TestJobCancelledWhileQueuedLeavesTheQueue(t *testing.T) {
	m := telemetry.NewMetrics()
	r := newBareRig(t, answer(allow, nil), "", scheduler.WithMetrics(m))
	r.submit(t, "gone", "job.echo", 1)
	r.waitEvent(t, "gone", store.Pending)
	r.waitWaiting(t, 1)
	r.endAs(t, "gone", store.Cancelled)
	r.waitWaiting(t, 0)
	if out := telemetrytest.Scrape(t, m); !strings.Contains(out, `cortex_pool_queue_depth{pool="echo"} 0`) {
		t.Fatalf("queue depth after the cancel, want 0:\n%s", out)
	}
	// A worker with one slot comes: the job behind gets it.
	r.beat(t, "w-1", "echo", 1, false)
	r.waitWorker(t, "w-1", true)
	r.submit(t, "next", "job.echo", 1)
	r.expectDispatch(t, "next")
	r.noDispatch(t)
	for _, c := range r.st.changesOf("gone") {
		if c.To == store.Dispatched {
			t.Fatalf("the cancelled job was released: changes %+v", r.st.changesOf("gone"))
		}
	}
}

// TestRoutedPoolsHaveGaugesFromTheStart: every pool the routes name has
// its gauges before any worker or job, at 0, so that an alert on a pool
// without workers fires for one that never had any.
func TestRoutedPoolsHaveGaugesFromTheStart(t *testing.T) {
	conn, err := bus.Connect(bustest.StartJetStream(t), "scheduler-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	router, err := routing.NewRouter(map[string]string{"job.echo": "echo", "job.ghost": "ghost"})
	if err != nil {
		t.Fatal(err)
	}
	m := telemetry.NewMetrics()
	s := scheduler.New(conn, &fakeStore{}, answer(allow, nil), router, slog.New(slog.DiscardHandler), scheduler.WithMetrics(m))
	t.Cleanup(s.Close)
	out := telemetrytest.Scrape(t, m)
	for _, pool := range []string{"echo", "ghost"} {
		for _, gauge := range []string{"workers", "capacity", "queue_depth"} {
			if want := fmt.Sprintf("cortex_pool_%s{pool=%q} 0", gauge, pool); !strings.Contains(out, want) {
				t.Errorf("no %s in:\n%s", want, out)
			}
		}
	}
}

// TestDrainingPoolSaysItsWorkersDrain: a job for a pool whose only worker
// drains says so, rather than that no worker beats.
func TestDrainingPoolSaysItsWorkersDrain(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-1", "echo", 4, true)
	for deadline := time.Now().Add(5 * time.Second); !slices.ContainsFunc(r.s.Workers().Workers,
		func(w registry.Worker) bool { return w.ID == "w-1" && w.State == registry.Draining }); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("w-1 is not listed draining: %+v", r.s.Workers().Workers)
		}
	}
	r.submit(t, "j1", "job.echo", 1)
	ev := r.waitEvent(t, "j1", store.Pending)
	if want := "waiting for a worker in pool echo: its 1 live worker is draining and takes no new jobs"; ev.GetReason() != want {
		t.Fatalf("reason %q, want %q", ev.GetReason(), want)
	}
	r.noDispatch(t)
	r.beat(t, "w-2", "echo", 4, false)
	r.expectDispatch(t, "j1")
}
