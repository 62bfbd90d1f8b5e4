package policy

import (
	"math"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// The CEL environment of `when` expressions. Variables:
//
//	topic        string               the job's topic, e.g. "job.chat.completion"
//	tenant       string               the submitting tenant
//	labels       map(string, string)  the job's labels
//	priority     int
//	attempt      int                  1 for the first attempt
//	prompt_size  int                  bytes; the larger of the declared size and len(prompt)
//	prompt       string               the prompt text, or "" when the caller does not have it
//	now          google.protobuf.Timestamp  the time of the decision
//
// Functions, besides the CEL standard library and optional types:
//
//	has_credentials(string) bool          the text carries a credential
//	credential_kinds(string) list(string) which kinds (see CredentialKinds)
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("topic", cel.StringType),
		cel.Variable("tenant", cel.StringType),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("priority", cel.IntType),
		cel.Variable("attempt", cel.IntType),
		cel.Variable("prompt_size", cel.IntType),
		cel.Variable("prompt", cel.StringType),
		cel.Variable("now", cel.TimestampType),
		cel.OptionalTypes(),
		cel.ParserExpressionSizeLimit(maxWhenBytes),
		// Deep nesting makes type-checking superlinear (240 levels of [[...]]
		// took seconds); no sensible rule nests 32 deep.
		cel.ParserRecursionLimit(32),
		cel.Function("has_credentials",
			cel.Overload(overloadHasCredentials, []*cel.Type{cel.StringType}, cel.BoolType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, ok := v.(types.String)
					if !ok {
						return types.MaybeNoSuchOverloadErr(v)
					}
					return types.Bool(HasCredentials(string(s)))
				}))),
		cel.Function("credential_kinds",
			cel.Overload(overloadCredentialKinds, []*cel.Type{cel.StringType}, cel.ListType(cel.StringType),
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					s, ok := v.(types.String)
					if !ok {
						return types.MaybeNoSuchOverloadErr(v)
					}
					return types.NewStringList(types.DefaultTypeAdapter, CredentialKinds(string(s)))
				}))),
	)
})

const (
	overloadHasCredentials  = "has_credentials_string"
	overloadCredentialKinds = "credential_kinds_string"
)

// programOptions are the options of every compiled rule. CostLimit makes an
// expression that does too much work fail (and so deny). There is no
// InterruptCheckFrequency: it only acts on ContextEval with a context that
// can be cancelled, and Evaluate has no context; the cost limit already
// bounds every comprehension deterministically.
func programOptions() []cel.ProgramOption {
	return []cel.ProgramOption{
		cel.CostTracking(detectorCost{}),
		cel.CostLimit(CostLimit),
		cel.EvalOptions(cel.OptOptimize),
	}
}

// detectorCost charges the credential functions like CEL charges a string
// scan: one unit per ten bytes, so that they count against CostLimit.
// inputSizes.EstimateCallCost is its static counterpart and must charge at
// least as much.
type detectorCost struct{}

// CallCost implements cost.ActualCostEstimator.
func (detectorCost) CallCost(_, overloadID string, args []ref.Val, _ ref.Val) *uint64 {
	if !isDetector(overloadID) || len(args) != 1 {
		return nil
	}
	s, ok := args[0].(types.String)
	if !ok {
		return nil
	}
	c := detectorCallCost(uint64(len(s)))
	return &c
}

func isDetector(overloadID string) bool {
	return overloadID == overloadHasCredentials || overloadID == overloadCredentialKinds
}

// detectorCallCost is the cost of scanning n bytes for credentials.
func detectorCallCost(n uint64) uint64 { return 1 + n/10 }

// Worst-case sizes of the inputs, used to estimate the cost of a rule
// when the policy is loaded (see inputSizes). They are the limits the
// gateway and the bus enforce on a job.
const (
	// MaxPromptBytes is the largest prompt a rule's cost is estimated
	// for: 1 MiB, the gateway's default limit (gateway.DefaultMaxPromptBytes).
	// A gateway configured for larger prompts is still protected by
	// CostLimit at run time: a rule that then does too much work denies.
	MaxPromptBytes = 1 << 20
	// maxLabels and maxLabelBytes are the gateway's limits on labels.
	maxLabels     = 32
	maxLabelBytes = 256
	// maxTopicBytes is the bus's limit on a topic.
	maxTopicBytes = 200
	// maxTenantBytes is the longest tenant name an API key may carry.
	maxTenantBytes = 64
)

// maxKindNameBytes is the length of the longest credential kind name.
var maxKindNameBytes = func() uint64 {
	n := 0
	for _, name := range credKindNames {
		n = max(n, len(name))
	}
	return uint64(n)
}()

// inputSizes is the cost.Estimator of `when` expressions: it gives the
// worst-case size of each variable and the cost of the credential
// functions, so that env.EstimateCost returns the most a rule can cost for
// any job the gateway accepts.
type inputSizes struct{}

var _ cost.Estimator = inputSizes{}

// EstimateSize implements cost.Estimator.
func (inputSizes) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	var sz cost.SizeEstimate
	switch strings.Join(n.Path(), ".") {
	case "prompt":
		sz = cost.RangedSizeEstimate(0, MaxPromptBytes)
	case "topic":
		sz = cost.RangedSizeEstimate(0, maxTopicBytes)
	case "tenant":
		sz = cost.RangedSizeEstimate(0, maxTenantBytes)
	case "labels":
		kv := cost.RangedSizeEstimate(0, maxLabelBytes)
		sz = cost.MapSizeEstimate(cost.RangedSizeEstimate(0, maxLabels), kv, kv)
	case "labels.@keys", "labels.@values":
		sz = cost.RangedSizeEstimate(0, maxLabelBytes)
	default:
		return nil
	}
	return &sz
}

// EstimateCallCost implements cost.Estimator: the credential functions
// cost what detectorCost charges for the longest string their argument
// can be.
func (e inputSizes) EstimateCallCost(_, overloadID string, _ *cost.AstNode, args []cost.AstNode) *cost.CallEstimate {
	if !isDetector(overloadID) || len(args) != 1 {
		return nil
	}
	sz := cost.EstimateSize(e, args[0])
	c := cost.RangedCostEstimate(detectorCallCost(sz.Min), detectorCallCost(sz.Max))
	if sz.Max == math.MaxUint64 {
		c.Max = math.MaxUint64
	}
	if overloadID == overloadHasCredentials {
		return cost.NewCallEstimate(c, nil)
	}
	// credential_kinds returns at most one name per kind.
	kinds := cost.ListSizeEstimate(cost.RangedSizeEstimate(0, uint64(numCredKinds)), cost.RangedSizeEstimate(1, maxKindNameBytes))
	return cost.NewCallEstimate(c, &kinds)
}

// references reports whether the checked expression reads the variable
// name. It goes by the type checker's reference map, not by the text: a
// string literal, a label key or a longer variable such as prompt_size
// that merely contains the name does not count, and neither does a
// comprehension variable of the same name inside its comprehension.
func references(a *cel.Ast, name string) bool {
	native := a.NativeRep()
	refs := native.ReferenceMap()
	for _, e := range celast.MatchDescendants(celast.NavigateAST(native), celast.KindMatcher(celast.IdentKind)) {
		r, ok := refs[e.ID()]
		if !ok || len(r.OverloadIDs) > 0 {
			continue
		}
		switch r.Name {
		case "." + name: // written .prompt: always the variable
			return true
		case name:
			if !boundLocally(e, name) {
				return true
			}
		}
	}
	return false
}

// boundLocally reports whether the identifier e named name is a variable
// of a comprehension around it rather than the global variable.
func boundLocally(e celast.NavigableExpr, name string) bool {
	child := celast.NavigableExpr(e)
	for parent, ok := e.Parent(); ok; parent, ok = parent.Parent() {
		if parent.Kind() == celast.ComprehensionKind {
			c := parent.AsComprehension()
			binds := c.IterVar() == name || c.IterVar2() == name || c.AccuVar() == name
			// The range is evaluated outside the comprehension's scope;
			// the accumulator's initial value too.
			outside := child.ID() == c.IterRange().ID() || child.ID() == c.AccuInit().ID()
			if binds && !outside {
				return true
			}
		}
		child = parent
	}
	return false
}
