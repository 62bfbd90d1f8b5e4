package contextcmd

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/client"
)

// DeleteOptions are `context delete`'s inputs.
type DeleteOptions struct {
	ErrOut io.Writer
	Name   string
}

// NewCmdDelete returns `context delete`. runF replaces deleteRun in tests
// that only check flag parsing.
func NewCmdDelete(f *cmdutil.Factory, runF func(*DeleteOptions) error) *cobra.Command {
	o := &DeleteOptions{ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a context",
		Long: `Delete the context NAME and the API key saved with it. Deleting the current
context leaves no context current: commands then go to --server,
CORTEX_SERVER or http://127.0.0.1:7470 until 'cortexctl context use NAME'.`,
		Example:           `  cortexctl context delete staging`,
		Args:              nameArgs(1, 1),
		ValidArgsFunction: completeName,
		RunE: func(_ *cobra.Command, args []string) error {
			o.Name = args[0]
			if runF != nil {
				return runF(o)
			}
			return deleteRun(o)
		},
	}
	return cmd
}

func deleteRun(o *DeleteOptions) error {
	before, _, err := client.LoadConfig()
	if err != nil {
		return err
	}
	if err := client.DeleteContext(o.Name); err != nil {
		return err
	}
	fmt.Fprintf(o.ErrOut, "deleted context %q\n", o.Name)
	if before.Current == o.Name {
		after, _, err := client.LoadConfig()
		if err != nil {
			return err
		}
		if len(after.Contexts) > 0 {
			fmt.Fprintf(o.ErrOut, "no context is current now; pick one with 'cortexctl context use NAME' (known: %s)\n", strings.Join(after.Names(), ", "))
		} else {
			fmt.Fprintln(o.ErrOut, "no contexts are left; run 'cortexctl up' or 'cortexctl context set NAME --server URL'")
		}
	}
	return nil
}
