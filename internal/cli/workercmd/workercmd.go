// Package workercmd is `cortexctl workers` and `cortexctl pools`: the
// workers the gateway hears heartbeats from, and their pools. Workers are
// cluster-wide infrastructure: any API key may list them, and the lists
// name no job or tenant. It prints what the gateway says and decides
// nothing.
package workercmd

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Lister is what the commands need from the gateway.
type Lister interface {
	ListWorkers(ctx context.Context, req *cortexv1.ListWorkersRequest) (*cortexv1.ListWorkersResponse, error)
	ListPools(ctx context.Context, req *cortexv1.ListPoolsRequest) (*cortexv1.ListPoolsResponse, error)
}

// WatchInterval is how often --watch lists again.
const WatchInterval = 2 * time.Second

// common are the inputs both commands share.
type common struct {
	Factory *cmdutil.Factory
	// Client is the gateway; the Factory's when nil.
	Client Lister
	Output output.Format
	Watch  bool
	// Interval is the time between lists with --watch (WatchInterval
	// when zero); Now is the clock for ages (time.Now when nil).
	Interval time.Duration
	Now      func() time.Time
}

func (o *common) addFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&o.Watch, "watch", "w", false, "list again every 2s until interrupted")
	output.AddFormatFlag(cmd, &o.Output)
}

func (o *common) client() (Lister, error) {
	if o.Client != nil {
		return o.Client, nil
	}
	c, _, err := o.Factory.Client()
	return c, err
}

func (o *common) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// loop runs list once, or with --watch every Interval until ctx ends (an
// interrupt, exit 130). While watching, a gateway that does not answer is
// reported and asked again.
func (o *common) loop(ctx context.Context, list func() error) error {
	err := list()
	if !o.Watch {
		return err
	}
	interval := o.Interval
	if interval <= 0 {
		interval = WatchInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case connect.CodeOf(err) == connect.CodeUnavailable:
			fmt.Fprintf(o.Factory.ErrOut, "the gateway does not answer (%v); trying again\n", err)
		case err != nil:
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		// Lists are separated as the format wants: a blank line between
		// tables, a document marker in YAML; JSON needs nothing.
		switch o.Output {
		case output.YAML:
			fmt.Fprintln(o.Factory.Out, "---")
		case output.JSON:
		default:
			fmt.Fprintln(o.Factory.Out)
		}
		err = list()
	}
}

// WorkersOptions are `workers`' inputs.
type WorkersOptions struct {
	common
	Pool string
}

// NewCmdWorkers returns `cortexctl workers`.
func NewCmdWorkers(f *cmdutil.Factory, runF func(context.Context, *WorkersOptions) error) *cobra.Command {
	o := &WorkersOptions{common: common{Factory: f}}
	cmd := &cobra.Command{
		Use:        "workers",
		Short:      "List the workers and how busy they are",
		SuggestFor: []string{"worker-list", "nodes"},
		Long: `List the workers the gateway hears heartbeats from, by pool: whether each is
live or draining (stopping, or asked to drain: it takes no new jobs), jobs
running and the most it runs at once, the host's CPU load (1-minute load
average per CPU), when the last heartbeat came, and the version. -o wide adds
the topics, capabilities, and jobs completed and failed. A worker shows from
its first heartbeat until it has missed three.

Workers are shared by every tenant: any API key, a read-only one too, may
list them; the list names no job or tenant.`,
		Example: `  cortexctl workers
  cortexctl workers --pool echo -o wide
  cortexctl workers -o json | jq -r '.items[] | select(.state == "WORKER_STATE_DRAINING") | .workerId'
  cortexctl workers --watch`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Pool != "" && !bus.ValidToken(o.Pool) {
				return &cmdutil.UsageError{Err: fmt.Errorf("--pool %q: pool names are 1-64 characters of a-z, 0-9, - and _", o.Pool)}
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return workersRun(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Pool, "pool", "", "only the workers of this pool")
	o.addFlags(cmd)
	return cmd
}

func workersRun(ctx context.Context, o *WorkersOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	return o.loop(ctx, func() error {
		res, err := c.ListWorkers(ctx, &cortexv1.ListWorkersRequest{Pool: o.Pool})
		if err != nil {
			return err
		}
		if p.Machine() {
			return p.Print(output.List[*cortexv1.WorkerInfo]{Items: res.GetWorkers()})
		}
		if len(res.GetWorkers()) == 0 {
			fmt.Fprintln(o.Factory.ErrOut, noneFound("workers", o.Pool))
			return nil
		}
		now := o.now()
		rows := make([][]string, len(res.GetWorkers()))
		for i, w := range res.GetWorkers() {
			rows[i] = workerRow(p.Wide(), w, now)
		}
		return p.Table(workerHeader(p.Wide()), rows)
	})
}

// listedWhile says how long a worker is listed. The gateway's lists do not
// say whether a worker ever sent a heartbeat, so an empty list may mean
// that none started or that every one stopped or died: this is true of both.
const listedWhile = "a worker is listed from its first heartbeat until it misses three"

// noneFound is what an empty list of workers (in pool, when not "") or
// of pools says on stderr.
func noneFound(what, pool string) string {
	msg := "no " + what + " found"
	if pool != "" {
		msg += " in pool " + pool
	}
	return msg + ": " + listedWhile + " (start one with 'cortexctl worker', or 'cortexctl up')"
}

func workerHeader(wide bool) []string {
	h := []string{"WORKER", "POOL", "STATE", "ACTIVE/MAX", "LOAD", "LAST BEAT", "VERSION"}
	if wide {
		h = append(h, "TOPICS", "CAPABILITIES", "COMPLETED", "FAILED")
	}
	return h
}

func workerRow(wide bool, w *cortexv1.WorkerInfo, now time.Time) []string {
	row := []string{
		w.GetWorkerId(),
		w.GetPool(),
		output.WorkerState(w.GetState()),
		fmt.Sprintf("%d/%d", w.GetActiveJobs(), w.GetMaxParallelJobs()),
		strconv.FormatFloat(w.GetCpuLoad(), 'f', 2, 64),
		output.Age(w.GetLastHeartbeat().AsTime(), now),
		orDash(w.GetVersion()),
	}
	if wide {
		row = append(row,
			orDash(strings.Join(w.GetTopics(), ",")),
			orDash(strings.Join(w.GetCapabilities(), ",")),
			strconv.FormatUint(w.GetCompletedJobs(), 10),
			strconv.FormatUint(w.GetFailedJobs(), 10))
	}
	return row
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// PoolsOptions are `pools`' inputs.
type PoolsOptions struct {
	common
}

// NewCmdPools returns `cortexctl pools`.
func NewCmdPools(f *cmdutil.Factory, runF func(context.Context, *PoolsOptions) error) *cobra.Command {
	o := &PoolsOptions{common: common{Factory: f}}
	cmd := &cobra.Command{
		Use:   "pools",
		Short: "List the pools: workers, capacity in use, topics",
		Long: `List the pools: how many live workers each has, the jobs they run out of
how many they can run at once (and that as a percentage), and the topics
they serve. A pool that the gateway's routes lead to and no worker serves is
listed with 0 workers and its routed topics: its jobs wait for a worker.
-o wide adds the workers that are draining, whose jobs and capacity are not
counted. Any API key may list them, as with 'cortexctl workers'.`,
		Example: `  cortexctl pools
  cortexctl pools -o json | jq '.items[] | {pool, capacity}'
  cortexctl pools --watch`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return poolsRun(cmd.Context(), o)
		},
	}
	o.addFlags(cmd)
	return cmd
}

func poolsRun(ctx context.Context, o *PoolsOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	return o.loop(ctx, func() error {
		res, err := c.ListPools(ctx, &cortexv1.ListPoolsRequest{})
		if err != nil {
			return err
		}
		if p.Machine() {
			return p.Print(output.List[*cortexv1.PoolInfo]{Items: res.GetPools()})
		}
		if len(res.GetPools()) == 0 {
			fmt.Fprintln(o.Factory.ErrOut, noneFound("pools", ""))
			return nil
		}
		header := []string{"POOL", "WORKERS", "ACTIVE/CAPACITY", "TOPICS"}
		if p.Wide() {
			header = append(header, "DRAINING")
		}
		rows := make([][]string, len(res.GetPools()))
		for i, pool := range res.GetPools() {
			rows[i] = []string{
				pool.GetPool(),
				strconv.FormatUint(uint64(pool.GetWorkers()), 10),
				usage(pool.GetActiveJobs(), pool.GetCapacity()),
				orDash(strings.Join(pool.GetTopics(), ",")),
			}
			if p.Wide() {
				rows[i] = append(rows[i], strconv.FormatUint(uint64(pool.GetDrainingWorkers()), 10))
			}
		}
		return p.Table(header, rows)
	})
}

// usage is "active/capacity (percent, rounded)": "3/64 (5%)"; "0/0 (-)"
// with no capacity.
func usage(active, capacity uint32) string {
	if capacity == 0 {
		return fmt.Sprintf("%d/0 (-)", active)
	}
	return fmt.Sprintf("%d/%d (%d%%)", active, capacity, (uint64(active)*100+uint64(capacity)/2)/uint64(capacity))
}
