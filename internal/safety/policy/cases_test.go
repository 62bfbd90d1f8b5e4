package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The example test file exercises every rule of the default policy.
func TestDefaultCases(t *testing.T) {
	cases, err := LoadCases("testdata/default_cases.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := Default()
	decided := map[string]bool{}
	for _, c := range cases {
		got, ok := c.Run(p)
		if !ok {
			t.Errorf("%s (line %d): got %s by %s (%s), want %s", c.Name, c.Line, got.Decision, got.Rule, got.Reason, c.Want)
		}
		decided[got.Rule] = true
	}
	for _, r := range p.rules {
		if !decided[r.name] {
			t.Errorf("no case is decided by rule %q", r.name)
		}
	}
	if !decided[DefaultRuleName] {
		t.Errorf("no case is decided by the default")
	}
}

func TestParseCases(t *testing.T) {
	cases, err := ParseCases("cases.yaml", []byte(`now: 2026-11-22T12:00:00Z
cases:
  - name: full
    job: {topic: job.echo, tenant: acme, prompt: "hello", labels: {team: ml, "n": "1"}, priority: -2, attempt: 3, prompt_size: 0x10, now: 2026-11-22T23:30:00+01:00}
    want: {decision: REQUIRE_APPROVAL, rule: big}
  - name: defaults
    job: {}
    want: {decision: ALLOW}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 2 {
		t.Fatalf("%d cases", len(cases))
	}
	full := cases[0]
	in := full.Input
	if full.Name != "full" || full.Line != 3 || in.Topic != "job.echo" || in.Tenant != "acme" || in.Prompt != "hello" ||
		in.Labels["team"] != "ml" || in.Labels["n"] != "1" || in.Priority != -2 || in.Attempt != 3 || in.PromptSize != 16 ||
		!in.Now.Equal(time.Date(2026, 11, 22, 22, 30, 0, 0, time.UTC)) {
		t.Errorf("full case: %+v", full)
	}
	if full.Want != (Want{Decision: RequireApproval, Rule: "big"}) || full.Want.String() != "REQUIRE_APPROVAL by big" {
		t.Errorf("want: %+v", full.Want)
	}
	def := cases[1]
	if def.Input.Attempt != 1 || def.Input.PromptSize != 0 || !def.Input.Now.Equal(t0) || def.Want.String() != "ALLOW" {
		t.Errorf("defaults: %+v", def)
	}
	// prompt_size defaults to the prompt's length.
	cases, err = ParseCases("c.yaml", []byte("cases: [{name: a, job: {prompt: \"héllo\"}, want: {decision: DENY}}]\n"))
	if err != nil || cases[0].Input.PromptSize != 6 || !cases[0].Input.Now.IsZero() {
		t.Errorf("prompt_size default: %+v, %v", cases, err)
	}
}

func TestParseCasesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"empty", "", []string{"c.yaml:1: test file is empty"}},
		{"bad yaml", "cases: [\n", []string{"c.yaml:1: invalid YAML: "}},
		{"not a mapping", "- a\n", []string{"c.yaml:1: a test file must be a YAML mapping"}},
		{"no cases", "cases: []\n", []string{"c.yaml:1: cases: no cases; add at least one"}},
		{"unknown top field", "policy: x\ncases: [{name: a, job: {}, want: {decision: DENY}}]\n", []string{`c.yaml:1: unknown field "policy"; known fields are now, cases`}},
		{"bad now", "now: yesterday\ncases: [{name: a, job: {}, want: {decision: DENY}}]\n", []string{`c.yaml:1: now: must be an RFC 3339 time such as 2026-11-22T23:00:00Z, got "yesterday"`}},
		{"two documents", "cases: [{name: a, job: {}, want: {decision: DENY}}]\n---\ncases: []\n", []string{"c.yaml:2: a test file holds one YAML document"}},
		{"case errors", `cases:
  - name: a
    job: {topic: job.echo, priority: "1", attempt: 0, labels: [x], colour: red}
    want: {decision: THROTTLE}
  - name: a
    job: {prompt: "hello", prompt_size: 2, now: "noon", tenant: ~}
    want: {decision: MAYBE, rule: "no spaces"}
  - job: {topic: [a]}
  - name: no-want
    job: {topic: job.x, labels: {a: {b: c}}, priority: 2147483648}
  - just a string
  - &anchor {name: anchored, job: {}, want: {decision: DENY}}
`, []string{
			`c.yaml:3: case "a": unknown field "job.colour"; known fields are topic, tenant, labels, priority, attempt, prompt, prompt_size, now`,
			`c.yaml:3: case "a": job.priority: must be a whole number from -2147483648 to 2147483647, got "1"`,
			`c.yaml:3: case "a": job.attempt: must be a whole number from 1 to 4294967295, got 0`,
			`c.yaml:3: case "a": job.labels: must be a mapping of strings`,
			`c.yaml:4: case "a": want.decision: a THROTTLE rule decides ALLOW within its rate and DENY over it`,
			`c.yaml:5: case "a": name: duplicate case name; it is first used on line 2`,
			`c.yaml:6: case "a": job.tenant: must be a string; write "" for an empty one`,
			`c.yaml:6: case "a": job.prompt_size: 2 is less than the 5 bytes of the prompt`,
			`c.yaml:6: case "a": job.now: must be an RFC 3339 time`,
			`c.yaml:7: case "a": want.decision: unknown decision "MAYBE": use ALLOW, DENY or REQUIRE_APPROVAL`,
			`c.yaml:7: case "a": want.rule: "no spaces" is not a rule name`,
			`c.yaml:8: case #3: name: missing`,
			`c.yaml:8: case #3: job.topic: must be a single value, not a list or mapping`,
			`c.yaml:8: case #3: want: missing; e.g. want: {decision: ALLOW, rule: allow-jobs}`,
			`c.yaml:10: case "no-want": job.priority: must be a whole number from -2147483648 to 2147483647, got 2147483648`,
			`c.yaml:10: case "no-want": job.labels.a: must be a single value, not a list or mapping`,
			`c.yaml:9: case "no-want": want: missing`,
			`c.yaml:11: case #5: must be a mapping with name, job and want`,
			`c.yaml:12: case #6: YAML anchors, aliases and merge keys are not supported`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCases("c.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("ParseCases succeeded, want %q", tc.want)
			}
			var le *LoadError
			if !errors.As(err, &le) {
				t.Errorf("error %T is not a *LoadError", err)
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Errorf("got %d errors, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, want := range tc.want {
				if i >= len(lines) || !strings.HasPrefix(lines[i], want) {
					t.Errorf("error %d:\n got %q\nwant prefix %q", i, at(lines, i), want)
				}
			}
		})
	}
	if _, err := LoadCases("testdata/missing.yaml"); err == nil || !strings.HasPrefix(err.Error(), "read test cases testdata/missing.yaml: ") {
		t.Errorf("missing file: %v", err)
	}
	big := "cases: [{name: a, job: {prompt: \"" + strings.Repeat("a", maxCasesBytes) + "\"}, want: {decision: DENY}}]"
	if _, err := ParseCases("c.yaml", []byte(big)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

func TestCaseRun(t *testing.T) {
	p := mustLoad(t, "testdata/valid.yaml")
	for _, tc := range []struct {
		c  Case
		ok bool
	}{
		{Case{Input: Input{Topic: "sys.destroy", Now: t0}, Want: Want{Decision: Deny}}, true},
		{Case{Input: Input{Topic: "sys.destroy", Now: t0}, Want: Want{Decision: Deny, Rule: "deny-sys-destroy"}}, true},
		{Case{Input: Input{Topic: "sys.destroy", Now: t0}, Want: Want{Decision: Deny, Rule: "default"}}, false},
		{Case{Input: Input{Topic: "sys.destroy", Now: t0}, Want: Want{Decision: Allow}}, false},
		{Case{Input: Input{Topic: "web.x", Now: t0}, Want: Want{Decision: Deny, Rule: "default"}}, true},
	} {
		if got, ok := tc.c.Run(p); ok != tc.ok {
			t.Errorf("%+v: got %+v, ok = %v", tc.c, got, ok)
		}
	}
}
