package policy

import (
	"crypto/sha256"
	_ "embed" // for the default policy
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
)

// Kind is a policy decision. The zero Kind is Deny, so a zero Decision
// fails closed.
type Kind uint8

const (
	// Deny refuses the job.
	Deny Kind = iota
	// Allow lets the job run.
	Allow
	// RequireApproval holds the job until a human approves it.
	RequireApproval
	// Throttle is only a rule's decision: the job is allowed while the
	// (rule, tenant, topic) stays within the rule's rate, and denied over
	// it. Evaluate never returns Throttle.
	Throttle
)

var kindNames = [...]string{Deny: "DENY", Allow: "ALLOW", RequireApproval: "REQUIRE_APPROVAL", Throttle: "THROTTLE"}

// String returns the name used in policy files: ALLOW, DENY,
// REQUIRE_APPROVAL or THROTTLE.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// MarshalText encodes k as its name, for JSON and YAML output.
func (k Kind) MarshalText() ([]byte, error) {
	if int(k) >= len(kindNames) {
		return nil, fmt.Errorf("marshal decision: unknown kind %d", uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// ParseKind returns the Kind named s (ALLOW, DENY, REQUIRE_APPROVAL or
// THROTTLE, upper case as in policy files).
func ParseKind(s string) (Kind, error) {
	for k, name := range kindNames {
		if s == name {
			return Kind(k), nil
		}
	}
	return Deny, fmt.Errorf("unknown decision %q: use ALLOW, DENY, REQUIRE_APPROVAL or THROTTLE", s)
}

// Rate is the limit of a THROTTLE rule, kept per (rule, tenant, topic) as a
// token bucket: Burst jobs at once, refilled at PerSecond jobs a second.
type Rate struct {
	PerSecond float64 `json:"per_second"`
	Burst     int     `json:"burst"`
}

// Input is one attempt of a job as the policy sees it. Prompt may be empty
// when the caller does not have the text; credential checks then see no
// credential. The policy never keeps or logs Prompt.
type Input struct {
	JobID      string
	Topic      string
	Tenant     string
	Labels     map[string]string
	Priority   int32
	Attempt    uint32
	PromptSize uint64
	Prompt     string
	// Now is the time of the decision; the zero time means time.Now().
	// THROTTLE buckets use it, so tests can pass fixed times.
	Now time.Time
}

// Decision is the outcome of evaluating one Input.
type Decision struct {
	Decision Kind `json:"decision"`
	// Rule names the rule that decided, or "default".
	Rule string `json:"rule"`
	// Reason is a sentence for the submitter; it never quotes the prompt.
	Reason string `json:"reason"`
	// PolicyHash identifies the policy file (see Policy.Hash).
	PolicyHash string `json:"policy_hash"`
}

// DefaultRuleName is the Rule of a Decision made by the policy's default.
const DefaultRuleName = "default"

// CostLimit is the CEL cost budget of one rule's expression per
// evaluation. A cost unit is roughly one operation (a comparison, a map
// lookup, a comprehension step) or ten bytes of a string that is scanned;
// the typical rule costs under 10. One million is what Kubernetes allows
// per CEL expression: it lets a rule scan a 1 MiB prompt a few times or
// iterate labels hundreds of thousands of times, and caps the CPU a
// pathological rule can take at a few milliseconds. A rule that exceeds it
// errors, and the evaluation denies the job naming that rule.
const CostLimit = 1_000_000

// maxPolicyBytes bounds the size of a policy file.
const maxPolicyBytes = 1 << 20

// Policy is a compiled policy file. It is safe for concurrent use. Its only
// mutable state is the token buckets of its THROTTLE rules, so load a
// policy once and share it.
type Policy struct {
	name    string
	hash    string
	rules   []*rule
	dflt    Decision
	limiter *limiter
	source  string // file name, for explanations
	// dfltLine is the line of the default decision, for Lint.
	dfltLine int
	// needsPrompt says some rule reads the prompt (see NeedsPrompt).
	needsPrompt bool
}

// rule is one compiled rule.
type rule struct {
	index    int
	name     string
	line     int
	when     string
	decision Kind
	reason   string
	rate     Rate
	prg      cel.Program
	// whenLine is the line of the when field; ast is its checked
	// expression, kept for Lint.
	whenLine int
	ast      *cel.Ast
	// usesPrompt says the expression reads the prompt variable.
	usesPrompt bool
	// allowReason and exceeded are the reasons of a THROTTLE rule.
	allowReason string
	exceeded    string
}

// Name returns the policy's name field.
func (p *Policy) Name() string { return p.name }

// Hash identifies the policy file: "sha256:" and the first 12 hex digits of
// the SHA-256 of its bytes. Every Decision carries it.
func (p *Policy) Hash() string { return p.hash }

// Source returns the file name the policy was parsed from.
func (p *Policy) Source() string { return p.source }

// NeedsPrompt reports whether any rule's expression reads the prompt
// variable (has_credentials(prompt), prompt.contains(...)); prompt_size
// does not count. When it is false, Evaluate gives the same decision with
// or without Input.Prompt (given Input.PromptSize), so a caller need not
// fetch the prompt text.
// Every rule counts, even one that an earlier rule shadows, because
// Explain evaluates them all. It is decided from the checked expressions
// when the policy is loaded.
func (p *Policy) NeedsPrompt() bool {
	if p == nil {
		return false
	}
	return p.needsPrompt
}

// NumRules returns the number of rules in the policy.
func (p *Policy) NumRules() int { return len(p.rules) }

// Load reads and parses the policy file at path. Errors in the file are
// reported as `path:line: rule "name": field: problem`.
func Load(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read policy %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read policy %s: %w", path, err)
	}
	return Parse(path, data)
}

// hashOf returns the policy hash of data.
func hashOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])[:12]
}

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML returns the text of the default policy, for
// `cortexctl policy show` and as a starting point for a custom policy.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

var defaultPolicy = sync.OnceValues(func() (*Policy, error) {
	return Parse("default.yaml", defaultYAML)
})

// Default returns the policy shipped in the binary (default.yaml): it denies
// sys.* topics, prompts over 1 MiB and prompts that carry credentials,
// allows job.* topics and denies everything else. Each call returns a
// Policy with its own throttle state; the compiled rules are shared. If
// the embedded file ever failed to compile, the returned policy denies
// every job.
func Default() *Policy {
	p, err := defaultPolicy()
	if err != nil {
		return &Policy{
			name:    "default",
			hash:    hashOf(defaultYAML),
			dflt:    Decision{Decision: Deny, Rule: DefaultRuleName, Reason: "the built-in default policy failed to load; denying every job: " + err.Error(), PolicyHash: hashOf(defaultYAML)},
			limiter: newLimiter(maxBuckets),
			source:  "default.yaml",
		}
	}
	q := *p
	q.limiter = newLimiter(maxBuckets)
	return &q
}
