package policy

import (
	"sync"

	"cel.dev/cel-go/cel"
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
type detectorCost struct{}

// CallCost implements cost.ActualCostEstimator.
func (detectorCost) CallCost(_, overloadID string, args []ref.Val, _ ref.Val) *uint64 {
	if overloadID != overloadHasCredentials && overloadID != overloadCredentialKinds || len(args) != 1 {
		return nil
	}
	s, ok := args[0].(types.String)
	if !ok {
		return nil
	}
	c := 1 + uint64(len(s))/10
	return &c
}
