package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// TailOptions are tail's inputs.
type TailOptions struct {
	Factory *cmdutil.Factory
	filter
	Output output.Format
}

// NewCmdTail returns the tail command.
func NewCmdTail(f *cmdutil.Factory, runF func(context.Context, *TailOptions) error) *cobra.Command {
	o := &TailOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print every change of your jobs as it happens",
		Long: `Print a line for every state change of your jobs, live, until Ctrl-C:
submits, safety denials with their rule and reason, dispatches, runs and
outcomes. Filter by topic, state and labels. -o json prints one JSON object
per change.`,
		Example: `  cortexctl tail
  cortexctl tail --state denied
  cortexctl tail --topic 'job.*' --label team=ml -o json`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return tailRun(cmd.Context(), o)
		},
	}
	o.addFlags(cmd, "only changes into these states")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func tailRun(ctx context.Context, o *TailOptions) error {
	states, labels, err := o.parse()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	return streamJobs(ctx, o.Factory, &cortexv1.StreamEventsRequest{Topic: o.Topic, States: states, Labels: labels}, func(j *cortexv1.Job) error {
		if p.Machine() {
			return p.Print(j)
		}
		_, err := fmt.Fprintln(o.Factory.Out, eventLine(p, j))
		return err
	})
}

// streamJobs prints job events until ctx ends, reconnecting when the
// gateway drops the stream, and says on stderr when events were missed.
func streamJobs(ctx context.Context, f *cmdutil.Factory, req *cortexv1.StreamEventsRequest, print func(*cortexv1.Job) error) error {
	c, _, err := f.Client()
	if err != nil {
		return err
	}
	for {
		err := streamOnce(ctx, c, f.ErrOut, req, print)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connect.CodeOf(err) != connect.CodeUnavailable && !errors.Is(err, io.EOF) {
			return err
		}
		fmt.Fprintf(f.ErrOut, "event stream interrupted (%v); reconnecting\n", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(reconnectDelay):
		}
	}
}

// streamOnce follows one StreamEvents stream until it ends.
func streamOnce(ctx context.Context, c cortexv1connect.GatewayServiceClient, errOut io.Writer, req *cortexv1.StreamEventsRequest, print func(*cortexv1.Job) error) error {
	stream, err := c.StreamEvents(ctx, req)
	if err != nil {
		return err
	}
	defer func() { _ = stream.Close() }()
	for {
		msg, err := stream.Receive()
		if err != nil {
			return err
		}
		if n := msg.GetDropped(); n > 0 {
			fmt.Fprintf(errOut, "(%d events skipped: this terminal could not keep up)\n", n)
		}
		if err := print(msg.GetJob()); err != nil {
			return err
		}
	}
}
