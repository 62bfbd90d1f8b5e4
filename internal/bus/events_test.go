package bus_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// eventTap collects the job event packets on the bus.
type eventTap struct {
	mu      sync.Mutex
	packets []*cortexv1.BusPacket
}

func tapEvents(t *testing.T, url string) *eventTap {
	t.Helper()
	tap := &eventTap{}
	c := connect(t, url)
	t.Cleanup(c.Close)
	if _, err := c.Subscribe(context.Background(), bus.SubjectJobEvent, "", 1, func(_ context.Context, p *cortexv1.BusPacket, _ string) error {
		tap.mu.Lock()
		tap.packets = append(tap.packets, p)
		tap.mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tap
}

// jobs returns the jobs received so far, in order, and the packets they
// came in.
func (tap *eventTap) jobs() ([]*cortexv1.Job, int) {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	var out []*cortexv1.Job
	for _, p := range tap.packets {
		out = append(out, bus.EventJobs(p)...)
	}
	return out, len(tap.packets)
}

func waitJobs(t *testing.T, tap *eventTap, n int) ([]*cortexv1.Job, int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		jobs, packets := tap.jobs()
		if len(jobs) >= n || time.Now().After(deadline) {
			return jobs, packets
		}
	}
}

func job(i int) *cortexv1.Job {
	return &cortexv1.Job{JobId: fmt.Sprintf("j-%04d", i), TenantId: "acme", State: cortexv1.JobState_JOB_STATE_PENDING}
}

// A lone event goes out at once, alone, in JobEvent.job with its trace on
// the packet.
func TestAJobEventAloneIsSentAlone(t *testing.T) {
	url := bustest.StartServer(t)
	tap := tapEvents(t, url)
	c := connect(t, url)
	defer c.Close()
	if err := c.PublishJobEvent("trace-1", job(1)); err != nil {
		t.Fatal(err)
	}
	jobs, packets := waitJobs(t, tap, 1)
	if len(jobs) != 1 || packets != 1 {
		t.Fatalf("got %d jobs in %d packets, want 1 in 1", len(jobs), packets)
	}
	tap.mu.Lock()
	p := tap.packets[0]
	tap.mu.Unlock()
	if p.GetJobEvent().GetJob().GetJobId() != "j-0001" || len(p.GetJobEvent().GetJobs()) != 0 || p.GetTraceId() != "trace-1" || jobs[0].GetTraceId() != "trace-1" {
		t.Fatalf("packet %v", p)
	}
}

// Events published faster than they are sent share packets, every one
// arrives once, and one connection's events keep their order.
func TestJobEventsBatchUnderLoadInOrder(t *testing.T) {
	url := bustest.StartServer(t)
	tap := tapEvents(t, url)
	c := connect(t, url)
	defer c.Close()
	const n = 5000
	for i := range n {
		if err := c.PublishJobEvent("", job(i)); err != nil {
			t.Fatal(err)
		}
	}
	jobs, packets := waitJobs(t, tap, n)
	if len(jobs) != n {
		t.Fatalf("received %d of %d events", len(jobs), n)
	}
	for i, j := range jobs {
		if j.GetJobId() != job(i).GetJobId() {
			t.Fatalf("event %d is %s, want %s: order lost", i, j.GetJobId(), job(i).GetJobId())
		}
	}
	if packets >= n {
		t.Fatalf("%d events took %d packets: none were batched", n, packets)
	}
	t.Logf("%d events in %d packets", n, packets)
}

// Close sends what is queued before the connection goes, and an event
// published after Close is refused.
func TestCloseSendsQueuedJobEvents(t *testing.T) {
	url := bustest.StartServer(t)
	tap := tapEvents(t, url)
	c := connect(t, url)
	const n = 2000
	for i := range n {
		if err := c.PublishJobEvent("", job(i)); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if jobs, _ := waitJobs(t, tap, n); len(jobs) != n {
		t.Fatalf("received %d of %d events queued before Close", len(jobs), n)
	}
	if err := c.PublishJobEvent("", job(n)); err == nil {
		t.Fatal("an event published after Close was taken")
	}
}

// A packet that says it is a job event but carries no job, or a job
// without an id, is malformed.
func TestJobEventWithoutJobsIsMalformed(t *testing.T) {
	for name, ev := range map[string]*cortexv1.JobEvent{
		"empty":        {},
		"batch no id":  {Jobs: []*cortexv1.Job{job(1), {TenantId: "acme"}}},
		"single no id": {Job: &cortexv1.Job{TenantId: "acme"}},
	} {
		p := &cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_JobEvent{JobEvent: ev}}
		data, err := bus.Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bus.Decode(data); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// A subscriber of job events gets the heads of each packet, and its jobs
// on asking; a packet that does not read as an event is dropped and
// counted.
func TestSubscribeJobEvents(t *testing.T) {
	url := bustest.StartServer(t)
	c := connect(t, url)
	defer c.Close()
	got := make(chan *bus.EventPacket, 2)
	if _, err := c.SubscribeJobEvents(context.Background(), 1, func(_ context.Context, ev *bus.EventPacket) error {
		got <- ev
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(bus.SubjectJobEvent, []byte("not a packet")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	a, b := job(1), job(2)
	b.State, b.Attempt, b.Version = cortexv1.JobState_JOB_STATE_COMPLETED, 2, 7
	if err := c.PublishJobEventsNow([]*cortexv1.Job{a, b}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if want := []bus.EventHead{bus.HeadOf(a), bus.HeadOf(b)}; !slices.Equal(ev.Heads, want) {
			t.Fatalf("heads %+v, want %+v", ev.Heads, want)
		}
		jobs, err := ev.Jobs()
		if err != nil || len(jobs) != 2 || !proto.Equal(jobs[0], a) || !proto.Equal(jobs[1], b) {
			t.Fatalf("jobs %v, %v; want %v and %v", jobs, err, a, b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	if n := c.Dropped(); n != 1 {
		t.Errorf("dropped %d packets, want 1", n)
	}
}
