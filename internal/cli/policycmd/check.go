package policycmd

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

// CheckOptions are `policy check`'s inputs.
type CheckOptions struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// Files are the policy files to check; "-" is standard input.
	Files []string
	// Strict makes lint warnings fail the check.
	Strict bool
}

// NewCmdCheck returns `policy check`. runF replaces checkRun in tests that
// only check flag parsing.
func NewCmdCheck(f *cmdutil.Factory, runF func(*CheckOptions) error) *cobra.Command {
	o := &CheckOptions{In: f.In, Out: f.Out, ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:   "check FILE...",
		Short: "Check policy files for errors and likely mistakes, without a server",
		Long: `Compile each policy file as the safety kernel would, and report every problem
as file:line: rule "name": problem. A 'when' expression that could cost more
than the CEL cost limit on the largest job the gateway accepts (nested
comprehensions over labels, scans of the prompt inside a comprehension) is
an error too, so such a policy is refused before it is applied.

For a file that compiles, print its name, rule count and hash (the hash every
decision carries), then warnings for likely mistakes: a rule after one whose
condition is always true (never evaluated), a rule whose condition is always
false, two rules with the same condition (the second never decides), and a
default of ALLOW (there is no implicit deny).

FILE may be - for standard input. Exit status: 0 when every file compiles
(even with warnings, unless --strict), 2 otherwise.`,
		Example: `  cortexctl policy check policy.yaml
  cortexctl policy check --strict policies/*.yaml
  git show main:deploy/policy.yaml | cortexctl policy check -`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &cmdutil.UsageError{Err: errors.New("policy check needs at least one policy FILE (- for standard input), e.g. cortexctl policy check policy.yaml")}
			}
			return oneStdin(args)
		},
		ValidArgsFunction: yamlFiles,
		RunE: func(_ *cobra.Command, args []string) error {
			o.Files = args
			if runF != nil {
				return runF(o)
			}
			return checkRun(o)
		},
	}
	cmd.Flags().BoolVar(&o.Strict, "strict", false, "treat warnings as errors (exit 2)")
	return cmd
}

// InvalidError reports policy or test files with problems, which have
// already been printed one per line; cortexctl exits 2 for it (it comes
// wrapped in a cmdutil.UsageError).
type InvalidError struct {
	// What names the files and what is wrong, as the end of a sentence.
	What string
	// Next says what to do about it.
	Next string
}

func (e *InvalidError) Error() string { return e.What + " (listed above); " + e.Next }

func invalid(what, next string) error {
	return &cmdutil.UsageError{Err: &InvalidError{What: what, Next: next}}
}

func checkRun(o *CheckOptions) error {
	failed, warned := 0, 0
	for _, arg := range o.Files {
		p, name, err := readPolicyArg(o.In, arg)
		if err != nil {
			printErrors(o.ErrOut, err)
			failed++
			continue
		}
		fmt.Fprintf(o.Out, "ok  %s  policy %s, %s, hash %s\n", name, p.Name(), plural(p.NumRules(), "rule", "rules"), p.Hash())
		for _, w := range p.Lint() {
			fmt.Fprintln(o.ErrOut, w)
			warned++
		}
	}
	switch {
	case failed > 0:
		return invalid(fmt.Sprintf("%d of %s %s errors", failed, plural(len(o.Files), "policy file", "policy files"), hasHave(failed)),
			"fix them and run 'cortexctl policy check' again")
	case o.Strict && warned > 0:
		return invalid(plural(warned, "warning", "warnings")+" with --strict",
			"fix them, or run without --strict to accept them")
	}
	return nil
}

func hasHave(n int) string {
	if n == 1 {
		return "has"
	}
	return "have"
}
