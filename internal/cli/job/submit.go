package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// SubmitOptions are submit's inputs.
type SubmitOptions struct {
	Factory        *cmdutil.Factory
	Topic          string
	Prompt         string
	PromptFile     string
	Labels         []string
	Priority       int32
	Timeout        time.Duration
	MaxAttempts    int
	IdempotencyKey string
	Wait           bool
	Follow         bool
	WaitTimeout    time.Duration
	Output         output.Format

	// set reports which optional flags were given.
	set func(name string) bool
}

// NewCmdSubmit returns the submit command. runF replaces submitRun in
// tests that only check flag parsing.
func NewCmdSubmit(f *cmdutil.Factory, runF func(context.Context, *SubmitOptions) error) *cobra.Command {
	o := &SubmitOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "submit --topic TOPIC (--prompt TEXT | --prompt-file FILE | -) [flags]",
		Short: "Submit a job",
		Long: `Submit a job and print its id. The input is --prompt, the contents of
--prompt-file, or standard input when the last argument is - (or
--prompt-file -). Input that is not UTF-8 text is sent as binary payload.

With --wait, follow the job to its end (a spinner shows its state on a
terminal), then print its result; -o json prints the job and its result.
With --follow (which implies --wait), print the job's output as its handler
streams it (chat-llm jobs do, token by token), then the rest of the result:
what is printed ends as the recorded result, even if pieces were lost or an
attempt was retried.

A job.* topic that no pool serves is refused with the list of routable
topics. A topic the safety policy denies is accepted and ends DENIED, with
the rule and the reason.

Exit status: 0 when the job was accepted (with --wait: when it COMPLETED);
3 when it ended DENIED, FAILED, CANCELLED or TIMEOUT (the reason is printed
on stderr); 2 when the request is invalid (bad flag, topic or label); 4 when
the API key is missing or wrong; 1 on any other error.`,
		Example: `  cortexctl submit --topic job.echo --prompt hello --wait
  cortexctl submit -t job.echo -p hi --label team=ml --priority 5 --max-attempts 3
  echo "summarise this" | cortexctl submit -t job.echo - --wait
  cortexctl submit -t job.sleep -p 30s --timeout 10s --wait
  cortexctl submit -t job.chat.llm -p "Write a haiku about queues" --follow
  cortexctl submit -t job.echo --prompt-file notes.txt --idempotency-key import-42`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 || len(args) == 1 && args[0] != "-" {
				return &cmdutil.UsageError{Err: fmt.Errorf("unexpected argument %q: the only argument is - (read the prompt from standard input)", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if o.PromptFile != "" || cmd.Flags().Changed("prompt") {
					return &cmdutil.UsageError{Err: errors.New("give the input once: --prompt, --prompt-file or -")}
				}
				o.PromptFile = "-"
			}
			o.set = cmd.Flags().Changed
			if o.Follow {
				if o.Output.Machine() {
					return &cmdutil.UsageError{Err: fmt.Errorf("--follow prints text as it comes; it does not go with -o %s", o.Output)}
				}
				o.Wait = true
			}
			if cmd.Flags().Changed("wait-timeout") && !o.Wait {
				return &cmdutil.UsageError{Err: errors.New("--wait-timeout bounds the wait of --wait (or --follow): add --wait")}
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return submitRun(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.Topic, "topic", "t", "", "job topic, e.g. job.echo (required)")
	fs.StringVarP(&o.Prompt, "prompt", "p", "", "the job's input text")
	fs.StringVarP(&o.PromptFile, "prompt-file", "f", "", "read the input from a file (- for standard input)")
	fs.StringSliceVarP(&o.Labels, "label", "l", nil, "key=value label, repeatable")
	fs.Int32Var(&o.Priority, "priority", 0, "0-9, higher runs first (default: the pool's, else 0)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "stop an attempt that runs longer than this (e.g. 30s; default: the pool's, else no limit)")
	// No default of its own (cobra would print it): an unset flag leaves the
	// pool's default to the gateway.
	fs.IntVar(&o.MaxAttempts, "max-attempts", 0, "run a failing job up to this many times (1-10; default: the pool's, else 1)")
	fs.StringVar(&o.IdempotencyKey, "idempotency-key", "", "resubmitting with the same key returns the first job instead of a new one")
	fs.BoolVarP(&o.Wait, "wait", "w", false, "wait for the job to end and print its result")
	fs.BoolVar(&o.Follow, "follow", false, "print the job's output as it comes, then the rest of its result (implies --wait)")
	fs.DurationVar(&o.WaitTimeout, "wait-timeout", 0, "with --wait, give up waiting after this long (0 waits forever)")
	output.AddFormatFlag(cmd, &o.Output)
	cmd.MarkFlagsMutuallyExclusive("prompt", "prompt-file")
	_ = cmd.MarkFlagRequired("topic")
	return cmd
}

// ParseLabels reads key=value pairs; a key given twice is refused rather
// than one of its values silently dropped.
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
		if !utf8.ValidString(p) {
			return nil, fmt.Errorf("label %q is not valid UTF-8 text", p)
		}
		if prev, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %s given twice (%s=%s and %s=%s): give each key once", k, k, prev, k, v)
		}
		labels[k] = v
	}
	return labels, nil
}

// request turns the flags into a SubmitJobRequest, reading the input.
func (o *SubmitOptions) request() (*cortexv1.SubmitJobRequest, error) {
	labels, err := ParseLabels(o.Labels)
	if err != nil {
		return nil, &cmdutil.UsageError{Err: err}
	}
	req := &cortexv1.SubmitJobRequest{Topic: o.Topic, Prompt: o.Prompt, Labels: labels, IdempotencyKey: o.IdempotencyKey}
	changed := o.set
	if changed == nil {
		changed = func(string) bool { return false }
	}
	if o.PromptFile == "" && !changed("prompt") {
		return nil, &cmdutil.UsageError{Err: errors.New("give the job's input: --prompt TEXT, --prompt-file FILE, or - for standard input (--prompt '' for none)")}
	}
	if o.PromptFile != "" {
		data, err := o.readInput()
		if err != nil {
			return nil, err
		}
		if utf8.Valid(data) {
			req.Prompt = string(data)
		} else {
			req.Payload = data
		}
	}
	if changed("priority") {
		req.Priority = &o.Priority
	}
	if changed("max-attempts") {
		if o.MaxAttempts < 0 || o.MaxAttempts > 1000 {
			return nil, &cmdutil.UsageError{Err: fmt.Errorf("--max-attempts %d: use 1-10", o.MaxAttempts)}
		}
		n := uint32(o.MaxAttempts)
		req.MaxAttempts = &n
	}
	if changed("timeout") {
		if o.Timeout <= 0 {
			return nil, &cmdutil.UsageError{Err: fmt.Errorf("--timeout %s: give a positive duration such as 30s", o.Timeout)}
		}
		req.Timeout = durationpb.New(o.Timeout)
	}
	return req, nil
}

// maxInput bounds what submit reads from a file or stdin; the gateway
// enforces its own, usually smaller, limit.
const maxInput = 64 << 20

func (o *SubmitOptions) readInput() ([]byte, error) {
	var r io.Reader
	if o.PromptFile == "-" {
		r = o.Factory.In
	} else {
		f, err := os.Open(o.PromptFile)
		if err != nil {
			return nil, &cmdutil.UsageError{Err: fmt.Errorf("--prompt-file: %w", err)}
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, fmt.Errorf("read the prompt: %w", err)
	}
	if len(data) > maxInput {
		return nil, &cmdutil.UsageError{Err: fmt.Errorf("the input is over %d MiB; store large data elsewhere and send a reference", maxInput>>20)}
	}
	return data, nil
}

func submitRun(ctx context.Context, o *SubmitOptions) error {
	req, err := o.request()
	if err != nil {
		return err
	}
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.SubmitJob(ctx, req)
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	if res.GetDeduplicated() {
		fmt.Fprintf(o.Factory.ErrOut, "idempotency key %q matched job %s: nothing new was submitted\n", o.IdempotencyKey, res.GetJobId())
	}
	if !o.Wait {
		if p.Machine() {
			return p.Print(res)
		}
		fmt.Fprintln(o.Factory.Out, res.GetJobId())
		return nil
	}
	if o.WaitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.WaitTimeout)
		defer cancel()
	}
	spin := output.StartSpinner(o.Factory.ErrOut, "job "+res.GetJobId()+" PENDING")
	held := false
	var fol *follower
	var onOutput func(*cortexv1.JobOutput) error
	if o.Follow {
		fol = &follower{out: o.Factory.Out, errOut: o.Factory.ErrOut, beforeFirst: func() { spin.Stop() }}
		onOutput = fol.piece
	}
	j, err := FollowToEnd(ctx, c, res.GetJobId(), func(j *cortexv1.Job) {
		if j.GetState() == cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL && !held {
			held = true
			fmt.Fprintf(spin, "job %s is held for approval by rule %s; waiting for: cortexctl approve %s (or reject)\n",
				j.GetJobId(), j.GetSafety().GetRule(), j.GetJobId())
		}
		spin.Update(fmt.Sprintf("job %s %s", j.GetJobId(), StateName(j.GetState())))
	}, onOutput, spin)
	spin.Stop()
	switch {
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(o.Factory.ErrOut, "stopped waiting; job %s goes on: cortexctl jobs watch %s\n", res.GetJobId(), res.GetJobId())
		return err
	case errors.Is(err, context.DeadlineExceeded) || connect.CodeOf(err) == connect.CodeDeadlineExceeded:
		return fmt.Errorf("job %s did not end within --wait-timeout %s; follow it with: cortexctl jobs watch %s", res.GetJobId(), o.WaitTimeout, res.GetJobId())
	case err != nil:
		return err
	}
	if fol != nil {
		if err := fol.finishJob(ctx, c, j); err != nil {
			return err
		}
		sayCompleted(o.Factory.ErrOut, j)
		return endError(j)
	}
	var result string
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		r, err := c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: j.GetJobId()})
		if err != nil {
			return err
		}
		result = r.GetText() + string(r.GetData())
	}
	if p.Machine() {
		jobJSON, err := output.MarshalProto(j)
		if err != nil {
			return err
		}
		return errors.Join(p.Print(map[string]any{"job": json.RawMessage(jobJSON), "result": result}), endError(j))
	}
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		sayCompleted(o.Factory.ErrOut, j)
		_, err := io.WriteString(o.Factory.Out, withNewline(result))
		return err
	}
	return endError(j)
}

// sayCompleted tells stderr where a completed job ran; nothing for a job
// that did not complete (its error says how it ended).
func sayCompleted(w io.Writer, j *cortexv1.Job) {
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		fmt.Fprintf(w, "job %s COMPLETED on %s (attempt %d)\n", j.GetJobId(), dash(j.GetWorkerId()), j.GetAttempt())
	}
}

// withNewline ends text with a newline so the shell prompt starts on its
// own line; binary output is left alone.
func withNewline(s string) string {
	if s == "" || strings.HasSuffix(s, "\n") || !utf8.ValidString(s) {
		return s
	}
	return s + "\n"
}
