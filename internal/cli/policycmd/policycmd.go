// Package policycmd is `cortexctl policy`: it checks and tests safety
// policy files on this machine (check, test; no server needed) and works
// with the policy a running cluster enforces (explain, apply, show). The
// policy language itself — parsing, linting, evaluation, test files —
// belongs to internal/safety/policy; this package only maps flags and
// arguments onto it and prints. It must not evaluate policies any other
// way than the safety kernel does, and never prints prompt text.
package policycmd

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/safety/policy"
)

// NewCmdPolicy returns the `policy` command group with check and test,
// followed by the extra subcommands given.
func NewCmdPolicy(f *cmdutil.Factory, extra ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, test and manage the safety policy",
		Long: `Every job is checked against the safety policy before it runs. A policy is a
YAML file of ordered rules; the first rule whose 'when' (a CEL expression
over topic, tenant, labels, priority, attempt, prompt_size, prompt and now)
is true decides ALLOW, DENY, REQUIRE_APPROVAL or THROTTLE, and a required
default decides the rest. Anything that goes wrong denies (fail closed).

'policy check' and 'policy test' work on files on this machine and need no
server: run them before a policy is applied, and in CI.`,
		Example: `  cortexctl policy check policy.yaml
  cortexctl policy test policy.yaml policy_cases.yaml`,
	}
	cmd.AddCommand(NewCmdCheck(f, nil), NewCmdTest(f, nil))
	cmd.AddCommand(extra...)
	return cmd
}

// stdinName is how standard input ("-") is named in messages.
const stdinName = "<stdin>"

// readPolicyArg loads the policy file arg, or standard input for "-".
func readPolicyArg(in io.Reader, arg string) (*policy.Policy, string, error) {
	if arg != "-" {
		p, err := policy.Load(arg)
		return p, arg, err
	}
	data, err := readStdin(in)
	if err != nil {
		return nil, stdinName, err
	}
	p, err := policy.Parse(stdinName, data)
	return p, stdinName, err
}

// readCasesArg loads the test file arg, or standard input for "-".
func readCasesArg(in io.Reader, arg string) ([]policy.Case, string, error) {
	if arg != "-" {
		cs, err := policy.LoadCases(arg)
		return cs, arg, err
	}
	data, err := readStdin(in)
	if err != nil {
		return nil, stdinName, err
	}
	cs, err := policy.ParseCases(stdinName, data)
	return cs, stdinName, err
}

// maxStdinBytes bounds what is read from standard input: more than the
// policy and test file limits, so that those report the size.
const maxStdinBytes = 16 << 20

func readStdin(in io.Reader) ([]byte, error) {
	if in == nil {
		return nil, errors.New("read standard input: there is none")
	}
	data, err := io.ReadAll(io.LimitReader(in, maxStdinBytes))
	if err != nil {
		return nil, fmt.Errorf("read standard input: %w", err)
	}
	return data, nil
}

// printErrors writes each problem in err on a line of its own and returns
// how many there were. Parse errors already carry file:line.
func printErrors(w io.Writer, err error) int {
	lines := strings.Split(strings.TrimRight(err.Error(), "\n"), "\n")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	return len(lines)
}

// oneStdin refuses "-" for more than one argument: standard input can be
// read once.
func oneStdin(args []string) error {
	n := 0
	for _, a := range args {
		if a == "-" {
			n++
		}
	}
	if n > 1 {
		return &cmdutil.UsageError{Err: errors.New("standard input (-) can stand for only one file; save the others to files")}
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// yamlFiles completes file arguments with YAML files.
func yamlFiles(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
}
