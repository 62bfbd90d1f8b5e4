package policy

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"

	"github.com/cortex-os/core/internal/config"
)

// LoadError is one problem in a policy file. Its message has the form
// `file:line: rule "name": field: problem`, with the rule and field parts
// present when they apply.
type LoadError struct {
	File string
	Line int
	// Rule is the rule's name, or empty for problems outside a rule or in a
	// rule without a valid name (then RuleIndex is set).
	Rule string
	// RuleIndex is the 1-based position of the rule, or 0 outside a rule.
	RuleIndex int
	// Case and CaseIndex are the same for a case of a test file (see
	// ParseCases).
	Case      string
	CaseIndex int
	// Field is the YAML field at fault, such as "when" or "rate.burst".
	Field string
	Msg   string
}

// Error implements error.
func (e *LoadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	switch {
	case e.Rule != "":
		fmt.Fprintf(&b, "rule %q: ", e.Rule)
	case e.RuleIndex > 0:
		fmt.Fprintf(&b, "rule #%d: ", e.RuleIndex)
	case e.Case != "":
		fmt.Fprintf(&b, "case %q: ", e.Case)
	case e.CaseIndex > 0:
		fmt.Fprintf(&b, "case #%d: ", e.CaseIndex)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

const (
	maxRules     = 1000
	maxLoadErrs  = 20
	maxWhenBytes = 16 << 10
	maxRate      = 1e6
)

// ruleNameRE is what a rule or policy name may look like: a token that is
// safe in logs, metrics labels and URLs.
var ruleNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Parse parses and compiles a policy from data; name is the file name used
// in error messages and explanations. Every `when` expression is compiled
// once here. All problems found are returned together (errors.Join of
// *LoadError values, or a single *LoadError).
func Parse(name string, data []byte) (*Policy, error) {
	if len(data) > maxPolicyBytes {
		return nil, &LoadError{File: name, Line: 1, Msg: fmt.Sprintf("policy file is larger than %d bytes", maxPolicyBytes)}
	}
	env, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("parse policy %s: build CEL environment: %w", name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &LoadError{File: name, Line: 1, Msg: "policy file is empty; it needs version, name, default and rules"}
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &LoadError{File: name, Line: extra.Line, Msg: "a policy file holds one YAML document; remove the second one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	ps := &parser{file: name, env: env}
	p := ps.policy(&doc)
	if len(ps.errs) > 0 {
		// By line, as an editor goes through them (a rule's fields are
		// checked in the order the parser needs them); "too many errors"
		// stays last.
		line := func(err error) int {
			if le, ok := errors.AsType[*LoadError](err); ok {
				return le.Line
			}
			return 0
		}
		slices.SortStableFunc(ps.errs[:min(len(ps.errs), maxLoadErrs)], func(a, b error) int { return cmp.Compare(line(a), line(b)) })
		if len(ps.errs) == 1 {
			return nil, ps.errs[0]
		}
		return nil, errors.Join(ps.errs...)
	}
	p.hash = hashOf(data)
	p.source = name
	p.dflt.PolicyHash = p.hash
	p.limiter = newLimiter(maxBuckets)
	for _, r := range p.rules {
		p.needsPrompt = p.needsPrompt || r.usesPrompt
	}
	return p, nil
}

// yamlError turns a YAML syntax error into a LoadError with its line.
func yamlError(file string, err error) error {
	line, msg := config.YAMLErrorAt(err)
	return &LoadError{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// parser walks the YAML node tree, collecting every problem it finds.
type parser struct {
	file string
	env  *cel.Env
	errs []error
}

// ruleRef says which rule (or, in a test file, which case) a problem is
// in.
type ruleRef struct {
	name   string
	index  int
	isCase bool
}

func (ps *parser) add(line int, r ruleRef, field, format string, args ...any) {
	if len(ps.errs) == maxLoadErrs {
		ps.errs = append(ps.errs, &LoadError{File: ps.file, Line: line, Msg: "too many errors; fix the ones above first"})
	}
	if len(ps.errs) > maxLoadErrs {
		return
	}
	e := &LoadError{File: ps.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)}
	if r.isCase {
		e.Case, e.CaseIndex = r.name, r.index
	} else {
		e.Rule, e.RuleIndex = r.name, r.index
	}
	ps.errs = append(ps.errs, e)
}

// fields returns the values of a mapping node by key, reporting unknown and
// duplicate keys, anchors and aliases.
func (ps *parser) fields(m *yaml.Node, r ruleRef, prefix string, known ...string) map[string]*yaml.Node {
	out := make(map[string]*yaml.Node, len(known))
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !ps.plain(k, r, prefix) || !ps.plain(v, r, prefix+k.Value) {
			continue
		}
		key := k.Value
		if k.Kind != yaml.ScalarNode {
			ps.add(k.Line, r, prefix, "field names must be strings")
			continue
		}
		isKnown := false
		for _, name := range known {
			if key == name {
				isKnown = true
				break
			}
		}
		if !isKnown {
			ps.add(k.Line, r, "", "unknown field %q; known fields are %s", prefix+key, strings.Join(known, ", "))
			continue
		}
		if _, dup := out[key]; dup {
			ps.add(k.Line, r, prefix+key, "duplicate field")
			continue
		}
		out[key] = v
	}
	return out
}

// plain reports a problem and returns false for anchors, aliases and merge
// keys, which a policy file does not use.
func (ps *parser) plain(n *yaml.Node, r ruleRef, field string) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" || n.Tag == "!!merge" {
		ps.add(n.Line, r, field, "YAML anchors, aliases and merge keys are not supported; write the value out")
		return false
	}
	return true
}

// scalar returns the text of a required scalar field, or false after
// reporting why there is none.
func (ps *parser) scalar(parent *yaml.Node, fields map[string]*yaml.Node, key string, r ruleRef, field string) (string, *yaml.Node, bool) {
	v, ok := fields[key]
	if !ok {
		ps.add(parent.Line, r, field, "missing")
		return "", nil, false
	}
	if v.Kind != yaml.ScalarNode {
		ps.add(v.Line, r, field, "must be a single value, not a list or mapping")
		return "", v, false
	}
	if v.Tag == "!!null" || strings.TrimSpace(v.Value) == "" {
		ps.add(v.Line, r, field, "must not be empty")
		return "", v, false
	}
	return v.Value, v, true
}

func (ps *parser) policy(doc *yaml.Node) *Policy {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		ps.add(root.Line, ruleRef{}, "", "a policy must be a YAML mapping with version, name, default and rules")
		return nil
	}
	p := &Policy{}
	f := ps.fields(root, ruleRef{}, "", "version", "name", "default", "rules")

	if _, has := f["version"]; !has {
		ps.add(root.Line, ruleRef{}, "version", "missing; add `version: 1`")
	} else if v, n, ok := ps.scalar(root, f, "version", ruleRef{}, "version"); ok && v != "1" {
		ps.add(n.Line, ruleRef{}, "version", "unsupported version %q; this build reads version 1", v)
	}
	if v, n, ok := ps.scalar(root, f, "name", ruleRef{}, "name"); ok {
		if !ruleNameRE.MatchString(v) {
			ps.add(n.Line, ruleRef{}, "name", "%q is not a valid name: use letters, digits, '.', '_' and '-', up to 64 characters", v)
		}
		p.name = v
	}
	if d, ok := f["default"]; !ok {
		ps.add(root.Line, ruleRef{}, "default", "missing; a policy needs an explicit default decision (there is no implicit allow), e.g. default: {decision: DENY, reason: \"no rule allowed this job\"}")
	} else if d.Kind != yaml.MappingNode {
		ps.add(d.Line, ruleRef{}, "default", "must be a mapping with decision and reason")
	} else {
		df := ps.fields(d, ruleRef{}, "default.", "decision", "reason")
		p.dflt.Rule = DefaultRuleName
		if v, n, ok := ps.scalar(d, df, "decision", ruleRef{}, "default.decision"); ok {
			k, err := ParseKind(v)
			switch {
			case err != nil:
				ps.add(n.Line, ruleRef{}, "default.decision", "unknown decision %q: use ALLOW, DENY or REQUIRE_APPROVAL", v)
			case k == Throttle:
				ps.add(n.Line, ruleRef{}, "default.decision", "THROTTLE needs a rule with a rate; the default must be ALLOW, DENY or REQUIRE_APPROVAL")
			default:
				p.dflt.Decision = k
				p.dfltLine = n.Line
			}
		}
		if v, _, ok := ps.scalar(d, df, "reason", ruleRef{}, "default.reason"); ok {
			p.dflt.Reason = strings.TrimSpace(v)
		}
	}
	if rs, ok := f["rules"]; ok && rs.Tag != "!!null" {
		if rs.Kind != yaml.SequenceNode {
			ps.add(rs.Line, ruleRef{}, "rules", "must be a list of rules")
		} else if len(rs.Content) > maxRules {
			ps.add(rs.Line, ruleRef{}, "rules", "%d rules is more than the limit of %d", len(rs.Content), maxRules)
		} else {
			seen := make(map[string]int, len(rs.Content))
			for i, n := range rs.Content {
				if r := ps.rule(n, i, seen); r != nil {
					p.rules = append(p.rules, r)
				}
			}
		}
	}
	return p
}

func (ps *parser) rule(n *yaml.Node, i int, seen map[string]int) *rule {
	ref := ruleRef{index: i + 1}
	if !ps.plain(n, ref, "") {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "", "must be a mapping with name, when, decision and reason")
		return nil
	}
	// Find the name first so that every other problem can name the rule.
	r := &rule{index: i, line: n.Line}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k, v := n.Content[j], n.Content[j+1]; k.Value == "name" && v.Kind == yaml.ScalarNode && ruleNameRE.MatchString(v.Value) {
			ref.name = v.Value
		}
	}
	f := ps.fields(n, ref, "", "name", "when", "decision", "reason", "rate")
	ok := true
	if v, vn, good := ps.scalar(n, f, "name", ref, "name"); !good {
		ok = false
	} else if !ruleNameRE.MatchString(v) {
		ps.add(vn.Line, ref, "name", "%q is not a valid rule name: use letters, digits, '.', '_' and '-', up to 64 characters", v)
		ok = false
	} else if v == DefaultRuleName {
		ps.add(vn.Line, ref, "name", "%q is reserved for the default decision; choose another name", v)
		ok = false
	} else if first, dup := seen[v]; dup {
		ps.add(vn.Line, ref, "name", "duplicate rule name; it is first used on line %d", first)
		ok = false
	} else {
		seen[v] = vn.Line
		r.name = v
	}
	if v, vn, good := ps.scalar(n, f, "decision", ref, "decision"); !good {
		ok = false
	} else if k, err := ParseKind(v); err != nil {
		ps.add(vn.Line, ref, "decision", "%v", err)
		ok = false
	} else {
		r.decision = k
	}
	if v, _, good := ps.scalar(n, f, "reason", ref, "reason"); !good {
		ok = false
	} else {
		r.reason = strings.TrimSpace(v)
	}
	if rn, has := f["rate"]; has {
		if r.decision != Throttle {
			ps.add(rn.Line, ref, "rate", "only THROTTLE rules have a rate; remove it or use decision: THROTTLE")
			ok = false
		} else if rate, good := ps.rate(rn, ref); good {
			r.rate = rate
		} else {
			ok = false
		}
	} else if r.decision == Throttle {
		ps.add(n.Line, ref, "rate", "a THROTTLE rule needs a rate, e.g. rate: {per_second: 5, burst: 10}")
		ok = false
	}
	if v, vn, good := ps.scalar(n, f, "when", ref, "when"); !good {
		ok = false
	} else if c, good := ps.compile(v, vn, ref); good {
		r.when = v
		r.whenLine = vn.Line
		r.ast = c.ast
		r.prg = c.prg
		r.usesPrompt = references(c.ast, "prompt")
	} else {
		ok = false
	}
	if !ok {
		return nil
	}
	if r.decision == Throttle {
		limit := fmt.Sprintf("%g/s, burst %d", r.rate.PerSecond, r.rate.Burst)
		r.allowReason = "within rate (" + limit + "): " + r.reason
		r.exceeded = "rate exceeded (" + limit + ")"
	}
	return r
}

func (ps *parser) rate(n *yaml.Node, ref ruleRef) (Rate, bool) {
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "rate", "must be a mapping: rate: {per_second: 5, burst: 10}")
		return Rate{}, false
	}
	f := ps.fields(n, ref, "rate.", "per_second", "burst")
	var rate Rate
	ok := true
	if v, vn, good := ps.scalar(n, f, "per_second", ref, "rate.per_second"); !good {
		ok = false
	} else if x, err := strconv.ParseFloat(v, 64); err != nil || math.IsNaN(x) || x <= 0 || x > maxRate {
		ps.add(vn.Line, ref, "rate.per_second", "must be a positive number up to %g, got %q", float64(maxRate), v)
		ok = false
	} else {
		rate.PerSecond = x
	}
	if v, vn, good := ps.scalar(n, f, "burst", ref, "rate.burst"); !good {
		ok = false
	} else if x, err := strconv.Atoi(v); err != nil || x < 1 || x > maxRate {
		ps.add(vn.Line, ref, "rate.burst", "must be a whole number from 1 to %d, got %q", int(maxRate), v)
		ok = false
	} else {
		rate.Burst = x
	}
	return rate, ok
}

// compiled is a checked when expression and its program.
type compiled struct {
	ast *cel.Ast
	prg cel.Program
}

// compile compiles a when expression, reporting CEL errors at their line
// in the file, and refuses one whose worst-case cost is over CostLimit.
func (ps *parser) compile(expr string, n *yaml.Node, ref ruleRef) (*compiled, bool) {
	if len(expr) > maxWhenBytes {
		ps.add(n.Line, ref, "when", "expression is %d bytes, more than the limit of %d", len(expr), maxWhenBytes)
		return nil, false
	}
	ast, iss := ps.env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		ps.addCELErrors(iss, n, ref)
		return nil, false
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		ps.add(n.Line, ref, "when", "must be a boolean expression; this one is of type %s", t)
		return nil, false
	}
	if !ps.withinCostLimit(ast, n, ref) {
		return nil, false
	}
	prg, err := ps.env.Program(ast, programOptions()...)
	if err != nil {
		ps.add(n.Line, ref, "when", "ERROR: %v", err)
		return nil, false
	}
	return &compiled{ast: ast, prg: prg}, true
}

// celProblem is one CEL error as it is reported: the file line and the
// message, without the column.
type celProblem struct {
	line int
	msg  string
}

// addCELErrors reports the errors of compiling the when expression in n,
// each at its line in the file. CEL reports an error at every place it
// occurs: prompt.split(" ") used three times on a line gives three
// "undeclared reference to 'split'" at three columns. The messages carry
// no column, so those would be identical lines; each is reported once.
func (ps *parser) addCELErrors(iss *cel.Issues, n *yaml.Node, ref ruleRef) {
	seen := make(map[celProblem]bool)
	for _, e := range iss.Errors() {
		p := celProblem{line: celErrorLine(n, e.Location.Line()), msg: strings.TrimSuffix(e.Message, " (in container '')")}
		if seen[p] {
			continue
		}
		seen[p] = true
		ps.add(p.line, ref, "when", "ERROR: %s", p.msg)
	}
}

// celErrorLine maps line exprLine (1-based; 0 when unknown) of the when
// expression in n to its line in the file.
func celErrorLine(n *yaml.Node, exprLine int) int {
	line := n.Line + max(exprLine, 1) - 1
	if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		// Block scalars start on the line after the "when: |".
		line++
	}
	return line
}

// withinCostLimit estimates the most the checked expression can cost for
// any job the gateway accepts (see inputSizes) and reports it if that is
// over CostLimit: such a rule would deny the largest jobs at run time, so
// it is refused when the policy is loaded instead.
func (ps *parser) withinCostLimit(ast *cel.Ast, n *yaml.Node, ref ruleRef) bool {
	est, err := ps.env.EstimateCost(ast, inputSizes{})
	if err != nil {
		ps.add(n.Line, ref, "when", "cannot estimate the worst-case cost of the expression: %v", err)
		return false
	}
	if est.Max <= CostLimit {
		return true
	}
	worst := "is unbounded"
	if est.Max != math.MaxUint64 {
		worst = fmt.Sprintf("%.2g is over the limit of %g", float64(est.Max), float64(CostLimit))
	}
	ps.add(n.Line, ref, "when", "worst-case cost %s; simplify the expression: "+
		"the body of a comprehension over labels runs up to %d times and nested ones multiply, "+
		"and each scan of a 1 MiB prompt (contains, matches, has_credentials ...) costs about %.1g",
		worst, maxLabels, float64(detectorCallCost(MaxPromptBytes)))
	return false
}
