package contextcmd

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/client"
)

// ListOptions are `context list`'s inputs.
type ListOptions struct {
	Out    io.Writer
	ErrOut io.Writer
	Format output.Format
}

// NewCmdList returns `context list`. runF replaces listRun in tests that
// only check flag parsing.
func NewCmdList(f *cmdutil.Factory, runF func(*ListOptions) error) *cobra.Command {
	o := &ListOptions{Out: f.Out, ErrOut: f.ErrOut}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the contexts",
		Long: `List the contexts: a * marks the current one. API keys are masked
("cx_dev_…a1b2") in every format; -o wide adds the NATS and Redis URLs of a
stack started by 'cortexctl up', with their passwords hidden. Use
'cortexctl context show NAME --show-key' to see a key.`,
		Example: `  cortexctl context list
  cortexctl context list -o wide
  cortexctl context list -o json | jq -r '.items[] | select(.current) | .server'`,
		Args: cmdutil.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if runF != nil {
				return runF(o)
			}
			return listRun(o)
		},
	}
	output.AddFormatFlag(cmd, &o.Format)
	return cmd
}

func listRun(o *ListOptions) error {
	cfg, path, err := client.LoadConfig()
	if err != nil {
		return err
	}
	p := output.New(o.Out, o.Format)
	views := make([]contextView, 0, len(cfg.Contexts))
	for _, n := range cfg.Names() {
		views = append(views, view(n, cfg.Contexts[n], n == cfg.Current, false))
	}
	if p.Machine() {
		return p.Print(output.List[contextView]{Items: views})
	}
	if len(views) == 0 {
		fmt.Fprintln(o.ErrOut, errNoContexts(path))
		return nil
	}
	header := []string{"CURRENT", "NAME", "SERVER", "API KEY"}
	if p.Wide() {
		header = append(header, "NATS", "REDIS")
	}
	rows := make([][]string, 0, len(views))
	for _, v := range views {
		mark := ""
		if v.Current {
			mark = "*"
		}
		row := []string{mark, v.Name, v.Server, v.APIKey}
		if p.Wide() {
			row = append(row, v.NATSURL, v.RedisURL)
		}
		rows = append(rows, row)
	}
	if err := p.Table(header, rows); err != nil {
		return err
	}
	if n := overridden(cfg); n != "" {
		fmt.Fprintf(o.ErrOut, "CORTEX_CONTEXT=%s: commands in this shell use %q, not the current context\n", n, n)
	}
	return nil
}
