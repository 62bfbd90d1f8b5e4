package bus

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func validRequest() *cortexv1.BusPacket {
	return &cortexv1.BusPacket{
		TraceId:         "t",
		ProtocolVersion: ProtocolVersion,
		Payload: &cortexv1.BusPacket_JobRequest{JobRequest: &cortexv1.JobRequest{
			JobId: "j1", Topic: "job.echo", ContextPtr: "redis://ctx:j1", Attempt: 1,
		}},
	}
}

func TestDecodeRoundTrip(t *testing.T) {
	data, err := Encode(validRequest())
	if err != nil {
		t.Fatal(err)
	}
	p, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(p, validRequest()) {
		t.Fatalf("round trip changed the packet: %v", p)
	}
}

func TestDecodeRejects(t *testing.T) {
	mutate := func(f func(p *cortexv1.BusPacket)) []byte {
		p := validRequest()
		f(p)
		b, err := proto.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, data := range map[string][]byte{
		"garbage":        []byte("\xff\xff\xff not protobuf"),
		"empty":          nil,
		"oversized":      make([]byte, MaxPacketSize+1),
		"future version": mutate(func(p *cortexv1.BusPacket) { p.ProtocolVersion = 2 }),
		"no payload":     mutate(func(p *cortexv1.BusPacket) { p.Payload = nil }),
		"no job id":      mutate(func(p *cortexv1.BusPacket) { p.GetJobRequest().JobId = "" }),
		"bad topic":      mutate(func(p *cortexv1.BusPacket) { p.GetJobRequest().Topic = "Job Echo" }),
		"result no state": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_JobResult{JobResult: &cortexv1.JobResult{JobId: "j"}}
		}),
		"event without tenant": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{Job: &cortexv1.Job{JobId: "j"}}}
		}),
		"event without job": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{}}
		}),
		"cancel without job id": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_JobCancel{JobCancel: &cortexv1.JobCancel{Reason: "x"}}
		}),
		"heartbeat bad id": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "a.b"}}
		}),
		"heartbeat of absurd slots": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w", MaxParallelJobs: 4000000000}}
		}),
		"heartbeat more active than slots": mutate(func(p *cortexv1.BusPacket) {
			p.Payload = &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w", MaxParallelJobs: 4, ActiveJobs: 5}}
		}),
		"queue heads without sender": mutate(func(p *cortexv1.BusPacket) {
			p.SenderId = ""
			p.Payload = &cortexv1.BusPacket_QueueHeads{QueueHeads: &cortexv1.QueueHeads{Pools: []*cortexv1.QueueHead{{Pool: "echo", Priority: 9}}}}
		}),
		"queue head of priority 0": mutate(func(p *cortexv1.BusPacket) {
			p.SenderId = "scheduler-1"
			p.Payload = &cortexv1.BusPacket_QueueHeads{QueueHeads: &cortexv1.QueueHeads{Pools: []*cortexv1.QueueHead{{Pool: "echo"}}}}
		}),
		"queue head of priority 10": mutate(func(p *cortexv1.BusPacket) {
			p.SenderId = "scheduler-1"
			p.Payload = &cortexv1.BusPacket_QueueHeads{QueueHeads: &cortexv1.QueueHeads{Pools: []*cortexv1.QueueHead{{Pool: "echo", Priority: 10}}}}
		}),
		"queue head of a bad pool": mutate(func(p *cortexv1.BusPacket) {
			p.SenderId = "scheduler-1"
			p.Payload = &cortexv1.BusPacket_QueueHeads{QueueHeads: &cortexv1.QueueHeads{Pools: []*cortexv1.QueueHead{{Pool: "a.b", Priority: 3}}}}
		}),
	} {
		if _, err := Decode(data); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode err = %v, want ErrMalformed", name, err)
		}
	}
}

func TestEncodeRefusesOversized(t *testing.T) {
	p := validRequest()
	p.GetJobRequest().Labels = map[string]string{"big": strings.Repeat("x", MaxPacketSize)}
	if _, err := Encode(p); err == nil {
		t.Fatal("Encode accepted a packet over MaxPacketSize")
	}
}

func TestSubjects(t *testing.T) {
	if got := JobSubject("echo", "job.echo"); got != "job.echo.echo" {
		t.Errorf("JobSubject = %q", got)
	}
	if got := JobSubject("llm", "job.llm.chat"); got != "job.llm.llm.chat" {
		t.Errorf("JobSubject = %q", got)
	}
	if got := HeartbeatSubject("w-1"); got != "sys.heartbeat.w-1" {
		t.Errorf("HeartbeatSubject = %q", got)
	}
	if got := PoolSubjects("echo"); got != "job.echo.>" {
		t.Errorf("PoolSubjects = %q", got)
	}
	if got := PoolConsumer("echo"); got != "pool-echo" {
		t.Errorf("PoolConsumer = %q", got)
	}
	for topic, want := range map[string]bool{
		"job.echo": true, "sys.destroy": true, "job.llm.chat-v2": true,
		"echo": false, "job.": false, "job..echo": false, "job.Echo": false, "job.e cho": false,
		"job.>": false, "job.*": false, strings.Repeat("a.", 9) + "a": false,
	} {
		if ValidTopic(topic) != want {
			t.Errorf("ValidTopic(%q) = %v, want %v", topic, !want, want)
		}
	}
}

// FuzzDecode: no input makes Decode panic, and what it accepts re-encodes.
func FuzzDecode(f *testing.F) {
	seed, _ := Encode(validRequest())
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte("\x0a\x01t\x20\x01\x5a\x00"))
	for _, p := range []*cortexv1.BusPacket{
		{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_SafetyDecision{SafetyDecision: &cortexv1.SafetyDecisionEvent{
			JobId: "j", TenantId: "t", Topic: "job.echo", Verdict: &cortexv1.SafetyVerdict{Decision: cortexv1.Decision_DECISION_DENY, Rule: "r"},
		}}},
		{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_REQUIRE_APPROVAL}}},
		{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_PolicyApply{PolicyApply: &cortexv1.PolicyApply{Shadow: true, Hash: "sha256:0"}}},
		{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_PolicyReply{PolicyReply: &cortexv1.PolicyReply{Error: "x"}}},
		{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_JobEvent{JobEvent: &cortexv1.JobEvent{Job: &cortexv1.Job{JobId: "j", TenantId: "t"}}}},
	} {
		b, err := Encode(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if _, err := Encode(p); err != nil {
			t.Fatalf("accepted packet does not re-encode: %v", err)
		}
	})
}

func BenchmarkEncodeDecode(b *testing.B) {
	p := validRequest()
	for b.Loop() {
		data, err := Encode(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
