package gateway_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// refusingBus is a bus whose stream does not take durable packets while
// refuse is set (a JetStream outage, a full stream); it records what it
// was offered.
type refusingBus struct {
	*bus.Conn
	refuse atomic.Bool
	mu     sync.Mutex
	denied []bus.Durable
}

func (b *refusingBus) PublishDurables(ctx context.Context, ds []bus.Durable) []error {
	if !b.refuse.Load() {
		return b.Conn.PublishDurables(ctx, ds)
	}
	b.mu.Lock()
	b.denied = append(b.denied, ds...)
	b.mu.Unlock()
	errs := make([]error, len(ds))
	for i := range errs {
		errs[i] = errors.New("nats: no response from stream")
	}
	return errs
}

func (b *refusingBus) refused() []bus.Durable {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.denied)
}

func refusingFixture(t *testing.T, redrive time.Duration) (*fixture, *refusingBus) {
	t.Helper()
	rb := &refusingBus{}
	rb.refuse.Store(true)
	f := newFixtureWith(t, gateway.Options{Keys: keys}, setup{
		store: store.Options{Redrive: redrive},
		bus:   func(c *bus.Conn) gateway.Bus { rb.Conn = c; return rb },
	})
	return f, rb
}

// A job the bus did not take is not failed: the submit answers with its
// id, and it waits PENDING in the store. A retry with the same idempotency
// key, once the bus is back, finds that same job rather than making a
// second one.
func TestIdempotentRetryAfterBusFailureFindsTheSameJob(t *testing.T) {
	f, rb := refusingFixture(t, 0)
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	req := &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hi", IdempotencyKey: "order-42"}
	first, err := c.SubmitJob(ctx, req)
	if err != nil || first.GetJobId() == "" || first.GetDeduplicated() || first.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("submit while the bus refuses: %v, %v; want a new PENDING job's id", first, err)
	}
	if n := len(rb.refused()); n != 1 {
		t.Fatalf("the bus was offered %d hand-offs, want 1", n)
	}
	if j, err := f.st.Get(ctx, first.GetJobId()); err != nil || j.State != store.Pending {
		t.Fatalf("the refused job is %+v, %v; want PENDING", j, err)
	}
	rb.refuse.Store(false)
	again, err := c.SubmitJob(ctx, req)
	if err != nil || again.GetJobId() != first.GetJobId() || !again.GetDeduplicated() || again.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("retry with the same key: %v, %v; want job %s, deduplicated, PENDING", again, err, first.GetJobId())
	}
	jobs, _, err := f.st.List(ctx, store.Query{Tenant: "acme", Limit: 10})
	if err != nil || len(jobs) != 1 {
		t.Fatalf("acme has %d jobs (%v), want 1", len(jobs), err)
	}
	if got := f.submitted(t); len(got) > 1 {
		t.Fatalf("handed on %v: the job at most once", got)
	}
}

// A submit (or a batch) while the bus refuses the hand-off still returns
// the ids; each job is PENDING with a deadline a redrive interval away,
// after which the reconciler finds it (store.Due) with the request the
// gateway meant to hand on.
func TestSubmitWhileTheBusRefusesLeavesTheJobDue(t *testing.T) {
	const redrive = 300 * time.Millisecond
	f, rb := refusingFixture(t, redrive)
	ctx := context.Background()
	c := f.client(t, "key-acme-1234")
	before := time.Now()
	res, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "later", Labels: map[string]string{"team": "ml"}})
	if err != nil || res.GetJobId() == "" || res.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("submit while the bus refuses: %v, %v; want the job's id, PENDING", res, err)
	}
	batch, err := c.SubmitJobs(ctx, &cortexv1.SubmitJobsRequest{Jobs: []*cortexv1.SubmitJobRequest{
		{Topic: "job.echo", Prompt: "a"}, {Topic: "job.echo", Prompt: "b"},
	}})
	if err != nil {
		t.Fatalf("batch while the bus refuses: %v", err)
	}
	ids := []string{res.GetJobId()}
	for i, r := range batch.GetResults() {
		if r.GetErrorCode() != "" || r.GetJobId() == "" || r.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
			t.Fatalf("batch job %d: %v, want an id, PENDING", i, r)
		}
		ids = append(ids, r.GetJobId())
	}
	// The lone submit is one message; the batch's jobs share one.
	refused := rb.refused()
	if len(refused) != 2 {
		t.Fatalf("the bus was offered %d hand-offs, want 2", len(refused))
	}
	if d := refused[0]; d.Subject != bus.SubjectJobSubmit || d.MsgID != ids[0]+":1" || d.Packet.GetJobRequest().GetJobId() != ids[0] {
		t.Fatalf("hand-off 0 was %s %q %v, want job %s on %s", d.Subject, d.MsgID, d.Packet, ids[0], bus.SubjectJobSubmit)
	}
	handed := []*cortexv1.JobRequest{refused[0].Packet.GetJobRequest()}
	if d := refused[1]; d.Subject != bus.SubjectJobSubmit || d.MsgID != "batch:"+ids[1]+":1:"+ids[2]+":1" || len(d.Packet.GetJobBatch().GetJobs()) != 2 {
		t.Fatalf("hand-off 1 was %s %q %v, want jobs %v in one batch on %s", d.Subject, d.MsgID, d.Packet, ids[1:], bus.SubjectJobSubmit)
	}
	handed = append(handed, refused[1].Packet.GetJobBatch().GetJobs()...)
	for i, id := range ids {
		j, err := f.st.Get(ctx, id)
		if err != nil || j.State != store.Pending || j.Attempt != 1 {
			t.Fatalf("job %s is %+v, %v; want PENDING at attempt 1", id, j, err)
		}
		if handed[i].GetJobId() != id {
			t.Fatalf("handed on %s as job %d, want %s", handed[i].GetJobId(), i, id)
		}
	}
	if n := len(f.submits(t)); n != 0 {
		t.Fatalf("%d jobs reached the submit stream", n)
	}
	if due := dueIDs(t, f.st, before); len(due) != 0 {
		t.Fatalf("jobs due before their redrive interval: %v", due)
	}
	var due []*store.Job
	eventually(t, "the refused jobs due for the reconciler", func() bool {
		var err error
		due, err = f.st.Due(ctx, time.Now(), 100)
		return err == nil && len(due) == len(ids)
	})
	if since := time.Since(before); since < redrive {
		t.Fatalf("jobs due after %s, before their redrive interval (%s)", since, redrive)
	}
	for _, j := range due {
		i := slices.Index(ids, j.ID)
		if i < 0 || j.State != store.Pending {
			t.Fatalf("due: %+v, want one of %v, PENDING", j, ids)
		}
		if want := handed[i]; !proto.Equal(j.Request(), want) {
			t.Errorf("job %s would be re-driven as %v, want what the gateway handed on: %v", j.ID, j.Request(), want)
		}
	}
}
