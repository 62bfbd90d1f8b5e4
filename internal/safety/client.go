package safety

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Client defaults.
const (
	// DefaultTimeout is how long the client waits for a decision before it
	// denies the job.
	DefaultTimeout = 100 * time.Millisecond
	// breakerThreshold consecutive failures open the circuit.
	breakerThreshold = 5
	// breakerCoolDown is how long an open circuit denies without asking;
	// then one check probes the kernel.
	breakerCoolDown = time.Second
)

// Client asks the kernel over the bus and fails closed: an error, a
// timeout, a malformed answer or an unknown decision is a DENY whose reason
// says which. After breakerThreshold failures in a row a circuit breaker
// opens: checks are denied at once, without waiting for a kernel that is
// not answering, until a probe after the cool-down succeeds.
type Client struct {
	conn    *bus.Conn
	timeout time.Duration
	breaker breaker
}

// NewClient returns a client that waits at most timeout for each decision
// (DefaultTimeout when zero).
func NewClient(conn *bus.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{conn: conn, timeout: timeout, breaker: breaker{threshold: breakerThreshold, coolDown: breakerCoolDown, now: time.Now}}
}

// Check asks for a decision. It never returns an error: every failure is a
// DENY with rule fail-closed.
func (c *Client) Check(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	if wait, ok := c.breaker.allow(); !ok {
		next := "until a probe check finds it answering again"
		if wait > 0 {
			next = "for another " + wait.Round(time.Millisecond).String()
		}
		return failClosed(fmt.Sprintf("the safety kernel failed %d checks in a row; the circuit breaker denies without asking %s",
			c.breaker.threshold, next)), nil
	}
	resp, reason := c.ask(ctx, r)
	if cause := context.Cause(ctx); cause != nil {
		// The caller gave up (shutdown, say): no news about the kernel.
		c.breaker.release()
		return failClosed("the check was abandoned: " + cause.Error()), nil //nolint:nilerr // failing closed is the answer
	}
	c.breaker.record(reason == "")
	if reason != "" {
		return failClosed(reason), nil
	}
	return resp, nil
}

// ask returns the kernel's answer, or why there is none.
func (c *Client) ask(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, string) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	reply, err := c.conn.Request(ctx, bus.SubjectSafetyCheck, &cortexv1.BusPacket{
		TraceId: bus.TraceFrom(ctx, r.GetJobId()),
		Payload: &cortexv1.BusPacket_CheckRequest{CheckRequest: r},
	})
	if errors.Is(err, bus.ErrMalformed) {
		return nil, fmt.Sprintf("safety kernel answered with a malformed packet: %v", err)
	}
	if err != nil {
		return nil, fmt.Sprintf("safety kernel gave no decision within %s: %v", c.timeout, err)
	}
	resp := reply.GetCheckResponse()
	switch {
	case resp == nil:
		return nil, "safety kernel answered with something other than a decision"
	case resp.GetDecision() == cortexv1.Decision_DECISION_ALLOW, resp.GetDecision() == cortexv1.Decision_DECISION_DENY,
		resp.GetDecision() == cortexv1.Decision_DECISION_REQUIRE_APPROVAL:
		return resp, ""
	}
	return nil, fmt.Sprintf("safety kernel answered with unknown decision %d", resp.GetDecision())
}

func failClosed(reason string) *cortexv1.CheckResponse {
	return &cortexv1.CheckResponse{
		Decision: cortexv1.Decision_DECISION_DENY,
		Rule:     bus.RuleFailClosed,
		Reason:   reason,
	}
}

// breaker is a circuit breaker: closed, it lets every check through; after
// threshold failures in a row it opens for coolDown, then lets one probe
// through (half-open) and closes again if the probe succeeds.
type breaker struct {
	threshold int
	coolDown  time.Duration
	now       func() time.Time

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

// allow reports whether a check may go to the kernel, and if not, how
// long until the next probe.
func (b *breaker) allow() (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return 0, true
	}
	if wait := b.openUntil.Sub(b.now()); wait > 0 || b.probing {
		return max(wait, 0), false
	}
	b.probing = true
	return 0, true
}

// release ends a probe without a verdict on the kernel.
func (b *breaker) release() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

func (b *breaker) record(ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if ok {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.threshold {
		b.openUntil = b.now().Add(b.coolDown)
	}
}
