package bus_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func submit(i int, labelBytes int) bus.Durable {
	req := &cortexv1.JobRequest{JobId: fmt.Sprintf("j-%04d", i), Topic: "job.echo", TenantId: "acme", Attempt: 1}
	if labelBytes > 0 {
		req.Labels = map[string]string{"pad": strings.Repeat("x", labelBytes)}
	}
	return bus.Submit(fmt.Sprintf("t-%d", i), req, "1")
}

// Consecutive submits share a JobBatch message that keeps their order and
// traces; a batch is named after its first and last hand-off.
func TestBatchedPacksSubmits(t *testing.T) {
	var ds []bus.Durable
	for i := range 5 {
		ds = append(ds, submit(i, 0))
	}
	out := bus.Batched(ds, 0)
	if len(out) != 1 {
		t.Fatalf("5 small submits became %d messages, want 1", len(out))
	}
	b := out[0].Packet.GetJobBatch()
	if out[0].Subject != bus.SubjectJobSubmit || len(b.GetJobs()) != 5 || out[0].MsgID != "batch:j-0000:1:j-0004:1" {
		t.Fatalf("message %s %q with %d jobs", out[0].Subject, out[0].MsgID, len(b.GetJobs()))
	}
	for i, j := range b.GetJobs() {
		if j.GetJobId() != fmt.Sprintf("j-%04d", i) || b.GetTraceIds()[i] != fmt.Sprintf("t-%d", i) {
			t.Fatalf("job %d is %s with trace %s", i, j.GetJobId(), b.GetTraceIds()[i])
		}
	}
	out[0].Packet.ProtocolVersion = bus.ProtocolVersion
	data, err := bus.Encode(out[0].Packet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Decode(data); err != nil {
		t.Fatalf("a batch does not decode: %v", err)
	}
}

// A batch stays under the packet limit: big jobs are spread over several
// messages, and none is lost.
func TestBatchedSplitsBySize(t *testing.T) {
	var ds []bus.Durable
	for i := range 40 {
		ds = append(ds, submit(i, 4<<10))
	}
	out := bus.Batched(ds, 0)
	if len(out) < 4 {
		t.Fatalf("40 jobs of 4 KiB went in %d messages", len(out))
	}
	n := 0
	for _, d := range out {
		d.Packet.ProtocolVersion = bus.ProtocolVersion
		if _, err := bus.Encode(d.Packet); err != nil {
			t.Fatalf("message %s: %v", d.MsgID, err)
		}
		if b := d.Packet.GetJobBatch(); b != nil {
			n += len(b.GetJobs())
		} else {
			n++
		}
	}
	if n != 40 {
		t.Fatalf("%d jobs in the messages, want 40", n)
	}
}

// A lone submit, and a retry held back by its backoff, go as they are.
func TestBatchedKeepsSinglesAndHeldRetries(t *testing.T) {
	if out := bus.Batched([]bus.Durable{submit(1, 0)}, 0); len(out) != 1 || out[0].Packet.GetJobRequest() == nil {
		t.Fatalf("a lone submit became %v", out)
	}
	held := submit(2, 0)
	held.Packet.GetJobRequest().NotBefore = timestamppb.Now()
	out := bus.Batched([]bus.Durable{submit(1, 0), held, submit(3, 0), submit(4, 0)}, 0)
	if len(out) != 3 || out[0].Packet.GetJobRequest() == nil || out[1].Packet.GetJobRequest().GetJobId() != "j-0002" || len(out[2].Packet.GetJobBatch().GetJobs()) != 2 {
		t.Fatalf("got %d messages: %v", len(out), out)
	}
	// A batch that holds a job back is malformed.
	p := &cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_JobBatch{JobBatch: &cortexv1.JobBatch{
		Jobs: []*cortexv1.JobRequest{held.Packet.GetJobRequest()}, TraceIds: []string{"t"}}}}
	data, err := bus.Encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Decode(data); err == nil {
		t.Fatal("a batch holding a job back decoded")
	}
}

// Jobs dispatched to a pool share a message only with neighbours on the
// same subject, and at most maxJobs of them.
func TestBatchedGroupsBySubjectAndBound(t *testing.T) {
	dispatch := func(i int, topic string) bus.Durable {
		req := &cortexv1.JobRequest{JobId: fmt.Sprintf("j-%04d", i), Topic: topic, TenantId: "acme", Attempt: 1, Pool: "default"}
		return bus.Durable{Subject: bus.JobSubject("default", topic), MsgID: fmt.Sprintf("%s:1", req.JobId),
			Packet: &cortexv1.BusPacket{TraceId: fmt.Sprintf("t-%d", i), Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}}}
	}
	var ds []bus.Durable
	for i := range 7 {
		ds = append(ds, dispatch(i, "job.echo"))
	}
	ds = append(ds, dispatch(7, "job.chat"), dispatch(8, "job.chat"))
	out := bus.Batched(ds, 3)
	var got []string
	for _, d := range out {
		n := 1
		if b := d.Packet.GetJobBatch(); b != nil {
			n = len(b.GetJobs())
		}
		got = append(got, fmt.Sprintf("%s×%d", d.Subject, n))
	}
	want := []string{"job.default.echo×3", "job.default.echo×3", "job.default.echo×1", "job.default.chat×2"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("messages %v, want %v", got, want)
	}
	if out[3].MsgID != "batch:j-0007:1:j-0008:1" {
		t.Fatalf("the chat batch is named %q", out[3].MsgID)
	}
}
