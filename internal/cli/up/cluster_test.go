package up_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// backends runs a test on an in-process stack over embedded NATS with
// miniredis and, when CORTEX_TEST_REDIS_URL is set, with that real Redis.
func backends(t *testing.T, opts up.ClusterOptions, run func(t *testing.T, h *harness)) {
	t.Run("miniredis", func(t *testing.T) { run(t, startHarness(t, opts)) })
	if url := os.Getenv("CORTEX_TEST_REDIS_URL"); url != "" {
		t.Run("redis", func(t *testing.T) {
			opts.RedisURL = url
			run(t, startHarness(t, opts))
		})
	}
}

type harness struct {
	cluster *up.Cluster
	client  cortexv1connect.GatewayServiceClient
	spy     *dispatchSpy
}

// startWorker adds a worker to the harness's stack, stopped when the test
// ends.
func (h *harness) startWorker(t testing.TB, opts worker.Options, log *slog.Logger) {
	t.Helper()
	w, err := daemon.StartWorker(context.Background(), bus.Endpoint{URL: h.cluster.NATSURL}, h.cluster.Store, opts, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
}

func startHarness(t testing.TB, opts up.ClusterOptions) *harness {
	t.Helper()
	return startHarnessLog(t, opts, slog.New(slog.DiscardHandler))
}

// startHarnessLog is startHarness with the components logging to log.
func startHarnessLog(t testing.TB, opts up.ClusterOptions, log *slog.Logger) *harness {
	t.Helper()
	opts.Listen = "127.0.0.1:0"
	if opts.SafetyTimeout == 0 {
		// Generous, so a loaded CI machine under -race never fails closed
		// by accident; the fail-closed tests set their own.
		opts.SafetyTimeout = 5 * time.Second
	}
	c, err := up.StartCluster(context.Background(), opts, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	gc, err := client.New("http://"+c.GatewayAddr, c.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{cluster: c, client: gc, spy: newDispatchSpy(t, c.NATSURL)}
}

// dispatchSpy records the job id of every packet dispatched to any pool.
type dispatchSpy struct {
	mu   sync.Mutex
	seen map[string]bool
	nc   *nats.Conn
	sub  *nats.Subscription
}

func newDispatchSpy(t testing.TB, url string) *dispatchSpy {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("spy"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s := &dispatchSpy{seen: map[string]bool{}, nc: nc}
	// A synchronous subscription: dispatched reads what is queued itself,
	// so nothing delivered before its flush can still be on its way.
	if s.sub, err = nc.SubscribeSync("job.>"); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *dispatchSpy) dispatched(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.nc.Flush(); err != nil { // deliver anything in flight first
		return true
	}
	for {
		m, err := s.sub.NextMsg(time.Millisecond)
		if err != nil {
			break
		}
		if p, err := bus.Decode(m.Data); err == nil {
			jobs, _ := bus.JobsOf(p)
			for _, j := range jobs {
				s.seen[j.GetJobId()] = true
			}
		}
	}
	return s.seen[id]
}

// outcome is how a job ended, with its output.
type outcome struct {
	*cortexv1.Job
	result string
}

func (o outcome) GetResult() string { return o.result }
func (o outcome) GetRule() string   { return o.GetSafety().GetRule() }

func (h *harness) run(t *testing.T, topic, prompt string) outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: topic, Prompt: prompt})
	if err != nil {
		t.Fatalf("submit %s: %v", topic, err)
	}
	st, err := job.WaitForEnd(ctx, h.client, res.GetJobId(), nil)
	if err != nil {
		t.Fatalf("wait for %s job %s: %v", topic, res.GetJobId(), err)
	}
	o := outcome{Job: st}
	if st.GetState() == completed {
		r, err := h.client.GetResult(ctx, &cortexv1.GetResultRequest{JobId: st.GetJobId()})
		if err != nil {
			t.Fatalf("result of %s: %v", st.GetJobId(), err)
		}
		o.result = r.GetText()
	}
	return o
}

const (
	completed = cortexv1.JobState_JOB_STATE_COMPLETED
	denied    = cortexv1.JobState_JOB_STATE_DENIED
)

func TestEchoJobCompletes(t *testing.T) {
	backends(t, up.ClusterOptions{}, func(t *testing.T, h *harness) {
		st := h.run(t, "job.echo", "hello, cortex")
		if st.GetState() != completed || st.GetResult() != "hello, cortex" {
			t.Fatalf("echo job: state %v result %q, want COMPLETED with the prompt echoed", st.GetState(), st.GetResult())
		}
		if st.GetWorkerId() != h.cluster.WorkerID || !h.spy.dispatched(st.GetJobId()) {
			t.Errorf("echo job: worker %q (want %q), dispatched=%v", st.GetWorkerId(), h.cluster.WorkerID, h.spy.dispatched(st.GetJobId()))
		}
	})
}

func TestSysDestroyIsDeniedAndNeverDispatched(t *testing.T) {
	backends(t, up.ClusterOptions{}, func(t *testing.T, h *harness) {
		st := h.run(t, "sys.destroy", "rm -rf /")
		if st.GetState() != denied || st.GetRule() != "deny-sys-destroy" || st.GetReason() == "" {
			t.Fatalf("sys.destroy: %v rule %q reason %q, want DENIED by deny-sys-destroy with a reason", st.GetState(), st.GetRule(), st.GetReason())
		}
		// An echo job afterwards proves the spy sees dispatches.
		ok := h.run(t, "job.echo", "after")
		if !h.spy.dispatched(ok.GetJobId()) {
			t.Fatal("the spy saw no dispatch of a completed job; it cannot vouch for anything")
		}
		if h.spy.dispatched(st.GetJobId()) {
			t.Fatal("sys.destroy was dispatched to a worker")
		}
	})
}

func TestFailsClosedWithoutKernel(t *testing.T) {
	backends(t, up.ClusterOptions{NoSafety: true, SafetyTimeout: 50 * time.Millisecond}, func(t *testing.T, h *harness) {
		st := h.run(t, "job.echo", "hi")
		if st.GetState() != denied || st.GetRule() != "fail-closed" || !strings.Contains(st.GetReason(), "no safety kernel listens on sys.safety.check") {
			t.Fatalf("with no kernel: %v rule %q reason %q, want DENIED by fail-closed", st.GetState(), st.GetRule(), st.GetReason())
		}
		if h.spy.dispatched(st.GetJobId()) {
			t.Fatal("a job was dispatched without a safety decision")
		}
	})
}

func TestFailsClosedWithSlowKernel(t *testing.T) {
	backends(t, up.ClusterOptions{NoSafety: true, SafetyTimeout: 50 * time.Millisecond}, func(t *testing.T, h *harness) {
		// A kernel that allows everything, but too late.
		allow, err := proto.Marshal(&cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_CheckResponse{
			CheckResponse: &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "slow"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := h.spy.nc.Subscribe(bus.SubjectSafetyCheck, func(m *nats.Msg) {
			time.Sleep(200 * time.Millisecond)
			_ = m.Respond(allow)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		st := h.run(t, "job.echo", "hi")
		if st.GetState() != denied || st.GetRule() != "fail-closed" || !strings.Contains(st.GetReason(), "within 50ms") {
			t.Fatalf("with a slow kernel: %v rule %q reason %q, want DENIED by fail-closed", st.GetState(), st.GetRule(), st.GetReason())
		}
		if h.spy.dispatched(st.GetJobId()) {
			t.Fatal("a job was dispatched after the safety deadline")
		}
	})
}

func TestMalformedPacketsAreDroppedAndCounted(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	wrongPayload, err := proto.Marshal(&cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_Heartbeat{
		Heartbeat: &cortexv1.Heartbeat{WorkerId: "w"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	subjects := []string{bus.SubjectJobSubmit, bus.SubjectJobResult, bus.SubjectSafetyCheck, bus.JobSubject("echo", "job.echo")}
	for _, subject := range subjects {
		for _, data := range [][]byte{[]byte("\x00garbage\xff"), nil, wrongPayload} {
			if err := h.spy.nc.PublishMsg(&nats.Msg{Subject: subject, Data: data, Reply: "_INBOX.nobody"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := uint64(3 * len(subjects))
	deadline := time.Now().Add(5 * time.Second)
	for h.cluster.Dropped() < want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := h.cluster.Dropped(); got != want {
		t.Fatalf("dropped %d packets, want %d", got, want)
	}
	if st := h.run(t, "job.echo", "still alive"); st.GetState() != completed || st.GetResult() != "still alive" {
		t.Fatalf("after malformed packets: %v %q, want the stack still completing jobs", st.GetState(), st.GetResult())
	}
}

// BenchmarkStartCluster measures what `up` does before its ready line:
// embedded NATS and Redis, every component, the gateway listening.
func BenchmarkStartCluster(b *testing.B) {
	for b.Loop() {
		c, err := up.StartCluster(context.Background(), up.ClusterOptions{Listen: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// up's own components reach its embedded NATS server in process, over a
// pipe rather than a loopback socket.
func TestComponentsReachEmbeddedNATSInProcess(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	cz, err := h.cluster.Stack.NATS.Connz(&server.ConnzOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	inProcess := map[string]bool{}
	for _, c := range cz.Conns {
		component, _, _ := strings.Cut(c.Name, "-")
		if c.IP == "" {
			inProcess[component] = true
		} else if component == "spy" {
			// The test's own connection dials the URL: the check can tell.
			inProcess["spy over tcp"] = true
		}
	}
	for _, want := range []string{"safety", "scheduler", "echo", "gateway", "spy over tcp"} {
		if !inProcess[want] {
			t.Errorf("no %s connection found in process (connections: %+v)", want, inProcess)
		}
	}
}

// up stopping refuses new jobs at once, but lets whoever follows a job
// that runs see it end: the worker finishes it while the gateway still
// streams, and only then does the gateway stop.
func TestStoppingStackStreamsTheEndOfRunningJobs(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	ctx := t.Context()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.sleep", Prompt: "1s"})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := h.client.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: res.GetJobId()})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	state := func() cortexv1.JobState {
		t.Helper()
		msg, err := stream.Receive()
		if err != nil {
			t.Fatalf("watch of the job: %v", err)
		}
		return msg.GetJob().GetState()
	}
	for s := state(); s != cortexv1.JobState_JOB_STATE_RUNNING; s = state() {
		if store.StateOf(s).Terminal() {
			t.Fatalf("the job ended %v before it ran", s)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- h.cluster.Close() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "late"})
		if err != nil {
			if !strings.Contains(err.Error(), "the gateway is stopping and takes no new jobs") {
				t.Fatalf("a submit while up stops: %v, want it refused as the gateway stops", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway still took jobs 10s after Close began")
		}
	}
	for {
		if s := state(); s == cortexv1.JobState_JOB_STATE_COMPLETED {
			break
		} else if store.StateOf(s).Terminal() {
			t.Fatalf("the job ended %v, want COMPLETED", s)
		}
	}
	if err := <-closed; err != nil {
		t.Errorf("close: %v", err)
	}
}

// Stopping says what a stop waits for; with the embedded Redis, that the
// jobs still running then are lost with it.
func TestStoppingSaysRunningJobsAreLostInMemory(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	if got := h.cluster.Stopping(); got != "no job is running" {
		t.Errorf("Stopping with nothing running = %q", got)
	}
	ctx := context.Background()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.sleep", Prompt: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, h, res.GetJobId(), cortexv1.JobState_JOB_STATE_RUNNING)
	got := h.cluster.Stopping()
	if !strings.HasPrefix(got, "1 job is running: up to ") || !strings.Contains(got, "lost when it exits") {
		t.Errorf("Stopping with a job running on the embedded Redis = %q, want the job and that it is lost", got)
	}
	if _, err := h.client.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: res.GetJobId()}); err != nil {
		t.Fatal(err)
	}
}

// The embedded servers listen on the ports asked for.
func TestEmbeddedServersOnTheirPorts(t *testing.T) {
	free := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	natsPort, redisPort := free(), free()
	h := startHarness(t, up.ClusterOptions{NATSPort: natsPort, RedisPort: redisPort})
	if !strings.Contains(h.cluster.NATSURL, fmt.Sprintf("@127.0.0.1:%d", natsPort)) || !strings.Contains(h.cluster.RedisURL, fmt.Sprintf("@127.0.0.1:%d", redisPort)) {
		t.Errorf("NATS %s, Redis %s; want ports %d and %d", h.cluster.NATSURL, h.cluster.RedisURL, natsPort, redisPort)
	}
	h.run(t, "job.echo", "on fixed ports")
}
