package policy

import (
	"fmt"
	"slices"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
)

// Warning is something Lint finds in a policy that loads and works, but
// probably not as its author meant: a rule that can never decide, or a
// default that allows. Its String has the form
// `file:line: warning: rule "name": problem`.
type Warning struct {
	File string
	Line int
	// Rule names the rule the warning is about, or is empty for the
	// default.
	Rule string
	Msg  string
}

// String renders w as `file:line: warning: rule "name": problem`.
func (w Warning) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: warning: ", w.File, w.Line)
	if w.Rule != "" {
		fmt.Fprintf(&b, "rule %q: ", w.Rule)
	}
	b.WriteString(w.Msg)
	return b.String()
}

// Lint returns the warnings of p, in file order:
//
//   - a rule after one whose condition is always true (`when: true`) is
//     never evaluated by Evaluate;
//   - a rule whose condition is always false never matches;
//   - a rule whose condition is the same expression as an earlier rule's
//     never decides: the earlier rule always decides first;
//   - a default of ALLOW allows every job no rule matches: there is no
//     implicit deny.
//
// Conditions are compared and folded as checked CEL, so layout, comments
// and constant sub-expressions (`1 == 1`) do not hide a problem.
func (p *Policy) Lint() []Warning {
	if p == nil {
		return nil
	}
	var ws []Warning
	env, _ := celEnv()
	var always *rule // the first rule that matches every job
	first := make(map[string]*rule, len(p.rules))
	for _, r := range p.rules {
		w := Warning{File: p.source, Line: r.line, Rule: r.name}
		if always != nil {
			w.Msg = fmt.Sprintf("unreachable: rule %q on line %d matches every job (its condition is always true), so no later rule is evaluated; move this rule above it, or remove it", always.name, always.line)
			ws = append(ws, w)
			continue
		}
		w.Line = r.whenLine
		switch v, ok := constantValue(env, r.ast); {
		case ok && v:
			always = r
		case ok && !v:
			w.Msg = "never matches: its condition is always false; fix the condition, or remove the rule"
			ws = append(ws, w)
			continue
		}
		key := canonical(r)
		if prev, dup := first[key]; dup {
			w.Msg = fmt.Sprintf("never decides: its condition is the same as rule %q on line %d, which is tried first; merge the two rules, or change one condition", prev.name, prev.whenLine)
			ws = append(ws, w)
			continue
		}
		first[key] = r
	}
	if p.dflt.Decision == Allow && p.dfltLine > 0 {
		ws = append(ws, Warning{File: p.source, Line: p.dfltLine, Msg: "default: ALLOW allows every job that no rule matches; " +
			"there is no implicit deny. Prefer `default: {decision: DENY, ...}` and ALLOW rules for what may run"})
	}
	slices.SortStableFunc(ws, func(a, b Warning) int { return a.Line - b.Line })
	return ws
}

// constantValue returns the value of a condition that does not depend on
// the job, after constant folding.
func constantValue(env *cel.Env, a *cel.Ast) (value, ok bool) {
	if a == nil {
		return false, false
	}
	if env != nil {
		if folder, err := cel.NewConstantFoldingOptimizer(); err == nil {
			if opt, err := cel.NewStaticOptimizer(folder); err == nil {
				if folded, iss := opt.Optimize(env, a); iss.Err() == nil && folded != nil {
					a = folded
				}
			}
		}
	}
	e := a.NativeRep().Expr()
	if e.Kind() != celast.LiteralKind {
		return false, false
	}
	b, isBool := e.AsLiteral().(types.Bool)
	return bool(b), isBool
}

// canonical returns r's condition as CEL prints its checked expression,
// the same for two conditions that differ only in layout; or the source
// text if it cannot be printed.
func canonical(r *rule) string {
	if r.ast != nil {
		if s, err := cel.AstToString(r.ast); err == nil {
			return s
		}
	}
	return strings.Join(strings.Fields(r.when), " ")
}
