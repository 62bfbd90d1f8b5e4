package policy

import (
	"strings"
	"testing"
)

// TestCELErrorOncePerLine checks that an undeclared function used several
// times in a rule's condition is reported once per line, not once per use:
// CEL gives an error at every column, and the reported line has no column.
func TestCELErrorOncePerLine(t *testing.T) {
	const src = `version: 1
name: splitter
default: {decision: DENY, reason: "no rule allows this job"}
rules:
  - name: long-prompts
    when: prompt.split(" ").size() > 3 || prompt.split(",").size() > 3 || prompt.split(";").size() > 3
    decision: REQUIRE_APPROVAL
    reason: "long prompts need a human"
  - name: block
    when: |
      prompt.split(" ").size() > 3
        && prompt.split(",").size() > 3 && topc == "x" && prompt.split(";").size() > 1
    decision: DENY
    reason: "two lines"
`
	_, err := Parse("split.yaml", []byte(src))
	if err == nil {
		t.Fatal("Parse succeeded, want errors for the undeclared split")
	}
	want := []string{
		`split.yaml:6: rule "long-prompts": when: ERROR: undeclared reference to 'split'`,
		`split.yaml:11: rule "block": when: ERROR: undeclared reference to 'split'`,
		`split.yaml:12: rule "block": when: ERROR: undeclared reference to 'split'`,
		`split.yaml:12: rule "block": when: ERROR: undeclared reference to 'topc' (did you mean 'topic'?)`,
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}
