package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// newTestTree is a small cortexctl: a persistent --server, submit with
// local flags (one hidden), and a context group with list and use.
func newTestTree() (*cobra.Command, *bytes.Buffer) {
	var out bytes.Buffer
	noop := func(*cobra.Command, []string) error { return nil }
	root := &cobra.Command{Use: "cortexctl", SilenceErrors: true, SilenceUsage: true}
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetFlagErrorFunc(flagError)
	root.PersistentFlags().String("server", "", "")
	root.PersistentFlags().String("api-key", "", "")

	submit := &cobra.Command{Use: "submit", RunE: noop}
	submit.Flags().StringP("prompt", "p", "", "")
	submit.Flags().StringP("topic", "t", "", "")
	submit.Flags().Bool("wait", false, "")
	submit.Flags().Bool("secret-debug", false, "")
	_ = submit.Flags().MarkHidden("secret-debug")

	group := &cobra.Command{Use: "context", Short: "contexts"}
	group.AddCommand(&cobra.Command{Use: "list", RunE: noop}, &cobra.Command{Use: "use", RunE: noop})
	root.AddCommand(submit, group, &cobra.Command{Use: "status", RunE: noop})
	suggestSubcommands(root)
	return root, &out
}

func runTree(args ...string) (string, error) {
	root, out := newTestTree()
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestFlagTypoSuggestions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" means no suggestion
	}{
		{[]string{"submit", "--promt", "x"}, "unknown flag: --promt (did you mean --prompt?)"},
		{[]string{"submit", "--pormpt=x"}, "unknown flag: --pormpt (did you mean --prompt?)"},
		{[]string{"submit", "--Wiat"}, "unknown flag: --Wiat (did you mean --wait?)"},
		{[]string{"submit", "--sever", "h"}, "unknown flag: --sever (did you mean --server?)"},    // inherited
		{[]string{"submit", "--apikey", "k"}, "unknown flag: --apikey (did you mean --api-key?)"}, // inherited
		{[]string{"context", "list", "--servr", "h"}, "unknown flag: --servr (did you mean --server?)"},
		{[]string{"status", "-wait"}, "unknown shorthand flag: 'w' in -wait"},
		{[]string{"submit", "-xwait"}, "unknown shorthand flag: 'x' in -xwait (did you mean --wait?)"},
		{[]string{"submit", "--secret-debg"}, "unknown flag: --secret-debg"}, // hidden flags are not offered
		{[]string{"submit", "--zzzzzz"}, "unknown flag: --zzzzzz"},
		{[]string{"submit", "-z"}, "unknown shorthand flag: 'z' in -z"},
	} {
		_, err := runTree(tc.args...)
		if err == nil {
			t.Errorf("%v: no error", tc.args)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%v: %q, want %q", tc.args, err, tc.want)
		}
		if code := ExitCode(err); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
	}
}

func TestOtherFlagErrorsAreUsage(t *testing.T) {
	for _, args := range [][]string{{"submit", "--prompt"}, {"submit", "--wait=maybe"}} {
		_, err := runTree(args...)
		if code := ExitCode(err); code != 2 || strings.Contains(err.Error(), "did you mean") {
			t.Errorf("%v: %v, exit %d, want 2 with no suggestion", args, err, code)
		}
	}
}

func TestSubcommandTypoSuggestions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sumbit"}, "unknown command \"sumbit\" for \"cortexctl\"\n\nDid you mean this?\n\tsubmit\n"},
		{[]string{"context", "lsit"}, "unknown command \"lsit\" for \"cortexctl context\"\n\nDid you mean this?\n\tlist\n"},
		{[]string{"context", "us", "x"}, "unknown command \"us\" for \"cortexctl context\"\n\nDid you mean this?\n\tuse\n"},
		{[]string{"context", "frobnicate"}, "unknown command \"frobnicate\" for \"cortexctl context\""},
	} {
		_, err := runTree(tc.args...)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: %q, want %q", tc.args, err, tc.want)
			continue
		}
		if code := ExitCode(err); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
	}
}

func TestGroupWithoutArgsPrintsHelp(t *testing.T) {
	out, err := runTree("context")
	if err != nil || !strings.Contains(out, "Available Commands") || !strings.Contains(out, "list") {
		t.Errorf("context with no args: %v\n%s", err, out)
	}
	if _, err := runTree("context", "list"); err != nil {
		t.Errorf("context list: %v", err)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"prompt", "prompt", 0}, {"promt", "prompt", 1}, {"pormpt", "prompt", 1},
		{"", "abc", 3}, {"server", "sever", 1}, {"ca", "abc", 3}, {"héllo", "hello", 1},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := editDistance(tc.b, tc.a); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d (not symmetric)", tc.b, tc.a, got, tc.want)
		}
	}
}

// A mistyped command followed by a flag is a mistyped command: cobra
// parses the flags first, and would report the flag unknown.
func TestMistypedCommandBeforeAFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sumbit", "--topic", "job.echo"}, "unknown command \"sumbit\" for \"cortexctl\"\n\nDid you mean this?\n\tsubmit\n"},
		{[]string{"context", "lsit", "--server", "h", "--bogus"}, "unknown command \"lsit\" for \"cortexctl context\"\n\nDid you mean this?\n\tlist\n"},
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"submit", "--tpoic", "x"}, "unknown flag: --tpoic (did you mean --topic?)"},
	} {
		_, err := runTree(tc.args...)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// help of a topic that is no command fails as the command would, with
// its suggestions; help of a command prints its help.
func TestHelpOfAnUnknownTopic(t *testing.T) {
	if _, err := runTree("help", "sumbit"); err == nil || !strings.Contains(err.Error(), "unknown command \"sumbit\" for \"cortexctl\"\n\nDid you mean this?\n\tsubmit") {
		t.Errorf("help sumbit: %v, want an unknown command suggesting submit", err)
	}
	if _, err := runTree("help", "context", "lsit"); err == nil || !strings.Contains(err.Error(), "unknown command \"lsit\" for \"cortexctl context\"") {
		t.Errorf("help context lsit: %v, want an unknown command of context", err)
	}
	if out, err := runTree("help", "context", "list"); err != nil || !strings.Contains(out, "cortexctl context list") {
		t.Errorf("help context list: %v\n%s", err, out)
	}
}
