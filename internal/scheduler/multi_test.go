package scheduler_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// cluster is schedulers on a real store (miniredis) and JetStream, with a
// fake worker that runs what reaches the pool's stream.
type cluster struct {
	natsURL string
	st      *store.Store
	nc      *nats.Conn

	mu         sync.Mutex
	dispatched map[string]int // DISPATCHED events per job
	completed  map[string]bool
}

func newCluster(t *testing.T, redrive time.Duration) *cluster {
	t.Helper()
	c := &cluster{natsURL: bustest.StartJetStream(t), dispatched: map[string]int{}, completed: map[string]bool{}}
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	c.st = store.New(rdb, store.Options{Redrive: redrive})
	var err error
	if c.nc, err = nats.Connect(c.natsURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.nc.Close)
	if _, err := c.nc.Subscribe(bus.SubjectJobEvent, func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, j := range bus.EventJobs(p) {
			switch j.GetState() {
			case cortexv1.JobState_JOB_STATE_DISPATCHED:
				c.dispatched[j.GetJobId()]++
			case cortexv1.JobState_JOB_STATE_COMPLETED:
				c.completed[j.GetJobId()] = true
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

// scheduler starts one more scheduler.
func (c *cluster) scheduler(t *testing.T, name string) *scheduler.Scheduler {
	t.Helper()
	conn, err := bus.Connect(c.natsURL, name, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	router, err := routing.NewRouter(map[string]string{"job.echo": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	s := scheduler.New(conn, c.st, answer(allow, nil), router, slog.New(slog.DiscardHandler),
		scheduler.WithReconcileEvery(10*time.Millisecond), scheduler.WithRetryBackoff(10*time.Millisecond, 20*time.Millisecond))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// worker beats as w-1 (room for plenty) and runs every job of pool echo:
// start, finish, ack.
func (c *cluster) worker(t *testing.T) { c.workerWith(t, 10000, func(string) {}) }

// workerWith is worker with slots slots (as its heartbeat says: it runs
// one job at a time either way), calling started with each job it starts.
func (c *cluster) workerWith(t *testing.T, slots uint32, started func(id string)) {
	t.Helper()
	hb, err := bus.Encode(&cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_Heartbeat{
		Heartbeat: &cortexv1.Heartbeat{WorkerId: "w-1", Pool: "echo", MaxParallelJobs: slots, Topics: []string{"job.echo"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.nc.Publish(bus.HeartbeatSubject("w-1"), hb); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(context.Background(), bus.StreamJobs, jetstream.ConsumerConfig{
		Durable: bus.PoolConsumer("echo"), FilterSubject: bus.PoolSubjects("echo"), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		p, err := bus.Decode(m.Data())
		if err != nil {
			return
		}
		jobs, _ := bus.JobsOf(p)
		ctx := context.Background()
		for _, req := range jobs {
			if _, _, err := c.st.Start(ctx, req.GetJobId(), req.GetAttempt(), "w-1", false, time.Minute, time.Now()); err == nil {
				started(req.GetJobId())
				if j, err := c.st.Finish(ctx, req.GetJobId(), req.GetAttempt(), "w-1", "ok", store.Usage{}, time.Now()); err == nil {
					ev, _ := bus.Encode(&cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion,
						Payload: &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{Job: j.Proto()}}})
					_ = c.nc.Publish(bus.SubjectJobEvent, ev)
				}
			}
		}
		_ = m.Ack()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
}

// submit records n PENDING jobs and hands them to the submit stream, as
// the gateway does.
func (c *cluster) submit(t *testing.T, n int) []string {
	t.Helper()
	return c.submitWith(t, n, 0)
}

// submitWith is submit for jobs of priority priority.
func (c *cluster) submitWith(t *testing.T, n int, priority int32) []string {
	t.Helper()
	ids := c.create(t, n, priority)
	c.handOff(t, ids, "1")
	return ids
}

// create records n PENDING jobs of priority priority, handing none on.
func (c *cluster) create(t *testing.T, n int, priority int32) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for i := range n {
		id, _ := store.NewJobID("acme", "")
		if _, err := c.st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Tenant: "acme", Input: fmt.Sprint(i), MaxAttempts: 1, Priority: priority}, time.Now()); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// handOff hands the jobs ids to the submit stream under key (the gateway's
// hand-off: "1"; another key makes a copy, as a re-drive does).
func (c *cluster) handOff(t *testing.T, ids []string, key string) {
	t.Helper()
	ctx := context.Background()
	conn, err := bus.Connect(c.natsURL, "gateway-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var ds []bus.Durable
	for _, id := range ids {
		j, err := c.st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, bus.Submit(id, j.Request(), key))
	}
	for _, err := range conn.PublishDurables(ctx, ds) {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func (c *cluster) waitCompleted(t *testing.T, ids []string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c.mu.Lock()
		done := 0
		for _, id := range ids {
			if c.completed[id] {
				done++
			}
		}
		c.mu.Unlock()
		if done == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			for _, id := range ids {
				c.mu.Lock()
				ok := c.completed[id]
				c.mu.Unlock()
				if !ok {
					j, err := c.st.Get(context.Background(), id)
					t.Logf("not completed: %s %+v %v", id, j, err)
				}
			}
			t.Fatalf("%d of %d jobs completed", done, len(ids))
		}
	}
}

// TestSeveralSchedulersDispatchEachJobOnce: two schedulers share the
// submits while copies of every job go round (re-drives, as a reconciler
// makes for a job whose scheduler it takes for dead); every job is
// dispatched exactly once and completes at its first attempt.
func TestSeveralSchedulersDispatchEachJobOnce(t *testing.T) {
	c := newCluster(t, 50*time.Millisecond)
	c.scheduler(t, "scheduler-a")
	c.scheduler(t, "scheduler-b")
	ids := c.submit(t, 300)
	// While the jobs wait (no worker yet), copies of each race through the
	// schedulers; then they run.
	for i := range 3 {
		c.handOff(t, ids, fmt.Sprintf("redrive-%d", i))
	}
	time.Sleep(100 * time.Millisecond)
	c.worker(t)
	c.waitCompleted(t, ids)
	ctx := context.Background()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if n := c.dispatched[id]; n != 1 {
			t.Errorf("job %s dispatched %d times, want once", id, n)
		}
		if j, err := c.st.Get(ctx, id); err != nil || j.State != store.Completed || j.Attempt != 1 {
			t.Errorf("job %s: %+v, %v; want COMPLETED at attempt 1", id, j, err)
		}
	}
}

// TestStoppingSchedulerHandsBackItsQueue: a scheduler that stops hands the
// jobs waiting in its queues back to the submit stream, where another
// scheduler takes them at once (not a redrive interval later).
func TestStoppingSchedulerHandsBackItsQueue(t *testing.T) {
	// No redrive while the test runs: only the hand-back can move them.
	c := newCluster(t, time.Hour)
	first := c.scheduler(t, "scheduler-a")
	ids := c.submit(t, 20)
	for deadline := time.Now().Add(5 * time.Second); first.Waiting("echo") < len(ids); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs wait in the first scheduler, want %d", first.Waiting("echo"), len(ids))
		}
	}
	first.StopSubmits()
	if n := first.Waiting("echo"); n != 0 {
		t.Fatalf("%d jobs still queued in the stopped scheduler", n)
	}
	c.scheduler(t, "scheduler-b")
	c.worker(t)
	c.waitCompleted(t, ids)
}

// TestQueuedJobsAreNotRedriven: jobs waiting in a scheduler's queue (their
// pool has no worker) are held there past their redrive deadline, even
// when they reached the queue late: the scheduler puts the deadline off,
// so no reconciler hands them to the other scheduler as well, and each job
// waits in one queue only.
func TestQueuedJobsAreNotRedriven(t *testing.T) {
	c := newCluster(t, 200*time.Millisecond)
	a := c.scheduler(t, "scheduler-a")
	b := c.scheduler(t, "scheduler-b")
	// Handed on late (a backlog in the submit stream, say): three
	// quarters of a redrive after their deadline was set.
	ids := c.create(t, 20, 0)
	time.Sleep(150 * time.Millisecond)
	c.handOff(t, ids, "1")
	for deadline := time.Now().Add(5 * time.Second); a.Waiting("echo")+b.Waiting("echo") < len(ids); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d+%d jobs queued, want %d", a.Waiting("echo"), b.Waiting("echo"), len(ids))
		}
	}
	// Five redrive intervals: a job re-driven would be queued twice, or
	// dropped and queued again.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if n := a.Waiting("echo") + b.Waiting("echo"); n != len(ids) {
			t.Fatalf("%d+%d jobs queued, want each of the %d in one queue", a.Waiting("echo"), b.Waiting("echo"), len(ids))
		}
	}
	ctx := context.Background()
	if due, err := c.st.Due(ctx, time.Now(), 100); err != nil || len(due) != 0 {
		t.Fatalf("due jobs %d (%v), want none: the schedulers put off the deadlines of the jobs they hold", len(due), err)
	}
	c.worker(t)
	c.waitCompleted(t, ids)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if n := c.dispatched[id]; n != 1 {
			t.Errorf("job %s dispatched %d times, want once", id, n)
		}
	}
}

// TestPriorityHoldsAcrossSchedulers: with two schedulers sharing the jobs
// of a pool whose one worker runs one job at a time, every queued job of
// priority 9 runs before any of priority 0, though another scheduler holds
// them: a scheduler holds back its lower-priority jobs while another has
// higher ones queued for the pool. The first scheduler holds the priority
// 0 jobs, the second the priority 9 ones.
func TestPriorityHoldsAcrossSchedulers(t *testing.T) {
	c := newCluster(t, time.Hour)
	a := c.scheduler(t, "scheduler-a")
	low := c.submitWith(t, 8, 0)
	waitQueued(t, len(low), a)
	a.StopTakingSubmits()
	b := c.scheduler(t, "scheduler-b")
	high := c.submitWith(t, 8, 9)
	waitQueued(t, len(high), b)
	time.Sleep(100 * time.Millisecond) // the schedulers tell each other their heads
	var mu sync.Mutex
	var order []string
	c.workerWith(t, 1, func(id string) {
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
	})
	c.waitCompleted(t, append(slices.Clone(low), high...))
	mu.Lock()
	defer mu.Unlock()
	isHigh := map[string]bool{}
	for _, id := range high {
		isHigh[id] = true
	}
	for i, id := range order[:len(high)] {
		if !isHigh[id] {
			t.Fatalf("job %d to start was of priority 0 while jobs of priority 9 waited (order %v, high %v)", i+1, order, high)
		}
	}
}

// waitQueued waits until the schedulers hold n jobs of pool echo queued
// between them.
func waitQueued(t *testing.T, n int, ss ...*scheduler.Scheduler) {
	t.Helper()
	held := func() int {
		sum := 0
		for _, s := range ss {
			sum += s.Waiting("echo")
		}
		return sum
	}
	for deadline := time.Now().Add(5 * time.Second); held() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs queued, want %d", held(), n)
		}
	}
}
