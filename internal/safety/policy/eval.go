package policy

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/interpreter"
)

// Evaluate decides one attempt of a job. Rules are tried in order and the
// first whose `when` is true decides; a THROTTLE rule allows the job while
// its (rule, tenant, topic) bucket has a token and denies it when the rate
// is exceeded. If no rule matches, the policy's default decides. A rule
// whose expression errors or exceeds CostLimit denies the job, naming the
// rule (fail closed); so does a nil Policy. Evaluate is safe for concurrent
// use; it never returns Throttle.
func (p *Policy) Evaluate(in Input) Decision {
	if p == nil {
		return Decision{Decision: Deny, Rule: DefaultRuleName, Reason: "no policy is loaded; denying (fail closed)"}
	}
	now := in.Now
	if now.IsZero() {
		now = time.Now()
	}
	act := newActivation(&in, now)
	for _, r := range p.rules {
		matched, err := r.eval(act)
		if err != nil {
			return p.failClosed(r, err, in.Prompt)
		}
		if matched {
			return p.decide(r, &in, now, true)
		}
	}
	return p.dflt
}

// decide returns rule r's decision for in; take says whether a THROTTLE
// rule consumes a token (Explain does not).
func (p *Policy) decide(r *rule, in *Input, now time.Time, take bool) Decision {
	d := Decision{Decision: r.decision, Rule: r.name, Reason: r.reason, PolicyHash: p.hash}
	if r.decision != Throttle {
		return d
	}
	switch p.limiter.allow(r, in.Tenant, in.Topic, now, take) {
	case allowed:
		d.Decision, d.Reason = Allow, r.allowReason
	case overRate:
		d.Decision = Deny
		d.Reason = fmt.Sprintf("%s for tenant %q on topic %q: %s", r.exceeded, in.Tenant, in.Topic, r.reason)
	case tableFull:
		d.Decision = Deny
		d.Reason = fmt.Sprintf("throttle state is full (%d buckets in use); denying (fail closed): %s", p.limiter.max, r.reason)
	}
	return d
}

// failClosed is the decision when rule r could not be evaluated.
func (p *Policy) failClosed(r *rule, err error, prompt string) Decision {
	what := "failed to evaluate"
	if isCostLimit(err) {
		what = fmt.Sprintf("exceeded the CEL cost limit of %d", CostLimit)
	} else if msg := errorText(err, prompt); msg != "" {
		what += ": " + msg
	}
	return Decision{
		Decision:   Deny,
		Rule:       r.name,
		Reason:     fmt.Sprintf("rule %q %s; denying (fail closed)", r.name, what),
		PolicyHash: p.hash,
	}
}

func isCostLimit(err error) bool {
	return strings.Contains(err.Error(), "cost limit exceeded")
}

// errorText returns err's message unless it might quote the prompt.
func errorText(err error, prompt string) string {
	msg := err.Error()
	if len(prompt) >= 4 && strings.Contains(msg, prompt[:min(len(prompt), 16)]) {
		return "(message withheld: it quotes the prompt)"
	}
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg
}

// eval runs r's expression.
func (r *rule) eval(act *activation) (matched bool, err error) {
	defer func() {
		if v := recover(); v != nil {
			matched, err = false, fmt.Errorf("internal error: %v", v)
		}
	}()
	out, _, err := r.prg.Eval(act)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, errors.New("expression did not return a bool")
	}
	return bool(b), nil
}

// activation supplies the CEL variables of one Input, converting each only
// when an expression reads it.
type activation struct {
	in     *Input
	now    time.Time
	labels ref.Val
}

var _ interpreter.Activation = (*activation)(nil)

func newActivation(in *Input, now time.Time) *activation {
	return &activation{in: in, now: now}
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "topic":
		return types.String(a.in.Topic), true
	case "tenant":
		return types.String(a.in.Tenant), true
	case "labels":
		if a.labels == nil {
			a.labels = types.NewStringStringMap(types.DefaultTypeAdapter, a.in.Labels)
		}
		return a.labels, true
	case "priority":
		return types.Int(a.in.Priority), true
	case "attempt":
		return types.Int(a.in.Attempt), true
	case "prompt_size":
		size := max(a.in.PromptSize, uint64(len(a.in.Prompt)))
		return types.Int(min(size, math.MaxInt64)), true
	case "prompt":
		return types.String(a.in.Prompt), true
	case "now":
		return types.Timestamp{Time: a.now}, true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

// Explanation is what `cortexctl policy explain` shows: every rule in
// order, whether it matched, and which one decided. It never includes the
// prompt.
type Explanation struct {
	Policy     string   `json:"policy"`
	Source     string   `json:"source"`
	PolicyHash string   `json:"policy_hash"`
	JobID      string   `json:"job_id,omitempty"`
	Decision   Decision `json:"decision"`
	// Rules has one entry per rule, in order. Rules after the deciding one
	// are evaluated too, to show what they would have done.
	Rules []RuleTrace `json:"rules"`
	// DefaultUsed says no rule decided and the default did.
	DefaultUsed bool `json:"default_used"`
	// CredentialKinds lists the kinds of credential in the prompt.
	CredentialKinds []string `json:"credential_kinds,omitempty"`
}

// RuleTrace is one rule in an Explanation.
type RuleTrace struct {
	Name     string `json:"name"`
	Line     int    `json:"line"`
	When     string `json:"when"`
	Decision Kind   `json:"decision"`
	Matched  bool   `json:"matched"`
	// Error is why the expression could not be evaluated; such a rule
	// denies if it is reached.
	Error string `json:"error,omitempty"`
	// Decided marks the rule that made the decision.
	Decided bool `json:"decided"`
	// Note is extra detail, such as the throttle state.
	Note string `json:"note,omitempty"`
}

// Explain evaluates every rule for in and reports each one. Its Decision is
// the one Evaluate would return, except that THROTTLE rules only look at
// their bucket and take no token, so explaining does not use up a rate.
func (p *Policy) Explain(in Input) Explanation {
	if p == nil {
		return Explanation{Decision: (*Policy)(nil).Evaluate(in), DefaultUsed: true}
	}
	now := in.Now
	if now.IsZero() {
		now = time.Now()
	}
	e := Explanation{
		Policy:     p.name,
		Source:     p.source,
		PolicyHash: p.hash,
		JobID:      in.JobID,
		Rules:      make([]RuleTrace, 0, len(p.rules)),
	}
	if in.Prompt != "" {
		e.CredentialKinds = CredentialKinds(in.Prompt)
	}
	act := newActivation(&in, now)
	decided := false
	for _, r := range p.rules {
		t := RuleTrace{Name: r.name, Line: r.line, When: r.when, Decision: r.decision}
		matched, err := r.eval(act)
		switch {
		case err != nil:
			if isCostLimit(err) {
				t.Error = fmt.Sprintf("exceeded the CEL cost limit of %d", CostLimit)
			} else {
				t.Error = errorText(err, in.Prompt)
			}
			if !decided {
				e.Decision, t.Decided, decided = p.failClosed(r, err, in.Prompt), true, true
			}
		case matched:
			t.Matched = true
			d := p.decide(r, &in, now, false)
			if r.decision == Throttle {
				t.Note = d.Reason
				if d.Decision == Allow {
					t.Note = p.limiter.describe(r, in.Tenant, in.Topic, now)
				}
			}
			if !decided {
				e.Decision, t.Decided, decided = d, true, true
			}
		}
		e.Rules = append(e.Rules, t)
	}
	if !decided {
		e.Decision, e.DefaultUsed = p.dflt, true
	}
	return e
}

// String renders e as text, one line per rule.
func (e Explanation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s (%s, %s)\n", e.Policy, e.Source, e.PolicyHash)
	decided := false
	for _, t := range e.Rules {
		mark := "  "
		if t.Decided {
			mark = "=>"
		}
		state := "no match"
		switch {
		case t.Error != "":
			state = "error: " + t.Error
		case t.Matched && decided:
			state = "match (not reached: an earlier rule decided)"
		case t.Matched:
			state = "match"
		}
		decided = decided || t.Decided
		fmt.Fprintf(&b, "%s %-24s line %-4d %-16s %s\n", mark, t.Name, t.Line, t.Decision, state)
		if t.Note != "" {
			fmt.Fprintf(&b, "   %s\n", t.Note)
		}
	}
	if e.DefaultUsed {
		fmt.Fprintf(&b, "=> %-24s %-9s %-16s no rule matched\n", DefaultRuleName, "", e.Decision.Decision)
	}
	if len(e.CredentialKinds) > 0 {
		fmt.Fprintf(&b, "credentials in prompt: %s\n", strings.Join(e.CredentialKinds, ", "))
	}
	fmt.Fprintf(&b, "decision: %s (rule %s): %s\n", e.Decision.Decision, e.Decision.Rule, e.Decision.Reason)
	return b.String()
}
