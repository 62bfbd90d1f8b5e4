package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// TailOptions are tail's inputs.
type TailOptions struct {
	Factory *cmdutil.Factory
	filter
	Output output.Format
	// Decisions streams safety decisions instead of job changes.
	Decisions  bool
	DecisionIn []string
	// JobOutput also prints the output of running jobs as it comes.
	JobOutput bool
}

// NewCmdTail returns the tail command.
func NewCmdTail(f *cmdutil.Factory, runF func(context.Context, *TailOptions) error) *cobra.Command {
	o := &TailOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print every change of your jobs as it happens",
		Long: `Print a line for every state change of your jobs, live, until Ctrl-C:
submits, safety denials with their rule and reason, dispatches, runs and
outcomes. Filter by topic, state and labels. Changes travel as best-effort
events: while the bus is down (a NATS restart) some may not be shown; tail
says so on stderr when the gateway is back on the bus, and 'cortexctl jobs
list' reads the states the store keeps.

-o json prints one JSON object per change, each on one line (JSON Lines:
read it with jq or line by line); -o yaml prints one YAML document per
change, each starting with "---". Pieces of output (--job-output) and
decisions (--decisions) are records of the stream in the same way.

With --job-output, also print the output of your running jobs as their
handlers write it (chat tokens, a Python job's prints): one "output" line
per piece, the text quoted. --state and --label filter the changes only:
pieces are filtered by --topic. Pieces are best effort; the result is
recorded whole ('cortexctl jobs result ID').

With --decisions, print every safety decision instead: decision, rule,
reason, topic, tenant, job, the kernel's latency, and what the shadow policy
would have said. An admin key sees every tenant's decisions.`,
		Example: `  cortexctl tail
  cortexctl tail --state denied
  cortexctl tail --topic 'job.*' --label team=ml -o json
  cortexctl tail -o json | jq -r 'select(.state == "JOB_STATE_FAILED") | .jobId'
  cortexctl tail --topic job.chat.llm --job-output
  cortexctl tail --decisions --decision deny`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !o.Decisions && len(o.DecisionIn) > 0 {
				return &cmdutil.UsageError{Err: errors.New("--decision filters safety decisions: add --decisions")}
			}
			if o.Decisions && o.JobOutput {
				return &cmdutil.UsageError{Err: errors.New("--job-output prints the output of jobs, not of --decisions")}
			}
			if o.Decisions && (len(o.States) > 0 || len(o.Labels) > 0) {
				return &cmdutil.UsageError{Err: errors.New("--state and --label filter job changes, not --decisions (use --decision and --topic)")}
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			if o.Decisions {
				return tailDecisions(cmd.Context(), o)
			}
			return tailRun(cmd.Context(), o)
		},
	}
	o.addFlags(cmd, "only changes into these states")
	fs := cmd.Flags()
	fs.BoolVar(&o.Decisions, "decisions", false, "print safety decisions instead of job changes")
	fs.StringSliceVar(&o.DecisionIn, "decision", nil, "with --decisions, only these decisions: allow, deny, require_approval")
	fs.BoolVar(&o.JobOutput, "job-output", false, "also print the output of running jobs as it comes (filtered by --topic only, not by --state or --label)")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func tailRun(ctx context.Context, o *TailOptions) error {
	states, labels, err := o.parse()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	req := &cortexv1.StreamEventsRequest{Topic: o.Topic, States: states, Labels: labels, Output: o.JobOutput}
	return streamJobs(ctx, o.Factory, req, func(j *cortexv1.Job) error {
		if p.Machine() {
			return p.Record(j)
		}
		_, err := fmt.Fprintln(o.Factory.Out, eventLine(p, j))
		return err
	}, func(out *cortexv1.JobOutput) error {
		if p.Machine() {
			return p.Record(out)
		}
		_, err := fmt.Fprintf(o.Factory.Out, "%s  %s  %-12s output  %q\n", time.Now().Format("15:04:05.000"), out.GetJobId(), out.GetTopic(), out.GetText())
		return err
	})
}

func tailDecisions(ctx context.Context, o *TailOptions) error {
	req := &cortexv1.StreamDecisionsRequest{Topic: o.Topic}
	for _, d := range o.DecisionIn {
		v, ok := cortexv1.Decision_value["DECISION_"+strings.ToUpper(strings.TrimPrefix(strings.ToUpper(d), "DECISION_"))]
		if !ok || v == 0 {
			return &cmdutil.UsageError{Err: fmt.Errorf("--decision %q: use allow, deny or require_approval", d)}
		}
		req.Decisions = append(req.Decisions, cortexv1.Decision(v))
	}
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	return follow(ctx, newReconnector(o.Factory.ErrOut, decisionsMissed), func() (stream[*cortexv1.StreamDecisionsResponse], error) {
		return c.StreamDecisions(ctx, req)
	}, func(msg *cortexv1.StreamDecisionsResponse) error {
		skipped(o.Factory.ErrOut, msg.GetDropped())
		if msg.GetBusGap() {
			fmt.Fprintln(o.Factory.ErrOut, "(the gateway lost the bus for a while: decisions made meanwhile are not shown; each is stored on its job: cortexctl jobs get ID)")
		}
		if msg.GetEvent() == nil {
			return nil
		}
		if p.Machine() {
			return p.Record(msg.GetEvent())
		}
		_, err := fmt.Fprintln(o.Factory.Out, decisionLine(p, msg.GetEvent()))
		return err
	})
}

// decisionLine is one line of tail --decisions on a terminal.
func decisionLine(p *output.Printer, ev *cortexv1.SafetyDecisionEvent) string {
	v := ev.GetVerdict()
	d := strings.TrimPrefix(v.GetDecision().String(), "DECISION_")
	line := fmt.Sprintf("%s  %-16s %-18s %-12s tenant %s  job %s  %s  %s",
		ev.GetDecidedAt().AsTime().Local().Format("15:04:05.000"), p.Colorize(d), v.GetRule(), ev.GetTopic(),
		ev.GetTenantId(), ev.GetJobId(), ev.GetLatency().AsDuration().Round(time.Microsecond), v.GetReason())
	if sh := ev.GetShadow(); sh != nil {
		line += fmt.Sprintf("  [shadow: %s by %s]", strings.TrimPrefix(sh.GetDecision().String(), "DECISION_"), sh.GetRule())
	}
	return line
}

// What may have been missed while a stream was down, said when it is back.
const (
	jobsMissed      = "changes made while it was down may not have been shown (cortexctl jobs list shows the current states)"
	decisionsMissed = "decisions made while it was down may not have been shown"
)

// streamJobs prints job events (and pieces of output, when req asks for
// them) until ctx ends, reconnecting with backoff when the gateway drops
// the stream, and says on stderr when events were missed: skipped, or
// made while the stream was down.
func streamJobs(ctx context.Context, f *cmdutil.Factory, req *cortexv1.StreamEventsRequest, print func(*cortexv1.Job) error, printOutput func(*cortexv1.JobOutput) error) error {
	c, _, err := f.Client()
	if err != nil {
		return err
	}
	return follow(ctx, newReconnector(f.ErrOut, jobsMissed), func() (stream[*cortexv1.StreamEventsResponse], error) {
		return c.StreamEvents(ctx, req)
	}, func(msg *cortexv1.StreamEventsResponse) error {
		if o := msg.GetOutput(); o != nil {
			if printOutput == nil {
				return nil // not asked for
			}
			return printOutput(o)
		}
		skipped(f.ErrOut, msg.GetDropped())
		if msg.GetBusGap() {
			fmt.Fprintln(f.ErrOut, "(the gateway lost the bus for a while: changes made meanwhile are not shown; cortexctl jobs list shows the current states)")
		}
		if msg.GetJob() == nil {
			return nil
		}
		return print(msg.GetJob())
	})
}

// stream is a server stream of T, as the generated clients return them.
type stream[T any] interface {
	Receive() (T, error)
	Close() error
}

// follow reads the stream open returns, handing each message to each,
// and opens it again, paced and told of by rc, whenever the gateway drops
// it, until ctx ends.
func follow[T any](ctx context.Context, rc *reconnector, open func() (stream[T], error), each func(T) error) error {
	return rc.resume(ctx, func(ok func()) error {
		s, err := open()
		if err != nil {
			return err
		}
		defer func() { _ = s.Close() }()
		for {
			msg, err := s.Receive()
			if err != nil {
				return err
			}
			ok()
			if err := each(msg); err != nil {
				return err
			}
		}
	})
}

// skipped says on stderr that the gateway dropped n events for this reader.
func skipped(errOut io.Writer, n uint64) {
	if n > 0 {
		fmt.Fprintf(errOut, "(%d events skipped: this terminal could not keep up)\n", n)
	}
}
