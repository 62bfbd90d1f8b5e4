package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cortex-os/core/internal/cli/cmdutil"
)

// suggestDistance is how far (in edits) a typo may be from a command or
// flag name for cortexctl to suggest that name.
const suggestDistance = 2

// isCobraUsage recognises the errors cobra returns for an unknown command,
// a wrong number of arguments or a broken flag group, which carry no type
// of their own.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{
		"unknown command", "accepts ", "requires at least", "requires at most", "invalid argument ",
		"required flag(s)", "unknown flag", "unknown shorthand flag", "flag needs an argument",
		"if any flags in the group", "at least one of the flags in the group",
	} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// flagError is the root's FlagErrorFunc, which cobra uses for every
// command: a flag that cannot be parsed is a usage error (exit 2), and an
// unknown one names the command's nearest flag, inherited flags included:
// "unknown flag: --promt (did you mean --prompt?)".
func flagError(cmd *cobra.Command, err error) error {
	// `cortexctl sumbit --topic x`: cobra parses the flags of the command
	// it found, the root, before it looks at "sumbit"; the mistake is the
	// command, not the flag.
	if args := cmd.Flags().Args(); cmd.HasSubCommands() && len(args) > 0 {
		if sub, _, ferr := cmd.Find(args[:1]); ferr != nil || sub == cmd {
			return unknownCommand(cmd, args[0])
		}
	}
	if s := suggestFlag(cmd, err); s != "" {
		err = fmt.Errorf("%w (did you mean --%s?)", err, s)
	}
	return &cmdutil.UsageError{Err: err, Hint: true}
}

// suggestFlag returns the name of cmd's flag nearest to the unknown one in
// err, or "". For "-prompt" (one dash, read as shorthands) it looks for a
// long flag near "prompt".
func suggestFlag(cmd *cobra.Command, err error) string {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) {
		return ""
	}
	typed := ne.GetSpecifiedName()
	if short := ne.GetSpecifiedShortnames(); short != "" {
		if len(short) < 2 {
			return ""
		}
		typed = short
	}
	typed = strings.ToLower(typed)
	best, bestDist := "", suggestDistance+1
	visit := func(f *pflag.Flag) {
		if f.Hidden || f.Deprecated != "" {
			return
		}
		d := editDistance(typed, strings.ToLower(f.Name))
		if d < bestDist || (d == bestDist && f.Name < best) {
			best, bestDist = f.Name, d
		}
	}
	// Flags() holds the inherited persistent flags once cobra has merged
	// them for parsing; InheritedFlags() makes sure of it.
	cmd.Flags().VisitAll(visit)
	cmd.InheritedFlags().VisitAll(visit)
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and transpositions of two adjacent
// characters ("pormpt" is one edit from "prompt").
func editDistance(a, b string) int {
	s, t := []rune(a), []rune(b)
	d := make([][]int, len(s)+1)
	for i := range d {
		d[i] = make([]int, len(t)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(s); i++ {
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(s)][len(t)]
}

// suggestSubcommands makes the root and every command that only groups
// others suggest the nearest subcommand for a typo (cobra does it by
// itself only for the root, and names a group where its subcommand was
// meant): `cortexctl context lsit` fails with
// `unknown command "lsit" for "cortexctl context"` and "Did you mean
// this? list" (exit 2) instead of printing help and exiting 0. A group
// given no arguments still prints its help, and `help TOPIC` of a topic
// that is no command fails the same way. Call it once the tree is built.
func suggestSubcommands(root *cobra.Command) {
	root.SuggestionsMinimumDistance = suggestDistance
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if !c.HasSubCommands() || c.Runnable() {
			return
		}
		if c.SuggestionsMinimumDistance <= 0 {
			c.SuggestionsMinimumDistance = suggestDistance
		}
		c.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			return unknownCommand(cmd, args[0])
		}
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	walk(root)
	// `cortexctl help nope` printed the root's help and exited 0.
	root.InitDefaultHelpCmd()
	for _, help := range root.Commands() {
		if help.Name() != "help" || help.Run == nil {
			continue
		}
		show := help.Run
		help.Run = nil
		help.RunE = func(c *cobra.Command, args []string) error {
			if cmd, rest, err := c.Root().Find(args); err == nil && len(rest) > 0 {
				return unknownCommand(cmd, rest[0])
			}
			show(c, args)
			return nil
		}
	}
}

// unknownCommand is cobra's own error for a mistyped subcommand, with its
// suggestions, and the commands one level down of that name: `cortexctl
// cancel` suggests "jobs cancel".
func unknownCommand(cmd *cobra.Command, typed string) error {
	msg := fmt.Sprintf("unknown command %q for %q", typed, cmd.CommandPath())
	if !cmd.Root().DisableSuggestions {
		s := cmd.SuggestionsFor(typed)
		for _, group := range cmd.Commands() {
			for _, sub := range group.Commands() {
				if sub.IsAvailableCommand() && (sub.Name() == typed || slices.Contains(sub.Aliases, typed)) {
					s = append(s, group.Name()+" "+sub.Name())
				}
			}
		}
		if s = slices.Compact(s); len(s) > 0 {
			msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t") + "\n"
		}
	}
	return &cmdutil.UsageError{Err: errors.New(msg)}
}
