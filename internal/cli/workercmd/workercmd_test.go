package workercmd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func factory() (*cmdutil.Factory, *bytes.Buffer, *bytes.Buffer) {
	out, errOut := new(bytes.Buffer), new(bytes.Buffer)
	return &cmdutil.Factory{In: strings.NewReader(""), Out: out, ErrOut: errOut}, out, errOut
}

func execute(cmd *cobra.Command, args ...string) error {
	cmd.SetArgs(args)
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	return cmd.Execute()
}

func TestWorkersFlags(t *testing.T) {
	f, _, _ := factory()
	var got *WorkersOptions
	cmd := NewCmdWorkers(f, func(_ context.Context, o *WorkersOptions) error { got = o; return nil })
	if err := execute(cmd, "--pool", "echo", "-o", "wide", "-w"); err != nil {
		t.Fatal(err)
	}
	if got.Pool != "echo" || got.Output != output.Wide || !got.Watch {
		t.Fatalf("options %+v", got)
	}
	for _, args := range [][]string{{"--pool", "job.*"}, {"-o", "xml"}, {"extra"}} {
		got = nil
		cmd := NewCmdWorkers(f, func(_ context.Context, o *WorkersOptions) error { got = o; return nil })
		if err := execute(cmd, args...); err == nil || got != nil {
			t.Errorf("%v: accepted (%v)", args, err)
		}
	}
	var usage *cmdutil.UsageError
	if err := execute(NewCmdWorkers(f, func(context.Context, *WorkersOptions) error { return nil }), "--pool", "A B"); !errors.As(err, &usage) {
		t.Errorf("bad pool: %v, want a usage error", err)
	}
}

func TestPoolsFlags(t *testing.T) {
	f, _, _ := factory()
	var got *PoolsOptions
	cmd := NewCmdPools(f, func(_ context.Context, o *PoolsOptions) error { got = o; return nil })
	if err := execute(cmd, "-o", "json", "--watch"); err != nil {
		t.Fatal(err)
	}
	if got.Output != output.JSON || !got.Watch {
		t.Fatalf("options %+v", got)
	}
	if err := execute(NewCmdPools(f, func(context.Context, *PoolsOptions) error { return nil }), "--pool", "x"); err == nil {
		t.Error("pools took --pool")
	}
}

// fakeGateway answers the lists, counting the calls.
type fakeGateway struct {
	mu      sync.Mutex
	workers []*cortexv1.WorkerInfo
	pools   []*cortexv1.PoolInfo
	pool    string
	calls   int
	err     error
	// onCall runs after each call.
	onCall func(n int)
}

var _ Lister = (*fakeGateway)(nil)

func (g *fakeGateway) called() {
	g.mu.Lock()
	g.calls++
	n := g.calls
	g.mu.Unlock()
	if g.onCall != nil {
		g.onCall(n)
	}
}

func (g *fakeGateway) ListWorkers(_ context.Context, req *cortexv1.ListWorkersRequest) (*cortexv1.ListWorkersResponse, error) {
	defer g.called()
	g.pool = req.GetPool()
	return &cortexv1.ListWorkersResponse{Workers: g.workers}, g.err
}

func (g *fakeGateway) ListPools(context.Context, *cortexv1.ListPoolsRequest) (*cortexv1.ListPoolsResponse, error) {
	defer g.called()
	return &cortexv1.ListPoolsResponse{Pools: g.pools}, g.err
}

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func sampleGateway() *fakeGateway {
	return &fakeGateway{
		workers: []*cortexv1.WorkerInfo{
			{
				WorkerId: "echo-1a2b3c4d", Pool: "echo", State: cortexv1.WorkerState_WORKER_STATE_LIVE, ActiveJobs: 3, MaxParallelJobs: 64,
				CpuLoad: 0.4251, Topics: []string{"job.echo", "job.sleep"}, Capabilities: []string{"echo", "sleep"}, Version: "v0.6.0",
				CompletedJobs: 120, FailedJobs: 2, LastHeartbeat: timestamppb.New(now.Add(-2 * time.Second)),
				HeartbeatInterval: durationpb.New(3 * time.Second), FirstSeen: timestamppb.New(now.Add(-time.Hour)),
			},
			{
				WorkerId: "gpu-1", Pool: "gpu", State: cortexv1.WorkerState_WORKER_STATE_DRAINING, MaxParallelJobs: 1,
				LastHeartbeat: timestamppb.New(now.Add(-5 * time.Second)),
			},
		},
		pools: []*cortexv1.PoolInfo{
			{Pool: "echo", Workers: 2, ActiveJobs: 3, Capacity: 128, Topics: []string{"job.echo", "job.sleep"}},
			{Pool: "gpu", DrainingWorkers: 1},
		},
	}
}

func run(t *testing.T, f *cmdutil.Factory, g *fakeGateway, format output.Format, pools bool) error {
	t.Helper()
	c := common{Factory: f, Client: g, Output: format, Now: func() time.Time { return now }}
	if pools {
		return poolsRun(context.Background(), &PoolsOptions{common: c})
	}
	return workersRun(context.Background(), &WorkersOptions{common: c, Pool: "echo"})
}

func TestWorkersTable(t *testing.T) {
	f, out, _ := factory()
	g := sampleGateway()
	if err := run(t, f, g, output.Table, false); err != nil {
		t.Fatal(err)
	}
	want := `WORKER          POOL   STATE      ACTIVE/MAX   LOAD   LAST BEAT   VERSION
echo-1a2b3c4d   echo   live       3/64         0.43   2s          v0.6.0
gpu-1           gpu    draining   0/1          0.00   5s          -
`
	if out.String() != want || g.pool != "echo" {
		t.Fatalf("table (pool %q):\n%s\nwant:\n%s", g.pool, out, want)
	}

	f, out, _ = factory()
	if err := run(t, f, sampleGateway(), output.Wide, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.HasSuffix(lines[0], "VERSION   TOPICS               CAPABILITIES   COMPLETED   FAILED") ||
		!strings.HasSuffix(lines[1], "v0.6.0    job.echo,job.sleep   echo,sleep     120         2") {
		t.Fatalf("wide:\n%s", out)
	}
}

func TestWorkersJSON(t *testing.T) {
	f, out, _ := factory()
	if err := run(t, f, sampleGateway(), output.JSON, false); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"items": [`, `"workerId": "echo-1a2b3c4d"`, `"pool": "echo"`, `"state": "WORKER_STATE_LIVE"`,
		`"activeJobs": 3`, `"maxParallelJobs": 64`, `"cpuLoad": 0.4251`, `"capabilities": [`, `"version": "v0.6.0"`,
		`"completedJobs": "120"`, `"lastHeartbeat": "2026-11-22T11:59:58Z"`, `"heartbeatInterval": "3s"`, `"state": "WORKER_STATE_DRAINING"`} {
		if !strings.Contains(out.String(), field) {
			t.Errorf("json lacks %s:\n%s", field, out)
		}
	}
}

func TestNoWorkers(t *testing.T) {
	f, out, errOut := factory()
	if err := run(t, f, &fakeGateway{}, output.Table, false); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), "no workers found in pool echo") {
		t.Fatalf("stdout %q, stderr %q", out, errOut)
	}
	// Every worker may have expired: the message must not say that none
	// ever sent a heartbeat, for all the CLI can tell.
	f, _, errOut = factory()
	c := common{Factory: f, Client: &fakeGateway{}, Output: output.Table}
	for _, list := range []func() error{
		func() error { return workersRun(context.Background(), &WorkersOptions{common: c}) },
		func() error { return poolsRun(context.Background(), &PoolsOptions{common: c}) },
	} {
		errOut.Reset()
		if err := list(); err != nil {
			t.Fatal(err)
		}
		if msg := errOut.String(); strings.Contains(msg, "no worker has sent a heartbeat") ||
			!strings.Contains(msg, "a worker is listed from its first heartbeat until it misses three") {
			t.Errorf("empty list says %q", msg)
		}
	}
	f, out, _ = factory()
	if err := run(t, f, &fakeGateway{}, output.JSON, false); err != nil {
		t.Fatal(err)
	}
	if out.String() != "{\n  \"items\": []\n}\n" {
		t.Fatalf("json of no workers: %q", out)
	}
}

func TestPoolsTable(t *testing.T) {
	f, out, _ := factory()
	if err := run(t, f, sampleGateway(), output.Table, true); err != nil {
		t.Fatal(err)
	}
	want := `POOL   WORKERS   ACTIVE/CAPACITY   TOPICS
echo   2         3/128 (2%)        job.echo,job.sleep
gpu    0         0/0 (-)           -
`
	if out.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", out, want)
	}
	f, out, _ = factory()
	if err := run(t, f, sampleGateway(), output.YAML, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "- activeJobs: 3\n  capacity: 128\n") || !strings.Contains(out.String(), "drainingWorkers: 1") {
		t.Fatalf("yaml:\n%s", out)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		active, capacity uint32
		want             string
	}{{0, 64, "0/64 (0%)"}, {32, 64, "32/64 (50%)"}, {64, 64, "64/64 (100%)"}, {1, 3, "1/3 (33%)"}, {2, 3, "2/3 (67%)"}, {1, 0, "1/0 (-)"}} {
		if got := usage(tc.active, tc.capacity); got != tc.want {
			t.Errorf("usage(%d, %d) = %q, want %q", tc.active, tc.capacity, got, tc.want)
		}
	}
}

func TestWatchListsAgainUntilInterrupted(t *testing.T) {
	f, out, errOut := factory()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := sampleGateway()
	g.onCall = func(n int) {
		switch n {
		case 2:
			g.err = connect.NewError(connect.CodeUnavailable, "gateway restarting")
		case 3:
			g.err = nil
		case 4:
			cancel()
		}
	}
	o := &WorkersOptions{common: common{Factory: f, Client: g, Watch: true, Interval: time.Millisecond, Now: func() time.Time { return now }}}
	err := workersRun(ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("watch ended with %v, want context.Canceled (exit 130)", err)
	}
	if n := strings.Count(out.String(), "WORKER "); n != 3 {
		t.Errorf("%d tables, want 3 (one call failed):\n%s", n, out)
	}
	if !strings.Contains(errOut.String(), "the gateway does not answer") {
		t.Errorf("stderr %q", errOut)
	}

	// Any other error ends the watch.
	f, _, _ = factory()
	g = sampleGateway()
	g.onCall = func(int) { g.err = connect.NewError(connect.CodePermissionDenied, "no") }
	o = &WorkersOptions{common: common{Factory: f, Client: g, Watch: true, Interval: time.Millisecond}}
	if err := workersRun(context.Background(), o); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("watch ended with %v, want PermissionDenied", err)
	}
}
