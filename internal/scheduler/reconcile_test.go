package scheduler_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// TestReconcilerRedrivesAPendingJobNobodyHandedOn: a PENDING job past its
// deadline (its gateway died before handing it on) is put off and handed
// to the schedulers again, and runs.
func TestReconcilerRedrivesAPendingJobNobodyHandedOn(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	r.st.seed("orphan", "job.echo", store.Pending, 1, 1)
	r.st.markOverdue("orphan")
	r.expectDispatch(t, "orphan")
	r.st.mu.Lock()
	overdue := r.st.overdue["orphan"]
	r.st.mu.Unlock()
	if overdue {
		t.Error("the re-driven job's deadline was not put off")
	}
}

// TestReconcilerRetriesAnAttemptWhoseLeaseRanOut: a RUNNING attempt past
// its deadline (its worker died) ends TIMEOUT and the job is retried after
// a backoff, through the safety gate; without attempts left it ends
// TIMEOUT in the dead-letter queue.
func TestReconcilerRetriesAnAttemptWhoseLeaseRanOut(t *testing.T) {
	t.Run("attempts left", func(t *testing.T) {
		r := newRig(t, answer(allow, nil), "")
		r.st.seed("j1", "job.echo", store.Running, 1, 3)
		r.st.mu.Lock()
		r.st.jobs["j1"].WorkerID = "w-dead"
		r.st.mu.Unlock()
		r.st.markOverdue("j1")
		got := r.waitChanges(t, "j1", 2)
		if c := got[0]; c.To != store.Pending || !c.Retry || c.Outcome != store.Timeout || c.Due.IsZero() ||
			!strings.Contains(c.Reason, "the lease of worker w-dead ran out") {
			t.Errorf("first change %+v, want attempt 1 ended TIMEOUT and retried after a backoff", c)
		}
		if c := got[1]; c.To != store.Dispatched || c.Attempt != 2 {
			t.Errorf("second change %+v, want attempt 2 DISPATCHED", c)
		}
		if checks := r.checker.checksOf("j1"); len(checks) != 1 || checks[0].GetAttempt() != 2 {
			t.Errorf("checks %v, want attempt 2 through the gate", checks)
		}
	})
	t.Run("none left", func(t *testing.T) {
		r := newRig(t, answer(allow, nil), "")
		r.st.seed("j1", "job.echo", store.Dispatched, 1, 1)
		r.st.markOverdue("j1")
		got := r.waitChanges(t, "j1", 1)
		if c := got[0]; c.To != store.Timeout || !c.DeadLetter || !strings.Contains(c.Reason, "none left") {
			t.Errorf("change %+v, want TIMEOUT into the dead-letter queue", c)
		}
		r.noDispatch(t)
	})
}

// TestMaxDeliveriesDeadLettersTheJob: a job the pool's workers took
// MaxDeliver times without acking ends FAILED in the dead-letter queue,
// and its message leaves the stream.
func TestMaxDeliveriesDeadLettersTheJob(t *testing.T) {
	r, js, cons := newPoisonRig(t)
	r.submit(t, "poison", "job.echo", 3)
	r.expectDispatch(t, "poison")
	r.dieTwice(t, cons)
	got := r.waitChanges(t, "poison", 2)
	if c := got[1]; c.To != store.Failed || !c.DeadLetter || c.Attempt != 1 || !strings.Contains(c.Reason, "delivered 2 times") {
		t.Errorf("change %+v, want FAILED into the dead-letter queue after 2 deliveries", c)
	}
	waitStreamEmpty(t, js)
}

// TestMaxDeliveriesDeadLettersABatch: when the message workers took
// MaxDeliver times carries several jobs, each that has not ended is
// dead-lettered; one that ended keeps its outcome.
func TestMaxDeliveriesDeadLettersABatch(t *testing.T) {
	r, js, cons := newPoisonRig(t)
	ctx := context.Background()
	batch := &cortexv1.JobBatch{}
	for _, id := range []string{"b1", "b2", "done"} {
		req := r.st.seed(id, "job.echo", store.Dispatched, 1, 3).Request()
		req.Pool = "echo"
		batch.Jobs = append(batch.Jobs, req)
		batch.TraceIds = append(batch.TraceIds, "trace-"+id)
	}
	if _, err := r.st.Transition(ctx, "done", store.Change{To: store.Completed, Attempt: 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(r.natsURL, "dispatcher", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.PublishDurable(ctx, bus.Durable{Subject: bus.JobSubject("echo", "job.echo"),
		Packet: &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobBatch{JobBatch: batch}}}); err != nil {
		t.Fatal(err)
	}
	r.dieTwice(t, cons)
	for _, id := range []string{"b1", "b2"} {
		got := r.waitChanges(t, id, 1)
		if c := got[0]; c.To != store.Failed || !c.DeadLetter || c.Attempt != 1 || !strings.Contains(c.Reason, "delivered 2 times") {
			t.Errorf("%s: change %+v, want FAILED into the dead-letter queue after 2 deliveries", id, c)
		}
	}
	waitStreamEmpty(t, js)
	if j, _ := r.st.Get(ctx, "done"); j.State != store.Completed {
		t.Errorf("the job that ended is now %s, want COMPLETED", j.State)
	}
}

// newPoisonRig is a rig whose pool echo gives up on a message after two
// deliveries of 100 ms each, and the consumer workers would pull from.
func newPoisonRig(t *testing.T) (*rig, jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	r := newRig(t, answer(allow, nil), "")
	js, err := jetstream.New(r.client)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(context.Background(), bus.StreamJobs, jetstream.ConsumerConfig{
		Durable: bus.PoolConsumer("echo"), FilterSubject: bus.PoolSubjects("echo"),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 100 * time.Millisecond, MaxDeliver: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, js, cons
}

// dieTwice takes the consumer's next message twice, as two workers that
// die on it (never ack), and sees that it is not delivered a third time.
func (r *rig) dieTwice(t *testing.T, cons jetstream.Consumer) {
	t.Helper()
	for i := range 2 {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++
		}
		if n != 1 {
			t.Fatalf("delivery %d: got %d messages", i+1, n)
		}
	}
	// The workers go on pulling: the server finds the job has had its
	// deliveries, and says so instead of delivering it again.
	if batch, err := cons.Fetch(1, jetstream.FetchMaxWait(500*time.Millisecond)); err == nil {
		for m := range batch.Messages() {
			t.Fatalf("delivered a third time: %s", m.Subject())
		}
	}
}

// waitStreamEmpty waits until the job stream holds no message.
func waitStreamEmpty(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, bus.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages left in %s, want the dead letter's deleted", info.State.Msgs, bus.StreamJobs)
		}
	}
}

// TestReconcilerHoldsPendingJobsWhileNoKernelAnswers: while the safety
// checks reach no kernel, a PENDING job past its deadline is not re-driven
// into a fail-closed denial; it stays due and goes once checks resume.
func TestReconcilerHoldsPendingJobsWhileNoKernelAnswers(t *testing.T) {
	checker := answer(allow, nil)
	checker.silent.Store(true)
	r := newRig(t, checker, "")
	r.st.seed("orphan", "job.echo", store.Pending, 1, 1)
	r.st.markOverdue("orphan")
	time.Sleep(200 * time.Millisecond) // ten reconcile rounds
	r.noDispatch(t)
	if n := len(checker.checksOf("orphan")); n != 0 {
		t.Fatalf("a held job was checked %d times", n)
	}
	checker.silent.Store(false)
	r.expectDispatch(t, "orphan")
}

// lease is the lease of overdueOnW1's scheduler.
const lease = 400 * time.Millisecond

// overdueOnW1 starts a scheduler with lease whose store holds job j1
// RUNNING on worker w-1, past its deadline, and fails reads of deadlines
// with dueErr (nil: none).
func overdueOnW1(t *testing.T, dueErr error) *rig {
	t.Helper()
	r := newBareRig(t, answer(allow, nil), "", scheduler.WithLease(lease))
	r.st.seed("j1", "job.echo", store.Running, 1, 1)
	r.st.mu.Lock()
	r.st.jobs["j1"].WorkerID = "w-1"
	r.st.dueErr = dueErr
	r.st.mu.Unlock()
	r.st.markOverdue("j1")
	return r
}

// TestLeasesWaitForRenewalsAfterTheStoreCameBack: a RUNNING attempt whose
// deadline passed while the store was out of reach is not ended at once
// when the store answers again (its worker could not renew the lease
// meanwhile, and renews it within a third of a lease): only a lease later,
// if its deadline is still past, does it end TIMEOUT.
func TestLeasesWaitForRenewalsAfterTheStoreCameBack(t *testing.T) {
	r := overdueOnW1(t, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused"))
	time.Sleep(lease / 2) // reconcile rounds that find the store down, for over a third of a lease
	r.st.mu.Lock()
	r.st.dueErr = nil
	r.st.mu.Unlock()
	back := time.Now()
	time.Sleep(lease / 2)
	if n := len(r.st.changesOf("j1")); n != 0 && time.Since(back) < lease {
		t.Fatalf("%d changes within half a lease of the store's return, want none: the worker may renew yet", n)
	}
	got := r.waitChanges(t, "j1", 1)
	if c := got[0]; c.To != store.Timeout || !strings.Contains(c.Reason, "the lease of worker w-1 ran out") {
		t.Errorf("change %+v, want TIMEOUT once a lease passed with no renewal", c)
	}
}

// TestLeasesRunOutWhileTheStoreFailsNowAndThen: reads of the deadlines
// that fail now and then, each time for less than the time between a
// worker's renewals, earn no grace: a lease that ran out is expired all
// the same.
func TestLeasesRunOutWhileTheStoreFailsNowAndThen(t *testing.T) {
	r := overdueOnW1(t, nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		down := errors.New("i/o timeout")
		for {
			for _, err := range []error{down, nil} {
				r.st.mu.Lock()
				r.st.dueErr = err
				r.st.mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(40 * time.Millisecond): // failing a reconcile round or two of every four
				}
			}
		}
	}()
	got := r.waitChanges(t, "j1", 1)
	if c := got[0]; c.To != store.Timeout {
		t.Errorf("change %+v, want TIMEOUT", c)
	}
}
