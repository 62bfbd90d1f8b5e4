package contextcmd

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/client"
)

// UseOptions are `context use`'s inputs.
type UseOptions struct {
	ErrOut io.Writer
	Name   string
}

// NewCmdUse returns `context use`. runF replaces useRun in tests that
// only check flag parsing.
func NewCmdUse(f *cmdutil.Factory, runF func(*UseOptions) error) *cobra.Command {
	o := &UseOptions{ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:   "use NAME",
		Short: "Make a context the current one",
		Long: `Make NAME the current context: commands in every terminal use its server
and key unless flags or CORTEX_SERVER / CORTEX_API_KEY / CORTEX_CONTEXT say
otherwise. It prints what it did on stderr.`,
		Example: `  cortexctl context use prod
  cortexctl context use local`,
		Args:              nameArgs(1, 1),
		ValidArgsFunction: completeName,
		RunE: func(_ *cobra.Command, args []string) error {
			o.Name = args[0]
			if runF != nil {
				return runF(o)
			}
			return useRun(o)
		},
	}
	return cmd
}

func useRun(o *UseOptions) error {
	if err := client.UseContext(o.Name); err != nil {
		return err
	}
	cfg, _, err := client.LoadConfig()
	if err != nil {
		return err
	}
	fmt.Fprintf(o.ErrOut, "switched to context %q (%s)\n", o.Name, cfg.Contexts[o.Name].Server)
	if n := overridden(cfg); n != "" {
		fmt.Fprintf(o.ErrOut, "note: CORTEX_CONTEXT=%s still wins in this shell; unset it to use %q\n", n, o.Name)
	}
	return nil
}
