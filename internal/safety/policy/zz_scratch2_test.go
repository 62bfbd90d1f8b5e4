package policy

import "testing"

func TestScratchLint(t *testing.T) {
	p := mustParse(t, `version: 1
name: lint
default: {decision: ALLOW, reason: open}
rules:
  - {name: a, when: 'topic == "x"', decision: DENY, reason: r}
  - name: b
    when: |
      topic   ==
        "x"
    decision: ALLOW
    reason: r
  - {name: f, when: '1 == 2 || false', decision: DENY, reason: r}
  - {name: c, when: 'true || topic == "y"', decision: DENY, reason: r}
  - {name: d, when: 'has_credentials(prompt)', decision: DENY, reason: r}
`)
	for _, w := range p.Lint() {
		t.Log(w)
	}
	for _, w := range Default().Lint() {
		t.Error(w)
	}
}
