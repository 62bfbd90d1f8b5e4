package policycmd

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestTestFlags(t *testing.T) {
	f, _, _ := factory("")
	var got *TestOptions
	runF := func(o *TestOptions) error { got = o; return nil }
	if err := execute(NewCmdTest(f, runF), "p.yaml", "c.yaml", "--run", "^echo"); err != nil {
		t.Fatal(err)
	}
	want := TestOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, PolicyFile: "p.yaml", CasesFile: "c.yaml", Run: "^echo"}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("options %+v, want %+v", *got, want)
	}
	if err := execute(NewCmdTest(f, runF), "-", "c.yaml"); err != nil || got.PolicyFile != "-" || got.Run != "" {
		t.Errorf("test - c.yaml: %+v, %v", got, err)
	}
	for _, args := range [][]string{{}, {"p.yaml"}, {"p.yaml", "c.yaml", "x.yaml"}, {"-", "-"}, {"p.yaml", "c.yaml", "--run"}} {
		got = nil
		err := execute(NewCmdTest(f, runF), args...)
		if !isUsage(err) || got != nil {
			t.Errorf("test %q: err %v (%T), ran %v; want a usage error", args, err, err, got != nil)
		}
	}
}

func runTest(t *testing.T, o TestOptions) (string, string, error) {
	t.Helper()
	f, out, errOut := factory("")
	o.In, o.Out, o.ErrOut = f.In, f.Out, f.ErrOut
	err := testRun(&o)
	return out.String(), errOut.String(), err
}

func TestTestPass(t *testing.T) {
	out, errOut, err := runTest(t, TestOptions{PolicyFile: "testdata/policy.yaml", CasesFile: "testdata/cases.yaml"})
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out, errOut)
	}
	want := `ok    sys is denied
ok    big prompts need approval
ok    chat within the burst
ok    chat within the burst again
ok    chat over the rate
ok    another tenant has its own bucket
ok    echo is allowed
ok    blocked tenant falls to the default
PASS (8 cases)
`
	if out != want || errOut != "" {
		t.Errorf("stdout:\n%s\nwant:\n%s\nstderr:\n%s", out, want, errOut)
	}
}

// The example test file of the default policy passes against the shipped
// default.yaml.
func TestTestDefaultPolicy(t *testing.T) {
	out, errOut, err := runTest(t, TestOptions{PolicyFile: "../../safety/policy/default.yaml", CasesFile: "../../safety/policy/testdata/default_cases.yaml"})
	if err != nil || !strings.HasSuffix(out, "\nPASS (14 cases)\n") || errOut != "" {
		t.Errorf("%v\n%s%s", err, out, errOut)
	}
	// The output names the case, never the prompt (nor the key in it).
	if strings.Contains(out, "BEGIN") || strings.Contains(out, "NotARealKey") {
		t.Errorf("output quotes a prompt:\n%s", out)
	}
}

func TestTestFail(t *testing.T) {
	out, errOut, err := runTest(t, TestOptions{PolicyFile: "testdata/policy.yaml", CasesFile: "testdata/failing_cases.yaml"})
	var failed *TestFailedError
	if !errors.As(err, &failed) || isUsage(err) || err.Error() != "2 of 3 cases failed" {
		t.Fatalf("err = %v (%T), want a TestFailedError (exit 1)", err, err)
	}
	want := `ok    echo is allowed
FAIL  web is allowed: got DENY by default (reason: no rule allowed this job), want ALLOW by allow-jobs [testdata/failing_cases.yaml:6]
FAIL  sys by the wrong rule: got DENY by deny-sys (reason: sys.* topics are reserved), want DENY by default [testdata/failing_cases.yaml:9]
FAIL (2 of 3 cases)
`
	if out != want || errOut != "" {
		t.Errorf("stdout:\n%s\nwant:\n%s\nstderr:\n%s", out, want, errOut)
	}
}

func TestTestRunFilter(t *testing.T) {
	out, _, err := runTest(t, TestOptions{PolicyFile: "testdata/policy.yaml", CasesFile: "testdata/failing_cases.yaml", Run: "^echo"})
	if err != nil || out != "ok    echo is allowed\nPASS (1 case)\n" {
		t.Errorf("--run ^echo: %v\n%s", err, out)
	}
	for _, run := range []string{"nothing-matches", "("} {
		_, _, err := runTest(t, TestOptions{PolicyFile: "testdata/policy.yaml", CasesFile: "testdata/cases.yaml", Run: run})
		if !isUsage(err) {
			t.Errorf("--run %q: %v, want a usage error", run, err)
		}
	}
}

func TestTestInvalidFiles(t *testing.T) {
	for _, tc := range []struct {
		name          string
		policy, cases string
		stderr        []string
		err           string
	}{
		{"invalid policy", "testdata/invalid.yaml", "testdata/cases.yaml",
			[]string{`testdata/invalid.yaml:7: rule "typo": when: ERROR: undeclared reference to 'topc'`, `testdata/invalid.yaml:11: rule "expensive"`, `testdata/invalid.yaml:14: rule "no-reason"`},
			"policy testdata/invalid.yaml has 3 errors (listed above); fix them (cortexctl policy check testdata/invalid.yaml checks the policy alone) and run the test again"},
		{"missing policy", "testdata/missing.yaml", "testdata/cases.yaml",
			[]string{"read policy testdata/missing.yaml: open testdata/missing.yaml: no such file or directory"},
			"policy testdata/missing.yaml has 1 error (listed above); "},
		{"invalid cases", "testdata/policy.yaml", "testdata/bad_cases.yaml",
			[]string{
				`testdata/bad_cases.yaml:4: case "no decision": job.priority: must be a whole number from -2147483648 to 2147483647, got "high"`,
				`testdata/bad_cases.yaml:5: case "no decision": want.decision: missing`,
				`testdata/bad_cases.yaml:8: case "throttle": want.decision: a THROTTLE rule decides ALLOW within its rate and DENY over it`,
			},
			"test file testdata/bad_cases.yaml has 3 errors (listed above); fix them and run the test again; 'cortexctl policy test --help' shows the format"},
		{"policy as cases", "testdata/policy.yaml", "testdata/policy.yaml",
			[]string{`testdata/policy.yaml:2: unknown field "version"; known fields are now, cases`},
			"test file testdata/policy.yaml has "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := runTest(t, TestOptions{PolicyFile: tc.policy, CasesFile: tc.cases})
			var inv *InvalidError
			if !isUsage(err) || !errors.As(err, &inv) || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("err = %v (%T), want a usage error starting %q", err, err, tc.err)
			}
			if out != "" {
				t.Errorf("stdout: %q", out)
			}
			lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
			if len(lines) < len(tc.stderr) {
				t.Fatalf("stderr:\n%s", errOut)
			}
			for i, w := range tc.stderr {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("stderr line %d:\n got %q\nwant prefix %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestTestStdin(t *testing.T) {
	data, err := os.ReadFile("testdata/cases.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, out, errOut := factory(string(data))
	if err := execute(NewCmdPolicy(f), "test", "testdata/policy.yaml", "-"); err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !strings.HasSuffix(out.String(), "PASS (8 cases)\n") {
		t.Errorf("stdout:\n%s", out)
	}
}
