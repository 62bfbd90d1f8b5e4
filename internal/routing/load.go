package routing

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/config"
)

// A routing file looks like this:
//
//	version: 1
//	pools:
//	  echo:
//	    topics: ["job.echo", "job.sleep"]
//	    defaults: {max_attempts: 2, timeout: 30s, priority: 0}
//	  chat-llm:
//	    topics: ["job.chat.*"]   # every topic under job.chat.
//	    defaults: {max_attempts: 3, timeout: 120s, priority: 5}
//
// Pool names are bus tokens (a-z, 0-9, - and _). Topics are job.* topics or
// patterns ending in .*; a pattern matches the topics that start with its
// prefix and have at least one more token (job.chat.* matches job.chat.x,
// not job.chat). A topic or pattern belongs to one pool; an exact topic
// beats a pattern, and a longer pattern beats a shorter one. Every default
// is optional (BuiltinDefaults fill the gaps): max_attempts 1-10, timeout
// more than 0 and at most 24h, priority 0-9.

const (
	maxFileBytes = 1 << 20
	maxLoadErrs  = 20
)

// LoadError is one problem in a routing file. Its message has the form
// `file:line: pool "name": field: problem`, with the pool and field parts
// present when they apply.
type LoadError struct {
	File string
	Line int
	// Pool is the pool the problem is in, or empty outside a pool.
	Pool string
	// Field is the YAML field at fault, such as "topics" or
	// "defaults.timeout".
	Field string
	Msg   string
}

// Error implements error.
func (e *LoadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	if e.Pool != "" {
		fmt.Fprintf(&b, "pool %q: ", e.Pool)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and checks a routing file.
func Load(path string) (*Router, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read routing file %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read routing file %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse checks a routing file; name is the file name used in error
// messages. Unknown and duplicate fields, values of the wrong type or out
// of range, and topics claimed by two pools are errors. All problems found
// are returned together (errors.Join of *LoadError values, or a single
// *LoadError).
func Parse(name string, data []byte) (*Router, error) {
	if len(data) > maxFileBytes {
		return nil, &LoadError{File: name, Line: 1, Msg: fmt.Sprintf("routing file is larger than %d bytes", maxFileBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &LoadError{File: name, Line: 1, Msg: "routing file is empty; it needs version: 1 and pools"}
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &LoadError{File: name, Line: extra.Line, Msg: "a routing file holds one YAML document; remove the second one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	p := &parser{file: name, b: newBuilder(), claims: map[string]claim{}}
	p.document(&doc)
	// In file order, then the first maxLoadErrs.
	slices.SortStableFunc(p.errs, func(a, b error) int {
		return cmp.Compare(lineOf(a), lineOf(b))
	})
	if len(p.errs) > maxLoadErrs {
		next := lineOf(p.errs[maxLoadErrs])
		p.errs = append(p.errs[:maxLoadErrs], &LoadError{File: name, Line: next, Msg: "too many errors; fix the ones above first"})
	}
	switch len(p.errs) {
	case 0:
		return p.b.router(), nil
	case 1:
		return nil, p.errs[0]
	default:
		return nil, errors.Join(p.errs...)
	}
}

// yamlError turns a YAML syntax error into a LoadError with its line.
func yamlError(file string, err error) error {
	line, msg := config.YAMLErrorAt(err)
	return &LoadError{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// claim is where a topic was first routed.
type claim struct {
	pool string
	line int
}

// parser walks the YAML node tree, collecting every problem it finds.
type parser struct {
	file   string
	b      *builder
	claims map[string]claim
	errs   []error
}

func (p *parser) add(line int, pool, field, format string, args ...any) {
	if len(p.errs) > 50*maxLoadErrs {
		return // enough to fill the report; spare the work
	}
	p.errs = append(p.errs, &LoadError{File: p.file, Line: line, Pool: pool, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// plain reports a problem and returns false for anchors, aliases and merge
// keys, which a routing file does not use.
func (p *parser) plain(n *yaml.Node, pool, field string) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" || n.Tag == "!!merge" {
		p.add(n.Line, pool, field, "YAML anchors, aliases and merge keys are not supported; write the value out")
		return false
	}
	return true
}

// null reports whether n is absent or an empty value (`defaults:`).
func null(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// fields returns the values of a mapping node by key, reporting unknown and
// duplicate keys.
func (p *parser) fields(m *yaml.Node, pool, prefix string, known ...string) map[string]*yaml.Node {
	out := make(map[string]*yaml.Node, len(known))
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if !p.plain(k, pool, prefix) || !p.plain(v, pool, prefix+k.Value) {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.add(k.Line, pool, strings.TrimSuffix(prefix, "."), "field names must be strings")
			continue
		}
		if !contains(known, k.Value) {
			p.add(k.Line, pool, "", "unknown field %q; known fields are %s", prefix+k.Value, strings.Join(known, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			p.add(k.Line, pool, prefix+k.Value, "duplicate field")
			continue
		}
		out[k.Value] = v
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// document checks the whole file.
func (p *parser) document(doc *yaml.Node) {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		p.add(root.Line, "", "", "a routing file must be a YAML mapping with version and pools")
		return
	}
	if !p.plain(root, "", "") {
		return
	}
	f := p.fields(root, "", "", "version", "pools")
	switch v, ok := f["version"]; {
	case !ok:
		p.add(root.Line, "", "version", "missing; add `version: 1`")
	case v.Kind != yaml.ScalarNode || v.Value != "1":
		p.add(v.Line, "", "version", "unsupported version %q; this build reads version 1", v.Value)
	}
	pools, ok := f["pools"]
	switch {
	case !ok:
		p.add(root.Line, "", "pools", "missing; list the pools and the topics each serves, e.g. pools: {echo: {topics: [job.echo]}}")
		return
	case null(pools) || pools.Kind == yaml.MappingNode && len(pools.Content) == 0:
		p.add(pools.Line, "", "pools", "no pools; a routing file needs at least one")
		return
	case pools.Kind != yaml.MappingNode:
		p.add(pools.Line, "", "pools", "must be a mapping of pool names to pools")
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(pools.Content); i += 2 {
		k, v := pools.Content[i], pools.Content[i+1]
		if !p.plain(k, "", "pools") || !p.plain(v, k.Value, "") {
			continue
		}
		name := k.Value
		switch first, dup := seen[name]; {
		case k.Kind != yaml.ScalarNode:
			p.add(k.Line, "", "pools", "pool names must be strings")
			continue
		case !bus.ValidToken(name):
			p.add(k.Line, "", "pools", "%q is not a valid pool name: use 1-64 characters of a-z, 0-9, - and _", name)
			continue
		case dup:
			p.add(k.Line, name, "", "duplicate pool; it is first defined on line %d", first)
			continue
		}
		seen[name] = k.Line
		p.pool(name, k, v)
	}
}

// pool checks one pool.
func (p *parser) pool(name string, key, n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, name, "", "must be a mapping with topics and, optionally, defaults")
		return
	}
	f := p.fields(n, name, "", "topics", "defaults")
	d := p.defaults(name, f["defaults"])
	p.b.pool(name, d)
	topics, ok := f["topics"]
	switch {
	case !ok:
		p.add(key.Line, name, "topics", "missing; list the topics the pool serves, e.g. topics: [job.echo]")
		return
	case null(topics) || topics.Kind == yaml.SequenceNode && len(topics.Content) == 0:
		p.add(topics.Line, name, "topics", "empty; list at least one topic")
		return
	case topics.Kind != yaml.SequenceNode:
		p.add(topics.Line, name, "topics", "must be a list of topics, e.g. [job.echo, job.chat.*]")
		return
	}
	for _, t := range topics.Content {
		if !p.plain(t, name, "topics") {
			continue
		}
		if t.Kind != yaml.ScalarNode || t.Tag == "!!null" {
			p.add(t.Line, name, "topics", "each topic is a single string, e.g. job.echo")
			continue
		}
		topic := t.Value
		if msg := checkTopic(topic); msg != "" {
			p.add(t.Line, name, "topics", "%.80q: %s", topic, msg)
			continue
		}
		if prev, taken := p.b.claim(topic, name); taken {
			c := p.claims[topic]
			if prev == name {
				p.add(t.Line, name, "topics", "%q is listed twice (also on line %d)", topic, c.line)
			} else {
				p.add(t.Line, name, "topics", "%q is already routed to pool %q (line %d); a topic or pattern belongs to one pool", topic, prev, c.line)
			}
			continue
		}
		p.claims[topic] = claim{pool: name, line: t.Line}
	}
}

// defaults checks a pool's defaults; what is unset or wrong stays
// BuiltinDefaults.
func (p *parser) defaults(pool string, n *yaml.Node) Defaults {
	d := BuiltinDefaults
	if null(n) {
		return d
	}
	if n.Kind != yaml.MappingNode {
		p.add(n.Line, pool, "defaults", "must be a mapping, e.g. {max_attempts: 3, timeout: 30s, priority: 5}")
		return d
	}
	f := p.fields(n, pool, "defaults.", "max_attempts", "timeout", "priority")
	if v, ok := f["max_attempts"]; ok {
		if i, good := p.integer(v, pool, "defaults.max_attempts", 1, MaxAttempts); good {
			d.MaxAttempts = uint32(i)
		}
	}
	if v, ok := f["priority"]; ok {
		if i, good := p.integer(v, pool, "defaults.priority", 0, MaxPriority); good {
			d.Priority = int32(i)
		}
	}
	if v, ok := f["timeout"]; ok {
		const field = "defaults.timeout"
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			p.add(v.Line, pool, field, "must be a duration such as 30s, 5m or 1h")
		} else if t, err := time.ParseDuration(v.Value); err != nil {
			p.add(v.Line, pool, field, "%.40q is not a duration: use a number with a unit, such as 30s, 5m or 1h", v.Value)
		} else if t <= 0 || t > MaxTimeout {
			p.add(v.Line, pool, field, "%s is out of range: use more than 0s and at most %s", t, MaxTimeout)
		} else {
			d.Timeout = t
		}
	}
	return d
}

// integer reads a whole number in [lo, hi].
func (p *parser) integer(n *yaml.Node, pool, field string, lo, hi int64) (int64, bool) {
	var i int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		p.add(n.Line, pool, field, "%.40q is not a whole number: use %d-%d", n.Value, lo, hi)
		return 0, false
	}
	if i < lo || i > hi {
		p.add(n.Line, pool, field, "%d is out of range: use %d-%d", i, lo, hi)
		return 0, false
	}
	return i, true
}

// lineOf is the line a load error points at (0 for another error).
func lineOf(err error) int {
	var le *LoadError
	if errors.As(err, &le) {
		return le.Line
	}
	return 0
}
