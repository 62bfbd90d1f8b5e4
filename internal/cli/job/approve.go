package job

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// ApprovalOptions are approve's and reject's inputs.
type ApprovalOptions struct {
	Factory *cmdutil.Factory
	IDs     []string
	Approve bool
	Comment string
	Output  output.Format
}

// NewCmdApprove returns the approve command.
func NewCmdApprove(f *cmdutil.Factory, runF func(context.Context, *ApprovalOptions) error) *cobra.Command {
	return newCmdApproval(f, runF, true)
}

// NewCmdReject returns the reject command.
func NewCmdReject(f *cmdutil.Factory, runF func(context.Context, *ApprovalOptions) error) *cobra.Command {
	return newCmdApproval(f, runF, false)
}

func newCmdApproval(f *cmdutil.Factory, runF func(context.Context, *ApprovalOptions) error, approve bool) *cobra.Command {
	o := &ApprovalOptions{Factory: f, Approve: approve}
	cmd := &cobra.Command{
		Use:   "approve JOB_ID...",
		Short: "Let jobs held for approval run",
		Long: `Approve jobs the safety policy holds for a person (state AWAITING_APPROVAL,
from a REQUIRE_APPROVAL rule). An approved job goes through the safety gate
again: the approval satisfies the REQUIRE_APPROVAL rule and nothing else, so
a rule that denies it still does. Needs an admin key (up's key is one).`,
		Example: `  cortexctl jobs list --state awaiting_approval
  cortexctl approve 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e --comment "checked with the team"`,
	}
	flag, usage := "comment", "why, recorded on the job"
	if !approve {
		cmd.Use = "reject JOB_ID..."
		cmd.Short = "End jobs held for approval as DENIED"
		cmd.Long = `Reject jobs the safety policy holds for a person (state AWAITING_APPROVAL):
they end DENIED, with who rejected them and why. Needs an admin key.`
		cmd.Example = `  cortexctl reject 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e --reason "prompt leaks customer data"`
		flag, usage = "reason", "why, recorded on the job"
	}
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return &cmdutil.UsageError{Err: errors.New("give at least one job id (see cortexctl jobs list --state awaiting_approval)")}
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		o.IDs = args
		if runF != nil {
			return runF(cmd.Context(), o)
		}
		return approvalRun(cmd.Context(), o)
	}
	cmd.Flags().StringVar(&o.Comment, flag, "", usage)
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func approvalRun(ctx context.Context, o *ApprovalOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	return eachJob(o.Factory, o.IDs, o.Output, "answered", func(id string) (*cortexv1.Job, error) {
		if o.Approve {
			res, err := c.ApproveJob(ctx, &cortexv1.ApproveJobRequest{JobId: id, Comment: o.Comment})
			return res.GetJob(), err
		}
		res, err := c.RejectJob(ctx, &cortexv1.RejectJobRequest{JobId: id, Reason: o.Comment})
		return res.GetJob(), err
	})
}

// eachJob applies act to every id and prints each job it returns: its id
// and new state, or the job in json/yaml (for several ids, one record of a
// stream each: a JSON line, a YAML document). With several ids a failure is
// reported and the rest go on; the error then says how many failed.
func eachJob(f *cmdutil.Factory, ids []string, format output.Format, verb string, act func(id string) (*cortexv1.Job, error)) error {
	p := output.New(f.Out, format)
	print := p.Print
	if len(ids) > 1 {
		print = p.Record
	}
	var errs []error
	for _, id := range ids {
		j, err := act(id)
		if err != nil {
			if len(ids) == 1 {
				return err
			}
			fmt.Fprintf(f.ErrOut, "%s: %v\n", id, err)
			errs = append(errs, err)
			continue
		}
		if p.Machine() {
			if err := print(j); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(f.Out, "%s %s\n", j.GetJobId(), p.Colorize(StateName(j.GetState())))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d jobs not %s: %w", len(errs), len(ids), verb, errs[0])
	}
	return nil
}
