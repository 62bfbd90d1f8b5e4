package bus

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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

// rawField is a field of a raw packet: its number and message bytes.
type rawField struct {
	num protowire.Number
	msg []byte
}

// packetOf is a packet of protocol version ProtocolVersion with these
// payload fields, in order, as they are given (not merged).
func packetOf(fields ...rawField) []byte {
	b := protowire.AppendTag(nil, packetVersionField, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(ProtocolVersion))
	for _, f := range fields {
		b = protowire.AppendTag(b, f.num, protowire.BytesType)
		b = protowire.AppendBytes(b, f.msg)
	}
	return b
}

// messageOf encodes m's fields, for the raw packets of the tests.
func messageOf(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeEventHeadsRefuses(t *testing.T) {
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
	eventOf := func(jobs ...*cortexv1.Job) []byte { return messageOf(t, &cortexv1.JobEvent{Jobs: jobs}) }
	mine, theirs := &cortexv1.Job{JobId: "mine", TenantId: "acme"}, &cortexv1.Job{JobId: "theirs", TenantId: "globex"}
	jobOf := func(j *cortexv1.Job) []byte {
		b := protowire.AppendTag(nil, eventJobField, protowire.BytesType)
		return protowire.AppendBytes(b, messageOf(t, j))
	}

	for _, c := range []struct {
		name string
		data []byte
		// decodeReads: Decode reads a job event from it all the same, by
		// merging pieces that no publisher sends.
		decodeReads bool
	}{
		{"empty", nil, false},
		{"cut short", good[:len(good)-3], false},
		{"over the size limit", append(slices.Clone(good), make([]byte, MaxPacketSize)...), false},
		{"another version", encode(oldVersion), false},
		{"a heartbeat", encode(&cortexv1.BusPacket{ProtocolVersion: ProtocolVersion, Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w", Pool: "p"}}}), false},
		{"an event, then a beat", thenBeat, false},
		{"an event of no job", encode(eventPacket(&cortexv1.JobEvent{})), false},
		{"a job without an id", encode(eventPacket(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{{TenantId: "t"}}})), false},
		{"a job without tenant", encode(eventPacket(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{fullJob("j", 0, 1), {JobId: "j2"}}})), false},
		{"an id not UTF-8", packetOf(rawField{packetJobEventField, append(protowire.AppendTag(nil, 1, protowire.BytesType), protowire.AppendBytes(nil, badID)...)}), false},
		// Another tenant's job in the first piece, the caller's in the
		// second: read from the last piece alone, the heads would not be
		// those of the records.
		{"an event in two pieces", packetOf(rawField{packetJobEventField, eventOf(theirs)}, rawField{packetJobEventField, eventOf(mine)}), true},
		{"an event's job in two pieces", packetOf(rawField{packetJobEventField, append(jobOf(theirs), jobOf(mine)...)}), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Decode(c.data)
			if read := err == nil && p.GetJobEvent() != nil; read != c.decodeReads {
				t.Fatalf("Decode reads a job event from it: %v; the case is wrong", read)
			}
			heads, err := DecodeEventHeads(c.data)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeEventHeads = %+v, %v; want an error wrapping ErrMalformed", heads, err)
			}
		})
	}
}

// A payload field of another wire type is no payload (protobuf keeps it
// as an unknown field): the event stands.
func TestDecodeEventHeadsSkipsAPayloadNumberOfAnotherType(t *testing.T) {
	j := fullJob("j", cortexv1.JobState_JOB_STATE_COMPLETED, 1)
	data := packetOf(rawField{packetJobEventField, messageOf(t, &cortexv1.JobEvent{Job: j})})
	data = protowire.AppendTag(data, 12, protowire.VarintType)
	data = protowire.AppendVarint(data, 7)
	if p, err := Decode(data); err != nil || len(EventJobs(p)) != 1 {
		t.Fatalf("Decode = %v, %v; the case is wrong", p, err)
	}
	heads, err := DecodeEventHeads(data)
	if err != nil || !slices.Equal(heads, []EventHead{HeadOf(j)}) {
		t.Fatalf("DecodeEventHeads = %+v, %v; want the job's head", heads, err)
	}
}

// Jobs refuses records that are not the jobs the heads name.
func TestEventPacketJobsMustMatchTheHeads(t *testing.T) {
	a, b := fullJob("a", cortexv1.JobState_JOB_STATE_COMPLETED, 1), fullJob("b", cortexv1.JobState_JOB_STATE_PENDING, 2)
	data, err := Encode(eventPacket(&cortexv1.JobEvent{Jobs: []*cortexv1.Job{a, b}}))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := DecodeEventPacket(data)
	if err != nil {
		t.Fatal(err)
	}
	if jobs, err := ev.Jobs(); err != nil || len(jobs) != 2 {
		t.Fatalf("Jobs = %v, %v", jobs, err)
	}
	for name, heads := range map[string][]EventHead{
		"fewer heads":     ev.Heads[:1],
		"another tenant":  {ev.Heads[0], {JobID: "b", TenantID: "globex", State: b.GetState(), Attempt: 2, Version: b.GetVersion()}},
		"another version": {ev.Heads[0], {JobID: "b", TenantID: "acme", State: b.GetState(), Attempt: 2, Version: 1}},
		"heads swapped":   {ev.Heads[1], ev.Heads[0]},
	} {
		wrong := &EventPacket{Heads: heads, data: data}
		if jobs, err := wrong.Jobs(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Jobs = %v, %v; want an error wrapping ErrMalformed", name, jobs, err)
		}
	}
}

// FuzzDecodeEventHeads: no input makes DecodeEventHeads panic; heads it
// reads are those of the jobs Decode reads, whenever both read the packet;
// and every job event Decode reads, encoded as publishers encode it, has
// its heads read.
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
	two := messageOf(f, &cortexv1.JobEvent{Jobs: []*cortexv1.Job{{JobId: "b", TenantId: "t"}}})
	f.Add(packetOf(rawField{packetJobEventField, two}, rawField{packetJobEventField, two}))
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
		if err == nil && !slices.Equal(heads, want) {
			t.Fatalf("DecodeEventHeads = %+v; Decode reads %+v", heads, want)
		}
		canonical, err := Encode(p)
		if err != nil {
			return // over the size limit once re-encoded
		}
		if heads, err := DecodeEventHeads(canonical); err != nil || !slices.Equal(heads, want) {
			t.Fatalf("DecodeEventHeads of the packet as encoded = %+v, %v; Decode reads %+v", heads, err, want)
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
