package safety

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// DefaultTimeout is how long the client waits for a decision before it
// denies the job.
const DefaultTimeout = 100 * time.Millisecond

// Client asks the kernel over the bus and fails closed: an error, a
// timeout, a malformed answer or an unknown decision is a DENY whose reason
// says which.
type Client struct {
	conn    *bus.Conn
	timeout time.Duration
}

// NewClient returns a client that waits at most timeout for each decision
// (DefaultTimeout when zero).
func NewClient(conn *bus.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{conn: conn, timeout: timeout}
}

// Check asks for a decision. It never returns an error: every failure is a
// DENY.
func (c *Client) Check(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	reply, err := c.conn.Request(ctx, bus.SubjectSafetyCheck, &cortexv1.BusPacket{
		TraceId: r.GetJobId(),
		Payload: &cortexv1.BusPacket_CheckRequest{CheckRequest: r},
	})
	if errors.Is(err, bus.ErrMalformed) {
		return failClosed(fmt.Sprintf("safety kernel answered with a malformed packet: %v", err)), nil
	}
	if err != nil {
		return failClosed(fmt.Sprintf("safety kernel gave no decision within %s: %v", c.timeout, err)), nil
	}
	resp := reply.GetCheckResponse()
	switch {
	case resp == nil:
		return failClosed("safety kernel answered with something other than a decision"), nil
	case resp.GetDecision() == cortexv1.Decision_DECISION_ALLOW, resp.GetDecision() == cortexv1.Decision_DECISION_DENY:
		return resp, nil
	default:
		return failClosed(fmt.Sprintf("safety kernel answered with unknown decision %d", resp.GetDecision())), nil
	}
}

func failClosed(reason string) *cortexv1.CheckResponse {
	return &cortexv1.CheckResponse{
		Decision: cortexv1.Decision_DECISION_DENY,
		Rule:     bus.RuleFailClosed,
		Reason:   reason,
	}
}
