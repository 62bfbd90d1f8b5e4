package contextcmd

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/client"
)

// ShowOptions are `context show`'s inputs.
type ShowOptions struct {
	Out    io.Writer
	ErrOut io.Writer
	Format output.Format
	// Name is the context to show; "" is the one commands use now.
	Name    string
	ShowKey bool
}

// NewCmdShow returns `context show`. runF replaces showRun in tests that
// only check flag parsing.
func NewCmdShow(f *cmdutil.Factory, runF func(*ShowOptions) error) *cobra.Command {
	o := &ShowOptions{Out: f.Out, ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:   "show [NAME]",
		Short: "Show a context (the current one by default)",
		Long: `Show a context: its server, API key (masked unless --show-key) and, for a
stack started by 'cortexctl up', its NATS and Redis URLs (passwords hidden
unless --show-key). With no NAME it shows the context that commands use now:
the one CORTEX_CONTEXT names, else the current one.`,
		Example: `  cortexctl context show
  cortexctl context show prod -o yaml
  export CORTEX_API_KEY=$(cortexctl context show local --show-key -o json | jq -r .apiKey)`,
		Args:              nameArgs(0, 1),
		ValidArgsFunction: completeName,
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.Name = args[0]
			}
			if runF != nil {
				return runF(o)
			}
			return showRun(o)
		},
	}
	output.AddFormatFlag(cmd, &o.Format)
	cmd.Flags().BoolVar(&o.ShowKey, "show-key", false, "print the API key and the NATS and Redis passwords in full")
	return cmd
}

func showRun(o *ShowOptions) error {
	cfg, path, err := client.LoadConfig()
	if err != nil {
		return err
	}
	name := o.Name
	if name == "" {
		name = os.Getenv("CORTEX_CONTEXT")
	}
	if name == "" {
		name = cfg.Current
	}
	if name == "" {
		if len(cfg.Contexts) == 0 {
			return errNoContexts(path)
		}
		return fmt.Errorf("no current context in %s; pick one of %s with 'cortexctl context use NAME'", path, strings.Join(cfg.Names(), ", "))
	}
	c, err := cfg.Lookup(name)
	if err != nil {
		return err
	}
	v := view(name, c, name == cfg.Current, o.ShowKey)
	p := output.New(o.Out, o.Format)
	if p.Machine() {
		return p.Print(v)
	}
	rows := [][]string{
		{"name:", v.Name},
		{"current:", strconv.FormatBool(v.Current)},
		{"server:", v.Server},
		{"api key:", v.APIKey},
	}
	if v.NATSURL != "" {
		rows = append(rows, []string{"nats:", v.NATSURL})
	}
	if v.RedisURL != "" {
		rows = append(rows, []string{"redis:", v.RedisURL})
	}
	return p.Table(nil, rows)
}
