package safety

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Kernel serves policy decisions.
type Kernel struct {
	policy *Policy
	log    *slog.Logger
}

var _ cortexv1connect.SafetyServiceHandler = (*Kernel)(nil)

// NewKernel returns a kernel enforcing policy.
func NewKernel(policy *Policy, log *slog.Logger) *Kernel {
	return &Kernel{policy: policy, log: log}
}

// Check decides one request.
func (k *Kernel) Check(_ context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	return k.policy.Evaluate(r), nil
}

// Start answers checks on the bus until conn is closed. It returns once the
// subscription is in place.
func (k *Kernel) Start(ctx context.Context, conn *bus.Conn) error {
	_, err := conn.Subscribe(context.WithoutCancel(ctx), bus.SubjectSafetyCheck, bus.QueueSafety, 64,
		func(ctx context.Context, p *cortexv1.BusPacket, reply string) error {
			req := p.GetCheckRequest()
			if req == nil || reply == "" {
				return bus.WrongPayload(p, "a check request with a reply subject")
			}
			resp, _ := k.Check(ctx, req)
			k.log.Debug("safety decision", "job_id", req.GetJobId(), "topic", req.GetTopic(),
				"decision", resp.GetDecision().String(), "rule", resp.GetRule())
			out := &cortexv1.BusPacket{
				TraceId: p.GetTraceId(),
				Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: resp},
			}
			if err := conn.Publish(reply, out); err != nil {
				k.log.Error("answer safety check", "job_id", req.GetJobId(), "err", err)
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("safety kernel: %w", err)
	}
	if err := conn.Flush(ctx); err != nil {
		return fmt.Errorf("safety kernel: %w", err)
	}
	return nil
}
