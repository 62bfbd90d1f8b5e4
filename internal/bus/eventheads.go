package bus

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// EventHead is what a job event says of one job's change in brief: the
// job, its tenant, the state and attempt it is in, and the record's
// version. Decoding a record whole costs several times as much (it carries
// labels, timestamps, its verdict and its attempt history), so a
// subscriber reads the heads first (SubscribeJobEvents): a scheduler needs
// no more, a gateway decodes the records only of packets that one of its
// watchers wants.
type EventHead struct {
	JobID    string
	TenantID string
	State    cortexv1.JobState
	Attempt  uint32
	Version  uint64
}

// HeadOf is the head of job j.
func HeadOf(j *cortexv1.Job) EventHead {
	return EventHead{JobID: j.GetJobId(), TenantID: j.GetTenantId(), State: j.GetState(), Attempt: j.GetAttempt(), Version: j.GetVersion()}
}

// EventPacket is a job event packet read as far as its heads.
type EventPacket struct {
	// Heads are the heads of the packet's jobs, in the order of EventJobs.
	Heads []EventHead
	data  []byte
}

// Jobs decodes the packet's records: Jobs()[i] is the job of Heads[i]. A
// packet whose records do not say what its heads say is refused
// (ErrMalformed), so that nothing is handed on by a head it does not have.
func (e *EventPacket) Jobs() ([]*cortexv1.Job, error) {
	p, err := Decode(e.data)
	if err != nil {
		return nil, err
	}
	jobs := EventJobs(p)
	if len(jobs) != len(e.Heads) {
		return nil, fmt.Errorf("%w: %d job records for %d heads", ErrMalformed, len(jobs), len(e.Heads))
	}
	for i, j := range jobs {
		if HeadOf(j) != e.Heads[i] {
			return nil, fmt.Errorf("%w: job record %d is not the job its head names", ErrMalformed, i)
		}
	}
	return jobs, nil
}

// DecodeEventPacket reads the heads of a job event packet (DecodeEventHeads)
// and keeps the packet for Jobs.
func DecodeEventPacket(data []byte) (*EventPacket, error) {
	heads, err := DecodeEventHeads(data)
	if err != nil {
		return nil, err
	}
	return &EventPacket{Heads: heads, data: data}, nil
}

// The field numbers DecodeEventHeads reads, from the generated messages'
// descriptors (proto/cortex/v1/bus.proto, job.proto).
var (
	packetVersionField  = fieldOf(&cortexv1.BusPacket{}, "protocol_version")
	packetJobEventField = fieldOf(&cortexv1.BusPacket{}, "job_event")
	eventJobField       = fieldOf(&cortexv1.JobEvent{}, "job")
	eventJobsField      = fieldOf(&cortexv1.JobEvent{}, "jobs")
	jobIDField          = fieldOf(&cortexv1.Job{}, "job_id")
	jobStateField       = fieldOf(&cortexv1.Job{}, "state")
	jobTenantField      = fieldOf(&cortexv1.Job{}, "tenant_id")
	jobAttemptField     = fieldOf(&cortexv1.Job{}, "attempt")
	jobVersionField     = fieldOf(&cortexv1.Job{}, "version")
	// payloadFields are the numbers of BusPacket's oneof payload.
	payloadFields = func() map[protowire.Number]bool {
		fs := (&cortexv1.BusPacket{}).ProtoReflect().Descriptor().Oneofs().ByName("payload").Fields()
		m := make(map[protowire.Number]bool, fs.Len())
		for i := range fs.Len() {
			m[fs.Get(i).Number()] = true
		}
		return m
	}()
)

// fieldOf is the number of m's field name (a panic at start if it has no
// such field: the proto changed under this file).
func fieldOf(m proto.Message, name protoreflect.Name) protowire.Number {
	return m.ProtoReflect().Descriptor().Fields().ByName(name).Number()
}

// DecodeEventHeads reads the heads of a SubjectJobEvent packet, in the
// order EventJobs gives its jobs, and skips every other field. It refuses
// (with ErrMalformed) what Decode refuses of a job event's framing and
// heads: a packet over MaxPacketSize, of another protocol version or
// payload, broken wire framing of the packet, its event or a job, a job
// without an id or a tenant, or one of those not UTF-8. It does not look
// inside the fields it skips (a label, a timestamp, the verdict), which
// Decode checks too: EventPacket.Jobs does. It also refuses an event, or
// an event's single job, sent in more than one piece, which protobuf would
// merge and no publisher sends.
func DecodeEventHeads(data []byte) ([]EventHead, error) {
	heads, err := eventHeads(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return heads, nil
}

func eventHeads(data []byte) ([]EventHead, error) {
	if len(data) > MaxPacketSize {
		return nil, fmt.Errorf("%d bytes is over the %d byte limit", len(data), MaxPacketSize)
	}
	var version uint64
	var event []byte
	isEvent := false
	err := eachField(data, func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error {
		switch {
		case num == packetVersionField && typ == protowire.VarintType:
			version = v
		case num == packetJobEventField && typ == protowire.BytesType:
			// Protobuf merges a message sent in pieces; a publisher never
			// does that, and reading heads from pieces could pair them
			// with the wrong records.
			if event != nil {
				return errors.New("a job event in more than one piece")
			}
			event, isEvent = b, true
		case payloadFields[num] && typ == protowire.BytesType:
			isEvent = false // the last payload of a oneof wins
		}
		return nil
	})
	switch {
	case err != nil:
		return nil, err
	case uint32(version) != ProtocolVersion: // a uint32 field, as Decode reads it
		return nil, fmt.Errorf("protocol version %d, want %d", version, ProtocolVersion)
	case !isEvent:
		return nil, errors.New("not a job event")
	}
	var single *EventHead
	var heads []EventHead
	err = eachField(event, func(num protowire.Number, typ protowire.Type, _ uint64, b []byte) error {
		if typ != protowire.BytesType || (num != eventJobField && num != eventJobsField) {
			return nil
		}
		h, err := jobHead(b)
		if err != nil {
			return err
		}
		if num == eventJobField {
			if single != nil {
				return errors.New("a job event with its job in more than one piece")
			}
			single = &h
		} else {
			heads = append(heads, h)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if single != nil {
		heads = append([]EventHead{*single}, heads...)
	}
	if len(heads) == 0 {
		return nil, errors.New("job event without a job")
	}
	return heads, nil
}

// jobHead reads a Job's head, and checks it has an id and a tenant.
func jobHead(b []byte) (EventHead, error) {
	var h EventHead
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v uint64, s []byte) error {
		switch {
		case num == jobIDField && typ == protowire.BytesType:
			if !utf8.Valid(s) {
				return errors.New("job id is not UTF-8")
			}
			h.JobID = string(s)
		case num == jobTenantField && typ == protowire.BytesType:
			if !utf8.Valid(s) {
				return errors.New("tenant id is not UTF-8")
			}
			h.TenantID = string(s)
		case num == jobStateField && typ == protowire.VarintType:
			h.State = cortexv1.JobState(int32(v))
		case num == jobAttemptField && typ == protowire.VarintType:
			h.Attempt = uint32(v)
		case num == jobVersionField && typ == protowire.VarintType:
			h.Version = v
		}
		return nil
	})
	if err == nil && (h.JobID == "" || h.TenantID == "") {
		err = errors.New("job event without a job id or tenant")
	}
	return h, err
}

// eachField calls f with each field of the message in b: its number, its
// wire type, and its value (v for a varint, b for a length-delimited one).
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, b []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var val []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			val, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, val); err != nil {
			return err
		}
	}
	return nil
}

// SubscribeJobEvents is Subscribe on SubjectJobEvent for a handler that
// reads the heads of each packet first (DecodeEventPacket); packets whose
// heads cannot be read are dropped and counted as Subscribe drops them.
func (c *Conn) SubscribeJobEvents(ctx context.Context, concurrency int, h func(ctx context.Context, ev *EventPacket) error) (*Subscription, error) {
	return subscribe(c, ctx, SubjectJobEvent, "", concurrency, DecodeEventPacket, func(ctx context.Context, ev *EventPacket, _ string) error {
		return h(ctx, ev)
	})
}
