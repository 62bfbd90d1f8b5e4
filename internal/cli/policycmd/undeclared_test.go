package policycmd

import (
	"strings"
	"testing"
)

// splitError is the one line check and test print for testdata/split.yaml.
const splitError = `testdata/split.yaml:8: rule "long-prompts": when: ERROR: undeclared reference to 'split'` + "\n"

// TestCheckUndeclaredFunctionOnce checks that a function used three times
// on a line but not declared is one problem, printed once.
func TestCheckUndeclaredFunctionOnce(t *testing.T) {
	f, out, errOut := factory("")
	err := checkRun(&CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, Files: []string{"testdata/split.yaml"}})
	if !isUsage(err) {
		t.Fatalf("err = %v (%T), want a usage error (exit 2)", err, err)
	}
	if errOut.String() != splitError {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, splitError)
	}
	if out.Len() != 0 {
		t.Errorf("stdout:\n%s", out)
	}
}

// TestTestUndeclaredFunctionOnce checks the same for policy test, whose
// summary counts the problems.
func TestTestUndeclaredFunctionOnce(t *testing.T) {
	f, _, errOut := factory("")
	err := testRun(&TestOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, PolicyFile: "testdata/split.yaml", CasesFile: "testdata/cases.yaml"})
	if !isUsage(err) || !strings.HasPrefix(err.Error(), "policy testdata/split.yaml has 1 error (listed above); ") {
		t.Errorf("err = %v (%T), want a usage error counting 1 error", err, err)
	}
	if errOut.String() != splitError {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, splitError)
	}
}
