package job

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// NewCmdJobs returns the jobs command group.
func NewCmdJobs(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:        "jobs",
		Short:      "List, inspect, cancel and watch jobs",
		SuggestFor: []string{"status", "job"},
		Long: `List, inspect, cancel and watch the jobs of your tenant (the API key's).
Jobs are kept for 24 hours.`,
		Example: `  cortexctl jobs list --state failed -o wide
  cortexctl jobs get 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl jobs result 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e > out.txt
  cortexctl jobs cancel 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl jobs watch 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(NewCmdList(f, nil), NewCmdGet(f, nil), NewCmdResult(f, nil), NewCmdCancel(f, nil), NewCmdWatch(f, nil))
	return cmd
}

// ListOptions are `jobs list`'s inputs.
type ListOptions struct {
	Factory *cmdutil.Factory
	filter
	Limit  int
	Page   string
	Watch  bool
	Output output.Format
}

// Most jobs `jobs list` prints unless --limit says otherwise.
const defaultListLimit = 50

// NewCmdList returns `jobs list`.
func NewCmdList(f *cmdutil.Factory, runF func(context.Context, *ListOptions) error) *cobra.Command {
	o := &ListOptions{Factory: f}
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List jobs, newest first",
		Long: `List your jobs, newest first, filtered by state, topic and labels. At most
--limit jobs print (0 for all); when more match, the command says how to get
the next page. -o json and -o yaml print the page as one list:
{"items": [...], "nextPageToken": "..."}.

With --watch, keep printing jobs as they change, until Ctrl-C. With -o json
or -o yaml the output is then a stream of jobs, as tail's: each job of the
first page, then each change, is one record (one JSON object on one line,
or one YAML document starting with "---"), with no list around them; when
more jobs match than the first page holds, the command says so on stderr.`,
		Example: `  cortexctl jobs list
  cortexctl jobs list --state denied,failed --topic 'job.*' -o wide
  cortexctl jobs list --label team=ml -o json | jq -r '.items[].jobId'
  cortexctl jobs list --watch
  cortexctl jobs list --watch -o json | jq -r '"\(.jobId) \(.state)"'`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return listRun(cmd.Context(), o)
		},
	}
	o.addFlags(cmd, "only jobs in these states")
	fs := cmd.Flags()
	fs.IntVar(&o.Limit, "limit", defaultListLimit, "most jobs to print (0: all)")
	fs.StringVar(&o.Page, "page", "", "continue from a previous list's next page token")
	fs.BoolVarP(&o.Watch, "watch", "w", false, "after listing, print jobs as they change")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func listRun(ctx context.Context, o *ListOptions) error {
	states, labels, err := o.parse()
	if err != nil {
		return err
	}
	if o.Limit < 0 {
		return &cmdutil.UsageError{Err: errors.New("--limit must be 0 (all) or more")}
	}
	if o.Page != "" {
		if _, err := base64.RawURLEncoding.DecodeString(o.Page); err != nil {
			return &cmdutil.UsageError{Err: errors.New("--page: not a page token; pass the token a previous list printed")}
		}
	}
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	var jobs []*cortexv1.Job
	token := o.Page
	for {
		size := uint32(500)
		if o.Limit > 0 {
			size = uint32(min(o.Limit-len(jobs), 500))
		}
		res, err := c.ListJobs(ctx, &cortexv1.ListJobsRequest{States: states, Topic: o.Topic, Labels: labels, PageSize: size, PageToken: token})
		if err != nil {
			return err
		}
		jobs = append(jobs, res.GetJobs()...)
		token = res.GetNextPageToken()
		if token == "" || o.Limit > 0 && len(jobs) >= o.Limit {
			break
		}
	}
	p := output.New(o.Factory.Out, o.Output)
	now := time.Now()
	switch {
	case p.Machine() && o.Watch:
		// A stream of jobs, as tail's: each listed job is a record, as
		// each change after them is, so that every record reads the same.
		for _, j := range jobs {
			if err := p.Record(j); err != nil {
				return err
			}
		}
		moreJobs(o.Factory.ErrOut, token)
	case p.Machine():
		return p.Print(output.List[*cortexv1.Job]{Items: jobs, NextPageToken: token})
	default:
		if len(jobs) == 0 && !o.Watch {
			fmt.Fprintln(o.Factory.ErrOut, "no jobs found")
			return nil
		}
		rows := make([][]string, len(jobs))
		for i, j := range jobs {
			rows[i] = jobRow(p, j, now)
		}
		header := jobHeader(p.Wide())
		if o.Watch {
			header = watchHeader(p.Wide())
		}
		if err := p.Table(header, rows); err != nil {
			return err
		}
		moreJobs(o.Factory.ErrOut, token)
	}
	if !o.Watch {
		return nil
	}
	return streamJobs(ctx, o.Factory, &cortexv1.StreamEventsRequest{Topic: o.Topic, States: states, Labels: labels}, func(j *cortexv1.Job) error {
		if p.Machine() {
			return p.Record(j)
		}
		return p.Table(nil, [][]string{jobRow(p, j, time.Now())})
	}, nil)
}

// The least widths of jobs list's columns while it watches (see
// watchHeader).
const (
	// watchIDWidth fits every job id, a UUIDv7.
	watchIDWidth = len("0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e")
	// watchTopicWidth fits topics such as job.chat.completion with room to
	// spare. Topics may be longer (up to 200 bytes): a longer one still
	// widens the column, from its row on.
	watchTopicWidth = 24
	// watchAgeWidth fits every age under a year ("364d"); jobs are kept
	// for 24 hours.
	watchAgeWidth = len("364d")
)

// watchStateWidth fits the name of every job state (AWAITING_APPROVAL).
var watchStateWidth = func() int {
	n := 0
	for v := range cortexv1.JobState_name {
		n = max(n, len(StateName(cortexv1.JobState(v))))
	}
	return n
}()

// watchHeader is the header of jobs list --watch: jobHeader with the job
// id, topic, state and age cells padded to widths that fit their values.
// The printer keeps each column as wide as its widest cell so far, header
// included, so the table printed first is already as wide as the rows
// printed for later changes (a DISPATCHED job after a table of COMPLETED
// ones, or any job after an empty table), and those rows line up under it.
func watchHeader(wide bool) []string {
	h := jobHeader(wide)
	for i, w := range []int{watchIDWidth, watchTopicWidth, watchStateWidth, watchAgeWidth} {
		h[i] = padRight(h[i], w)
	}
	return h
}

// padRight pads s with spaces to n bytes; a longer s is returned as it is.
func padRight(s string, n int) string {
	return s + strings.Repeat(" ", max(n-len(s), 0))
}

// moreJobs says on stderr how to list the jobs after a page, when token
// says there are more.
func moreJobs(errOut io.Writer, token string) {
	if token != "" {
		fmt.Fprintf(errOut, "more jobs match: add --page %s (or --limit 0 for all)\n", token)
	}
}

// oneJobCmd builds the commands that act on job ids.
func oneJobCmd(use, short, long, example string, run func(cmd *cobra.Command, id string) error) *cobra.Command {
	return &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    long,
		Example: example,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &cmdutil.UsageError{Err: fmt.Errorf("%s takes one job id (see cortexctl jobs list); got %d arguments", cmd.CommandPath(), len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return run(cmd, args[0]) },
	}
}

// GetOptions are `jobs get`'s inputs.
type GetOptions struct {
	Factory *cmdutil.Factory
	ID      string
	Output  output.Format
}

// NewCmdGet returns `jobs get`.
func NewCmdGet(f *cmdutil.Factory, runF func(context.Context, *GetOptions) error) *cobra.Command {
	o := &GetOptions{Factory: f}
	cmd := oneJobCmd("get JOB_ID", "Show a job: state, attempts, placement, safety decision, transitions",
		`Show everything known about a job but its input and output: state and
reason, attempt, pool and worker, the safety decision (rule, reason, policy),
labels, sizes, and the last time it entered each state, with the time since
it was created (after a retry, the states of the last attempt; Attempts lists
how every attempt ended).`,
		"  cortexctl jobs get 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e\n  cortexctl jobs get 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e -o json",
		func(cmd *cobra.Command, id string) error {
			o.ID = id
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return getRun(cmd.Context(), o)
		})
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func getRun(ctx context.Context, o *GetOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: o.ID})
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	switch {
	case p.Machine():
		return p.Print(res.GetJob())
	case p.Wide():
		return p.Table(jobHeader(true), [][]string{jobRow(p, res.GetJob(), time.Now())})
	}
	printDetail(o.Factory.Out, p, res.GetJob(), nil, time.Now())
	return nil
}

// ResultOptions are `jobs result`'s inputs.
type ResultOptions struct {
	Factory *cmdutil.Factory
	ID      string
	Output  output.Format
}

// NewCmdResult returns `jobs result`.
func NewCmdResult(f *cmdutil.Factory, runF func(context.Context, *ResultOptions) error) *cobra.Command {
	o := &ResultOptions{Factory: f}
	cmd := oneJobCmd("result JOB_ID", "Print a completed job's output",
		`Print a COMPLETED job's output on stdout, byte for byte (binary output too).
A job that ended otherwise exits 3 with its reason; one still running exits 1
and says how to wait for it.`,
		"  cortexctl jobs result 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e > answer.txt",
		func(cmd *cobra.Command, id string) error {
			o.ID = id
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return resultRun(cmd.Context(), o)
		})
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func resultRun(ctx context.Context, o *ResultOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: o.ID})
	if connect.CodeOf(err) == connect.CodeFailedPrecondition {
		// Finished without a result is exit 3, like --wait.
		if got, gerr := c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: o.ID}); gerr == nil && Terminal(got.GetJob().GetState()) {
			return endError(got.GetJob())
		}
	}
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	if p.Machine() {
		return p.Print(res)
	}
	if res.GetData() != nil {
		_, err = o.Factory.Out.Write(res.GetData())
		return err
	}
	_, err = io.WriteString(o.Factory.Out, withNewline(res.GetText()))
	return err
}

// CancelOptions are `jobs cancel`'s inputs.
type CancelOptions struct {
	Factory *cmdutil.Factory
	IDs     []string
	Reason  string
	Output  output.Format
}

// NewCmdCancel returns `jobs cancel`.
func NewCmdCancel(f *cmdutil.Factory, runF func(context.Context, *CancelOptions) error) *cobra.Command {
	o := &CancelOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "cancel JOB_ID...",
		Short: "Cancel jobs that have not finished",
		Long: `Cancel jobs: a job not yet dispatched never runs; a running one is asked to
stop and its result, if any, is discarded. Cancelling a cancelled job does
nothing; cancelling a finished one is an error.`,
		Example: `  cortexctl jobs cancel 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e
  cortexctl jobs list --state pending -o json | jq -r '.items[].jobId' | xargs cortexctl jobs cancel`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &cmdutil.UsageError{Err: errors.New("give at least one job id (see cortexctl jobs list)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.IDs = args
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return cancelRun(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Reason, "reason", "", "why, recorded on the job (default \"cancelled by the client\")")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func cancelRun(ctx context.Context, o *CancelOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	return eachJob(o.Factory, o.IDs, o.Output, "cancelled", func(id string) (*cortexv1.Job, error) {
		res, err := c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: id, Reason: o.Reason})
		return res.GetJob(), err
	})
}

// WatchOptions are `jobs watch`'s inputs.
type WatchOptions struct {
	Factory *cmdutil.Factory
	ID      string
	Output  output.Format
	// Follow also prints the job's output as it comes.
	Follow bool
}

// NewCmdWatch returns `jobs watch`.
func NewCmdWatch(f *cmdutil.Factory, runF func(context.Context, *WatchOptions) error) *cobra.Command {
	o := &WatchOptions{Factory: f}
	cmd := oneJobCmd("watch JOB_ID", "Follow a job's state changes until it ends",
		`Print a line for every state change of a job until it is finished. The exit
status says how it ended: 0 COMPLETED, 3 DENIED, FAILED, CANCELLED or TIMEOUT.
With --follow, also print the job's output as its handler streams it,
between the state lines, and at the end the rest of its result.

-o json prints each version of the job as one JSON object on one line (JSON
Lines); -o yaml prints each as a YAML document starting with "---". A job
that has ended prints once, in the same form.`,
		"  cortexctl jobs watch 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e\n  cortexctl jobs watch 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e && cortexctl jobs result 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e",
		func(cmd *cobra.Command, id string) error {
			o.ID = id
			if o.Follow && o.Output.Machine() {
				return &cmdutil.UsageError{Err: fmt.Errorf("--follow prints text as it comes; it does not go with -o %s", o.Output)}
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return watchRun(cmd.Context(), o)
		})
	output.AddFormatFlag(cmd, &o.Output)
	cmd.Flags().BoolVar(&o.Follow, "follow", false, "also print the job's output as it comes")
	return cmd
}

func watchRun(ctx context.Context, o *WatchOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	var printErr error
	fol := &follower{out: o.Factory.Out, errOut: o.Factory.ErrOut}
	var onOutput func(*cortexv1.JobOutput) error
	if o.Follow {
		onOutput = fol.piece
	}
	// The watch starts again with the job as it is: only the states it
	// went through while the stream was down can be missing.
	rc := newReconnector(o.Factory.ErrOut, "states the job went through while it was down may not have been shown (cortexctl jobs get "+o.ID+" shows it as it is)")
	j, err := followToEnd(ctx, c, o.ID, func(j *cortexv1.Job) {
		if p.Machine() {
			printErr = errors.Join(printErr, p.Record(j))
			return
		}
		if Terminal(j.GetState()) && o.Follow {
			printErr = errors.Join(printErr, fol.finishJob(ctx, c, j))
		}
		fol.endLine()
		fmt.Fprintln(o.Factory.Out, eventLine(p, j))
	}, onOutput, rc)
	if err != nil {
		return err
	}
	return errors.Join(printErr, endError(j))
}
