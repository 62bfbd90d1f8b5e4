package job

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/syncbuf"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

func TestBackoffDoublesUpToItsMaximumAndStartsOver(t *testing.T) {
	var b Backoff
	var got []time.Duration
	for range 7 {
		got = append(got, b.Next())
	}
	b.Reset()
	got = append(got, b.Next(), b.Next())
	s := time.Second
	want := []time.Duration{s / 2, s, 2 * s, 4 * s, 5 * s, 5 * s, 5 * s, s / 2, s}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pauses %v, want %v", got, want)
	}
}

// fakeClock is the reconnects' clock in a test: sleeping records the pause
// and moves the clock on at once.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

// useFakeClock gives the commands' streams a fake clock for the test. A
// stream that brings no message counts as back only after settled.
func useFakeClock(t *testing.T, settled time.Duration) *fakeClock {
	c := &fakeClock{now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	testClock = &reconnector{settled: settled, sleep: c.sleep, now: c.Now}
	t.Cleanup(func() { testClock = nil })
	return c
}

func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return ctx.Err()
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) pauses() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// outage is one call of a stream to flakyGateway: what it sends, then how
// it ends.
type outage struct {
	events   []*cortexv1.StreamEventsResponse
	versions []*cortexv1.Job
	err      error
}

// flakyGateway answers each StreamEvents or WatchJob call with the next
// of calls, as a gateway that restarts now and then would.
type flakyGateway struct {
	cortexv1connect.UnimplementedGatewayServiceHandler
	mu    sync.Mutex
	calls []outage
	n     int
}

var errRestarting = connect.NewError(connect.CodeUnavailable, "the gateway is restarting")

func (g *flakyGateway) next() outage {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n >= len(g.calls) {
		return outage{err: errEndOfStream}
	}
	g.n++
	return g.calls[g.n-1]
}

func (g *flakyGateway) ListJobs(context.Context, *cortexv1.ListJobsRequest) (*cortexv1.ListJobsResponse, error) {
	return &cortexv1.ListJobsResponse{}, nil
}

func (g *flakyGateway) StreamEvents(_ context.Context, _ *cortexv1.StreamEventsRequest, s cortexv1connect.GatewayServiceStreamEventsServerStream) error {
	call := g.next()
	for _, ev := range call.events {
		if err := s.Send(ev); err != nil {
			return err
		}
	}
	return call.err
}

func (g *flakyGateway) WatchJob(_ context.Context, _ *cortexv1.WatchJobRequest, s cortexv1connect.GatewayServiceWatchJobServerStream) error {
	call := g.next()
	for _, j := range call.versions {
		if err := s.Send(&cortexv1.WatchJobResponse{Job: j}); err != nil {
			return err
		}
	}
	return call.err
}

func (g *flakyGateway) SubmitJob(context.Context, *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error) {
	return &cortexv1.SubmitJobResponse{JobId: "j1", State: pending}, nil
}

func (g *flakyGateway) GetResult(context.Context, *cortexv1.GetResultRequest) (*cortexv1.GetResultResponse, error) {
	return &cortexv1.GetResultResponse{JobId: "j1", Output: &cortexv1.GetResultResponse_Text{Text: "done"}}, nil
}

// lines splits s into its lines.
func lines(s string) []string {
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// While the gateway is down, tail and jobs list --watch try again after
// 0.5 s, 1 s, 2 s, 4 s, then every 5 s, and say so once; when the stream
// is back they say so, and that changes may have been missed, and the
// pauses start over.
func TestJobStreamsReconnectWithBackoffAndSaySo(t *testing.T) {
	for name, newCmd := range map[string]func(*cmdutil.Factory) *cobra.Command{
		"tail":              func(f *cmdutil.Factory) *cobra.Command { return NewCmdTail(f, nil) },
		"jobs list --watch": func(f *cmdutil.Factory) *cobra.Command { return NewCmdList(f, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			clock := useFakeClock(t, time.Hour)
			down := outage{err: errRestarting}
			url := serve(t, &flakyGateway{calls: []outage{
				{events: []*cortexv1.StreamEventsResponse{jobEvent(streamJob("j1", pending, 1))}, err: errRestarting},
				down, down, down, down, down, // a long outage: six attempts fail
				{events: []*cortexv1.StreamEventsResponse{jobEvent(streamJob("j1", running, 2))}, err: errRestarting},
				down, // a short one: two attempts
				{events: []*cortexv1.StreamEventsResponse{jobEvent(streamJob("j1", completed, 3))}, err: errEndOfStream},
			}})
			args := []string{"-o", "json"}
			if name != "tail" {
				args = append(args, "--watch")
			}
			out, errOut, err := run(t, url, newCmd, args...)
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("%s: %v, want the end of the fake stream", name, err)
			}
			wantJobs(t, jsonLines(t, out), jobAt{"j1", pending}, jobAt{"j1", running}, jobAt{"j1", completed})
			s := time.Second
			if got, want := clock.pauses(), []time.Duration{s / 2, s, 2 * s, 4 * s, 5 * s, 5 * s, s / 2, s}; !reflect.DeepEqual(got, want) {
				t.Errorf("pauses between attempts %v, want %v", got, want)
			}
			interrupted := "stream interrupted (unavailable: the gateway is restarting); reconnecting"
			back := "changes made while it was down may not have been shown (cortexctl jobs list shows the current states)"
			want := []string{
				interrupted,
				"stream back after 17.5s: " + back,
				interrupted,
				"stream back after 1.5s: " + back,
			}
			if got := lines(errOut); !reflect.DeepEqual(got, want) {
				t.Errorf("stderr:\n%s\nwant:\n%s", errOut, strings.Join(want, "\n"))
			}
		})
	}
}

// jobs watch backs off in the same way, and says what it may have missed.
func TestWatchReconnectsWithBackoffAndSaysSo(t *testing.T) {
	clock := useFakeClock(t, time.Hour)
	url := serve(t, &flakyGateway{calls: []outage{
		{versions: []*cortexv1.Job{streamJob("j1", pending, 1)}, err: errRestarting},
		{err: errRestarting},
		{err: errRestarting},
		{versions: []*cortexv1.Job{streamJob("j1", running, 2), streamJob("j1", completed, 4)}},
	}})
	out, errOut, err := run(t, url, func(f *cmdutil.Factory) *cobra.Command { return NewCmdWatch(f, nil) }, "j1", "-o", "json")
	if err != nil {
		t.Fatalf("jobs watch: %v", err)
	}
	wantJobs(t, jsonLines(t, out), jobAt{"j1", pending}, jobAt{"j1", running}, jobAt{"j1", completed})
	s := time.Second
	if got, want := clock.pauses(), []time.Duration{s / 2, s, 2 * s}; !reflect.DeepEqual(got, want) {
		t.Errorf("pauses between attempts %v, want %v", got, want)
	}
	want := []string{
		"stream interrupted (unavailable: the gateway is restarting); reconnecting",
		"stream back after 3.5s: states the job went through while it was down may not have been shown (cortexctl jobs get j1 shows it as it is)",
	}
	if got := lines(errOut); !reflect.DeepEqual(got, want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, strings.Join(want, "\n"))
	}
}

// A reopened stream that brings nothing (no job changed) is back once it
// has stayed open a while: the command says so without waiting for an
// event, and the pauses start over.
func TestStreamThatStaysOpenCountsAsBack(t *testing.T) {
	clock := &fakeClock{now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	var errOut syncbuf.Buffer
	rc := &reconnector{errOut: &errOut, back: "changes may be missing", settled: 10 * time.Millisecond, sleep: clock.sleep, now: clock.Now}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	calls := 0
	err := rc.resume(ctx, func(func()) error {
		calls++
		switch calls {
		case 1, 2:
			return errRestarting
		case 3:
			// Open, quiet, until the test has seen it counted as back.
			for !strings.Contains(errOut.String(), "stream back") {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Millisecond):
				}
			}
			return errRestarting
		}
		return errEndOfStream
	})
	if connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("resume: %v, want the end of the test's stream", err)
	}
	s := time.Second
	if got, want := clock.pauses(), []time.Duration{s / 2, s, s / 2}; !reflect.DeepEqual(got, want) {
		t.Errorf("pauses between attempts %v, want %v", got, want)
	}
	want := []string{
		"stream interrupted (unavailable: the gateway is restarting); reconnecting",
		"stream back after 1.5s: changes may be missing",
		"stream interrupted (unavailable: the gateway is restarting); reconnecting",
	}
	if got := lines(errOut.String()); !reflect.DeepEqual(got, want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut.String(), strings.Join(want, "\n"))
	}
}

// submit --wait says when it loses the gateway, rather than show the last
// state it saw as if nothing happened, and when it follows the job again.
func TestSubmitWaitSaysWhenTheStreamBreaks(t *testing.T) {
	useFakeClock(t, time.Hour)
	url := serve(t, &flakyGateway{calls: []outage{
		{versions: []*cortexv1.Job{streamJob("j1", running, 2)}, err: errRestarting},
		{err: errRestarting},
		{versions: []*cortexv1.Job{streamJob("j1", completed, 3)}},
	}})
	out, errOut, err := run(t, url, func(f *cmdutil.Factory) *cobra.Command { return NewCmdSubmit(f, nil) },
		"--topic", "job.echo", "--prompt", "hi", "--wait")
	if err != nil {
		t.Fatalf("submit --wait: %v", err)
	}
	if out != "done\n" {
		t.Errorf("stdout %q, want the result", out)
	}
	got := lines(errOut)
	want := []string{
		"stream interrupted (unavailable: the gateway is restarting); reconnecting",
		"stream back after 1.5s: still waiting for job j1",
	}
	if len(got) < 2 || !reflect.DeepEqual(got[:2], want) {
		t.Errorf("stderr:\n%s\nwant it to start:\n%s", errOut, strings.Join(want, "\n"))
	}
}
