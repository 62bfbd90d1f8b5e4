package bus

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// fullJob is a record with every kind of field a job event carries set.
func fullJob(id string, state cortexv1.JobState, attempt uint32) *cortexv1.Job {
	now := timestamppb.New(time.Unix(1763960000, 5))
	return &cortexv1.Job{
		JobId: id, Topic: "job.echo", State: state, TenantId: "acme", Labels: map[string]string{"team": "ml", "run": "7"},
		Priority: 5, Timeout: durationpb.New(30 * time.Second), MaxAttempts: 3, Attempt: attempt, Pool: "echo",
		WorkerId: "echo-1", Reason: "because", PromptSize: 12, ResultSize: 34, CreatedAt: now, UpdatedAt: now, Version: 9,
		TraceId:     "0123456789abcdef0123456789abcdef",
		Safety:      &cortexv1.SafetyVerdict{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow", PolicyVersion: "sha256:1"},
		Attempts:    []*cortexv1.AttemptRecord{{Attempt: 1, State: cortexv1.JobState_JOB_STATE_FAILED, WorkerId: "echo-0", Reason: "x", EndedAt: now}},
		Transitions: []*cortexv1.JobTransition{{State: cortexv1.JobState_JOB_STATE_PENDING, At: now}},
		Usage:       &cortexv1.TokenUsage{PromptTokens: 1, CompletionTokens: 2, TotalTokens: 3},
	}
}

func eventPacket(ev *cortexv1.JobEvent) *cortexv1.BusPacket {
	return &cortexv1.BusPacket{TraceId: "t", SenderId: "w", ProtocolVersion: ProtocolVersion, CreatedAt: timestamppb.Now(),
		Payload: &cortexv1.BusPacket_JobEvent{JobEvent: ev}}
}

// The heads of an event are those of the jobs Decode reads from it, in
// the order EventJobs gives them: one change, a batch, or both.
func TestDecodeEventHeadsReadsWhatDecodeReads(t *testing.T) {
	a := fullJob("j-a", cortexv1.JobState_JOB_STATE_COMPLETED, 2)
	b := fullJob("j-b", cortexv1.JobState_JOB_STATE_PENDING, 3)
	c := &cortexv1.Job{JobId: "j-c", TenantId: "t"} // state, attempt unset
	for name, ev := range map[string]*cortexv1.JobEvent{
		"one change":   {Job: a},
		"a batch":      {Jobs: []*cortexv1.Job{a, b, c}},
		"one and more": {Job: c, Jobs: []*cortexv1.Job{b, a}},
	} {
		t.Run(name, func(t *testing.T) {
			data, err := Encode(eventPacket(ev))
			if err != nil {
				t.Fatal(err)
			}
			p, err := Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			var want []EventHead
			for _, j := range EventJobs(p) {
				want = append(want, HeadOf(j))
			}
			got, err := DecodeEventHeads(data)
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("DecodeEventHeads = %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

func TestDecodeEventHeadsRefusesWhatDecodeRefuses(t *testing.T) {
	encode := func(p *cortexv1.BusPacket) []byte {
		b, err := Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := encode(eventPacket(&cortexv1.JobEvent{Job: fullJob("j", cortexv1.JobState_JOB_STATE_COMPLETED, 1)}))
	oldVersion := eventPacket(&cortexv1.JobEvent{Job: fullJob("j", cortexv1.JobState_JOB_STATE_COMPLETED, 1)})
	oldVersion.ProtocolVersion = ProtocolVersion + 1
	// A payload after the event replaces it (a oneof keeps its last).
	thenBeat := protowire.AppendTag(slices.Clone(good), 12, protowire.BytesType)
	thenBeat = protowire.AppendBytes(thenBeat, nil)
	badID := protowire.AppendTag(nil, 1, protowire.BytesType)
	badID = protowire.AppendString(badID, "\xff\xfe")
	badID = protowire.AppendTag(badID, 4, protowire.BytesType)
	badID = protowire.AppendString(badID, "t")
	badEvent := protowire.AppendTag(nil, 1, protowire.BytesType)
	badEvent = protowire.AppendBytes(badEvent, badID)
	badPacket := protowire.AppendTag(nil, 4, protowire.VarintType)
	badPacket = protowire.AppendVarint(badPacket, uint64(ProtocolVersion))
	badPacket = protowire.AppendTag(badPacket, 15, protowire.BytesType)
	badPacket = protowire.AppendBytes(badPacket, badEvent)

	for name, data := range map[string][]byte{
		"empty":                 nil,
		"cut short":             good[:len(good)-3],
		"over the size limit":   append(slices.Clone(good), make([]byte, MaxPacketSize)...),
		"another version":       encode(oldVersion),
		"a heartbeat":           encode(&cortexv1.BusPacket{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w", Pool: "p"}}}),
		"an event, then a beat": thenBeat,
		"an event of no job":    encode(eventPacket(&cortexv1.JobEvent{})),
		"a job without an id":   encode(eventPacket(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{{TenantId: "t"}}})),
		"a job without tenant":  encode(eventPacket(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{fullJob("j", 0, 1), {JobId: "j2"}}})),
		"an id not UTF-8":       badPacket,
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := Decode(data); err == nil && p.GetJobEvent() != nil {
				t.Fatalf("Decode reads a job event from it: the case is wrong")
			}
			heads, err := DecodeEventHeads(data)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeEventHeads = %+v, %v; want an error wrapping ErrMalformed", heads, err)
			}
		})
	}
}

// FuzzDecodeEventHeads: no input makes DecodeEventHeads panic, and every
// job event Decode accepts has the heads of the jobs Decode reads.
func FuzzDecodeEventHeads(f *testing.F) {
	for _, ev := range []*cortexv1.JobEvent{
		{Job: fullJob("j", cortexv1.JobState_JOB_STATE_COMPLETED, 1)},
		{Jobs: []*cortexv1.Job{fullJob("a", cortexv1.JobState_JOB_STATE_RUNNING, 2), {JobId: "b", TenantId: "t"}}},
	} {
		b, err := Encode(eventPacket(ev))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		heads, err := DecodeEventHeads(data)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v does not wrap ErrMalformed", err)
		}
		p, derr := Decode(data)
		if derr != nil || p.GetJobEvent() == nil {
			return
		}
		var want []EventHead
		for _, j := range EventJobs(p) {
			want = append(want, HeadOf(j))
		}
		if err != nil || !slices.Equal(heads, want) {
			t.Fatalf("DecodeEventHeads = %+v, %v; Decode reads %+v", heads, err, want)
		}
	})
}

// BenchmarkEventDecode compares reading a busy event packet (64 records)
// whole and reading its heads.
func BenchmarkEventDecode(b *testing.B) {
	var jobs []*cortexv1.Job
	for i := range 64 {
		jobs = append(jobs, fullJob(fmt.Sprintf("01a20bc9-3ac2-7cb6-8001-%012d", i), cortexv1.JobState_JOB_STATE_COMPLETED, 1))
	}
	data, err := Encode(eventPacket(&cortexv1.JobEvent{Jobs: jobs}))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("whole", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("heads", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeEventHeads(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
