package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, that every error is a
// file:line error, and that a policy that loads also evaluates and lints.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add(DefaultYAML())
	f.Add([]byte("version: 1\nname: x\ndefault: {decision: DENY, reason: r}\nrules:\n  - {name: a, when: 'labels.all(k, k.size() > prompt_size)', decision: THROTTLE, rate: {per_second: 1e-300, burst: 1}, reason: r}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		in := Input{Topic: "job.echo", Tenant: "t", Labels: map[string]string{"a": "b"}, Prompt: "hello", Now: t0}
		d := p.Evaluate(in)
		if d.Decision == Throttle || d.Rule == "" || d.Reason == "" || d.PolicyHash != p.Hash() {
			t.Fatalf("bad decision %+v", d)
		}
		if e := p.Explain(in); len(e.Rules) != len(p.rules) {
			t.Fatalf("Explain has %d rules, policy %d", len(e.Rules), len(p.rules))
		}
		for _, w := range p.Lint() {
			if w.File != "fuzz.yaml" || w.Line < 1 || w.Msg == "" {
				t.Fatalf("bad warning %+v", w)
			}
		}
	})
}

// FuzzDetector checks that the credential detector does not panic and
// that its two entry points agree.
func FuzzDetector(f *testing.F) {
	for _, c := range credentialCorpus() {
		f.Add(c.text)
	}
	f.Add(typicalPrompt(300))
	f.Add("-----BEGIN PRIVATE KEY-----\\n\\n\\n")
	f.Fuzz(func(t *testing.T, s string) {
		kinds := CredentialKinds(s)
		if HasCredentials(s) != (len(kinds) > 0) {
			t.Fatalf("HasCredentials and CredentialKinds disagree: %q", kinds)
		}
		if !slices.IsSorted(kinds) || len(slices.Compact(slices.Clone(kinds))) != len(kinds) {
			t.Fatalf("kinds not sorted and unique: %q", kinds)
		}
		for _, k := range kinds {
			if !slices.Contains(credKindNames[:], k) {
				t.Fatalf("unknown kind %q", k)
			}
		}
	})
}

// FuzzParseCases checks that no test file makes ParseCases panic, that
// every error is a file:line error, and that parsed cases are usable:
// named, with a decision Evaluate can return and a size no smaller than
// the prompt.
func FuzzParseCases(f *testing.F) {
	if data, err := os.ReadFile("testdata/default_cases.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("cases: [{name: a, job: {topic: job.echo, labels: {a: b}, priority: -1, attempt: 2, prompt_size: 0x10, now: 2026-11-22T12:00:00Z}, want: {decision: ALLOW, rule: r}}]\n"))
	f.Add([]byte("now: 2026-01-01T00:00:00Z\ncases:\n  - name: x\n    job: {prompt: |\n      hi\n    }\n    want: {decision: THROTTLE}\n"))
	f.Add([]byte("cases: [&a {name: a}, *a]\n"))
	p := Default()
	f.Fuzz(func(t *testing.T, data []byte) {
		cases, err := ParseCases("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml:") {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		if len(cases) == 0 {
			t.Fatal("no error and no cases")
		}
		for _, c := range cases {
			if c.Name == "" || c.Line < 1 || c.Want.Decision == Throttle || c.Input.PromptSize < uint64(len(c.Input.Prompt)) || c.Input.Attempt < 1 {
				t.Fatalf("bad case %+v", c)
			}
			if d, _ := c.Run(p); d.Rule == "" {
				t.Fatalf("decision without a rule: %+v", d)
			}
		}
	})
}
