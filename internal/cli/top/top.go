// Package top is `cortexctl top`: a live dashboard of a cluster (rates,
// pools, safety decisions, jobs, workers) and, with --once, one snapshot
// of it for scripts. It reads the gateway through a small Source and acts
// only through the API the other commands use (approve, reject, cancel);
// it decides nothing and keeps no state beyond the screen.
package top

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// OnceWindow is how long --once listens to the streams before it prints.
const OnceWindow = time.Second

// Options are top's inputs.
type Options struct {
	Factory *cmdutil.Factory
	// Source is the cluster; the Factory's client when nil.
	Source Source
	Server string
	Once   bool
	Output output.Format
	// Window is how long --once listens (OnceWindow when zero).
	Window time.Duration
}

// NewCmdTop returns `cortexctl top`.
func NewCmdTop(f *cmdutil.Factory, runF func(context.Context, *Options) error) *cobra.Command {
	o := &Options{Factory: f}
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch the cluster live: rates, pools, safety decisions, jobs, workers",
		Long: `Show a live dashboard of the cluster: jobs per second in and out, the
backlog, each pool's workers, utilisation, queue and p99 latency, the safety
decisions as they are made, recent jobs and the workers' heartbeats. Select a
job for its detail; approve, reject or cancel it from there (each asks
first). Press ? for the keys.

Rates, queues and latencies are counted from the event streams since top
started, over the last 10 seconds. The header says how long the oldest live
worker has been heard from (by this gateway, since it started). Every tenant's decisions need an admin key
(up's key is one); another key sees its own tenant's.

With --once, listen for a second and print one snapshot (-o json or yaml for
scripts, a table otherwise); exit 1 if the cluster does not answer, 4 if it refuses the API key.`,
		Example: `  cortexctl top
  cortexctl top --once -o json | jq '.pools[] | {pool, utilisation, p99Ms}'`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !o.Once && o.Output != "" && o.Output != output.Table {
				return &cmdutil.UsageError{Err: fmt.Errorf("-o %s needs --once: the dashboard is for a terminal", o.Output)}
			}
			if o.Window < 0 || o.Window > maxWindow {
				return &cmdutil.UsageError{Err: fmt.Errorf("--listen %s is out of range: use 0 to %s", o.Window, maxWindow)}
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return topRun(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Once, "once", false, "print one snapshot and exit")
	cmd.Flags().DurationVar(&o.Window, "listen", OnceWindow, "with --once: how long to count events and decisions before printing")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func (o *Options) source() (Source, error) {
	if o.Source != nil {
		return o.Source, nil
	}
	c, server, err := o.Factory.Client()
	if err != nil {
		return nil, err
	}
	o.Server = server
	return NewClientSource(c), nil
}

// maxWindow bounds --listen: a snapshot is for now.
const maxWindow = 10 * time.Minute

// readsTerminal reports whether in is a terminal, which the dashboard
// reads its keys from.
func readsTerminal(in io.Reader) bool {
	f, ok := in.(*os.File)
	return ok && output.IsTerminal(f)
}

func topRun(ctx context.Context, o *Options) error {
	src, err := o.source()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tr := newTracker(time.Now())
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed(ctx, src, tr, time.Now)
	}()
	defer func() { cancel(); <-done }()
	if o.Once {
		return once(ctx, o, src, tr)
	}
	if !output.IsTerminal(o.Factory.Out) || !readsTerminal(o.Factory.In) {
		return &cmdutil.UsageError{Err: errors.New("the dashboard needs a terminal on its input and output: for scripts and pipes use --once (-o json|yaml)")}
	}
	// The heap is small and churns with every event: collect less often.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	m := NewModel(o.Server, src, tr.snapshot, time.Now())
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(o.Factory.In), tea.WithOutput(o.Factory.Out), tea.WithFPS(30))
	_, err = p.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Snapshot is what --once prints.
type Snapshot struct {
	Server    string
	TakenAt   time.Time
	InPerSec  float64
	OutPerSec float64
	Backlog   int
	Pools     []PoolSnapshot
	Workers   []*cortexv1.WorkerInfo
	Jobs      []*cortexv1.Job
	Decisions []*cortexv1.SafetyDecisionEvent
}

// PoolSnapshot is one pool with what top counts for it.
type PoolSnapshot struct {
	Pool        string   `json:"pool"`
	Workers     uint32   `json:"workers"`
	Draining    uint32   `json:"drainingWorkers"`
	ActiveJobs  uint32   `json:"activeJobs"`
	Capacity    uint32   `json:"capacity"`
	Utilisation float64  `json:"utilisation"`
	QueueDepth  int      `json:"queueDepth"`
	P99Ms       *float64 `json:"p99Ms,omitempty"`
	Topics      []string `json:"topics"`
}

// MarshalJSON prints the API's messages as protojson (as every -o json
// does) inside the snapshot's own fields.
func (s Snapshot) MarshalJSON() ([]byte, error) {
	workers, err := protoList(s.Workers)
	if err != nil {
		return nil, err
	}
	jobs, err := protoList(s.Jobs)
	if err != nil {
		return nil, err
	}
	decisions, err := protoList(s.Decisions)
	if err != nil {
		return nil, err
	}
	pools := s.Pools
	if pools == nil {
		pools = []PoolSnapshot{}
	}
	return json.Marshal(struct {
		Server    string            `json:"server"`
		TakenAt   time.Time         `json:"takenAt"`
		InPerSec  float64           `json:"jobsInPerSec"`
		OutPerSec float64           `json:"jobsOutPerSec"`
		Backlog   int               `json:"backlog"`
		Pools     []PoolSnapshot    `json:"pools"`
		Workers   []json.RawMessage `json:"workers"`
		Jobs      []json.RawMessage `json:"jobs"`
		Decisions []json.RawMessage `json:"decisions"`
	}{s.Server, s.TakenAt.UTC(), s.InPerSec, s.OutPerSec, s.Backlog, pools, workers, jobs, decisions})
}

func protoList[T proto.Message](items []T) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		b, err := output.MarshalProto(it)
		if err != nil {
			return nil, fmt.Errorf("format json: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// once lists the cluster, listens for Window, and prints what it saw.
func once(ctx context.Context, o *Options, src Source, tr *tracker) error {
	lctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	pools, err := src.Pools(lctx)
	if err != nil {
		return unreachable(o.Server, err)
	}
	workers, err := src.Workers(lctx)
	if err != nil {
		return unreachable(o.Server, err)
	}
	jobs, err := src.Jobs(lctx, listJobs)
	if err != nil {
		return unreachable(o.Server, err)
	}
	window := o.Window
	if window <= 0 {
		window = OnceWindow
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(window):
	}
	st := tr.snapshot(time.Now())
	m := Model{Server: o.Server, Stats: st, Pools: pools, Workers: workers, listed: jobs, Now: st.At}
	m.mergeJobs()
	s := Snapshot{Server: o.Server, TakenAt: st.At, InPerSec: st.InPerSec, OutPerSec: st.OutPerSec, Backlog: st.Backlog,
		Workers: workers, Jobs: m.Jobs, Decisions: withDenials(st)}
	slices.SortFunc(pools, func(a, b *cortexv1.PoolInfo) int { return strings.Compare(a.GetPool(), b.GetPool()) })
	for _, p := range pools {
		ps := PoolSnapshot{Pool: p.GetPool(), Workers: p.GetWorkers(), Draining: p.GetDrainingWorkers(),
			ActiveJobs: p.GetActiveJobs(), Capacity: p.GetCapacity(), QueueDepth: poolQueue(p, st.Queue), Topics: p.GetTopics()}
		if p.GetCapacity() > 0 {
			ps.Utilisation = float64(p.GetActiveJobs()) / float64(p.GetCapacity())
		}
		if d, ok := st.P99[p.GetPool()]; ok {
			ms := float64(d.Microseconds()) / 1000
			ps.P99Ms = &ms
		}
		s.Pools = append(s.Pools, ps)
	}
	pr := output.New(o.Factory.Out, o.Output)
	if pr.Machine() {
		return pr.Print(s)
	}
	return printTables(pr, s)
}

// unreachable says why listing the cluster at server failed, keeping err
// (and so its exit status: 4 for a refused key).
func unreachable(server string, err error) error {
	what, todo := problem(server, err)
	if todo != "" {
		return fmt.Errorf("%s: %w; %s", what, err, todo)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// keyHint says how to give top another API key.
const keyHint = "pass the right one with --api-key, CORTEX_API_KEY or a context ('cortexctl context use')"

// problem says what err, from a call to the gateway at server, means: the
// API key refused, a gateway that answers but cannot serve (its store is
// down, say), or no answer at all; and what to do about it ("" when only
// waiting helps).
func problem(server string, err error) (what, todo string) {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return "the gateway at " + server + " refused the API key", keyHint
	}
	if cerr, ok := errors.AsType[*connect.Error](err); ok && cerr.IsRemote() {
		return "the gateway answers but cannot serve, at " + server, ""
	}
	return "cluster unreachable at " + server, ""
}

func printTables(pr *output.Printer, s Snapshot) error {
	out := pr.Out
	fmt.Fprintf(out, "%s  in %.1f/s  out %.1f/s  backlog %d\n\n", s.Server, s.InPerSec, s.OutPerSec, s.Backlog)
	var rows [][]string
	for _, p := range s.Pools {
		p99 := "-"
		if p.P99Ms != nil {
			p99 = strconv.FormatFloat(*p.P99Ms, 'f', 1, 64) + "ms"
		}
		rows = append(rows, []string{p.Pool, strconv.Itoa(int(p.Workers)), fmt.Sprintf("%d/%d", p.ActiveJobs, p.Capacity),
			fmt.Sprintf("%.0f%%", p.Utilisation*100), strconv.Itoa(p.QueueDepth), p99})
	}
	if err := pr.Table([]string{"POOL", "WORKERS", "ACTIVE/CAPACITY", "UTILISATION", "QUEUE", "P99"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(out)
	rows = nil
	for _, w := range s.Workers {
		rows = append(rows, []string{w.GetWorkerId(), w.GetPool(), output.WorkerState(w.GetState()), fmt.Sprintf("%d/%d", w.GetActiveJobs(), w.GetMaxParallelJobs()),
			output.Age(w.GetLastHeartbeat().AsTime(), s.TakenAt)})
	}
	if err := pr.Table([]string{"WORKER", "POOL", "STATE", "ACTIVE/MAX", "LAST BEAT"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(out)
	rows = nil
	for _, j := range s.Jobs[:min(len(s.Jobs), 20)] {
		rows = append(rows, []string{j.GetJobId(), stateName(j.GetState()), j.GetTopic(), orDash(j.GetPool()),
			output.Age(j.GetCreatedAt().AsTime(), s.TakenAt)})
	}
	if err := pr.Table([]string{"JOB", "STATE", "TOPIC", "POOL", "AGE"}, rows); err != nil {
		return err
	}
	fmt.Fprintln(out)
	rows = nil
	for _, d := range s.Decisions[:min(len(s.Decisions), 20)] {
		v := d.GetVerdict()
		rows = append(rows, []string{d.GetJobId(), decisionName(v.GetDecision()), v.GetRule(), d.GetTopic(), d.GetTenantId(), v.GetReason()})
	}
	return pr.Table([]string{"JOB", "DECISION", "RULE", "TOPIC", "TENANT", "REASON"}, rows)
}
