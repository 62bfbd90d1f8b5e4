package policycmd

import (
	"fmt"
	"io"
	"regexp"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

// TestOptions are `policy test`'s inputs.
type TestOptions struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// PolicyFile and CasesFile are the arguments; one of them may be "-"
	// for standard input.
	PolicyFile string
	CasesFile  string
	// Run, if set, selects the cases whose name it matches.
	Run string
}

// NewCmdTest returns `policy test`. runF replaces testRun in tests that
// only check flag parsing.
func NewCmdTest(f *cmdutil.Factory, runF func(*TestOptions) error) *cobra.Command {
	o := &TestOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:   "test FILE CASES",
		Short: "Run a policy against test cases, without a server",
		Long: `Evaluate the policy in FILE for every job in the test file CASES, exactly as
the safety kernel would, and compare each decision (and, if given, the rule
that made it) with the one wanted. Prints ok or FAIL per case and a summary.

CASES is YAML:

  now: 2026-11-22T12:00:00Z          # optional default time of every case
  cases:
    - name: echo is allowed
      job: {topic: job.echo, tenant: acme, prompt: "hello", labels: {team: ml}, priority: 1, attempt: 1}
      want: {decision: ALLOW, rule: allow-jobs}    # rule is optional
    - name: destroy is denied
      job: {topic: sys.destroy}
      want: {decision: DENY, rule: deny-sys-destroy}

Job fields left out are "" (topic, tenant, prompt), none (labels), 0
(priority), 1 (attempt), the prompt's length (prompt_size: set it to test
size limits without a large prompt) and the current time (now, RFC 3339).
Wanted decisions are ALLOW, DENY or REQUIRE_APPROVAL; a THROTTLE rule decides
ALLOW within its rate and DENY over it. Cases run in order against one
policy, so throttle buckets carry over from case to case.

FILE or CASES may be - for standard input. Exit status: 0 when every case
passes, 1 when one fails, 2 when FILE or CASES is invalid.`,
		Example: `  cortexctl policy test policy.yaml policy_cases.yaml
  cortexctl policy test policy.yaml policy_cases.yaml --run 'credential'
  cortexctl policy check policy.yaml && cortexctl policy test policy.yaml policy_cases.yaml && cortexctl policy apply policy.yaml`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return &cmdutil.UsageError{Err: fmt.Errorf("policy test needs a policy FILE and a CASES file, got %s; e.g. cortexctl policy test policy.yaml policy_cases.yaml", plural(len(args), "argument", "arguments"))}
			}
			return oneStdin(args)
		},
		ValidArgsFunction: yamlFiles,
		RunE: func(_ *cobra.Command, args []string) error {
			o.PolicyFile, o.CasesFile = args[0], args[1]
			if runF != nil {
				return runF(o)
			}
			return testRun(o)
		},
	}
	cmd.Flags().StringVar(&o.Run, "run", "", "run only the cases whose name matches this regular expression")
	return cmd
}

// TestFailedError reports cases whose decision was not the one wanted
// (exit 1).
type TestFailedError struct {
	Failed, Total int
}

func (e *TestFailedError) Error() string {
	return fmt.Sprintf("%d of %s failed", e.Failed, plural(e.Total, "case", "cases"))
}

func testRun(o *TestOptions) error {
	var sel *regexp.Regexp
	if o.Run != "" {
		re, err := regexp.Compile(o.Run)
		if err != nil {
			return &cmdutil.UsageError{Err: fmt.Errorf("--run: %w", err)}
		}
		sel = re
	}
	p, name, err := readPolicyArg(o.In, o.PolicyFile)
	if err != nil {
		n := printErrors(o.ErrOut, err)
		return invalid(fmt.Sprintf("policy %s has %s", name, plural(n, "error", "errors")),
			"fix them (cortexctl policy check "+o.PolicyFile+" checks the policy alone) and run the test again")
	}
	cases, casesName, err := readCasesArg(o.In, o.CasesFile)
	if err != nil {
		n := printErrors(o.ErrOut, err)
		return invalid(fmt.Sprintf("test file %s has %s", casesName, plural(n, "error", "errors")),
			"fix them and run the test again; 'cortexctl policy test --help' shows the format")
	}
	total, failed := 0, 0
	for i := range cases {
		c := &cases[i]
		if sel != nil && !sel.MatchString(c.Name) {
			continue
		}
		total++
		got, ok := c.Run(p)
		if ok {
			fmt.Fprintf(o.Out, "ok    %s\n", c.Name)
			continue
		}
		failed++
		fmt.Fprintf(o.Out, "FAIL  %s: got %s by %s (reason: %s), want %s [%s:%d]\n",
			c.Name, got.Decision, got.Rule, got.Reason, c.Want, casesName, c.Line)
	}
	switch {
	case total == 0:
		return &cmdutil.UsageError{Err: fmt.Errorf("no case in %s matches --run %q; its cases are named by their name: field", casesName, o.Run)}
	case failed > 0:
		fmt.Fprintf(o.Out, "FAIL (%d of %s)\n", failed, plural(total, "case", "cases"))
		return &TestFailedError{Failed: failed, Total: total}
	}
	fmt.Fprintf(o.Out, "PASS (%s)\n", plural(total, "case", "cases"))
	return nil
}
