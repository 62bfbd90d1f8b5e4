// Package safety is the safety kernel: it holds the enforced policy and an
// optional shadow policy (internal/safety/policy compiles and evaluates
// them), answers checks over the bus, publishes every decision on
// sys.safety.decision, reloads policies from a file, on demand and when an
// operator applies one across the cluster; and the fail-closed client the
// scheduler asks through. It never records job state or runs jobs.
package safety

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Inputs reads jobs' prompts, for policies whose rules look at their text:
// one job's, or the prompts of a batch of checks in one go (prompts[i]
// and errs[i] are those of ids[i]).
type Inputs interface {
	Input(ctx context.Context, id string) (string, error)
	InputBatch(ctx context.Context, ids []string) (prompts []string, errs []error)
}

// PolicyStore holds the policies an operator applied to the cluster.
type PolicyStore interface {
	LoadPolicy(ctx context.Context, shadow bool) (name, source string, err error)
}

// Origins of a loaded policy, as PolicyInfo.origin says.
const (
	OriginBuiltin = "builtin"
	OriginApplied = "applied"
	originFile    = "file "
)

// inputTimeout bounds the read of one prompt, so a slow store cannot pile
// checks up in the kernel long after their clients have given up.
const inputTimeout = time.Second

// loaded is a compiled policy with what is shown about it.
type loaded struct {
	policy *policy.Policy
	info   *cortexv1.PolicyInfo
}

func newLoaded(p *policy.Policy, origin, source string) *loaded {
	return &loaded{policy: p, info: &cortexv1.PolicyInfo{
		Name: p.Name(), Hash: p.Hash(), Origin: origin, Source: source, LoadedAt: timestamppb.Now(),
	}}
}

// Kernel decides. It is safe for concurrent use; policies are swapped
// atomically, so a check sees one whole policy.
type Kernel struct {
	id      string
	inputs  Inputs
	log     *slog.Logger
	active  atomic.Pointer[loaded]
	shadow  atomic.Pointer[loaded]
	lastErr atomic.Pointer[string]
	metrics *telemetry.Metrics
	// Counters of Status: checks decided, and how the shadow compared.
	checks, shadowChecks, shadowDisagreed atomic.Uint64
	// events publishes decisions; unset until Start.
	events atomic.Pointer[func(trace string, evs []*cortexv1.SafetyDecisionEvent)]
	now    func() time.Time
	mu     sync.Mutex // serialises reloads
	// fileText holds what was last read from each policy file, so a file
	// is reloaded when it changes, not whenever it differs from a policy
	// an operator applied since.
	fileText map[string]string
}

// NewKernel returns a kernel enforcing the built-in default policy until
// told otherwise. inputs may be nil when no policy reads prompt text.
// SetMetrics makes the kernel count its decisions and their latency in m.
// Call it before Start.
func (k *Kernel) SetMetrics(m *telemetry.Metrics) { k.metrics = m }

func NewKernel(id string, inputs Inputs, log *slog.Logger) *Kernel {
	k := &Kernel{id: id, inputs: inputs, log: log, now: time.Now, fileText: map[string]string{}}
	k.active.Store(newLoaded(policy.Default(), OriginBuiltin, string(policy.DefaultYAML())))
	return k
}

// ID names the kernel instance.
func (k *Kernel) ID() string { return k.id }

// Use puts p in force (or in the shadow, with shadow set; nil removes the
// shadow policy). A nil active policy is refused: there is no implicit
// allow, and no implicit nothing.
func (k *Kernel) Use(p *policy.Policy, origin, source string, shadow bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if p == nil && !shadow {
		k.log.Error("refused to remove the enforced policy; it stays in force")
		return
	}
	k.use(p, origin, source, shadow)
}

func (k *Kernel) use(p *policy.Policy, origin, source string, shadow bool) {
	if shadow && p == nil {
		k.shadow.Store(nil)
		k.log.Info("shadow policy removed")
		return
	}
	// Its THROTTLE rules go on where the active policy's identical ones
	// stand: a reload lets no new burst through, and a shadow does not
	// disagree with them for one.
	if a := k.active.Load(); a != nil {
		p.Inherit(a.policy)
	}
	if shadow {
		k.shadow.Store(newLoaded(p, origin, source))
	} else {
		k.active.Store(newLoaded(p, origin, source))
	}
	k.lastErr.Store(nil)
	k.log.Info("policy loaded", "shadow", shadow, "policy", p.Name(), "hash", p.Hash(), "origin", origin)
}

// LoadFile reads, compiles and puts in force the policy at path. A file
// that does not compile changes nothing: the error (with file:line) is
// returned and kept for Status.
func (k *Kernel) LoadFile(path string, shadow bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	data, err := os.ReadFile(path)
	if err != nil {
		err = fmt.Errorf("read policy %s: %w", path, err)
		k.refused(err)
		return err
	}
	k.fileText[path] = string(data)
	p, err := policy.Parse(path, data)
	if err != nil {
		k.refused(err)
		return err
	}
	k.use(p, originFile+path, string(data), shadow)
	return nil
}

// LoadStored puts in force the policy an operator applied (see
// PolicyStore), if there is one. It reports whether one was loaded.
func (k *Kernel) LoadStored(ctx context.Context, st PolicyStore, shadow bool) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	name, src, err := st.LoadPolicy(ctx, shadow)
	if err != nil {
		k.refused(err)
		return false, err
	}
	if src == "" {
		return false, nil
	}
	if name == "" {
		name = "applied.yaml"
	}
	p, err := policy.Parse(name, []byte(src))
	if err != nil {
		k.refused(err)
		return false, err
	}
	k.use(p, OriginApplied, src, shadow)
	return true, nil
}

// shown is info as Status reports it: without the text of a long policy.
func shown(info *cortexv1.PolicyInfo) *cortexv1.PolicyInfo {
	if len(info.GetSource()) <= maxSourceInStatus {
		return info
	}
	c := proto.Clone(info).(*cortexv1.PolicyInfo)
	c.Source = fmt.Sprintf("# the policy text is %d bytes, too long to send over the bus; read it where it came from (%s)\n", len(info.GetSource()), info.GetOrigin())
	return c
}

func (k *Kernel) refused(err error) {
	msg := err.Error()
	k.lastErr.Store(&msg)
	k.log.Error("policy refused; the policy in force stays", "err", err)
}

// maxSourceInStatus bounds the policy text Status carries, so a status fits
// in one bus packet; a longer file is named, not sent.
const maxSourceInStatus = 24 << 10

// Status reports the policies in force.
func (k *Kernel) Status() *cortexv1.PolicyStatus {
	st := &cortexv1.PolicyStatus{KernelId: k.id, Active: shown(k.active.Load().info)}
	if sh := k.shadow.Load(); sh != nil {
		st.Shadow = shown(sh.info)
	}
	if e := k.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	st.Checks, st.ShadowChecks, st.ShadowDisagreements = k.checks.Load(), k.shadowChecks.Load(), k.shadowDisagreed.Load()
	return st
}

// Check decides one attempt of a job, and publishes the decision.
func (k *Kernel) Check(ctx context.Context, r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	return k.CheckBatch(ctx, []*cortexv1.CheckRequest{r})[0], nil
}

// CheckBatch decides several attempts under one policy, reading the prompts
// they need in one go, and publishes the decisions together: the answer i
// is that of rs[i].
func (k *Kernel) CheckBatch(ctx context.Context, rs []*cortexv1.CheckRequest) []*cortexv1.CheckResponse {
	start := time.Now()
	active, shadow := k.active.Load(), k.shadow.Load()
	ins, errs := k.inputsOf(ctx, rs, active, shadow)
	resps := make([]*cortexv1.CheckResponse, len(rs))
	events := make([]*cortexv1.SafetyDecisionEvent, len(rs))
	publish := k.events.Load()
	for i, r := range rs {
		resp := &cortexv1.CheckResponse{}
		if errs[i] != nil {
			resp.Decision, resp.Rule, resp.PolicyVersion = cortexv1.Decision_DECISION_DENY, bus.RuleFailClosed, active.policy.Hash()
			resp.Reason = "the safety kernel could not read the prompt: " + errs[i].Error()
		} else {
			v := decide(active.policy, ins[i], approvedRule(r))
			resp.Decision, resp.Rule, resp.Reason, resp.PolicyVersion = v.Decision, v.Rule, v.Reason, v.PolicyVersion
			if shadow != nil {
				resp.Shadow = decide(shadow.policy, ins[i], approvedRule(r))
				k.shadowChecks.Add(1)
				if resp.Shadow.GetDecision() != resp.GetDecision() {
					k.shadowDisagreed.Add(1)
				}
			}
		}
		resps[i] = resp
		k.checks.Add(1)
		took := time.Since(start)
		k.metrics.Decided(strings.TrimPrefix(resp.GetDecision().String(), "DECISION_"), resp.GetRule(), took)
		if publish == nil {
			continue
		}
		k.log.Debug("safety decision", "trace_id", bus.TraceFrom(ctx, r.GetJobId()), "job_id", r.GetJobId(), "decision", resp.GetDecision().String(), "rule", resp.GetRule())
		events[i] = decisionEvent(r, resp, start, took, k.id)
	}
	if publish != nil && len(rs) > 0 {
		(*publish)(bus.TraceFrom(ctx, rs[0].GetJobId()), events)
	}
	return resps
}

// decisionEvent is what sys.safety.decision says of the decision resp on
// the check r, made from start in took by kernel.
func decisionEvent(r *cortexv1.CheckRequest, resp *cortexv1.CheckResponse, start time.Time, took time.Duration, kernel string) *cortexv1.SafetyDecisionEvent {
	return &cortexv1.SafetyDecisionEvent{
		JobId:    r.GetJobId(),
		TenantId: r.GetTenantId(),
		Topic:    r.GetTopic(),
		Attempt:  r.GetAttempt(),
		Verdict: &cortexv1.SafetyVerdict{Decision: resp.GetDecision(), Rule: resp.GetRule(),
			Reason: resp.GetReason(), PolicyVersion: resp.GetPolicyVersion()},
		Shadow:    resp.GetShadow(),
		Latency:   durationpb.New(took),
		DecidedAt: timestamppb.New(start),
		KernelId:  kernel,
	}
}

// inputsOf is what the policies see of each request, or why it cannot be
// known; prompts are read from the store only when a rule looks at their
// text, all those of the batch in one go.
func (k *Kernel) inputsOf(ctx context.Context, rs []*cortexv1.CheckRequest, active, shadow *loaded) ([]policy.Input, []error) {
	ins, errs := make([]policy.Input, len(rs)), make([]error, len(rs))
	needs := active.policy.NeedsPrompt() || shadow != nil && shadow.policy.NeedsPrompt()
	now := k.now()
	var ids []string
	var read []int // indexes of rs whose prompt is read
	for i, r := range rs {
		ins[i] = policy.Input{
			JobID:      r.GetJobId(),
			Topic:      r.GetTopic(),
			Tenant:     r.GetTenantId(),
			Labels:     r.GetLabels(),
			Priority:   r.GetPriority(),
			Attempt:    r.GetAttempt(),
			PromptSize: r.GetPromptSize(),
			Now:        now,
		}
		if needs && r.GetPromptSize() > 0 {
			ids, read = append(ids, r.GetJobId()), append(read, i)
		}
	}
	if len(ids) == 0 {
		return ins, errs
	}
	if k.inputs == nil {
		err := errors.New("this kernel has no job store to read prompts from (start it with --redis-url)")
		for _, i := range read {
			errs[i] = err
		}
		return ins, errs
	}
	ctx, cancel := context.WithTimeout(ctx, inputTimeout)
	defer cancel()
	var prompts []string
	var perr []error
	if len(ids) == 1 {
		prompt, err := k.inputs.Input(ctx, ids[0])
		prompts, perr = []string{prompt}, []error{err}
	} else {
		prompts, perr = k.inputs.InputBatch(ctx, ids)
		if len(prompts) != len(ids) || len(perr) != len(ids) {
			err := fmt.Errorf("the job store returned %d prompts and %d errors for %d jobs", len(prompts), len(perr), len(ids))
			for _, i := range read {
				errs[i] = err
			}
			return ins, errs
		}
	}
	for j, i := range read {
		if perr[j] != nil {
			errs[i] = perr[j]
			continue
		}
		// A binary payload is read as text too, with invalid UTF-8
		// replaced, so one stray byte cannot hide a credential from the
		// rules.
		ins[i].Prompt = strings.ToValidUTF8(prompts[j], "\uFFFD")
	}
	return ins, errs
}

// approvedRule is the REQUIRE_APPROVAL rule a person approved this attempt
// under, "" for none.
func approvedRule(r *cortexv1.CheckRequest) string {
	if !r.GetApproved() {
		return ""
	}
	return r.GetApprovedRule()
}

// decide evaluates p. A person's approval turns REQUIRE_APPROVAL into
// ALLOW when the rule holding the job is the one approved; it changes no
// other decision.
func decide(p *policy.Policy, in policy.Input, approved string) *cortexv1.SafetyVerdict {
	v := verdictOf(p.Evaluate(in))
	if approved != "" && v.Decision == cortexv1.Decision_DECISION_REQUIRE_APPROVAL && v.Rule == approved {
		v.Decision = cortexv1.Decision_DECISION_ALLOW
		v.Reason = "approved by a person: " + v.Reason
	}
	return v
}

// Explain says how the active and shadow policies decide a job like r, on
// prompt, without publishing anything.
func (k *Kernel) Explain(r *cortexv1.CheckRequest, prompt string) *cortexv1.PolicyReply {
	in := policy.Input{
		JobID: r.GetJobId(), Topic: r.GetTopic(), Tenant: r.GetTenantId(), Labels: r.GetLabels(),
		Priority: r.GetPriority(), Attempt: max(r.GetAttempt(), 1), PromptSize: uint64(len(prompt)), Prompt: prompt, Now: k.now(),
	}
	active, shadow := k.active.Load(), k.shadow.Load()
	ex := active.policy.Explain(in)
	reply := &cortexv1.PolicyReply{Status: k.Status(), Decision: verdictOf(ex.Decision), Explanation: ex.String()}
	if shadow != nil {
		ex = shadow.policy.Explain(in)
		reply.Shadow, reply.ShadowExplanation = verdictOf(ex.Decision), ex.String()
	}
	return reply
}

func verdictOf(d policy.Decision) *cortexv1.SafetyVerdict {
	v := &cortexv1.SafetyVerdict{Rule: d.Rule, Reason: d.Reason, PolicyVersion: d.PolicyHash, Decision: cortexv1.Decision_DECISION_DENY}
	switch d.Decision {
	case policy.Allow:
		v.Decision = cortexv1.Decision_DECISION_ALLOW
	case policy.RequireApproval:
		v.Decision = cortexv1.Decision_DECISION_REQUIRE_APPROVAL
	}
	return v
}

// checkConcurrency bounds the checks and batches of checks a kernel
// decides at once: a batch holds up to a few hundred checks (and reads
// their prompts), so a few dozen of them keep the cores busy while some
// wait for the store, without piling up work whose clients gave up.
const checkConcurrency = 32

// replyBudget is what the decisions of a batch may take of a bus packet;
// the rest is for the packet's own fields.
const replyBudget = bus.MaxPacketSize - 1<<10

// decisionPackets carries evs on sys.safety.decision: a lone decision as a
// SafetyDecisionEvent, more as SafetyDecisions, as many as it takes to
// keep each packet within a bus packet's size.
func decisionPackets(trace string, evs []*cortexv1.SafetyDecisionEvent) []*cortexv1.BusPacket {
	if len(evs) == 1 {
		return []*cortexv1.BusPacket{{TraceId: trace, Payload: &cortexv1.BusPacket_SafetyDecision{SafetyDecision: evs[0]}}}
	}
	var out []*cortexv1.BusPacket
	for len(evs) > 0 {
		n, size := 0, 0
		for n < len(evs) {
			if size += proto.Size(evs[n]) + 8; size > replyBudget && n > 0 {
				break
			}
			n++
		}
		out = append(out, &cortexv1.BusPacket{TraceId: trace, Payload: &cortexv1.BusPacket_SafetyDecisions{
			SafetyDecisions: &cortexv1.SafetyDecisions{Events: evs[:n:n]},
		}})
		evs = evs[n:]
	}
	return out
}

// fit shortens the reasons of results, if it must, so that they fit in one
// bus packet; decisions, rules and policy versions are never changed. It
// reports whether it shortened any. (With the client's batches and
// reasons of ordinary length, it never has to.)
func (k *Kernel) fit(results []*cortexv1.CheckResponse) bool {
	size := proto.Size(&cortexv1.CheckBatchResponse{Results: results})
	if size <= replyBudget {
		return false
	}
	for limit := 512; size > replyBudget && limit >= 16; limit /= 2 {
		for _, r := range results {
			r.Reason = shorten(r.GetReason(), limit)
			if sh := r.GetShadow(); sh != nil && len(sh.GetReason()) > limit {
				// The shadow verdict is shared with the published event.
				sh = proto.Clone(sh).(*cortexv1.SafetyVerdict)
				sh.Reason = shorten(sh.GetReason(), limit)
				r.Shadow = sh
			}
		}
		size = proto.Size(&cortexv1.CheckBatchResponse{Results: results})
	}
	return true
}

// shorten cuts s to at most limit bytes, on a rune boundary, marking the
// cut.
func shorten(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const mark = "…"
	cut := limit - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// Start answers checks, policy queries and policy applies on the bus until
// conn is closed, and publishes every decision on sys.safety.decision. It
// returns once the subscriptions are in place. st is where applied
// policies are kept.
func (k *Kernel) Start(ctx context.Context, conn *bus.Conn, st PolicyStore) error {
	publish := func(trace string, evs []*cortexv1.SafetyDecisionEvent) {
		for _, p := range decisionPackets(trace, evs) {
			if err := conn.Publish(bus.SubjectSafetyDecision, p); err != nil {
				k.log.Warn("publish safety decisions", "trace_id", trace, "job_id", evs[0].GetJobId(), "decisions", len(evs), "err", err)
			}
		}
	}
	k.events.Store(&publish)
	hctx := context.WithoutCancel(ctx)
	answer := func(p *cortexv1.BusPacket, reply string, out *cortexv1.BusPacket) {
		out.TraceId = p.GetTraceId()
		if err := conn.Publish(reply, out); err != nil {
			k.log.Error("answer on the bus", "err", err)
		}
	}
	query := func(_ context.Context, p *cortexv1.BusPacket, reply string) error {
		q := p.GetPolicyQuery()
		if q == nil || reply == "" {
			return bus.WrongPayload(p, "a policy query with a reply subject")
		}
		r := &cortexv1.PolicyReply{Status: k.Status()}
		if q.GetExplain() != nil {
			r = k.Explain(q.GetExplain(), q.GetPrompt())
		}
		answer(p, reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyReply{PolicyReply: r}})
		return nil
	}
	subs := []struct {
		subject, queue string
		h              bus.Handler
	}{
		{bus.SubjectSafetyCheck, bus.QueueSafety, func(ctx context.Context, p *cortexv1.BusPacket, reply string) error {
			ctx = bus.WithTrace(ctx, p.GetTraceId())
			switch {
			case reply == "":
			case p.GetCheckRequest() != nil:
				resp, _ := k.Check(ctx, p.GetCheckRequest())
				answer(p, reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: resp}})
				return nil
			case p.GetCheckBatch() != nil:
				results := k.CheckBatch(ctx, p.GetCheckBatch().GetChecks())
				if k.fit(results) {
					k.log.Warn("the decisions of a batch were too long for one bus packet; their reasons were shortened", "checks", len(results))
				}
				answer(p, reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckBatchResponse{CheckBatchResponse: &cortexv1.CheckBatchResponse{Results: results}}})
				return nil
			}
			return bus.WrongPayload(p, "a check request or batch with a reply subject")
		}},
		{bus.SubjectPolicyQuery, bus.QueueSafety, query},
		{bus.SubjectPolicyStatus, "", query},
		{bus.SubjectPolicyApply, "", func(ctx context.Context, p *cortexv1.BusPacket, reply string) error {
			a := p.GetPolicyApply()
			if a == nil {
				return bus.WrongPayload(p, "a policy apply")
			}
			r := &cortexv1.PolicyReply{}
			if err := k.apply(ctx, st, a); err != nil {
				r.Error = err.Error()
			}
			r.Status = k.Status()
			if reply != "" {
				answer(p, reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyReply{PolicyReply: r}})
			}
			return nil
		}},
	}
	for _, sub := range subs {
		concurrency := 64
		if sub.subject == bus.SubjectSafetyCheck {
			concurrency = checkConcurrency
		}
		if _, err := conn.Subscribe(hctx, sub.subject, sub.queue, concurrency, sub.h); err != nil {
			return fmt.Errorf("safety kernel: %w", err)
		}
	}
	if err := conn.Flush(ctx); err != nil {
		return fmt.Errorf("safety kernel: %w", err)
	}
	return nil
}

// apply loads the policy an operator applied.
func (k *Kernel) apply(ctx context.Context, st PolicyStore, a *cortexv1.PolicyApply) error {
	if a.GetClear() {
		k.Use(nil, "", "", true)
		return nil
	}
	if st == nil {
		return errors.New("this kernel has no job store to read applied policies from (start it with --redis-url)")
	}
	ok, err := k.LoadStored(ctx, st, a.GetShadow())
	switch {
	case err != nil:
		return err
	case !ok:
		return errors.New("no applied policy is stored")
	}
	cur := k.active.Load()
	if a.GetShadow() {
		cur = k.shadow.Load()
	}
	if h := a.GetHash(); h != "" && cur != nil && cur.info.GetHash() != h {
		return fmt.Errorf("loaded policy %s, not %s: another apply came in between", cur.info.GetHash(), h)
	}
	return nil
}
