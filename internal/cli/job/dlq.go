package job

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// NewCmdDLQ returns `cortexctl dlq`: the dead-letter queue.
func NewCmdDLQ(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:        "dlq",
		Short:      "List, inspect, retry and drop dead letters",
		SuggestFor: []string{"dead-letters", "deadletters", "dead"},
		Long: `The dead-letter queue holds your tenant's jobs that ended FAILED or TIMEOUT
with no attempt left, and those their pool's workers took too many times
without acknowledging (each crashed or hung on it). They stay there, in their
final state, until retried or dropped.

A retry gives the job one more attempt: it goes back to PENDING and through
the safety gate again, under the policy in force now, so a job the policy now
denies ends DENIED. Dropping a dead letter takes it off the list; the job
keeps its state and history.`,
		Example: `  cortexctl dlq list
  cortexctl dlq show 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl dlq retry 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl dlq list -o json | jq -r '.items[].job.jobId' | xargs cortexctl dlq drop`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCmdDLQList(f), newCmdDLQShow(f), newCmdDLQRetry(f), newCmdDLQDrop(f))
	return cmd
}

// maxDLQPage is the most dead letters the gateway returns in one page.
const maxDLQPage = 500

func newCmdDLQList(f *cmdutil.Factory) *cobra.Command {
	var format output.Format
	var limit int
	var page string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, newest first",
		Long: `List your tenant's dead letters, newest first: the job, its topic and final
state, its attempts, how long ago it went to the queue, and why. -o wide adds
the pool and the last worker. At most --limit dead letters print (0 for all,
fetched page by page); when more are queued, the command says how to get the
next page.`,
		Example: `  cortexctl dlq list
  cortexctl dlq list --limit 200 -o wide
  cortexctl dlq list --limit 0 -o json`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return &cmdutil.UsageError{Err: fmt.Errorf("--limit %d: give 0 (all) or more", limit)}
			}
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			// Pages of at most maxDLQPage, the gateway's limit, until
			// --limit dead letters or the last page.
			res := &cortexv1.ListDeadLettersResponse{NextPageToken: page}
			for {
				size := uint32(maxDLQPage)
				if limit > 0 {
					size = uint32(min(limit-len(res.DeadLetters), maxDLQPage))
				}
				next, err := c.ListDeadLetters(cmd.Context(), &cortexv1.ListDeadLettersRequest{PageSize: size, PageToken: res.NextPageToken})
				if err != nil {
					return err
				}
				res.DeadLetters = append(res.DeadLetters, next.GetDeadLetters()...)
				res.NextPageToken = next.GetNextPageToken()
				if res.NextPageToken == "" || limit > 0 && len(res.DeadLetters) >= limit {
					break
				}
			}
			p := output.New(f.Out, format)
			if p.Machine() {
				return p.Print(output.List[*cortexv1.DeadLetter]{Items: res.GetDeadLetters(), NextPageToken: res.GetNextPageToken()})
			}
			if len(res.GetDeadLetters()) == 0 {
				fmt.Fprintln(f.ErrOut, "no dead letters")
				return nil
			}
			header := []string{"JOB ID", "TOPIC", "STATE", "ATTEMPTS", "DEAD FOR", "REASON"}
			if p.Wide() {
				header = append(header, "POOL", "WORKER")
			}
			now := time.Now()
			var rows [][]string
			for _, d := range res.GetDeadLetters() {
				j := d.GetJob()
				reason := output.Truncate(j.GetReason(), 70)
				if p.Wide() {
					reason = j.GetReason()
				}
				row := []string{j.GetJobId(), j.GetTopic(), p.Colorize(StateName(j.GetState())),
					fmt.Sprintf("%d/%d", j.GetAttempt(), max(j.GetMaxAttempts(), 1)), output.Age(d.GetDeadAt().AsTime(), now), dash(reason)}
				if p.Wide() {
					row = append(row, dash(j.GetPool()), dash(j.GetWorkerId()))
				}
				rows = append(rows, row)
			}
			if err := p.Table(header, rows); err != nil {
				return err
			}
			if next := res.GetNextPageToken(); next != "" {
				fmt.Fprintf(f.ErrOut, "more: cortexctl dlq list --page %s (or --limit 0 for all)\n", next)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "most dead letters to list (0: all)")
	cmd.Flags().StringVar(&page, "page", "", "continue a previous list (the token it printed)")
	output.AddFormatFlag(cmd, &format)
	return cmd
}

func newCmdDLQShow(f *cmdutil.Factory) *cobra.Command {
	var format output.Format
	cmd := &cobra.Command{
		Use:   "show JOB_ID",
		Short: "Show a dead letter with its attempt history",
		Long: `Show a dead letter as cortexctl jobs get shows a job, with when it went to
the queue. A job that is not in the queue (it never was, or was retried or
dropped) is an error: cortexctl jobs get shows any job. -o json and -o yaml
print the dead letter as dlq list does, its deadAt and its job record.`,
		Example: `  cortexctl dlq show 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e`,
		Args:    oneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			res, err := c.GetDeadLetter(cmd.Context(), &cortexv1.GetDeadLetterRequest{JobId: args[0]})
			if err != nil {
				return err
			}
			d := res.GetDeadLetter()
			p := output.New(f.Out, format)
			switch {
			case p.Machine():
				return p.Print(d)
			case p.Wide():
				return p.Table(jobHeader(true), [][]string{jobRow(p, d.GetJob(), time.Now())})
			}
			printDetail(f.Out, p, d.GetJob(), d.GetDeadAt(), time.Now())
			return nil
		},
	}
	output.AddFormatFlag(cmd, &format)
	return cmd
}

func newCmdDLQRetry(f *cmdutil.Factory) *cobra.Command {
	var format output.Format
	var reason string
	cmd := &cobra.Command{
		Use:   "retry JOB_ID...",
		Short: "Give dead letters one more attempt, through the safety gate",
		Long: `Give each dead letter one more attempt: it leaves the queue, goes back to
PENDING at its next attempt and through the safety gate again. Follow it with
cortexctl jobs watch JOB_ID.`,
		Example: `  cortexctl dlq retry 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl dlq retry --reason "upstream fixed" ID1 ID2`,
		Args: someIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			return eachJob(f, args, format, "retried", func(id string) (*cortexv1.Job, error) {
				res, err := c.RetryDeadLetter(cmd.Context(), &cortexv1.RetryDeadLetterRequest{JobId: id, Reason: reason})
				return res.GetJob(), err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded on the job (default \"retried from the dead-letter queue\")")
	output.AddFormatFlag(cmd, &format)
	return cmd
}

func newCmdDLQDrop(f *cmdutil.Factory) *cobra.Command {
	var format output.Format
	cmd := &cobra.Command{
		Use:   "drop JOB_ID...",
		Short: "Take dead letters off the queue (they keep their final state)",
		Long: `Take each dead letter off the queue for good, and print it with its state.
The job keeps its final state (FAILED or TIMEOUT) and its attempt history;
its reason now says it was dropped from the dead-letter queue instead of
pointing to it. cortexctl jobs get still shows it, but dlq list no longer
does, and it can no longer be retried with dlq retry.

A job that is not a dead letter, or not found, exits 1; a read-only key
exits 4. With several ids, each that cannot be dropped is reported on stderr
and the others are still dropped; the exit status is the first failure's.`,
		Example: `  cortexctl dlq drop 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl dlq drop ID1 ID2`,
		Args: someIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := f.Client()
			if err != nil {
				return err
			}
			return eachJob(f, args, format, "dropped", func(id string) (*cortexv1.Job, error) {
				res, err := c.DropDeadLetter(cmd.Context(), &cortexv1.DropDeadLetterRequest{JobId: id})
				return res.GetJob(), err
			})
		},
	}
	output.AddFormatFlag(cmd, &format)
	return cmd
}

func oneID(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return &cmdutil.UsageError{Err: errors.New("give one job id (see cortexctl dlq list)")}
	}
	return nil
}

func someIDs(_ *cobra.Command, args []string) error {
	if len(args) == 0 {
		return &cmdutil.UsageError{Err: errors.New("give at least one job id (see cortexctl dlq list)")}
	}
	return nil
}
