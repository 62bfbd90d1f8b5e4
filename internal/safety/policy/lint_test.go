package policy

import (
	"strings"
	"testing"
)

func TestLint(t *testing.T) {
	p := mustLoad(t, "testdata/lint_warnings.yaml")
	var got []string
	for _, w := range p.Lint() {
		got = append(got, w.String())
	}
	want := []string{
		"testdata/lint_warnings.yaml:5: warning: default: ALLOW allows every job that no rule matches; there is no implicit deny.",
		`testdata/lint_warnings.yaml:13: warning: rule "deny-sys-again": never decides: its condition is the same as rule "deny-sys" on line 9, which is tried first;`,
		`testdata/lint_warnings.yaml:17: warning: rule "never": never matches: its condition is always false;`,
		`testdata/lint_warnings.yaml:24: warning: rule "allow-jobs": unreachable: rule "catch-all" on line 20 matches every job`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d warnings, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %d:\n got %q\nwant prefix %q", i, got[i], want[i])
		}
	}

	for _, clean := range []*Policy{Default(), mustLoad(t, "testdata/valid.yaml")} {
		if ws := clean.Lint(); len(ws) != 0 {
			t.Errorf("%s: unexpected warnings %v", clean.Source(), ws)
		}
	}
	if (*Policy)(nil).Lint() != nil {
		t.Errorf("nil policy has warnings")
	}
}

func TestLintCases(t *testing.T) {
	const head = "version: 1\nname: t\ndefault: {decision: DENY, reason: no}\nrules:\n"
	for _, tc := range []struct {
		name  string
		rules string
		want  []string // substrings of each warning, in order
	}{
		{"clean", "  - {name: a, when: 'topic == \"x\"', decision: DENY, reason: r}\n  - {name: b, when: 'topic == \"y\"', decision: DENY, reason: r}\n", nil},
		{"folded true", "  - {name: a, when: 'true || topic == \"x\"', decision: DENY, reason: r}\n  - {name: b, when: 'topic == \"y\"', decision: DENY, reason: r}\n  - {name: c, when: 'topic == \"z\"', decision: DENY, reason: r}\n",
			[]string{`rule "b": unreachable: rule "a" on line 5`, `rule "c": unreachable: rule "a" on line 5`}},
		{"last rule true is fine", "  - {name: a, when: 'topic == \"x\"', decision: ALLOW, reason: r}\n  - {name: rest, when: 'true', decision: DENY, reason: r}\n", nil},
		{"same condition after throttle", "  - {name: a, when: 'topic == \"x\"', decision: THROTTLE, rate: {per_second: 1, burst: 1}, reason: r}\n  - {name: b, when: \"topic=='x'\", decision: DENY, reason: r}\n",
			[]string{`rule "b": never decides: its condition is the same as rule "a" on line 5`}},
		{"constant false", "  - {name: a, when: 'size(\"ab\") == 3', decision: DENY, reason: r}\n", []string{`rule "a": never matches`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws := mustParse(t, head+tc.rules).Lint()
			if len(ws) != len(tc.want) {
				t.Fatalf("got %d warnings %v, want %d", len(ws), ws, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(ws[i].String(), w) {
					t.Errorf("warning %d = %q, want it to contain %q", i, ws[i], w)
				}
			}
		})
	}
}
