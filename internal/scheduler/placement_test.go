package scheduler_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// end says that attempt 1 of job id ended COMPLETED, as a worker would:
// it records it and publishes the event.
func (r *rig) end(t *testing.T, id string) {
	t.Helper()
	j, err := r.st.Transition(context.Background(), id, store.Change{To: store.Completed, Attempt: 1}, time.Now())
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

func (r *rig) expectDispatch(t *testing.T, id, worker string) {
	t.Helper()
	req := r.nextDispatch(t)
	if req.GetJobId() != id {
		t.Fatalf("dispatched %s, want %s", req.GetJobId(), id)
	}
	if j, _ := r.st.Get(context.Background(), id); j.State != store.Dispatched || j.WorkerID != worker {
		t.Fatalf("job %s: %+v, want DISPATCHED to %s", id, j, worker)
	}
}

// fakeWorker takes the jobs placed on one worker's subject, counts them
// and those it holds at once, and ends each at once, as a worker would.
type fakeWorker struct {
	got, held, most atomic.Int64
}

func (r *rig) fakeWorker(t *testing.T, id string) *fakeWorker {
	t.Helper()
	nc, err := nats.Connect(r.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f := &fakeWorker{}
	// Jobs are ended by a goroutine of their own, so the worker may hold
	// several at once, as a real one would.
	held := make(chan string, 20000)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case <-done:
				return
			case id := <-held:
				j, err := r.st.Transition(context.Background(), id, store.Change{To: store.Completed, Attempt: 1}, time.Now())
				// The job is over before its end is told.
				f.held.Add(-1)
				if err != nil {
					continue
				}
				ev := &cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion,
					Payload: &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{Job: j.Proto()}}}
				if data, err := bus.Encode(ev); err == nil {
					_ = nc.Publish(bus.SubjectJobEvent, data)
				}
			}
		}
	}()
	if _, err := nc.Subscribe(bus.WorkerSubject("echo", id), func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			return
		}
		f.got.Add(1)
		n := f.held.Add(1)
		for m := f.most.Load(); n > m && !f.most.CompareAndSwap(m, n); m = f.most.Load() {
		}
		held <- p.GetJobRequest().GetJobId()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPlacementBalancesEqualWorkers: two equal workers share 10k jobs at
// worst 55/45, and neither ever holds more than its max parallel jobs.
func TestPlacementBalancesEqualWorkers(t *testing.T) {
	const jobs, maxParallel = 10000, 4
	r := newBareRig(t, answer(allow, nil), "")
	a, b := r.fakeWorker(t, "w-a"), r.fakeWorker(t, "w-b")
	r.beat(t, "w-a", "echo", maxParallel, false)
	r.beat(t, "w-b", "echo", maxParallel, false)
	r.waitWorker(t, "w-a", true)
	r.waitWorker(t, "w-b", true)
	for i := range jobs {
		r.submit(t, fmt.Sprintf("j%d", i), "job.echo", 1)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for a.got.Load()+b.got.Load() < jobs && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ga, gb := a.got.Load(), b.got.Load()
	if ga+gb != jobs {
		t.Fatalf("placed %d + %d jobs, want %d", ga, gb, jobs)
	}
	if lo := min(ga, gb); lo < jobs*45/100 {
		t.Errorf("split %d/%d, worse than 55/45", ga, gb)
	}
	if ma, mb := a.most.Load(), b.most.Load(); ma > maxParallel || mb > maxParallel {
		t.Errorf("most held at once: %d and %d, want at most %d", ma, mb, maxParallel)
	}
	t.Logf("split %d/%d; most held at once %d and %d", ga, gb, a.most.Load(), b.most.Load())
}

// TestCapacityLimit: a worker with room for two gets no third job before
// one of its two ends.
func TestCapacityLimit(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-1", "echo", 2, false)
	r.waitWorker(t, "w-1", true)
	for _, id := range []string{"j1", "j2"} {
		r.submit(t, id, "job.echo", 1)
		r.expectDispatch(t, id, "w-1")
	}
	r.submit(t, "j3", "job.echo", 1)
	r.waitWaiting(t, 1)
	r.noDispatch(t)
	if j, _ := r.st.Get(context.Background(), "j3"); j.State != store.Pending || j.Reason != "" {
		t.Fatalf("j3: %+v, want PENDING (behind busy workers, no reason needed)", j)
	}
	r.end(t, "j1")
	r.expectDispatch(t, "j3", "w-1")
	r.waitWaiting(t, 0)
}

// TestHigherPriorityOvertakes: with the only slot busy, a high priority
// job queued after a low one is dispatched first.
func TestHigherPriorityOvertakes(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-1", "echo", 1, false)
	r.waitWorker(t, "w-1", true)
	r.submitPriority(t, "busy", 0)
	r.expectDispatch(t, "busy", "w-1")
	r.submitPriority(t, "low", 1)
	r.waitWaiting(t, 1)
	r.submitPriority(t, "low-2", 1)
	r.waitWaiting(t, 2)
	r.submitPriority(t, "high", 9)
	r.waitWaiting(t, 3)
	r.end(t, "busy")
	r.expectDispatch(t, "high", "w-1")
	r.end(t, "high")
	r.expectDispatch(t, "low", "w-1")
	r.end(t, "low")
	r.expectDispatch(t, "low-2", "w-1")
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
	r.expectDispatch(t, "j1", "w-1")
}

// TestExpiredWorkerReturnsItsCapacity: jobs in flight on a worker that
// expired no longer count against it when it comes back.
func TestExpiredWorkerReturnsItsCapacity(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	r := newBareRig(t, answer(allow, nil), "", scheduler.WithClock(clock))
	r.beat(t, "w-1", "echo", 1, false)
	r.waitWorker(t, "w-1", true)
	r.submit(t, "lost", "job.echo", 1)
	r.expectDispatch(t, "lost", "w-1")
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
	r.expectDispatch(t, "j2", "w-1")
}

// TestDrainingWorkerGetsNothingNew: jobs go to the live worker only, and
// wait rather than go to a draining one.
func TestDrainingWorkerGetsNothingNew(t *testing.T) {
	r := newBareRig(t, answer(allow, nil), "")
	r.beat(t, "w-live", "echo", 2, false)
	r.beat(t, "w-drain", "echo", 10, true)
	r.waitWorker(t, "w-live", true)
	for _, id := range []string{"j1", "j2"} {
		r.submit(t, id, "job.echo", 1)
		r.expectDispatch(t, id, "w-live")
	}
	r.submit(t, "j3", "job.echo", 1)
	r.waitWaiting(t, 1)
	r.noDispatch(t)
	r.end(t, "j2")
	r.expectDispatch(t, "j3", "w-live")
}
