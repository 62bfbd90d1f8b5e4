package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, that every error is a
// file:line error, and that a policy that loads also evaluates.
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
