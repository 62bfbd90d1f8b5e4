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
		return validJobRequest(pl.JobRequest)
	case *cortexv1.BusPacket_JobBatch:
		b := pl.JobBatch
		if len(b.GetJobs()) == 0 || len(b.GetTraceIds()) != len(b.GetJobs()) {
			return errors.New("job batch without jobs, or without a trace id per job")
		}
		for _, r := range b.GetJobs() {
			if err := validJobRequest(r); err != nil {
				return err
			}
			if r.GetNotBefore() != nil {
				// A retry waits out its backoff alone.
				return errors.New("job batch with a job held back (not_before)")
			}
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
		if n := pl.Heartbeat.GetMaxParallelJobs(); n > MaxWorkerSlots || pl.Heartbeat.GetActiveJobs() > n {
			return fmt.Errorf("heartbeat of %d active jobs of %d slots: a worker has at most %d, and never more active than slots", pl.Heartbeat.GetActiveJobs(), n, MaxWorkerSlots)
		}
	case *cortexv1.BusPacket_CheckRequest:
		if pl.CheckRequest.GetJobId() == "" {
			return errors.New("check request without a job id")
		}
	case *cortexv1.BusPacket_CheckBatch:
		if len(pl.CheckBatch.GetChecks()) == 0 {
			return errors.New("check batch without checks")
		}
		for _, r := range pl.CheckBatch.GetChecks() {
			if r.GetJobId() == "" {
				return errors.New("check request without a job id")
			}
		}
	case *cortexv1.BusPacket_CheckResponse, *cortexv1.BusPacket_CheckBatchResponse:
	case *cortexv1.BusPacket_JobEvent:
		jobs := EventJobs(p)
		if len(jobs) == 0 {
			return errors.New("job event without a job")
		}
		for _, j := range jobs {
			if j.GetJobId() == "" || j.GetTenantId() == "" {
				return errors.New("job event without a job id or tenant")
			}
		}
	case *cortexv1.BusPacket_SafetyDecisions:
		if len(pl.SafetyDecisions.GetEvents()) == 0 {
			return errors.New("safety decisions without a decision")
		}
		for _, ev := range pl.SafetyDecisions.GetEvents() {
			if ev.GetJobId() == "" || ev.GetVerdict() == nil {
				return errors.New("safety decision without a job id or verdict")
			}
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
	case *cortexv1.BusPacket_QueueHeads:
		if p.GetSenderId() == "" || len(pl.QueueHeads.GetPools()) > MaxQueueHeads {
			return fmt.Errorf("queue heads without a sender, or of over %d pools", MaxQueueHeads)
		}
		for _, h := range pl.QueueHeads.GetPools() {
			if !ValidToken(h.GetPool()) || h.GetPriority() < 1 || h.GetPriority() > MaxPriority {
				return fmt.Errorf("queue head with a bad pool or a priority outside 1-%d", MaxPriority)
			}
		}
	default:
		return errors.New("no payload")
	}
	return nil
}

func validJobRequest(r *cortexv1.JobRequest) error {
	if r.GetJobId() == "" || !ValidTopic(r.GetTopic()) {
		return errors.New("job request without a job id or with a bad topic")
	}
	return nil
}
