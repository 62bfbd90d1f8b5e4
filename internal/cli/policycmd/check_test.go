package policycmd

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

func factory(stdin string) (*cmdutil.Factory, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &cmdutil.Factory{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut}, &out, &errOut
}

// execute runs cmd with args as cortexctl's root would: errors not
// printed, a bad flag a usage error.
func execute(cmd *cobra.Command, args ...string) error {
	cmd.SetArgs(args)
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &cmdutil.UsageError{Err: err} })
	return cmd.Execute()
}

func isUsage(err error) bool {
	var u *cmdutil.UsageError
	return errors.As(err, &u)
}

func TestCheckFlags(t *testing.T) {
	f, _, _ := factory("")
	var got *CheckOptions
	runF := func(o *CheckOptions) error { got = o; return nil }
	if err := execute(NewCmdCheck(f, runF), "a.yaml", "b.yaml", "--strict"); err != nil {
		t.Fatal(err)
	}
	want := CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, Files: []string{"a.yaml", "b.yaml"}, Strict: true}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("options %+v, want %+v", *got, want)
	}
	if err := execute(NewCmdCheck(f, runF), "-"); err != nil || got.Strict || !reflect.DeepEqual(got.Files, []string{"-"}) {
		t.Errorf("check -: %+v, %v", got, err)
	}
	for _, args := range [][]string{{}, {"-", "-"}, {"a.yaml", "--strictt"}, {"a.yaml", "--strict=maybe"}} {
		got = nil
		err := execute(NewCmdCheck(f, runF), args...)
		if !isUsage(err) || got != nil {
			t.Errorf("check %q: err %v (%T), ran %v; want a usage error", args, err, err, got != nil)
		}
	}
}

func TestCheckValid(t *testing.T) {
	f, out, errOut := factory("")
	err := checkRun(&CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, Files: []string{"testdata/policy.yaml", "../../safety/policy/default.yaml"}})
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^ok  testdata/policy\.yaml  policy example, 4 rules, hash sha256:[0-9a-f]{12}\n` +
		`ok  \.\./\.\./safety/policy/default\.yaml  policy default, 6 rules, hash sha256:[0-9a-f]{12}\n$`)
	if !re.MatchString(out.String()) {
		t.Errorf("stdout:\n%s", out)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr:\n%s", errOut)
	}
}

func TestCheckStdin(t *testing.T) {
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, out, _ := factory(string(data))
	if err := execute(NewCmdPolicy(f), "check", "-"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "ok  <stdin>  policy example, 4 rules, hash sha256:") {
		t.Errorf("stdout: %q", out)
	}
	f, _, errOut := factory("version: 1\nname: x\n")
	if err := execute(NewCmdPolicy(f), "check", "-"); !isUsage(err) || !strings.HasPrefix(errOut.String(), "<stdin>:1: default: missing") {
		t.Errorf("invalid stdin: %v\n%s", err, errOut)
	}
}

func TestCheckInvalid(t *testing.T) {
	f, out, errOut := factory("")
	err := checkRun(&CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, Files: []string{"testdata/invalid.yaml", "testdata/policy.yaml", "testdata/missing.yaml"}})
	var inv *InvalidError
	if !isUsage(err) || !errors.As(err, &inv) {
		t.Fatalf("err = %v (%T), want a usage error (exit 2)", err, err)
	}
	if want := "2 of 3 policy files have errors (listed above); fix them and run 'cortexctl policy check' again"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	// The good file is still reported.
	if !strings.HasPrefix(out.String(), "ok  testdata/policy.yaml  policy example") || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("stdout:\n%s", out)
	}
	lines := strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n")
	want := []string{
		`testdata/invalid.yaml:7: rule "typo": when: ERROR: undeclared reference to 'topc' (did you mean 'topic'?)`,
		`testdata/invalid.yaml:11: rule "expensive": when: worst-case cost 8.6e+07 is over the limit of 1e+06; simplify the expression: `,
		`testdata/invalid.yaml:14: rule "no-reason": reason: missing`,
		`read policy testdata/missing.yaml: open testdata/missing.yaml: no such file or directory`,
	}
	if len(lines) != len(want) {
		t.Fatalf("stderr has %d lines, want %d:\n%s", len(lines), len(want), errOut)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("stderr line %d:\n got %q\nwant prefix %q", i, lines[i], want[i])
		}
	}
}

func TestCheckWarnings(t *testing.T) {
	for _, strict := range []bool{false, true} {
		f, out, errOut := factory("")
		err := checkRun(&CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut, Files: []string{"testdata/warnings.yaml"}, Strict: strict})
		if !strings.HasPrefix(out.String(), "ok  testdata/warnings.yaml  policy warnings, 4 rules, hash sha256:") {
			t.Errorf("stdout: %q", out)
		}
		want := []string{
			"testdata/warnings.yaml:4: warning: default: ALLOW allows every job that no rule matches; there is no implicit deny.",
			`testdata/warnings.yaml:11: warning: rule "deny-sys-again": never decides: its condition is the same as rule "deny-sys" on line 7`,
			`testdata/warnings.yaml:18: warning: rule "allow-jobs": unreachable: rule "everything" on line 14 matches every job`,
		}
		lines := strings.Split(strings.TrimSuffix(errOut.String(), "\n"), "\n")
		if len(lines) != len(want) {
			t.Fatalf("stderr has %d lines, want %d:\n%s", len(lines), len(want), errOut)
		}
		for i := range want {
			if !strings.HasPrefix(lines[i], want[i]) {
				t.Errorf("stderr line %d:\n got %q\nwant prefix %q", i, lines[i], want[i])
			}
		}
		switch {
		case !strict && err != nil:
			t.Errorf("warnings without --strict: %v, want success", err)
		case strict && (!isUsage(err) || err.Error() != "3 warnings with --strict (listed above); fix them, or run without --strict to accept them"):
			t.Errorf("warnings with --strict: %v (%T), want a usage error", err, err)
		}
	}
}

func TestPolicyGroup(t *testing.T) {
	f, _, _ := factory("")
	extra := &cobra.Command{Use: "show", Short: "s", Long: "l", Example: "e", Run: func(*cobra.Command, []string) {}}
	cmd := NewCmdPolicy(f, extra)
	var names []string
	for _, c := range cmd.Commands() {
		names = append(names, c.Name())
	}
	if !reflect.DeepEqual(names, []string{"check", "show", "test"}) { // cobra sorts them
		t.Errorf("subcommands %v", names)
	}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%s lacks Short, Long or Example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(NewCmdPolicy(f))
}
