// Package safety owns the safety kernel: the policy that decides whether one
// attempt of a job may run (pure functions), the kernel that serves those
// decisions over NATS request/reply, and the client the scheduler uses,
// which fails closed. It must not touch Redis or dispatch work.
package safety

import (
	"strings"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Rule is one ordered policy rule: the first rule whose Match is true
// decides.
type Rule struct {
	Name     string
	Match    func(*cortexv1.CheckRequest) bool
	Decision cortexv1.Decision
	Reason   string
}

// Policy is an ordered list of rules with a default decision for a job no
// rule matches. There is no implicit allow.
type Policy struct {
	Version string
	Rules   []Rule
	// DefaultRule and DefaultReason describe the deny given when no rule
	// matches.
	DefaultRule   string
	DefaultReason string
}

// BuiltinPolicy is the minimal policy every kernel starts with: sys.destroy
// and every other sys.* topic are denied, job.* topics are allowed, and
// anything else is denied.
func BuiltinPolicy() *Policy {
	return &Policy{
		Version: "builtin/1",
		Rules: []Rule{
			{
				Name:     "deny-sys-destroy",
				Match:    func(r *cortexv1.CheckRequest) bool { return r.GetTopic() == "sys.destroy" },
				Decision: cortexv1.Decision_DECISION_DENY,
				Reason:   "sys.destroy is never run as a job",
			},
			{
				Name:     "deny-sys-topics",
				Match:    func(r *cortexv1.CheckRequest) bool { return strings.HasPrefix(r.GetTopic(), "sys.") },
				Decision: cortexv1.Decision_DECISION_DENY,
				Reason:   "sys.* topics are reserved for the control plane and cannot be submitted as jobs",
			},
			{
				Name:     "allow-jobs",
				Match:    func(r *cortexv1.CheckRequest) bool { return strings.HasPrefix(r.GetTopic(), "job.") },
				Decision: cortexv1.Decision_DECISION_ALLOW,
				Reason:   "job.* topics are allowed",
			},
		},
		DefaultRule:   "default-deny",
		DefaultReason: "no rule allows this topic",
	}
}

// Evaluate decides one request. It is a pure function of the policy and
// the request.
func (p *Policy) Evaluate(r *cortexv1.CheckRequest) *cortexv1.CheckResponse {
	for _, rule := range p.Rules {
		if rule.Match(r) {
			return &cortexv1.CheckResponse{
				Decision:      rule.Decision,
				Rule:          rule.Name,
				Reason:        rule.Reason,
				PolicyVersion: p.Version,
			}
		}
	}
	return &cortexv1.CheckResponse{
		Decision:      cortexv1.Decision_DECISION_DENY,
		Rule:          p.DefaultRule,
		Reason:        p.DefaultReason,
		PolicyVersion: p.Version,
	}
}
