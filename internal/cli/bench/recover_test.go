package bench_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/cortex-os/core/internal/cli/bench"
	"github.com/cortex-os/core/internal/client"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// lossyGateway runs every job it is given to COMPLETED at once, in its
// store (GetJob), and publishes the ends on its event streams, but for the
// ends lose picks, as a bus that restarts loses some.
type lossyGateway struct {
	cortexv1connect.UnimplementedGatewayServiceHandler
	// lose says whether the end of the nth job (the first is 1; the probe
	// is 0) never reaches the streams.
	lose func(n int) bool
	// tell: the next event sent says how many were lost (Dropped), as the
	// gateway does for a reader that was too slow.
	tell bool
	// gap: the next event sent after a loss says the gateway lost the bus
	// (BusGap), as a gateway whose NATS came back does.
	gap bool
	// breakAfter: the first stream fails (unavailable) after this many
	// events (0: never).
	breakAfter int
	// watchBreaks: the first WatchJob of each job sends it PENDING, then
	// fails (unavailable).
	watchBreaks bool

	mu      sync.Mutex
	n       int
	jobs    map[string]*cortexv1.Job
	watched map[string]bool
	subs    map[chan *cortexv1.StreamEventsResponse]bool
	lost    uint64
	streams int
	gets    atomic.Int64
}

var errDown = connect.NewError(connect.CodeUnavailable, "the gateway is restarting")

// submit records a new job, COMPLETED, and publishes its end.
func (g *lossyGateway) submit(topic string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.jobs == nil {
		g.jobs = map[string]*cortexv1.Job{}
	}
	n := g.n
	g.n++
	id := fmt.Sprintf("job-%04d", n)
	j := &cortexv1.Job{JobId: id, Topic: topic, State: cortexv1.JobState_JOB_STATE_COMPLETED, Version: 3}
	g.jobs[id] = j
	if g.lose != nil && g.lose(n) {
		g.lost++
		return id
	}
	ev := &cortexv1.StreamEventsResponse{Job: j}
	if g.tell {
		ev.Dropped, g.lost = g.lost, 0
	}
	if g.gap && g.lost > 0 {
		ev.BusGap, g.lost = true, 0
	}
	for ch := range g.subs {
		select {
		case ch <- ev:
		default:
			panic("a test stream's buffer is full")
		}
	}
	return id
}

func (g *lossyGateway) SubmitJob(ctx context.Context, req *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error) {
	if !g.watchBreaks {
		// The probe: RunBatched's stream is listening before it is sent.
		for {
			g.mu.Lock()
			n := len(g.subs)
			g.mu.Unlock()
			if n > 0 {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
	}
	return &cortexv1.SubmitJobResponse{JobId: g.submit(req.GetTopic())}, nil
}

func (g *lossyGateway) SubmitJobs(_ context.Context, req *cortexv1.SubmitJobsRequest) (*cortexv1.SubmitJobsResponse, error) {
	res := &cortexv1.SubmitJobsResponse{}
	for _, one := range req.GetJobs() {
		res.Results = append(res.Results, &cortexv1.SubmitJobsResult{JobId: g.submit(one.GetTopic())})
	}
	return res, nil
}

func (g *lossyGateway) GetJob(_ context.Context, req *cortexv1.GetJobRequest) (*cortexv1.GetJobResponse, error) {
	g.gets.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	j, ok := g.jobs[req.GetJobId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, "no such job")
	}
	return &cortexv1.GetJobResponse{Job: j}, nil
}

func (g *lossyGateway) StreamEvents(ctx context.Context, _ *cortexv1.StreamEventsRequest, s cortexv1connect.GatewayServiceStreamEventsServerStream) error {
	ch := make(chan *cortexv1.StreamEventsResponse, 100000)
	g.mu.Lock()
	if g.subs == nil {
		g.subs = map[chan *cortexv1.StreamEventsResponse]bool{}
	}
	g.subs[ch] = true
	g.streams++
	first := g.streams == 1
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.subs, ch)
		g.mu.Unlock()
	}()
	if err := s.SendHeaders(); err != nil {
		return err
	}
	for sent := 0; ; sent++ {
		if first && g.breakAfter > 0 && sent == g.breakAfter {
			return errDown
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-ch:
			if err := s.Send(ev); err != nil {
				return err
			}
		}
	}
}

func (g *lossyGateway) WatchJob(_ context.Context, req *cortexv1.WatchJobRequest, s cortexv1connect.GatewayServiceWatchJobServerStream) error {
	g.mu.Lock()
	j, ok := g.jobs[req.GetJobId()]
	again := g.watched[req.GetJobId()]
	if g.watched == nil {
		g.watched = map[string]bool{}
	}
	g.watched[req.GetJobId()] = true
	g.mu.Unlock()
	if !ok {
		return connect.NewError(connect.CodeNotFound, "no such job")
	}
	if g.watchBreaks && !again {
		if err := s.Send(&cortexv1.WatchJobResponse{Job: &cortexv1.Job{JobId: j.GetJobId(), State: cortexv1.JobState_JOB_STATE_PENDING, Version: 1}}); err != nil {
			return err
		}
		return errDown
	}
	return s.Send(&cortexv1.WatchJobResponse{Job: j})
}

// serveGateway runs g on 127.0.0.1 and returns a client of it.
func serveGateway(t *testing.T, g cortexv1connect.GatewayServiceHandler) cortexv1connect.GatewayServiceClient {
	t.Helper()
	srv := connect.NewServer()
	cortexv1connect.RegisterGatewayServiceHandler(srv, g)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	c, err := client.New(hs.URL, "test-key")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runBatched runs 200 jobs through g, in batches of 10 from 2 clients;
// it gives up waiting for ends after 10 s (a bench that cannot make up for
// lost events fails the test then).
func runBatched(t *testing.T, g *lossyGateway, recheck time.Duration, rate float64) *bench.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var ended atomic.Int64
	r, err := bench.RunBatched(ctx, serveGateway(t, g), bench.Batched{Jobs: 200, Concurrency: 2, Batch: 10, Rate: rate,
		Topic: "job.echo", Prompt: "bench", Timeout: 10 * time.Second, Recheck: recheck, Ended: &ended})
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	if r.Completed != 200 || r.NotDone != 0 || len(r.Latencies) != 200 {
		t.Fatalf("%d completed, %d not done, %d latencies: want the 200 jobs completed", r.Completed, r.NotDone, len(r.Latencies))
	}
	if n := ended.Load(); n != 200 {
		t.Fatalf("progress counted %d ends, want the 200 jobs' (the probe job not among them)", n)
	}
	return r
}

// Ends the stream lost (a NATS restart) are read from the store once the
// stream has brought none for a while, and the report says how many.
func TestBatchedReadsTheEndsTheStreamLostFromTheStore(t *testing.T) {
	lost := 0
	for n := 1; n <= 200; n++ {
		if n%7 == 3 {
			lost++
		}
	}
	g := &lossyGateway{lose: func(n int) bool { return n%7 == 3 }}
	r := runBatched(t, g, 100*time.Millisecond, 0)
	if r.FromStore < lost || r.FromStore > 200 {
		t.Errorf("%d ends read from the store, want at least the %d the stream lost", r.FromStore, lost)
	}
	var out strings.Builder
	r.Print(&out)
	if want := fmt.Sprintf("from store  %d of the ends were read from the store", r.FromStore); !strings.Contains(out.String(), want) {
		t.Errorf("the report does not say %q:\n%s", want, out.String())
	}
}

// When the stream says it skipped events, the store is read at once,
// without waiting for the stream to fall quiet.
func TestBatchedReadsTheStoreWhenTheStreamSkippedEvents(t *testing.T) {
	g := &lossyGateway{lose: func(n int) bool { return n%10 == 5 }, tell: true}
	r := runBatched(t, g, time.Hour, 0)
	if r.Dropped != 20 || r.FromStore < 20 {
		t.Errorf("%d events skipped, %d ends read from the store; want 20 and at least 20", r.Dropped, r.FromStore)
	}
}

// Ends lost while the gateway was off the bus are read from the store
// once the stream says so (bus_gap), without waiting for a quiet stream.
func TestBatchedReadsTheStoreAfterABusGap(t *testing.T) {
	g := &lossyGateway{lose: func(n int) bool { return n%10 == 5 }, gap: true}
	r := runBatched(t, g, time.Hour, 0)
	if r.NotDone != 0 || r.FromStore < 20 {
		t.Errorf("%d not done, %d ends read from the store; want 0 and at least 20", r.NotDone, r.FromStore)
	}
}

// A stream that breaks is opened again, and the ends sent while it was
// down are read from the store, rather than failing the run.
func TestBatchedSurvivesABrokenStream(t *testing.T) {
	g := &lossyGateway{breakAfter: 50}
	r := runBatched(t, g, 100*time.Millisecond, 400)
	if r.StreamBreaks != 1 || r.StreamErr != "" {
		t.Errorf("stream broke %d times (%q), want once", r.StreamBreaks, r.StreamErr)
	}
	g.mu.Lock()
	streams := g.streams
	g.mu.Unlock()
	if streams < 2 {
		t.Errorf("%d streams opened, want the broken one opened again", streams)
	}
	var out strings.Builder
	r.Print(&out)
	if !strings.Contains(out.String(), "stream      broke once; reconnected\n") {
		t.Errorf("the report does not say the stream broke:\n%s", out.String())
	}
}

// While the stream brings every end, bench reads nothing from the store.
func TestBatchedReadsNoJobWhileTheStreamBringsEveryEnd(t *testing.T) {
	g := &lossyGateway{}
	r := runBatched(t, g, 0, 0)
	if n := g.gets.Load(); n != 0 || r.FromStore != 0 {
		t.Errorf("%d GetJob calls, %d ends from the store; want none", n, r.FromStore)
	}
	var out strings.Builder
	r.Print(&out)
	if strings.Contains(out.String(), "from store") || strings.Contains(out.String(), "stream ") {
		t.Errorf("the report speaks of the store or the stream:\n%s", out.String())
	}
}

// bench without --batch follows each job on its own watch, which the
// gateway feeds from the store too; a watch that breaks is watched again.
func TestRunWatchesAgainAWatchThatBroke(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var ended atomic.Int64
	r, err := bench.Run(ctx, serveGateway(t, &lossyGateway{watchBreaks: true}), bench.Plain{Jobs: 6, Concurrency: 3, Topic: "job.echo", Prompt: "bench", Ended: &ended})
	if err != nil {
		t.Fatalf("bench: %v", err)
	}
	if r.Completed != 6 || r.NotDone != 0 {
		t.Errorf("%d completed, %d not done; want the 6 jobs completed", r.Completed, r.NotDone)
	}
	if n := ended.Load(); n != 6 {
		t.Errorf("progress counted %d ends, want 6", n)
	}
}

// goneGateway takes one job, whose end never comes, then refuses every
// submit, as a gateway that is stopping does.
type goneGateway struct {
	cortexv1connect.UnimplementedGatewayServiceHandler
	took atomic.Bool
}

func (g *goneGateway) SubmitJob(context.Context, *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error) {
	if g.took.CompareAndSwap(false, true) {
		return &cortexv1.SubmitJobResponse{JobId: "j1", State: cortexv1.JobState_JOB_STATE_PENDING}, nil
	}
	return nil, connect.NewError(connect.CodeUnavailable, "the gateway is stopping and takes no new jobs")
}

func (g *goneGateway) WatchJob(ctx context.Context, _ *cortexv1.WatchJobRequest, s cortexv1connect.GatewayServiceWatchJobServerStream) error {
	if err := s.Send(&cortexv1.WatchJobResponse{Job: &cortexv1.Job{JobId: "j1", State: cortexv1.JobState_JOB_STATE_PENDING, Version: 1}}); err != nil {
		return err
	}
	<-ctx.Done()
	return ctx.Err()
}

// When one client of a bench without --batch fails (the gateway stops),
// the bench stops with its error: the other clients no longer wait for
// ends that will not come.
func TestBenchStopsWhenAClientFails(t *testing.T) {
	c := serveGateway(t, &goneGateway{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := bench.Run(ctx, c, bench.Plain{Jobs: 2, Concurrency: 2, Topic: "job.echo", Prompt: "x"})
	if ctx.Err() != nil {
		t.Fatalf("bench ran until the test's deadline: %v", err)
	}
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "bench stopped: unavailable: the gateway is stopping") {
		t.Fatalf("bench: %v, want it stopped with the refused submit", err)
	}
}

// interruptAfter is a context that ends (as Ctrl-C ends bench's) once the
// counter it returns, a run's Ended, has counted n jobs.
func interruptAfter(t *testing.T, n int64) (context.Context, *atomic.Int64) {
	ctx, cancel := context.WithCancel(t.Context())
	ended := new(atomic.Int64)
	go func() {
		for ended.Load() < n && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	return ctx, ended
}

// Interrupted (Ctrl-C), a batched run reports the jobs submitted until
// then, says it was interrupted, and returns the interruption.
func TestBatchedInterruptedReportsTheJobsSentSoFar(t *testing.T) {
	ctx, ended := interruptAfter(t, 30)
	r, err := bench.RunBatched(ctx, serveGateway(t, &lossyGateway{}), bench.Batched{Jobs: 10000, Concurrency: 1, Batch: 10, Rate: 500,
		Topic: "job.echo", Prompt: "bench", Timeout: 10 * time.Second, Ended: ended})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the interruption", err)
	}
	if r == nil || !r.Interrupted || r.Jobs < 30 || r.Jobs >= 10000 || r.Jobs%10 != 0 || r.Completed > r.Jobs || r.Completed < 30 {
		t.Fatalf("report %+v, want the 30-odd jobs sent before the interruption, marked interrupted", r)
	}
	var out strings.Builder
	r.Print(&out)
	if want := fmt.Sprintf("interrupted: the figures are of the %d jobs submitted until then", r.Jobs); !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, out.String())
	}
}

// Interrupted, a run without batches reports the jobs submitted until then.
func TestRunInterruptedReportsTheJobsSentSoFar(t *testing.T) {
	ctx, ended := interruptAfter(t, 4)
	r, err := bench.Run(ctx, serveGateway(t, &lossyGateway{watchBreaks: true}), bench.Plain{Jobs: 1000000, Concurrency: 2, Topic: "job.echo", Prompt: "bench", Ended: ended})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the interruption", err)
	}
	if r == nil || !r.Interrupted || r.Completed < 4 || r.Jobs < r.Completed || r.Jobs > r.Completed+2 {
		t.Fatalf("report %+v, want the jobs submitted before the interruption (at most the 2 clients' last ones unfinished), marked interrupted", r)
	}
}
