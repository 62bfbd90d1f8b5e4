package workercmd

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// NewCmdDrain returns `cortexctl workers drain`.
func NewCmdDrain(f *cmdutil.Factory) *cobra.Command {
	var format output.Format
	cmd := &cobra.Command{
		Use:   "drain WORKER_ID...",
		Short: "Ask workers to take no new jobs (admin keys only)",
		Long: `Ask workers to drain: each takes no new jobs, finishes those it runs, and its
heartbeats say it drains (cortexctl workers: STATE draining). Its
pool's other workers take the jobs it would have taken. The worker process
keeps running until it is stopped (SIGTERM), for maintenance or a rollout.`,
		Example: `  cortexctl workers drain echo-1a2b3c4d
  cortexctl workers --pool gpu -o json | jq -r '.items[].workerId' | xargs cortexctl workers drain`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &cmdutil.UsageError{Err: errors.New("give at least one worker id (see cortexctl workers)")}
			}
			for _, id := range args {
				if !bus.ValidToken(id) {
					return &cmdutil.UsageError{Err: fmt.Errorf("worker id %q: 1-64 characters of a-z, 0-9, - and _", id)}
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			p := output.New(f.Out, format)
			// Several workers print as a stream of records (JSON lines,
			// YAML documents); one prints as one value.
			print := p.Print
			if len(args) > 1 {
				print = p.Record
			}
			var errs []error
			for _, id := range args {
				res, err := c.DrainWorker(cmd.Context(), &cortexv1.DrainWorkerRequest{WorkerId: id})
				if err != nil {
					if len(args) == 1 {
						return err
					}
					fmt.Fprintf(f.ErrOut, "%s: %v\n", id, err)
					errs = append(errs, err)
					continue
				}
				if p.Machine() {
					if err := print(res.GetWorker()); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintf(f.Out, "%s draining (pool %s, %d jobs running)\n", id, res.GetWorker().GetPool(), res.GetWorker().GetActiveJobs())
			}
			if len(errs) > 0 {
				return fmt.Errorf("%d of %d workers not asked to drain: %w", len(errs), len(args), errs[0])
			}
			return nil
		},
	}
	output.AddFormatFlag(cmd, &format)
	return cmd
}
