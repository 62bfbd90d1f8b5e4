// Package job holds the commands that submit jobs and follow them:
// `cortexctl submit` and `cortexctl status`. They talk to the gateway
// through the typed client only.
package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// SubmitOptions are submit's inputs.
type SubmitOptions struct {
	Factory *cmdutil.Factory
	Topic   string
	Prompt  string
	Labels  []string
	Wait    bool
	Timeout time.Duration
}

// NewCmdSubmit returns the submit command. runF replaces submitRun in
// tests that only check flag parsing.
func NewCmdSubmit(f *cmdutil.Factory, runF func(context.Context, *SubmitOptions) error) *cobra.Command {
	o := &SubmitOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "submit --topic TOPIC --prompt TEXT [--wait]",
		Short: "Submit a job",
		Long: `Submit a job and print its id. With --wait, follow it to its end and print
its final state and result.

Exit status: 0 when the job was accepted (with --wait: when it COMPLETED);
3 when it ended DENIED or FAILED (the reason is printed on stderr); 2 when the
request is invalid (bad flag, topic or label); 4 when the API key is missing
or wrong; 1 on any other error.`,
		Example: `  cortexctl submit --topic job.echo --prompt hello --wait
  cortexctl submit --topic job.echo --prompt hi --label team=ml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return submitRun(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.Topic, "topic", "t", "", "job topic, e.g. job.echo (required)")
	fs.StringVarP(&o.Prompt, "prompt", "p", "", "the job's input text")
	fs.StringSliceVarP(&o.Labels, "label", "l", nil, "key=value label, repeatable")
	fs.BoolVarP(&o.Wait, "wait", "w", false, "wait for the job to end and print its result")
	fs.DurationVar(&o.Timeout, "timeout", 0, "with --wait, give up after this long (0 waits forever)")
	_ = cmd.MarkFlagRequired("topic")
	return cmd
}

// ParseLabels reads key=value pairs.
func ParseLabels(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value, e.g. team=ml", p)
		}
		labels[k] = v
	}
	return labels, nil
}

func submitRun(ctx context.Context, o *SubmitOptions) error {
	labels, err := ParseLabels(o.Labels)
	if err != nil {
		return &cmdutil.UsageError{Err: err}
	}
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: o.Topic, Prompt: o.Prompt, Labels: labels})
	if err != nil {
		return err
	}
	if !o.Wait {
		fmt.Fprintln(o.Factory.Out, res.GetJobId())
		return nil
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	st, err := WaitForEnd(ctx, c, res.GetJobId())
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("job %s did not end within --timeout %s; follow it with 'cortexctl status %s'", res.GetJobId(), o.Timeout, res.GetJobId())
		}
		return err
	}
	printStatus(o.Factory.Out, st)
	return endError(st)
}

// Terminal reports whether no state follows s.
func Terminal(s cortexv1.JobState) bool {
	switch s {
	case cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED:
		return true
	}
	return false
}

// WaitForEnd polls the job until it reaches a terminal state or ctx ends.
// The interval starts short, for quick jobs, and backs off to 250 ms.
func WaitForEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string) (*cortexv1.GetJobStatusResponse, error) {
	return PollUntilEnd(ctx, c, id, time.Millisecond, 250*time.Millisecond)
}

// PollUntilEnd is WaitForEnd with the polling interval, from first backing
// off to most, chosen by the caller; bench uses a tight one.
func PollUntilEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, first, most time.Duration) (*cortexv1.GetJobStatusResponse, error) {
	interval := first
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
		}
		st, err := c.GetJobStatus(ctx, &cortexv1.GetJobStatusRequest{JobId: id})
		if err != nil {
			return nil, err
		}
		if Terminal(st.GetState()) {
			return st, nil
		}
		timer.Reset(interval)
		interval = min(interval*3/2+time.Microsecond, most)
	}
}

func endError(st *cortexv1.GetJobStatusResponse) error {
	if st.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		return nil
	}
	return &cmdutil.JobNotDoneError{JobID: st.GetJobId(), State: StateName(st.GetState()), Rule: st.GetRule(), Reason: st.GetReason()}
}

// StateName is the short name of a state: COMPLETED, DENIED, ...
func StateName(s cortexv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

func printStatus(w io.Writer, st *cortexv1.GetJobStatusResponse) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-9s %s\n", k+":", v)
		}
	}
	row("job", st.GetJobId())
	row("topic", st.GetTopic())
	row("state", StateName(st.GetState()))
	if st.GetAttempt() > 0 {
		row("attempt", fmt.Sprint(st.GetAttempt()))
	}
	row("worker", st.GetWorkerId())
	row("rule", st.GetRule())
	row("reason", st.GetReason())
	row("created", formatTime(st.GetCreatedAt()))
	row("updated", formatTime(st.GetUpdatedAt()))
	if st.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		fmt.Fprintf(w, "%-9s %s\n", "result:", st.GetResult())
	}
}

func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil || ts.AsTime().IsZero() || ts.AsTime().Unix() == 0 {
		return ""
	}
	return ts.AsTime().Local().Format(time.RFC3339Nano)
}

// NewCmdStatus returns the status command.
func NewCmdStatus(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "status JOB_ID",
		Short:   "Show a job's state, reason and result",
		Example: "  cortexctl status 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			st, err := c.GetJobStatus(cmd.Context(), &cortexv1.GetJobStatusRequest{JobId: args[0]})
			if err != nil {
				return err
			}
			printStatus(f.Out, st)
			return nil
		},
	}
}
