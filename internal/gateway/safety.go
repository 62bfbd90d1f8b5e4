package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Bounds of the safety calls.
const (
	// kernelTimeout bounds a question to one kernel.
	kernelTimeout = 2 * time.Second
	// applyWindow is how long ApplyPolicy collects kernels' answers, and
	// statusWindow how long GetPolicy does.
	applyWindow  = 750 * time.Millisecond
	statusWindow = 300 * time.Millisecond
	// maxPolicyBytes bounds an applied policy file: kernels report what they
	// enforce, source included, in one bus packet (64 KiB).
	maxPolicyBytes = 48 << 10
	// maxExplainPrompt bounds the prompt of ExplainDecision, which rides the
	// bus to a kernel.
	maxExplainPrompt = 48 << 10
)

// ApproveJob lets a job held for approval go through the safety gate again.
func (g *Gateway) ApproveJob(ctx context.Context, req *cortexv1.ApproveJobRequest) (*cortexv1.ApproveJobResponse, error) {
	j, err := g.answerApproval(ctx, req.GetJobId(), true, req.GetComment())
	if err != nil {
		return nil, err
	}
	g.handOff(ctx, []bus.Durable{bus.Submit(j.Trace(), j.Request(), strconv.FormatUint(j.Version, 10))})
	return &cortexv1.ApproveJobResponse{Job: j.Proto()}, nil
}

// RejectJob ends a job held for approval as DENIED.
func (g *Gateway) RejectJob(ctx context.Context, req *cortexv1.RejectJobRequest) (*cortexv1.RejectJobResponse, error) {
	j, err := g.answerApproval(ctx, req.GetJobId(), false, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &cortexv1.RejectJobResponse{Job: j.Proto()}, nil
}

// answerApproval records a person's answer on a job AWAITING_APPROVAL.
func (g *Gateway) answerApproval(ctx context.Context, rawID string, approve bool, comment string) (*store.Job, error) {
	verb, done := "reject", "rejected"
	if approve {
		verb, done = "approve", "approved"
	}
	if err := requireAdmin(ctx, verb+" jobs"); err != nil {
		return nil, err
	}
	if len(comment) > 512 || !utf8.ValidString(comment) {
		return nil, connect.NewError(connect.CodeInvalidArgument, "comment must be UTF-8 text of at most 512 bytes")
	}
	j, err := g.ownJob(ctx, rawID)
	if err != nil {
		return nil, err
	}
	if j.State != store.AwaitingApproval {
		return nil, connect.Errorf(connect.CodeFailedPrecondition, "job %s is %s, not AWAITING_APPROVAL: only jobs held by the safety policy can be %s", j.ID, j.State, done)
	}
	who := principalFrom(ctx).Name()
	reason := "approved by " + who
	if comment != "" {
		reason += ": " + comment
	}
	c := store.Change{To: store.Pending, Attempt: j.Attempt, Reason: reason, Approval: &store.Approval{Approved: true, By: who, Comment: comment, At: time.Now(), Attempt: j.Attempt, Rule: j.Safety.Rule}}
	if !approve {
		reason = "rejected by " + who
		if comment != "" {
			reason += ": " + comment
		}
		c = store.Change{To: store.Denied, Attempt: j.Attempt, Reason: reason, Approval: &store.Approval{By: who, Comment: comment, At: time.Now(), Attempt: j.Attempt, Rule: j.Safety.Rule}}
	}
	after, err := g.store.Transition(ctx, j.ID, c, time.Now())
	var conflict *store.ConflictError
	switch {
	case errors.As(err, &conflict):
		return nil, connect.Errorf(connect.CodeFailedPrecondition, "job %s moved to %s before it could be %s", j.ID, conflict.State, done)
	case err != nil:
		return nil, g.readErr(j.ID, err)
	}
	if !approve {
		g.metrics.Denied(after.Topic, after.Safety.Rule)
	}
	if err := g.bus.PublishJobEvent(after.Trace(), after.Proto()); err != nil {
		g.log.Warn("publish job event", "trace_id", after.Trace(), "job_id", j.ID, "err", err)
	}
	return after, nil
}

// askKernel sends a policy query to one safety kernel.
func (g *Gateway) askKernel(ctx context.Context, q *cortexv1.PolicyQuery) (*cortexv1.PolicyReply, error) {
	ctx, cancel := context.WithTimeout(ctx, kernelTimeout)
	defer cancel()
	p, err := g.bus.Request(ctx, bus.SubjectPolicyQuery, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: q}})
	if err != nil {
		g.log.Warn("ask a safety kernel", "err", err)
		return nil, connect.Errorf(connect.CodeUnavailable, "no safety kernel answered within %s; is one running (cortexctl safety, or up)?", kernelTimeout)
	}
	r := p.GetPolicyReply()
	if r == nil {
		return nil, connect.NewError(connect.CodeInternal, "a safety kernel answered with something other than a policy reply")
	}
	if r.GetError() != "" {
		return nil, connect.NewError(connect.CodeFailedPrecondition, r.GetError())
	}
	return r, nil
}

// GetPolicy returns what a kernel enforces.
func (g *Gateway) GetPolicy(ctx context.Context, _ *cortexv1.GetPolicyRequest) (*cortexv1.GetPolicyResponse, error) {
	gctx, cancel := context.WithTimeout(ctx, statusWindow)
	defer cancel()
	replies, err := g.bus.Gather(gctx, bus.SubjectPolicyStatus, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: &cortexv1.PolicyQuery{}}})
	if err != nil {
		g.log.Warn("ask safety kernels", "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the bus is unavailable, try again")
	}
	res := &cortexv1.GetPolicyResponse{}
	for _, r := range replies {
		if st := r.GetPolicyReply().GetStatus(); st != nil {
			res.Kernels = append(res.Kernels, st)
		}
	}
	if len(res.Kernels) == 0 {
		return nil, connect.Errorf(connect.CodeUnavailable, "no safety kernel answered within %s; is one running (cortexctl safety, or up)?", statusWindow)
	}
	if !principalFrom(ctx).Admin {
		// Rules can name tenants: the text is for admin keys.
		for _, k := range res.Kernels {
			for _, p := range []*cortexv1.PolicyInfo{k.GetActive(), k.GetShadow()} {
				if p != nil {
					p.Source = ""
				}
			}
		}
	}
	res.Status = res.Kernels[0]
	return res, nil
}

// ApplyPolicy checks a policy, stores it and has every kernel load it.
func (g *Gateway) ApplyPolicy(ctx context.Context, req *cortexv1.ApplyPolicyRequest) (*cortexv1.ApplyPolicyResponse, error) {
	if err := requireAdmin(ctx, "apply policies"); err != nil {
		return nil, err
	}
	res := &cortexv1.ApplyPolicyResponse{}
	name := req.GetName()
	if name == "" || len(name) > 200 || !utf8.ValidString(name) || strings.ContainsAny(name, "\n\r") {
		name = "policy.yaml"
	}
	apply := &cortexv1.PolicyApply{Shadow: req.GetShadow() || req.GetClearShadow(), Clear: req.GetClearShadow()}
	switch {
	case req.GetClearShadow() && req.GetSource() != "":
		return nil, connect.NewError(connect.CodeInvalidArgument, "clear_shadow removes the shadow policy: send no source with it")
	case req.GetClearShadow():
	case len(req.GetSource()) > maxPolicyBytes:
		return nil, connect.Errorf(connect.CodeInvalidArgument,
			"the policy is %d bytes, over the %d byte limit of policy apply; start the kernels with --policy FILE for larger ones", len(req.GetSource()), maxPolicyBytes)
	default:
		p, err := policy.Parse(name, []byte(req.GetSource()))
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err.Error())
		}
		res.Hash, apply.Hash = p.Hash(), p.Hash()
	}
	if err := g.store.SavePolicy(ctx, apply.GetShadow(), name, req.GetSource()); err != nil {
		g.log.Error("store policy", "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable; the policy was not applied, try again")
	}
	gctx, cancel := context.WithTimeout(ctx, applyWindow)
	defer cancel()
	replies, err := g.bus.Gather(gctx, bus.SubjectPolicyApply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyApply{PolicyApply: apply}})
	if err != nil {
		g.log.Error("ask kernels to load the policy", "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the policy is stored, but the bus is unavailable: running kernels did not load it; apply again")
	}
	var failed []string
	for _, r := range replies {
		if pr := r.GetPolicyReply(); pr != nil {
			st := pr.GetStatus()
			if st == nil {
				st = &cortexv1.PolicyStatus{KernelId: "unknown"}
			}
			if pr.GetError() != "" {
				st.LastError = pr.GetError()
				failed = append(failed, fmt.Sprintf("%s: %s", st.GetKernelId(), pr.GetError()))
			}
			res.Kernels = append(res.Kernels, st)
		}
	}
	if len(failed) > 0 {
		return nil, connect.Errorf(connect.CodeAborted, "%d of %d kernels did not load the policy: %v", len(failed), len(res.Kernels), failed)
	}
	return res, nil
}

// ExplainDecision explains how the policies decide a described job.
func (g *Gateway) ExplainDecision(ctx context.Context, req *cortexv1.ExplainDecisionRequest) (*cortexv1.ExplainDecisionResponse, error) {
	if !bus.ValidTopic(req.GetTopic()) {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "topic %.80q is not valid: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo", req.GetTopic())
	}
	if len(req.GetPrompt()) > maxExplainPrompt || !utf8.ValidString(req.GetPrompt()) {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "explain takes a UTF-8 prompt of at most %d bytes", maxExplainPrompt)
	}
	if err := validateLabels(req.GetLabels()); err != nil {
		return nil, err
	}
	r, err := g.askKernel(ctx, &cortexv1.PolicyQuery{
		Prompt: req.GetPrompt(),
		Explain: &cortexv1.CheckRequest{
			JobId: "explain", Topic: req.GetTopic(), TenantId: tenantFrom(ctx), Labels: req.GetLabels(),
			Priority: req.GetPriority(), Attempt: max(req.GetAttempt(), 1), PromptSize: uint64(len(req.GetPrompt())),
		},
	})
	if err != nil {
		return nil, err
	}
	return &cortexv1.ExplainDecisionResponse{
		Decision: r.GetDecision(), Explanation: r.GetExplanation(), Shadow: r.GetShadow(), ShadowExplanation: r.GetShadowExplanation(),
	}, nil
}

// StreamDecisions streams safety decisions: the caller's tenant's, or
// every tenant's for an admin key.
func (g *Gateway) StreamDecisions(ctx context.Context, req *cortexv1.StreamDecisionsRequest, stream cortexv1connect.GatewayServiceStreamDecisionsServerStream) error {
	if req.GetTopic() != "" && !validTopicFilter(req.GetTopic()) {
		return connect.Errorf(connect.CodeInvalidArgument, "topic filter %.80q is not valid: use a topic such as job.echo, or a prefix such as job.*", req.GetTopic())
	}
	for _, d := range req.GetDecisions() {
		if _, ok := cortexv1.Decision_name[int32(d)]; !ok || d == cortexv1.Decision_DECISION_UNSPECIFIED {
			return connect.Errorf(connect.CodeInvalidArgument, "decision %v is not a decision: use ALLOW, DENY or REQUIRE_APPROVAL", d)
		}
	}
	window, err := batchWindow(req.GetBatchWindow())
	if err != nil {
		return err
	}
	p := principalFrom(ctx)
	w := &watcher[*cortexv1.SafetyDecisionEvent]{
		tenant: p.Tenant,
		match: func(ev *cortexv1.SafetyDecisionEvent) bool {
			if len(req.GetDecisions()) > 0 && !slices.Contains(req.GetDecisions(), ev.GetVerdict().GetDecision()) {
				return false
			}
			return req.GetTopic() == "" || store.TopicMatches(req.GetTopic(), ev.GetTopic())
		},
		ch: make(chan *cortexv1.SafetyDecisionEvent, watcherBuffer),
	}
	if p.Admin {
		w.tenant = ""
	}
	return follow(ctx, g, g.decisions, w, stream.SendHeaders, window, func(evs []*cortexv1.SafetyDecisionEvent, dropped uint64, gap bool) error {
		if window == 0 && len(evs) == 1 {
			return stream.Send(&cortexv1.StreamDecisionsResponse{Event: evs[0], Dropped: dropped, BusGap: gap})
		}
		return stream.Send(&cortexv1.StreamDecisionsResponse{Events: evs, Dropped: dropped, BusGap: gap})
	})
}
