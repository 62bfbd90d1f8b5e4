package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// A test file (`cortexctl policy test POLICY CASES`) lists jobs and the
// decision the policy must make for each:
//
//	# now: 2026-11-22T12:00:00Z   # optional: the time of every case without its own
//	cases:
//	  - name: echo is allowed
//	    job: {topic: job.echo, tenant: acme, prompt: "hello", labels: {team: ml}, priority: 1, attempt: 1}
//	    want: {decision: ALLOW, rule: allow-jobs}   # rule is optional
//	  - name: destroy is denied
//	    job: {topic: sys.destroy}
//	    want: {decision: DENY, rule: deny-sys-destroy}
//
// The job fields are those of Input: topic, tenant and prompt (strings,
// "" when left out), labels (a mapping of strings), priority (0 when left
// out), attempt (1 when left out), prompt_size (len(prompt) when left out;
// set it to test size limits without a large prompt) and now (RFC 3339;
// the current time when left out). The cases run in order against one
// policy, so THROTTLE buckets carry over from case to case, as they do
// between jobs.

// Case is one case of a test file: a job and the decision it must get.
type Case struct {
	Name string
	// Line is the line of the case in its file.
	Line  int
	Input Input
	Want  Want
}

// Want is the decision a Case expects.
type Want struct {
	// Decision is ALLOW, DENY or REQUIRE_APPROVAL; Evaluate never returns
	// THROTTLE.
	Decision Kind
	// Rule, if not empty, is the rule that must decide ("default" for the
	// policy's default).
	Rule string
}

// String renders w as `ALLOW by allow-jobs`, or `ALLOW` without a rule.
func (w Want) String() string {
	if w.Rule == "" {
		return w.Decision.String()
	}
	return w.Decision.String() + " by " + w.Rule
}

// Run evaluates c's job with p.Evaluate and reports whether the decision
// is the one c wants.
func (c *Case) Run(p *Policy) (got Decision, ok bool) {
	got = p.Evaluate(c.Input)
	return got, got.Decision == c.Want.Decision && (c.Want.Rule == "" || got.Rule == c.Want.Rule)
}

const (
	// maxCasesBytes bounds the size of a test file: room for a few prompts
	// of MaxPromptBytes.
	maxCasesBytes = 8 << 20
	maxCases      = 10000
)

// LoadCases reads and parses the test file at path (see ParseCases).
func LoadCases(path string) ([]Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read test cases %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCasesBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read test cases %s: %w", path, err)
	}
	return ParseCases(path, data)
}

// ParseCases parses a test file; name is the file name used in error
// messages. Unknown and duplicate fields, values of the wrong type and
// cases without a name, job or wanted decision are errors. All problems
// found are returned together (errors.Join of *LoadError values, or a
// single *LoadError), each as `file:line: case "name": field: problem`.
func ParseCases(name string, data []byte) ([]Case, error) {
	if len(data) > maxCasesBytes {
		return nil, &LoadError{File: name, Line: 1, Msg: fmt.Sprintf("test file is larger than %d bytes", maxCasesBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &LoadError{File: name, Line: 1, Msg: "test file is empty; it needs a list of cases: `cases: [{name: ..., job: {...}, want: {decision: ...}}]`"}
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &LoadError{File: name, Line: extra.Line, Msg: "a test file holds one YAML document; remove the second one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	ps := &parser{file: name}
	cases := ps.cases(&doc)
	switch len(ps.errs) {
	case 0:
		return cases, nil
	case 1:
		return nil, ps.errs[0]
	}
	return nil, errors.Join(ps.errs...)
}

func (ps *parser) cases(doc *yaml.Node) []Case {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		ps.add(root.Line, ruleRef{}, "", "a test file must be a YAML mapping with a list of cases: `cases: [...]`")
		return nil
	}
	f := ps.fields(root, ruleRef{}, "", "now", "cases")
	var now time.Time
	if n, ok := f["now"]; ok {
		now, _ = ps.timestamp(n, ruleRef{}, "now")
	}
	cs, ok := f["cases"]
	switch {
	case !ok || cs.Tag == "!!null" || cs.Kind == yaml.SequenceNode && len(cs.Content) == 0:
		ps.add(root.Line, ruleRef{}, "cases", "no cases; add at least one: `cases: [{name: ..., job: {topic: job.echo}, want: {decision: ALLOW}}]`")
		return nil
	case cs.Kind != yaml.SequenceNode:
		ps.add(cs.Line, ruleRef{}, "cases", "must be a list of cases")
		return nil
	case len(cs.Content) > maxCases:
		ps.add(cs.Line, ruleRef{}, "cases", "%d cases is more than the limit of %d; split the file", len(cs.Content), maxCases)
		return nil
	}
	out := make([]Case, 0, len(cs.Content))
	seen := make(map[string]int, len(cs.Content))
	for i, n := range cs.Content {
		if c, ok := ps.testCase(n, i, seen, now); ok {
			out = append(out, c)
		}
	}
	return out
}

func (ps *parser) testCase(n *yaml.Node, i int, seen map[string]int, now time.Time) (Case, bool) {
	ref := ruleRef{index: i + 1, isCase: true}
	c := Case{Line: n.Line, Input: Input{Attempt: 1, Now: now}}
	if !ps.plain(n, ref, "") {
		return c, false
	}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "", "must be a mapping with name, job and want")
		return c, false
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k, v := n.Content[j], n.Content[j+1]; k.Value == "name" && v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) != "" {
			ref.name = v.Value
		}
	}
	errs := len(ps.errs)
	f := ps.fields(n, ref, "", "name", "job", "want")
	if v, vn, ok := ps.scalar(n, f, "name", ref, "name"); ok {
		if first, dup := seen[v]; dup {
			ps.add(vn.Line, ref, "name", "duplicate case name; it is first used on line %d", first)
		} else {
			seen[v] = vn.Line
		}
		c.Name = v
	}
	if j, ok := f["job"]; !ok {
		ps.add(n.Line, ref, "job", "missing; e.g. job: {topic: job.echo, tenant: acme, prompt: \"hello\"}")
	} else {
		ps.job(j, ref, &c.Input)
	}
	if w, ok := f["want"]; !ok {
		ps.add(n.Line, ref, "want", "missing; e.g. want: {decision: ALLOW, rule: allow-jobs}")
	} else {
		ps.want(w, ref, &c.Want)
	}
	return c, len(ps.errs) == errs
}

func (ps *parser) job(n *yaml.Node, ref ruleRef, in *Input) {
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "job", "must be a mapping, e.g. job: {topic: job.echo, prompt: \"hello\"}")
		return
	}
	f := ps.fields(n, ref, "job.", "topic", "tenant", "labels", "priority", "attempt", "prompt", "prompt_size", "now")
	if v, ok := f["topic"]; ok {
		in.Topic, _ = ps.text(v, ref, "job.topic")
	}
	if v, ok := f["tenant"]; ok {
		in.Tenant, _ = ps.text(v, ref, "job.tenant")
	}
	if v, ok := f["prompt"]; ok {
		in.Prompt, _ = ps.text(v, ref, "job.prompt")
	}
	if v, ok := f["priority"]; ok {
		if x, good := ps.integer(v, ref, "job.priority", math.MinInt32, math.MaxInt32); good {
			in.Priority = int32(x)
		}
	}
	if v, ok := f["attempt"]; ok {
		if x, good := ps.integer(v, ref, "job.attempt", 1, math.MaxUint32); good {
			in.Attempt = uint32(x)
		}
	}
	in.PromptSize = uint64(len(in.Prompt))
	if v, ok := f["prompt_size"]; ok {
		if x, good := ps.integer(v, ref, "job.prompt_size", 0, math.MaxInt64); good {
			if uint64(x) < uint64(len(in.Prompt)) {
				ps.add(v.Line, ref, "job.prompt_size", "%d is less than the %d bytes of the prompt; leave it out to use the prompt's length", x, len(in.Prompt))
			}
			in.PromptSize = uint64(x)
		}
	}
	if v, ok := f["now"]; ok {
		if t, good := ps.timestamp(v, ref, "job.now"); good {
			in.Now = t
		}
	}
	if v, ok := f["labels"]; ok {
		in.Labels = ps.labels(v, ref)
	}
}

func (ps *parser) labels(n *yaml.Node, ref ruleRef) map[string]string {
	if n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "job.labels", "must be a mapping of strings, e.g. labels: {team: ml}")
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !ps.plain(k, ref, "job.labels") || !ps.plain(v, ref, "job.labels") {
			continue
		}
		if k.Kind != yaml.ScalarNode || k.Tag == "!!null" {
			ps.add(k.Line, ref, "job.labels", "label names must be strings")
			continue
		}
		field := "job.labels." + k.Value
		if _, dup := out[k.Value]; dup {
			ps.add(k.Line, ref, field, "duplicate label")
			continue
		}
		if s, ok := ps.text(v, ref, field); ok {
			out[k.Value] = s
		}
	}
	return out
}

func (ps *parser) want(n *yaml.Node, ref ruleRef, w *Want) {
	if n.Kind != yaml.MappingNode {
		ps.add(n.Line, ref, "want", "must be a mapping, e.g. want: {decision: DENY, rule: deny-sys-destroy}")
		return
	}
	f := ps.fields(n, ref, "want.", "decision", "rule")
	if v, vn, ok := ps.scalar(n, f, "decision", ref, "want.decision"); ok {
		k, err := ParseKind(v)
		switch {
		case err != nil:
			ps.add(vn.Line, ref, "want.decision", "unknown decision %q: use ALLOW, DENY or REQUIRE_APPROVAL", v)
		case k == Throttle:
			ps.add(vn.Line, ref, "want.decision", "a THROTTLE rule decides ALLOW within its rate and DENY over it; want one of those, with rule: NAME")
		default:
			w.Decision = k
		}
	}
	if _, has := f["rule"]; has {
		if v, vn, ok := ps.scalar(n, f, "rule", ref, "want.rule"); ok {
			if !ruleNameRE.MatchString(v) {
				ps.add(vn.Line, ref, "want.rule", "%q is not a rule name: use the name of a rule, or %q for the policy's default", v, DefaultRuleName)
			}
			w.Rule = v
		}
	}
}

// text returns the string value of a scalar; "" must be written out.
func (ps *parser) text(n *yaml.Node, ref ruleRef, field string) (string, bool) {
	switch {
	case n.Kind != yaml.ScalarNode:
		ps.add(n.Line, ref, field, "must be a single value, not a list or mapping")
	case n.Tag == "!!null":
		ps.add(n.Line, ref, field, "must be a string; write \"\" for an empty one")
	default:
		return n.Value, true
	}
	return "", false
}

// integer returns the value of an integer scalar between lo and hi.
func (ps *parser) integer(n *yaml.Node, ref ruleRef, field string, lo, hi int64) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		ps.add(n.Line, ref, field, "must be a whole number from %d to %d, got %s", lo, hi, describe(n))
		return 0, false
	}
	x, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || x < lo || x > hi {
		ps.add(n.Line, ref, field, "must be a whole number from %d to %d, got %s", lo, hi, n.Value)
		return 0, false
	}
	return x, true
}

// timestamp returns the value of an RFC 3339 time scalar.
func (ps *parser) timestamp(n *yaml.Node, ref ruleRef, field string) (time.Time, bool) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		if t, err := time.Parse(time.RFC3339Nano, n.Value); err == nil {
			return t, true
		}
	}
	ps.add(n.Line, ref, field, "must be an RFC 3339 time such as 2026-11-22T23:00:00Z, got %s", describe(n))
	return time.Time{}, false
}

// describe names a YAML value in an error message without quoting much of
// it: a prompt may be long.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return strconv.Quote(v)
}
