package safety

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/coalesce"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Client defaults.
const (
	// DefaultTimeout is how long the client waits for a decision before it
	// denies the job. A request carries up to maxBatch checks and the
	// kernel reads their prompts from Redis, so it leaves room for a busy
	// Redis (on the embedded one, under an all-out bench, decisions took
	// 45 ms on average and 100 ms denied a fifth of the jobs); a kernel that
	// is down is found by the circuit breaker after breakerThreshold
	// requests.
	DefaultTimeout = 500 * time.Millisecond
	// breakerThreshold consecutive failures open the circuit.
	breakerThreshold = 5
	// breakerCoolDown is how long an open circuit denies without asking;
	// then one check probes the kernel.
	breakerCoolDown = time.Second
	// settleWindow is how long after the client's bus connection came back
	// (a NATS restart) a check that found no kernel listening, or had no
	// answer, is asked again rather than denied: the kernels reconnect on
	// their own schedule, and a job that waited out the outage should not
	// be denied for racing them. settleRetry spaces the asks.
	settleWindow = 3 * time.Second
	settleRetry  = 100 * time.Millisecond
)

// Batching: concurrent checks travel together, at most maxInFlight
// requests at a time, each of at most maxBatch checks and maxBatchBytes of
// them, so that the request and the kernel's answer fit in a bus packet.
const (
	maxInFlight   = 4
	maxBatch      = 256
	maxBatchBytes = bus.MaxPacketSize - 4<<10
)

// Client asks the kernel over the bus and fails closed: an error, a
// timeout, a malformed answer or an unknown decision is a DENY whose reason
// says which. Concurrent checks are batched: an idle client sends a check
// at once, alone; a busy one sends what queued meanwhile as one CheckBatch
// (see internal/coalesce), and every caller gets its own decision. Checks
// handed in together (CheckAll) travel together. After
// breakerThreshold failed requests in a row a circuit breaker opens:
// checks are denied at once, without waiting for a kernel that is not
// answering, until a probe after the cool-down succeeds. For settleWindow
// after its connection to NATS came back, a check no kernel heard is asked
// again (each ask within the timeout) instead of failing: still nothing
// runs without an ALLOW.
type Client struct {
	conn    *bus.Conn
	timeout time.Duration
	breaker breaker
	batches *coalesce.Batcher[*pending]
	log     *slog.Logger
	// back is when the bus connection last came back (Unix ns; 0: never
	// lost), and now the clock.
	back atomic.Int64
	now  func() time.Time
}

// pending is one check waiting for its decision.
type pending struct {
	req   *cortexv1.CheckRequest
	trace string
	size  int
	start time.Time
	// resp is set before done is closed.
	resp *cortexv1.CheckResponse
	done chan struct{}
}

// NewClient returns a client that waits at most timeout for each decision
// (DefaultTimeout when zero).
func NewClient(conn *bus.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	c := &Client{conn: conn, timeout: timeout, breaker: breaker{threshold: breakerThreshold, coolDown: breakerCoolDown, now: time.Now},
		log: slog.New(slog.DiscardHandler), now: time.Now}
	c.batches = coalesce.New(maxInFlight, takeChecks, c.send)
	conn.OnReconnect(func() { c.back.Store(c.now().UnixNano()) })
	return c
}

// settling reports whether the bus connection came back less than
// settleWindow ago.
func (c *Client) settling() bool {
	back := c.back.Load()
	return back != 0 && c.now().Sub(time.Unix(0, back)) < settleWindow
}

// Answering reports whether checks reach the kernel now: false while the
// circuit breaker is open and denies without asking.
func (c *Client) Answering() bool {
	_, open := c.breaker.open()
	return !open
}

// LogTo has the client log when its circuit breaker opens (every check is
// denied fail-closed from then on) and when the kernel answers again.
func (c *Client) LogTo(log *slog.Logger) *Client {
	c.log = log
	return c
}

// takeChecks is how many of the queued checks make one request.
func takeChecks(queued []*pending) int {
	n, size := 0, 0
	for n < len(queued) && n < maxBatch {
		if size += queued[n].size; size > maxBatchBytes {
			break
		}
		n++
	}
	return n // one check too big to share a request goes alone
}

// Check asks for a decision. It never returns an error: every failure is a
// DENY with rule fail-closed.
func (c *Client) Check(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	return c.CheckAll(ctx, []*cortexv1.CheckRequest{r}, []string{bus.TraceFrom(ctx, r.GetJobId())})[0], nil
}

// CheckAll asks for decisions on several attempts at once: they travel
// together, in as few requests as fit, and answer i is that of rs[i],
// traces[i] being its trace. Like Check, every failure is a DENY with rule
// fail-closed.
func (c *Client) CheckAll(ctx context.Context, rs []*cortexv1.CheckRequest, traces []string) []*cortexv1.CheckResponse {
	out := make([]*cortexv1.CheckResponse, len(rs))
	if cause := context.Cause(ctx); cause != nil {
		for i := range out {
			out[i] = abandoned(cause)
		}
		return out
	}
	now := time.Now()
	ps := make([]*pending, len(rs))
	for i, r := range rs {
		ps[i] = &pending{req: r, trace: traces[i], size: proto.Size(r) + 8, start: now, done: make(chan struct{})}
	}
	if wait, open := c.breaker.open(); open && !c.settling() {
		for i, p := range ps {
			p.resp = c.breakerDenial(wait)
			out[i] = p.resp
		}
		c.announce(ps)
		return out
	}
	c.batches.Add(ps...)
	for i, p := range ps {
		select {
		case <-p.done:
		case <-ctx.Done():
		}
		if cause := context.Cause(ctx); cause != nil {
			// The caller gave up (shutdown, say); its batch goes on for
			// the others.
			out[i] = abandoned(cause)
			continue
		}
		out[i] = p.resp
	}
	return out
}

func abandoned(cause error) *cortexv1.CheckResponse {
	return failClosed("the check was abandoned: " + cause.Error())
}

func (c *Client) breakerDenial(wait time.Duration) *cortexv1.CheckResponse {
	next := "until a probe check finds it answering again"
	if wait > 0 {
		next = "for another " + wait.Round(time.Millisecond).String()
	}
	return failClosed(fmt.Sprintf("%d safety checks in a row failed (the last: %s); the circuit breaker denies without asking %s",
		c.breaker.threshold, c.breaker.lastFailure(), next))
}

// send asks the kernel about one batch and hands every check its answer.
// The breaker counts the request once: it failed if any check of it failed
// closed for something the kernel did or did not answer.
func (c *Client) send(batch []*pending) {
	// While settling, an open breaker (it opened during the outage) lets
	// the checks through: the kernels may be back.
	wait, ok := c.breaker.allow()
	if !ok && !c.settling() {
		for _, p := range batch {
			p.resp = c.breakerDenial(wait)
		}
		c.announce(batch)
		for _, p := range batch {
			close(p.done)
		}
		return
	}
	reasons, unheard := c.ask(batch)
	for unheard && c.settling() {
		time.Sleep(settleRetry)
		reasons, unheard = c.ask(batch)
	}
	why := ""
	if reasons != nil {
		why = firstReason(reasons)
	}
	switch c.breaker.record(why) {
	case opened:
		c.log.Warn("safety checks keep failing: denying every job fail-closed until the kernel answers again", "last_failure", why)
	case closed:
		c.log.Info("the safety kernel answers again: checks resume")
	}
	var denied []*pending
	for i, p := range batch {
		if reasons != nil && reasons[i] != "" {
			p.resp = failClosed(reasons[i])
			denied = append(denied, p)
		}
	}
	c.announce(denied)
	for _, p := range batch {
		close(p.done)
	}
}

// announce publishes the client's own fail-closed denials on
// sys.safety.decision, as a kernel publishes its decisions, so that they
// show where decisions are watched (tail --decisions, top): no kernel
// decided them, and the event's kernel_id names this client instead.
func (c *Client) announce(denied []*pending) {
	if len(denied) == 0 {
		return
	}
	events := make([]*cortexv1.SafetyDecisionEvent, len(denied))
	for i, p := range denied {
		events[i] = decisionEvent(p.req, p.resp, p.start, time.Since(p.start), "none (fail-closed by "+c.conn.SenderID()+")")
	}
	for _, pk := range decisionPackets(denied[0].trace, events) {
		if err := c.conn.Publish(bus.SubjectSafetyDecision, pk); err != nil {
			c.log.Warn("publish fail-closed decisions", "decisions", len(events), "err", err)
		}
	}
}

// ask sets the kernel's answer on every check of batch, or returns why
// each has none: nil when all were answered; unheard says no kernel
// answered at all (none listening, or no reply in time). A lone check goes
// as a CheckRequest (which any kernel answers), more as a CheckBatch.
func (c *Client) ask(batch []*pending) (reasons []string, unheard bool) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	out := &cortexv1.BusPacket{TraceId: batch[0].trace, Payload: &cortexv1.BusPacket_CheckRequest{CheckRequest: batch[0].req}}
	if len(batch) > 1 {
		checks := make([]*cortexv1.CheckRequest, len(batch))
		for i, p := range batch {
			checks[i] = p.req
		}
		out.Payload = &cortexv1.BusPacket_CheckBatch{CheckBatch: &cortexv1.CheckBatch{Checks: checks}}
	}
	reply, err := c.conn.Request(ctx, bus.SubjectSafetyCheck, out)
	var results []*cortexv1.CheckResponse
	why := ""
	switch {
	case errors.Is(err, bus.ErrMalformed):
		why = fmt.Sprintf("safety kernel answered with a malformed packet: %v", err)
	case errors.Is(err, nats.ErrNoResponders):
		why = fmt.Sprintf("no safety kernel listens on %s (none is running, or none is connected to NATS)", bus.SubjectSafetyCheck)
		unheard = true
	case err != nil:
		why = fmt.Sprintf("safety kernel gave no decision within %s: %v", c.timeout, err)
		unheard = true
	case len(batch) == 1 && reply.GetCheckResponse() == nil:
		why = "safety kernel answered with something other than a decision"
	case len(batch) == 1:
		results = []*cortexv1.CheckResponse{reply.GetCheckResponse()}
	case reply.GetCheckBatchResponse() == nil:
		why = fmt.Sprintf("safety kernel answered a batch of %d checks with something other than a batch of decisions", len(batch))
	case len(reply.GetCheckBatchResponse().GetResults()) != len(batch):
		why = fmt.Sprintf("safety kernel answered a batch of %d checks with %d decisions", len(batch), len(reply.GetCheckBatchResponse().GetResults()))
	default:
		results = reply.GetCheckBatchResponse().GetResults()
	}
	reasons = make([]string, len(batch))
	failed := false
	for i, p := range batch {
		switch {
		case results == nil:
			reasons[i] = why
		case known(results[i].GetDecision()):
			p.resp = results[i]
			continue
		default:
			reasons[i] = fmt.Sprintf("safety kernel answered with unknown decision %d", results[i].GetDecision())
		}
		failed = true
	}
	if !failed {
		return nil, false
	}
	return reasons, unheard
}

func known(d cortexv1.Decision) bool {
	return d == cortexv1.Decision_DECISION_ALLOW || d == cortexv1.Decision_DECISION_DENY || d == cortexv1.Decision_DECISION_REQUIRE_APPROVAL
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
	last      string // why the last failed request failed
}

// change is what a request's outcome did to the breaker.
type change int

const (
	kept change = iota
	opened
	closed
)

// lastFailure is why the last failed request failed.
func (b *breaker) lastFailure() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// open reports whether the breaker denies without asking, and for how
// long, without taking the probe.
func (b *breaker) open() (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures < b.threshold {
		return 0, false
	}
	wait := b.openUntil.Sub(b.now())
	return max(wait, 0), wait > 0 || b.probing
}

// allow reports whether a request may go to the kernel, and if not, how
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

// record counts a request: failed for why, or answered when why is "".
func (b *breaker) record(why string) change {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	wasOpen := b.failures >= b.threshold
	if why == "" {
		b.failures = 0
		if wasOpen {
			return closed
		}
		return kept
	}
	b.failures++
	b.last = why
	if b.failures >= b.threshold {
		b.openUntil = b.now().Add(b.coolDown)
		if !wasOpen {
			return opened
		}
	}
	return kept
}

// firstReason is the first reason of a failed request's checks.
func firstReason(reasons []string) string {
	for _, r := range reasons {
		if r != "" {
			return r
		}
	}
	return "unknown"
}
