package bus

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// ProtocolVersion is the BusPacket protocol version this build speaks.
const ProtocolVersion = 1

// MaxPacketSize bounds every packet read from or written to the bus. Large
// data lives in Redis and travels as a pointer, so packets stay small.
const MaxPacketSize = 64 << 10

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed bus packet")

// Encode marshals a packet, refusing one over MaxPacketSize.
func Encode(p *cortexv1.BusPacket) ([]byte, error) {
	b, err := proto.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode bus packet: %w", err)
	}
	if len(b) > MaxPacketSize {
		return nil, fmt.Errorf("encode bus packet: %d bytes is over the %d byte limit", len(b), MaxPacketSize)
	}
	return b, nil
}

// Decode unmarshals and checks a packet: size, protocol version, and that a
// payload is present and its required identifiers are set. Any failure
// wraps ErrMalformed.
func Decode(data []byte) (*cortexv1.BusPacket, error) {
	if len(data) > MaxPacketSize {
		return nil, fmt.Errorf("%w: %d bytes is over the %d byte limit", ErrMalformed, len(data), MaxPacketSize)
	}
	p := &cortexv1.BusPacket{}
	if err := proto.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if p.GetProtocolVersion() != ProtocolVersion {
		return nil, fmt.Errorf("%w: protocol version %d, want %d", ErrMalformed, p.GetProtocolVersion(), ProtocolVersion)
	}
	if err := validatePayload(p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return p, nil
}

func validatePayload(p *cortexv1.BusPacket) error {
	switch pl := p.GetPayload().(type) {
	case *cortexv1.BusPacket_JobRequest:
		r := pl.JobRequest
		if r.GetJobId() == "" || !ValidTopic(r.GetTopic()) {
			return errors.New("job request without a job id or with a bad topic")
		}
	case *cortexv1.BusPacket_JobResult:
		r := pl.JobResult
		if r.GetJobId() == "" {
			return errors.New("job result without a job id")
		}
		if s := r.GetState(); s != cortexv1.JobState_JOB_STATE_COMPLETED && s != cortexv1.JobState_JOB_STATE_FAILED && s != cortexv1.JobState_JOB_STATE_TIMEOUT {
			return fmt.Errorf("job result with state %v", s)
		}
	case *cortexv1.BusPacket_Heartbeat:
		if !ValidToken(pl.Heartbeat.GetWorkerId()) {
			return errors.New("heartbeat with a bad worker id")
		}
	case *cortexv1.BusPacket_CheckRequest:
		if pl.CheckRequest.GetJobId() == "" {
			return errors.New("check request without a job id")
		}
	case *cortexv1.BusPacket_CheckResponse:
	case *cortexv1.BusPacket_JobEvent:
		if j := pl.JobEvent.GetJob(); j.GetJobId() == "" || j.GetTenantId() == "" {
			return errors.New("job event without a job id or tenant")
		}
	case *cortexv1.BusPacket_SafetyDecision:
		if pl.SafetyDecision.GetJobId() == "" || pl.SafetyDecision.GetVerdict() == nil {
			return errors.New("safety decision without a job id or verdict")
		}
	case *cortexv1.BusPacket_PolicyApply, *cortexv1.BusPacket_PolicyQuery, *cortexv1.BusPacket_PolicyReply, *cortexv1.BusPacket_BeatRequest:
	case *cortexv1.BusPacket_WorkerDrain:
		if !ValidToken(pl.WorkerDrain.GetWorkerId()) {
			return errors.New("worker drain with a bad worker id")
		}
	case *cortexv1.BusPacket_JobOutput:
		if pl.JobOutput.GetJobId() == "" || pl.JobOutput.GetSeq() == 0 {
			return errors.New("job output without a job id or sequence number")
		}
	case *cortexv1.BusPacket_JobCancel:
		if pl.JobCancel.GetJobId() == "" {
			return errors.New("job cancel without a job id")
		}
	default:
		return errors.New("no payload")
	}
	return nil
}
