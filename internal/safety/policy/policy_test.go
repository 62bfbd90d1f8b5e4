package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func mustLoad(t testing.TB, path string) *Policy {
	t.Helper()
	p, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return p
}

func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []string // each must be a line of the error
	}{
		{"testdata/invalid_undeclared.yaml", []string{
			`testdata/invalid_undeclared.yaml:14: rule "deny-x": when: ERROR: undeclared reference to 'topc' (did you mean 'topic'?)`,
		}},
		{"testdata/invalid_no_default.yaml", []string{
			`testdata/invalid_no_default.yaml:2: default: missing; a policy needs an explicit default decision (there is no implicit allow), e.g. default: {decision: DENY, reason: "no rule allowed this job"}`,
		}},
		{"testdata/invalid_version.yaml", []string{
			`testdata/invalid_version.yaml:1: version: unsupported version "2"; this build reads version 1`,
		}},
		{"testdata/invalid_rules.yaml", []string{
			`testdata/invalid_rules.yaml:6: rule "throttle-no-rate": rate: a THROTTLE rule needs a rate, e.g. rate: {per_second: 5, burst: 10}`,
			`testdata/invalid_rules.yaml:14: rule "dup": name: duplicate rule name; it is first used on line 10`,
			`testdata/invalid_rules.yaml:19: rule "not-bool": when: must be a boolean expression; this one is of type string`,
			`testdata/invalid_rules.yaml:24: rule "bad-decision": decision: unknown decision "MAYBE": use ALLOW, DENY, REQUIRE_APPROVAL or THROTTLE`,
			`testdata/invalid_rules.yaml:30: rule "extra-field": unknown field "priority"; known fields are name, when, decision, reason, rate`,
			`testdata/invalid_rules.yaml:31: rule "no-reason": reason: missing`,
			`testdata/invalid_rules.yaml:37: rule "zero-rate": rate.per_second: must be a positive number up to 1e+06, got "0"`,
			`testdata/invalid_rules.yaml:43: rule "multi-line": when: ERROR: undeclared reference to 'tenatn' (did you mean 'tenant'?)`,
		}},
		{"testdata/missing.yaml", []string{
			`read policy testdata/missing.yaml: open testdata/missing.yaml: no such file or directory`,
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			p, err := Load(tc.file)
			if err == nil {
				t.Fatalf("Load succeeded (%d rules), want an error", len(p.rules))
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, want := range tc.want {
				if i >= len(lines) || lines[i] != want {
					t.Errorf("error %d:\n got %q\nwant %q", i, at(lines, i), want)
				}
			}
		})
	}
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return "<none>"
}

func TestParseErrors(t *testing.T) {
	const head = "version: 1\nname: t\ndefault: {decision: DENY, reason: no}\n"
	for _, tc := range []struct {
		name, src, want string
	}{
		{"empty", "", `test.yaml:1: policy file is empty`},
		{"not a mapping", "- a\n- b\n", `test.yaml:1: a policy must be a YAML mapping`},
		{"bad yaml", "version: 1\nname: [\n", `test.yaml:2: invalid YAML: did not find expected node content`},
		{"unknown top field", head + "extra: 1\n", `test.yaml:4: unknown field "extra"; known fields are version, name, default, rules`},
		{"duplicate top field", head + "name: u\n", `test.yaml:4: name: duplicate field`},
		{"missing version", "name: t\ndefault: {decision: DENY, reason: no}\n", "test.yaml:1: version: missing; add `version: 1`"},
		{"missing name", "version: 1\ndefault: {decision: DENY, reason: no}\n", `test.yaml:1: name: missing`},
		{"bad policy name", "version: 1\nname: a b\ndefault: {decision: DENY, reason: no}\n", `test.yaml:2: name: "a b" is not a valid name`},
		{"default throttle", "version: 1\nname: t\ndefault: {decision: THROTTLE, reason: no}\n", `test.yaml:3: default.decision: THROTTLE needs a rule with a rate`},
		{"default without reason", "version: 1\nname: t\ndefault: {decision: ALLOW}\n", `test.yaml:3: default.reason: missing`},
		{"default empty reason", "version: 1\nname: t\ndefault: {decision: ALLOW, reason: \"  \"}\n", `test.yaml:3: default.reason: must not be empty`},
		{"default unknown field", "version: 1\nname: t\ndefault: {decision: DENY, reason: no, rule: x}\n", `test.yaml:3: unknown field "default.rule"`},
		{"rules not a list", head + "rules: {a: 1}\n", `test.yaml:4: rules: must be a list of rules`},
		{"rule not a mapping", head + "rules:\n  - just a string\n", `test.yaml:5: rule #1: must be a mapping`},
		{"rule bad name", head + "rules:\n  - name: \"no spaces\"\n    when: \"true\"\n    decision: DENY\n    reason: r\n", `test.yaml:5: rule #1: name: "no spaces" is not a valid rule name`},
		{"rule reserved name", head + "rules:\n  - name: default\n    when: \"true\"\n    decision: DENY\n    reason: r\n", `test.yaml:5: rule "default": name: "default" is reserved`},
		{"rule missing when", head + "rules:\n  - name: r\n    decision: DENY\n    reason: r\n", `test.yaml:5: rule "r": when: missing`},
		{"rule list when", head + "rules:\n  - name: r\n    when: [a]\n    decision: DENY\n    reason: r\n", `test.yaml:6: rule "r": when: must be a single value`},
		{"rate on allow", head + "rules:\n  - name: r\n    when: \"true\"\n    decision: ALLOW\n    rate: {per_second: 1, burst: 1}\n    reason: r\n", `test.yaml:8: rule "r": rate: only THROTTLE rules have a rate`},
		{"rate bad burst", head + "rules:\n  - name: r\n    when: \"true\"\n    decision: THROTTLE\n    rate: {per_second: 1, burst: 0.5}\n    reason: r\n", `test.yaml:8: rule "r": rate.burst: must be a whole number from 1 to 1000000, got "0.5"`},
		{"rate unknown field", head + "rules:\n  - name: r\n    when: \"true\"\n    decision: THROTTLE\n    rate: {per_second: 1, burst: 1, per: tenant}\n    reason: r\n", `test.yaml:8: rule "r": unknown field "rate.per"`},
		{"anchor", head + "rules:\n  - &a\n    name: r\n    when: \"true\"\n    decision: DENY\n    reason: r\n", `test.yaml:5: rule #1: YAML anchors, aliases and merge keys are not supported`},
		{"two documents", head + "---\nversion: 1\n", `test.yaml:4: a policy file holds one YAML document`},
		{"parse error", head + "rules:\n  - name: r\n    when: topic ==\n    decision: DENY\n    reason: r\n", `test.yaml:6: rule "r": when: ERROR: Syntax error: mismatched input '<EOF>'`},
		{"wrong type", head + "rules:\n  - name: r\n    when: topic > 3\n    decision: DENY\n    reason: r\n", `test.yaml:6: rule "r": when: ERROR: found no matching overload for '_>_' applied to '(string, int)'`},
		{"dyn result", head + "rules:\n  - name: r\n    when: dyn(topic)\n    decision: DENY\n    reason: r\n", `test.yaml:6: rule "r": when: must be a boolean expression; this one is of type dyn`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("Parse succeeded, want error %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error:\n got %q\nwant prefix %q", err, tc.want)
			}
			var le *LoadError
			if !errors.As(err, &le) {
				t.Errorf("error %T is not a *LoadError", err)
			}
		})
	}
}

func TestDefaultRequired(t *testing.T) {
	_, err := Parse("p.yaml", []byte("version: 1\nname: p\nrules: []\n"))
	if err == nil || !strings.Contains(err.Error(), "default: missing") {
		t.Fatalf("Parse without default: err = %v, want default: missing", err)
	}
	// An explicit default ALLOW is allowed: it is written down, not implied.
	p := mustParse(t, "version: 1\nname: p\ndefault: {decision: ALLOW, reason: open}\n")
	if d := p.Evaluate(Input{Topic: "anything", Now: t0}); d.Decision != Allow || d.Rule != "default" {
		t.Errorf("explicit default ALLOW: got %+v", d)
	}
}

func TestDecisions(t *testing.T) {
	p := mustLoad(t, "testdata/valid.yaml")
	night := time.Date(2026, 11, 22, 23, 0, 0, 0, time.UTC)
	cred := "ghp_" + fake(50, alnumChars, 36)
	for _, tc := range []struct {
		name       string
		in         Input
		want       Kind
		rule       string
		reasonPart string
	}{
		{"deny rule", Input{Topic: "sys.destroy"}, Deny, "deny-sys-destroy", "never allowed"},
		{"throttle within rate", Input{Topic: "job.chat.gpt", Tenant: "t1"}, Allow, "throttle-chat", "within rate (5/s, burst 10)"},
		{"require approval", Input{Topic: "job.echo", PromptSize: 200000}, RequireApproval, "approve-big", "need a human"},
		{"prompt length counts as size", Input{Topic: "job.echo", Prompt: strings.Repeat("a", 100001)}, RequireApproval, "approve-big", ""},
		{"credential", Input{Topic: "job.echo", Prompt: "token " + cred}, Deny, "deny-credentials", "credential"},
		{"credential allowed by label", Input{Topic: "job.echo", Prompt: "token " + cred, Labels: map[string]string{"allow-secrets": "1"}}, Allow, "allow-jobs", ""},
		{"time rule at night", Input{Topic: "job.batch", Now: night}, Allow, "night-batch", ""},
		{"time rule by day", Input{Topic: "job.batch"}, Deny, "deny-batch-by-day", ""},
		{"optional label", Input{Topic: "other.x", Labels: map[string]string{"team": "a"}}, Allow, "allow-team-a", ""},
		{"too many attempts", Input{Topic: "other.x", Labels: map[string]string{"team": "a"}, Attempt: 4}, Deny, "default", "no rule allowed"},
		{"allow", Input{Topic: "job.echo"}, Allow, "allow-jobs", "allowed"},
		{"tenant blocked falls to default", Input{Topic: "job.echo", Tenant: "blocked"}, Deny, "default", "no rule allowed this job"},
		{"default", Input{Topic: "web.fetch"}, Deny, "default", "no rule allowed this job"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.in.Now.IsZero() {
				tc.in.Now = t0
			}
			d := p.Evaluate(tc.in)
			if d.Decision != tc.want || d.Rule != tc.rule || !strings.Contains(d.Reason, tc.reasonPart) {
				t.Errorf("got %s rule %q reason %q, want %s rule %q reason containing %q", d.Decision, d.Rule, d.Reason, tc.want, tc.rule, tc.reasonPart)
			}
			if d.PolicyHash != p.Hash() || !strings.HasPrefix(d.PolicyHash, "sha256:") {
				t.Errorf("PolicyHash = %q, want %q", d.PolicyHash, p.Hash())
			}
		})
	}
}

func TestFirstMatchWins(t *testing.T) {
	p := mustParse(t, `version: 1
name: order
default: {decision: DENY, reason: none}
rules:
  - {name: first, when: 'topic.startsWith("job.")', decision: REQUIRE_APPROVAL, reason: first}
  - {name: second, when: 'topic == "job.echo"', decision: ALLOW, reason: second}
  - {name: third, when: "true", decision: DENY, reason: third}
`)
	for topic, want := range map[string]string{"job.echo": "first", "job.x": "first", "web.x": "third"} {
		if d := p.Evaluate(Input{Topic: topic, Now: t0}); d.Rule != want {
			t.Errorf("topic %s: decided by %q, want %q", topic, d.Rule, want)
		}
	}
}

func TestThrottle(t *testing.T) {
	p := mustLoad(t, "testdata/valid.yaml")
	in := Input{Topic: "job.chat.gpt", Tenant: "acme", Now: t0}
	for i := range 10 {
		if d := p.Evaluate(in); d.Decision != Allow {
			t.Fatalf("job %d within the burst: %+v", i+1, d)
		}
	}
	// Explain looks at the bucket without taking a token.
	if e := p.Explain(in); e.Decision.Decision != Deny || !strings.Contains(e.Decision.Reason, "rate exceeded") {
		t.Errorf("Explain over the rate: %+v", e.Decision)
	}
	d := p.Evaluate(in)
	want := `rate exceeded (5/s, burst 10) for tenant "acme" on topic "job.chat.gpt": chat jobs are rate limited`
	if d.Decision != Deny || d.Rule != "throttle-chat" || d.Reason != want {
		t.Errorf("11th job: got %+v, want DENY with %q", d, want)
	}
	// Another tenant and another topic have their own buckets.
	if d := p.Evaluate(Input{Topic: "job.chat.gpt", Tenant: "other", Now: t0}); d.Decision != Allow {
		t.Errorf("other tenant: %+v", d)
	}
	if d := p.Evaluate(Input{Topic: "job.chat.claude", Tenant: "acme", Now: t0}); d.Decision != Allow {
		t.Errorf("other topic: %+v", d)
	}
	// 5 per second: after 200 ms one more job passes, then none.
	in.Now = t0.Add(200 * time.Millisecond)
	if d := p.Evaluate(in); d.Decision != Allow {
		t.Errorf("after 200ms: %+v", d)
	}
	if d := p.Evaluate(in); d.Decision != Deny {
		t.Errorf("second job after 200ms: %+v", d)
	}
	// A clock that steps back refills nothing.
	in.Now = t0.Add(-time.Hour)
	if d := p.Evaluate(in); d.Decision != Deny {
		t.Errorf("clock stepped back: %+v", d)
	}
	// After two seconds the bucket is full again.
	in.Now = t0.Add(3 * time.Second)
	for i := range 10 {
		if d := p.Evaluate(in); d.Decision != Allow {
			t.Fatalf("job %d after refill: %+v", i+1, d)
		}
	}
}

func TestThrottleTableBounded(t *testing.T) {
	p := mustLoad(t, "testdata/valid.yaml")
	p.limiter = newLimiter(4)
	eval := func(tenant string, at time.Time) Decision {
		return p.Evaluate(Input{Topic: "job.chat.gpt", Tenant: tenant, Now: at})
	}
	for i := range 4 {
		eval(fmt.Sprint("t", i), t0)
	}
	// Full of active buckets: a new tenant is denied (fail closed), known ones go on.
	if d := eval("new", t0); d.Decision != Deny || !strings.Contains(d.Reason, "throttle state is full") {
		t.Errorf("new tenant with a full table: %+v", d)
	}
	if d := eval("t0", t0); d.Decision != Allow {
		t.Errorf("known tenant with a full table: %+v", d)
	}
	// Once buckets are idle (refilled), they are evicted for new tenants;
	// the new buckets are active, so a fifth new tenant is denied again.
	later := t0.Add(10 * time.Second)
	for i := range 4 {
		if d := eval(fmt.Sprint("n", i), later); d.Decision != Allow {
			t.Errorf("tenant n%d after idle eviction: %+v", i, d)
		}
	}
	if n := p.limiter.len(); n != 4 {
		t.Errorf("%d buckets, want 4", n)
	}
	if d := eval("n4", later); d.Decision != Deny {
		t.Errorf("fifth new tenant: %+v", d)
	}
}

func TestCostLimitFailsClosed(t *testing.T) {
	p := mustParse(t, `version: 1
name: cost
default: {decision: ALLOW, reason: open}
rules:
  - name: cheap
    when: topic == "never"
    decision: ALLOW
    reason: cheap
  - name: quadratic
    when: labels.all(a, labels.all(b, a == b || a != b)) && false
    decision: ALLOW
    reason: expensive
`)
	labels := make(map[string]string, 1100)
	for i := range 1100 {
		labels[fmt.Sprint("k", i)] = "v"
	}
	d := p.Evaluate(Input{Topic: "job.echo", Labels: labels, Now: t0})
	want := fmt.Sprintf(`rule "quadratic" exceeded the CEL cost limit of %d; denying (fail closed)`, CostLimit)
	if d.Decision != Deny || d.Rule != "quadratic" || d.Reason != want {
		t.Errorf("got %+v, want DENY by quadratic: %q", d, want)
	}
	// With few labels the same rule is cheap and the default applies.
	if d := p.Evaluate(Input{Topic: "job.echo", Labels: map[string]string{"a": "b"}, Now: t0}); d.Decision != Allow || d.Rule != "default" {
		t.Errorf("few labels: %+v", d)
	}
}

func TestRuntimeErrorFailsClosed(t *testing.T) {
	p := mustParse(t, `version: 1
name: err
default: {decision: ALLOW, reason: open}
rules:
  - name: missing-label
    when: labels["team"] == "a"
    decision: ALLOW
    reason: team a
`)
	d := p.Evaluate(Input{Topic: "job.echo", Prompt: "secret words", Now: t0})
	if d.Decision != Deny || d.Rule != "missing-label" || !strings.Contains(d.Reason, `rule "missing-label" failed to evaluate: no such key: team`) {
		t.Errorf("got %+v", d)
	}
	if strings.Contains(d.Reason, "secret words") {
		t.Errorf("reason quotes the prompt: %q", d.Reason)
	}
	var nilPolicy *Policy
	if d := nilPolicy.Evaluate(Input{Topic: "job.echo"}); d.Decision != Deny {
		t.Errorf("nil policy: %+v", d)
	}
	if (Decision{}).Decision != Deny {
		t.Errorf("the zero Decision must deny")
	}
}

func TestExplain(t *testing.T) {
	p := Default()
	key := "sk-" + "ant-api03-" + fake(60, b64URLChars, 93) + "AA"
	e := p.Explain(Input{JobID: "j1", Topic: "job.echo", Tenant: "acme", Prompt: "use " + key, Now: t0})
	if e.Decision.Decision != Deny || e.Decision.Rule != "deny-credentials" || e.DefaultUsed {
		t.Fatalf("decision %+v", e.Decision)
	}
	type row struct {
		name             string
		matched, decided bool
	}
	var got []row
	for _, r := range e.Rules {
		got = append(got, row{r.name(), r.Matched, r.Decided})
	}
	want := []row{
		{"deny-sys-destroy", false, false},
		{"deny-sys-topics", false, false},
		{"deny-oversized-prompt", false, false},
		{"deny-credentials", true, true},
		{"deny-code-untrusted-tenant", false, false},
		{"allow-jobs", true, false}, // evaluated and shown, but shadowed
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rules:\n got %v\nwant %v", got, want)
	}
	if fmt.Sprint(e.CredentialKinds) != "[anthropic_api_key]" {
		t.Errorf("CredentialKinds = %v", e.CredentialKinds)
	}
	text := e.String()
	out, _ := json.Marshal(e)
	for _, s := range []string{text, string(out)} {
		if strings.Contains(s, key) || strings.Contains(s, "ant-api03") {
			t.Errorf("explanation leaks the prompt:\n%s", s)
		}
	}
	for _, part := range []string{"=> deny-credentials", "allow-jobs", "decision: DENY (rule deny-credentials)", "credentials in prompt: anthropic_api_key"} {
		if !strings.Contains(text, part) {
			t.Errorf("String() lacks %q:\n%s", part, text)
		}
	}
	if !strings.Contains(string(out), `"decision":"DENY"`) {
		t.Errorf("JSON lacks the decision name: %s", out)
	}

	// No rule matches: the default is used. An erroring rule is reported.
	q := mustParse(t, `version: 1
name: x
default: {decision: DENY, reason: none}
rules:
  - {name: needs-label, when: 'labels["x"] == "y"', decision: ALLOW, reason: r}
`)
	e = q.Explain(Input{Topic: "job.echo", Now: t0})
	if !e.Rules[0].Decided || e.Rules[0].Error == "" || e.Decision.Rule != "needs-label" {
		t.Errorf("erroring rule: %+v", e)
	}
	e = q.Explain(Input{Topic: "job.echo", Labels: map[string]string{"x": "z"}, Now: t0})
	if !e.DefaultUsed || e.Decision.Rule != "default" {
		t.Errorf("default: %+v", e)
	}
}

// name returns the rule name of a trace (a helper so the table reads well).
func (t RuleTrace) name() string { return t.Name }

func TestDefaultPolicy(t *testing.T) {
	p := Default()
	if p.Name() != "default" || p.Hash() != hashOf(DefaultYAML()) {
		t.Fatalf("Default: name %q hash %q", p.Name(), p.Hash())
	}
	for _, tc := range []struct {
		in   Input
		want Kind
		rule string
	}{
		{Input{Topic: "sys.destroy"}, Deny, "deny-sys-destroy"},
		{Input{Topic: "sys.job.submit"}, Deny, "deny-sys-topics"},
		{Input{Topic: "job.echo", PromptSize: 1<<20 + 1}, Deny, "deny-oversized-prompt"},
		{Input{Topic: "job.echo", PromptSize: 1 << 20}, Allow, "allow-jobs"},
		{Input{Topic: "job.echo", Prompt: "how do I rotate my AWS access key?"}, Allow, "allow-jobs"},
		{Input{Topic: "job.echo", Prompt: "key " + "AKIA" + fake(61, base32Chars, 16)}, Deny, "deny-credentials"},
		{Input{Topic: "job.chat.completion", Prompt: typicalPrompt(4096)}, Allow, "allow-jobs"},
		{Input{Topic: "web.fetch"}, Deny, "default"},
		{Input{Topic: ""}, Deny, "default"},
	} {
		tc.in.Now = t0
		if d := p.Evaluate(tc.in); d.Decision != tc.want || d.Rule != tc.rule {
			t.Errorf("%+v: got %s by %q, want %s by %q", tc.in.Topic, d.Decision, d.Rule, tc.want, tc.rule)
		}
	}
	// The corpus through the policy: every positive is denied, every negative allowed.
	for _, c := range credentialCorpus() {
		d := p.Evaluate(Input{Topic: "job.echo", Prompt: c.text, Now: t0})
		if (d.Decision == Deny) != (c.kinds != nil) {
			t.Errorf("corpus %q: %s by %s", c.name, d.Decision, d.Rule)
		}
	}
}

func TestHash(t *testing.T) {
	data, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := "sha256:" + hex.EncodeToString(sum[:])[:12]
	a, b := mustLoad(t, "testdata/valid.yaml"), mustParse(t, string(data))
	if a.Hash() != want || b.Hash() != want {
		t.Errorf("Hash = %q and %q, want %q", a.Hash(), b.Hash(), want)
	}
	c := mustParse(t, string(data)+"\n# a comment changes the file, so the hash\n")
	if c.Hash() == want {
		t.Errorf("a different file has the same hash %q", want)
	}
	if got := hashOf([]byte("version: 1\n")); got != "sha256:"+hexSum("version: 1\n")[:12] || len(got) != len("sha256:")+12 {
		t.Errorf("hashOf = %q", got)
	}
	if a, b := Default(), Default(); a.Hash() != b.Hash() {
		t.Errorf("Default hash is not stable: %s, %s", a.Hash(), b.Hash())
	}
}

func hexSum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestKind(t *testing.T) {
	for _, k := range []Kind{Allow, Deny, RequireApproval, Throttle} {
		got, err := ParseKind(k.String())
		if err != nil || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k.String(), got, err)
		}
	}
	if _, err := ParseKind("allow"); err == nil {
		t.Errorf("ParseKind accepts lower case")
	}
	if Kind(9).String() != "Kind(9)" {
		t.Errorf("unknown kind string %q", Kind(9))
	}
	if _, err := Kind(9).MarshalText(); err == nil {
		t.Errorf("MarshalText of an unknown kind succeeds")
	}
}

func TestConcurrentEvaluate(t *testing.T) {
	p := mustLoad(t, "testdata/valid.yaml")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				in := Input{Topic: "job.chat.x", Tenant: fmt.Sprint("t", g), Prompt: typicalPrompt(200), Now: t0.Add(time.Duration(i) * time.Millisecond)}
				p.Evaluate(in)
				p.Explain(in)
				Default().Evaluate(in)
			}
		})
	}
	wg.Wait()
}

// Errors come out by line, whatever order the parser met them in (a
// rule's decision is checked before its when).
func TestParseErrorsAreInLineOrder(t *testing.T) {
	_, err := Parse("p.yaml", []byte(`version: 1
name: p
default: {decision: ALLOW, reason: ok}
rules:
  - name: b
    decision: NOPE
    reason: y
`))
	if err == nil {
		t.Fatal("a rule with an unknown decision and no when parsed")
	}
	got := err.Error()
	when, decision := strings.Index(got, "p.yaml:5:"), strings.Index(got, "p.yaml:6:")
	if when < 0 || decision < 0 || when > decision {
		t.Errorf("errors not in line order:\n%s", got)
	}
}

// A policy reloaded, or tried as a shadow, goes on from the buckets of
// the identical THROTTLE rules of the one in force, not from full ones;
// a rule whose rate changed starts afresh.
func TestInheritCarriesTheBucketsOfIdenticalThrottleRules(t *testing.T) {
	prev := mustLoad(t, "testdata/valid.yaml")
	in := Input{Topic: "job.chat.gpt", Tenant: "acme", Now: t0}
	for range 10 {
		prev.Evaluate(in)
	}
	if d := prev.Evaluate(in); d.Decision != Deny {
		t.Fatalf("11th job: %+v, want the burst spent", d)
	}
	same := mustLoad(t, "testdata/valid.yaml")
	same.Inherit(prev)
	if d := same.Evaluate(in); d.Decision != Deny || d.Rule != "throttle-chat" {
		t.Errorf("the same policy reloaded: %+v, want DENY by throttle-chat (the bucket it inherited is empty)", d)
	}
	if d := same.Evaluate(Input{Topic: "job.chat.gpt", Tenant: "other", Now: t0}); d.Decision != Allow {
		t.Errorf("another tenant after the reload: %+v, want ALLOW", d)
	}

	data, err := os.ReadFile("testdata/valid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	changed, err := Parse("changed.yaml", bytes.Replace(data, []byte("burst: 10"), []byte("burst: 11"), 1))
	if err != nil {
		t.Fatal(err)
	}
	changed.Inherit(prev)
	if d := changed.Evaluate(in); d.Decision != Allow {
		t.Errorf("the rule with another rate: %+v, want ALLOW from a full bucket", d)
	}
}
