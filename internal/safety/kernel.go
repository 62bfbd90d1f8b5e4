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

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Inputs reads a job's prompt, for policies whose rules look at its text.
type Inputs interface {
	Input(ctx context.Context, id string) (string, error)
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
	events atomic.Pointer[func(trace string, ev *cortexv1.SafetyDecisionEvent)]
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
	switch {
	case shadow && p == nil:
		k.shadow.Store(nil)
		k.log.Info("shadow policy removed")
		return
	case shadow:
		k.shadow.Store(newLoaded(p, origin, source))
	default:
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
	start := time.Now()
	active, shadow := k.active.Load(), k.shadow.Load()
	resp := &cortexv1.CheckResponse{}
	in, err := k.input(ctx, r, active, shadow)
	if err != nil {
		resp.Decision, resp.Rule, resp.PolicyVersion = cortexv1.Decision_DECISION_DENY, bus.RuleFailClosed, active.policy.Hash()
		resp.Reason = "the safety kernel could not read the prompt: " + err.Error()
	} else {
		v := decide(active.policy, in, approvedRule(r))
		resp.Decision, resp.Rule, resp.Reason, resp.PolicyVersion = v.Decision, v.Rule, v.Reason, v.PolicyVersion
		if shadow != nil {
			resp.Shadow = decide(shadow.policy, in, approvedRule(r))
			k.shadowChecks.Add(1)
			if resp.Shadow.GetDecision() != resp.GetDecision() {
				k.shadowDisagreed.Add(1)
			}
		}
	}
	k.checks.Add(1)
	k.metrics.Decided(strings.TrimPrefix(resp.GetDecision().String(), "DECISION_"), resp.GetRule(), time.Since(start))
	if publish := k.events.Load(); publish != nil {
		trace := bus.TraceFrom(ctx, r.GetJobId())
		k.log.Debug("safety decision", "trace_id", trace, "job_id", r.GetJobId(), "decision", resp.GetDecision().String(), "rule", resp.GetRule())
		(*publish)(trace, &cortexv1.SafetyDecisionEvent{
			JobId:    r.GetJobId(),
			TenantId: r.GetTenantId(),
			Topic:    r.GetTopic(),
			Attempt:  r.GetAttempt(),
			Verdict: &cortexv1.SafetyVerdict{Decision: resp.GetDecision(), Rule: resp.GetRule(),
				Reason: resp.GetReason(), PolicyVersion: resp.GetPolicyVersion()},
			Shadow:    resp.GetShadow(),
			Latency:   durationpb.New(time.Since(start)),
			DecidedAt: timestamppb.New(start),
			KernelId:  k.id,
		})
	}
	return resp, nil
}

// input is what the policies see of the request; the prompt is read from
// the store only when a rule looks at its text.
func (k *Kernel) input(ctx context.Context, r *cortexv1.CheckRequest, active, shadow *loaded) (policy.Input, error) {
	in := policy.Input{
		JobID:      r.GetJobId(),
		Topic:      r.GetTopic(),
		Tenant:     r.GetTenantId(),
		Labels:     r.GetLabels(),
		Priority:   r.GetPriority(),
		Attempt:    r.GetAttempt(),
		PromptSize: r.GetPromptSize(),
		Now:        k.now(),
	}
	needs := active.policy.NeedsPrompt() || shadow != nil && shadow.policy.NeedsPrompt()
	if !needs || r.GetPromptSize() == 0 {
		return in, nil
	}
	if k.inputs == nil {
		return in, errors.New("this kernel has no job store to read prompts from (start it with --redis-url)")
	}
	ctx, cancel := context.WithTimeout(ctx, inputTimeout)
	defer cancel()
	prompt, err := k.inputs.Input(ctx, r.GetJobId())
	if err != nil {
		return in, err
	}
	// A binary payload is read as text too, with invalid UTF-8 replaced, so
	// one stray byte cannot hide a credential from the rules.
	in.Prompt = strings.ToValidUTF8(prompt, "\uFFFD")
	return in, nil
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

// Start answers checks, policy queries and policy applies on the bus until
// conn is closed, and publishes every decision on sys.safety.decision. It
// returns once the subscriptions are in place. st is where applied
// policies are kept.
func (k *Kernel) Start(ctx context.Context, conn *bus.Conn, st PolicyStore) error {
	publish := func(trace string, ev *cortexv1.SafetyDecisionEvent) {
		err := conn.Publish(bus.SubjectSafetyDecision, &cortexv1.BusPacket{
			TraceId: trace,
			Payload: &cortexv1.BusPacket_SafetyDecision{SafetyDecision: ev},
		})
		if err != nil {
			k.log.Warn("publish safety decision", "trace_id", trace, "job_id", ev.GetJobId(), "err", err)
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
			req := p.GetCheckRequest()
			if req == nil || reply == "" {
				return bus.WrongPayload(p, "a check request with a reply subject")
			}
			resp, _ := k.Check(bus.WithTrace(ctx, p.GetTraceId()), req)
			answer(p, reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: resp}})
			return nil
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
		if _, err := conn.Subscribe(hctx, sub.subject, sub.queue, 64, sub.h); err != nil {
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
