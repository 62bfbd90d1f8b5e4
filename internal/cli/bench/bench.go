// Package bench is `cortexctl bench`: it drives echo jobs through a running
// stack (or one it starts in process) the way a client would, through the
// gateway, and reports throughput and submit-to-result latency.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/gateway"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Options are bench's flags.
type Options struct {
	Factory     *cmdutil.Factory
	Jobs        int
	Concurrency int
	Topic       string
	Prompt      string
	InProcess   bool
	// Batch > 0 submits with SubmitJobs, that many jobs a call, and follows
	// them on one event stream; Rate paces it.
	Batch int
	Rate  float64
}

// NewCmdBench returns the bench command.
func NewCmdBench(f *cmdutil.Factory) *cobra.Command {
	o := &Options{Factory: f}
	cmd := &cobra.Command{
		Use:   "bench [-n JOBS] [-c CONCURRENCY] [--inprocess]",
		Short: "Measure jobs/s and submit-to-result latency",
		Long: `Submit JOBS jobs from CONCURRENCY clients through the gateway, follow each to
its end, and print jobs/s and the submit-to-result latency percentiles. It
runs against the stack the context points at, or with --inprocess against a
fresh stack it starts itself.

With --batch N, each client submits N jobs per call (SubmitJobs) and one event
stream follows them all, as a high-volume producer would; --rate paces the
submits to a steady number of jobs a second. Events are best effort: when the
stream brings no end for 2s, says it skipped events, or breaks (it is opened
again), bench reads the jobs it is waiting for from the store, and the report
says how many ends it read there (their latency runs to the read).

A run in which no job completed (a topic the policy denies, a pool without
workers) prints its report and exits 1. On a terminal, a spinner counts the
jobs ended so far. Ctrl-C stops the run and prints the figures of the jobs
submitted until then (exit status 130);
the jobs still in flight go on in the cluster.`,
		Example: `  cortexctl bench -n 20000 -c 64
  cortexctl bench --inprocess -n 5000
  cortexctl bench -n 100000 -c 8 --batch 500            # batched submits, as fast as it goes
  cortexctl bench -n 10000 --batch 10 --rate 1000       # a steady 1,000 jobs/s`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return &cmdutil.UsageError{Err: err}
			}
			return benchRun(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.IntVarP(&o.Jobs, "jobs", "n", 10000, "jobs to submit")
	fs.IntVarP(&o.Concurrency, "concurrency", "c", 64, "clients submitting at once")
	fs.StringVar(&o.Topic, "topic", "job.echo", "topic of the jobs")
	fs.StringVar(&o.Prompt, "prompt", "bench", "prompt of every job")
	fs.BoolVar(&o.InProcess, "inprocess", false, "start a stack in this process and measure it")
	fs.IntVar(&o.Batch, "batch", 0, "jobs per SubmitJobs call (0: one SubmitJob a job)")
	fs.Float64Var(&o.Rate, "rate", 0, "with --batch, submit this many jobs a second (0: as fast as possible)")
	return cmd
}

// check refuses flag values bench cannot run with, each with its own reason.
func (o *Options) check() error {
	switch {
	case o.Jobs < 1:
		return fmt.Errorf("-n %d: submit at least 1 job", o.Jobs)
	case o.Concurrency < 1:
		return fmt.Errorf("-c %d: use at least 1 client", o.Concurrency)
	case o.Batch < 0 || o.Batch > gateway.MaxBatch:
		return fmt.Errorf("--batch %d: a batch holds 1 to %d jobs (0: one SubmitJob a job)", o.Batch, gateway.MaxBatch)
	case math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) || o.Rate < 0:
		return fmt.Errorf("--rate %v: give a number of jobs a second, 0 or more (0: as fast as possible)", o.Rate)
	case o.Rate > 0 && o.Batch == 0:
		return errors.New("--rate paces batched submits: add --batch N (10 for a steady rate)")
	}
	return nil
}

func benchRun(ctx context.Context, o *Options) error {
	var c cortexv1connect.GatewayServiceClient
	target := ""
	if o.InProcess {
		cl, err := up.StartCluster(ctx, up.ClusterOptions{Listen: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		defer cl.Close()
		server := "http://" + cl.GatewayAddr
		target = server + " (in process)"
		if c, err = client.New(server, cl.APIKey); err != nil {
			return err
		}
	} else {
		var err error
		if c, target, err = o.Factory.Client(); err != nil {
			return err
		}
	}
	fmt.Fprintf(o.Factory.ErrOut, "bench: %d %s jobs, %d clients, against %s\n", o.Jobs, o.Topic, o.Concurrency, target)
	// On a terminal, the jobs ended and the time so far while it runs
	// (nothing when piped).
	var ended atomic.Int64
	stopProgress := showProgress(o.Factory.ErrOut, o.Jobs, &ended)
	var r *Report
	var err error
	if o.Batch > 0 {
		r, err = RunBatched(ctx, c, Batched{Jobs: o.Jobs, Concurrency: o.Concurrency, Batch: o.Batch, Rate: o.Rate,
			Topic: o.Topic, Prompt: o.Prompt, Timeout: time.Minute, Ended: &ended})
	} else {
		r, err = Run(ctx, c, Plain{Jobs: o.Jobs, Concurrency: o.Concurrency, Topic: o.Topic, Prompt: o.Prompt, Ended: &ended})
	}
	stopProgress()
	if r != nil {
		r.Print(o.Factory.Out)
		if err == nil {
			err = r.noneCompleted()
		}
	}
	return err
}

// noneCompleted is the error of a run in which no job completed: its
// figures measure no job's path (a topic the policy denies, no worker).
func (r *Report) noneCompleted() error {
	if r.Completed > 0 || r.Jobs == 0 || r.Interrupted {
		return nil
	}
	return fmt.Errorf("none of the %d jobs completed, so the figures measure nothing: see how they ended above", r.Jobs)
}

// progressEvery is how often the spinner's count of ended jobs is redrawn.
const progressEvery = 250 * time.Millisecond

// showProgress shows a spinner with how many of jobs have ended (ended
// counts them) until the returned func is called.
func showProgress(w io.Writer, jobs int, ended *atomic.Int64) (stop func()) {
	msg := func() string { return fmt.Sprintf("%d of %d jobs ended", ended.Load(), jobs) }
	spin := output.StartSpinner(w, msg())
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				spin.Update(msg())
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		spin.Stop()
	}
}

// Report is what one bench run measured.
type Report struct {
	Jobs      int
	Completed int
	NotDone   int
	// Others counts the jobs that ended otherwise than COMPLETED, by state
	// (DENIED, FAILED, ...).
	Others    map[string]int
	Elapsed   time.Duration
	Latencies []time.Duration // sorted
	// Dropped counts the events the gateway skipped because this client
	// read too slowly (RunBatched: their jobs' ends are read from the
	// store).
	Dropped uint64
	// FromStore counts the ends RunBatched read from the store because the
	// event stream did not bring them: their latency runs to the read, an
	// over-estimate.
	FromStore int
	// StreamBreaks counts the times RunBatched's event stream broke (it
	// opens it again); StreamErr, when not empty, is why it stopped
	// opening it, after which every end came from the store.
	StreamBreaks int
	StreamErr    string
	// Interrupted says the run was stopped (Ctrl-C) before its end: the
	// figures are of the jobs submitted until then.
	Interrupted bool
}

// ended counts a job that ended in state.
func (r *Report) ended(state cortexv1.JobState) {
	if state == cortexv1.JobState_JOB_STATE_COMPLETED {
		r.Completed++
		return
	}
	if r.Others == nil {
		r.Others = map[string]int{}
	}
	r.Others[strings.TrimPrefix(state.String(), "JOB_STATE_")]++
}

// Percentile returns the p-th percentile (0-100) latency.
func (r *Report) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// Print writes the report.
func (r *Report) Print(w io.Writer) {
	notDone := "did not complete"
	if r.Interrupted {
		fmt.Fprintf(w, "interrupted: the figures are of the %d jobs submitted until then\n", r.Jobs)
		notDone = "not completed by then"
	}
	fmt.Fprintf(w, "jobs        %d (%d completed, %d %s)\n", r.Jobs, r.Completed, r.NotDone, notDone)
	if len(r.Others) > 0 {
		var ends, why []string
		for _, st := range slices.Sorted(maps.Keys(r.Others)) {
			ends = append(ends, fmt.Sprintf("%d %s", r.Others[st], st))
			why = append(why, "--state "+strings.ToLower(st))
		}
		fmt.Fprintf(w, "not done    %s (why: cortexctl jobs list %s -o wide)\n", strings.Join(ends, ", "), strings.Join(why, " "))
	}
	fmt.Fprintf(w, "elapsed     %s\n", r.Elapsed.Round(time.Millisecond))
	if r.Dropped > 0 {
		fmt.Fprintf(w, "events      %d skipped by the gateway (this client read too slowly)\n", r.Dropped)
	}
	switch {
	case r.StreamErr != "":
		fmt.Fprintf(w, "stream      broke %s, the last for good (%s)\n", times(r.StreamBreaks), r.StreamErr)
	case r.StreamBreaks > 0:
		fmt.Fprintf(w, "stream      broke %s; reconnected\n", times(r.StreamBreaks))
	}
	if r.FromStore > 0 {
		fmt.Fprintf(w, "from store  %d of the ends were read from the store, not seen on the event stream: their latency, and the elapsed time, run to the read (an over-estimate)\n", r.FromStore)
	}
	ended := r.Completed
	for _, n := range r.Others {
		ended += n
	}
	if ended == 0 || len(r.Latencies) == 0 {
		fmt.Fprintln(w, "throughput  - (no job ended)")
		return
	}
	fmt.Fprintf(w, "throughput  %.0f jobs/s\n", float64(ended)/r.Elapsed.Seconds())
	fmt.Fprintf(w, "latency     p50 %s  p90 %s  p99 %s  max %s  (submit to result)\n",
		short(r.Percentile(50)), short(r.Percentile(90)), short(r.Percentile(99)), short(r.Percentile(100)))
}

// short rounds a latency to about four figures: 3.114ms, 12.35ms, 2.438s.
func short(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= 100*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= 10*time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// times is "once" or "N times".
func times(n int) string {
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%d times", n)
}

// Plain says how Run submits.
type Plain struct {
	Jobs, Concurrency int
	Topic, Prompt     string
	// Ended, when not nil, counts the jobs as they end, for progress.
	Ended *atomic.Int64
}

// Run submits p.Jobs jobs one at a time from p.Concurrency clients and
// follows each to its end.
func Run(ctx context.Context, c cortexv1connect.GatewayServiceClient, p Plain) (*Report, error) {
	n, concurrency, topic, prompt := p.Jobs, p.Concurrency, p.Topic, p.Prompt
	// The first client that fails stops the others: they would otherwise
	// wait on for jobs of a gateway that is gone.
	interrupted := ctx
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// next numbers the jobs taken; sent counts those submitted.
	var next, sent atomic.Int64
	var mu sync.Mutex
	var firstErr error
	r := &Report{Jobs: n, Latencies: make([]time.Duration, 0, n)}
	var wg sync.WaitGroup
	start := time.Now()
	for range min(concurrency, n) {
		wg.Go(func() {
			var lat []time.Duration
			var states []cortexv1.JobState
			for next.Add(1) <= int64(n) {
				t0 := time.Now()
				res, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: topic, Prompt: prompt})
				var st *cortexv1.Job
				if err == nil {
					sent.Add(1)
					st, err = job.WaitForEnd(ctx, c, res.GetJobId(), nil)
				}
				if err != nil {
					if interrupted.Err() != nil {
						break
					}
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						stop()
					}
					mu.Unlock()
					return
				}
				lat = append(lat, time.Since(t0))
				states = append(states, st.GetState())
				if p.Ended != nil {
					p.Ended.Add(1)
				}
			}
			mu.Lock()
			r.Latencies = append(r.Latencies, lat...)
			for _, st := range states {
				r.ended(st)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	r.Elapsed = time.Since(start)
	if firstErr != nil {
		return nil, fmt.Errorf("bench stopped: %w", firstErr)
	}
	slices.Sort(r.Latencies)
	if err := interrupted.Err(); err != nil {
		// The figures of the jobs submitted until then.
		r.Jobs, r.Interrupted = int(sent.Load()), true
		r.NotDone = r.Jobs - r.Completed
		return r, err
	}
	r.NotDone = n - r.Completed
	return r, nil
}
