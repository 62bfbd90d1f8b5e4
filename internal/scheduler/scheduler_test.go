package scheduler_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// fakeStore records every transition asked of it, and refuses one target
// state.
type fakeStore struct {
	mu      sync.Mutex
	changes map[string][]store.Change
	refuse  store.State
}

var _ scheduler.Store = (*fakeStore)(nil)

func (f *fakeStore) Transition(_ context.Context, id string, c store.Change, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes[id] = append(f.changes[id], c)
	if c.To == f.refuse {
		return store.ErrConflict
	}
	return nil
}

func (f *fakeStore) get(id string) []store.Change {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changes[id]
}

type fakeChecker struct {
	resp *cortexv1.CheckResponse
	err  error
}

var _ scheduler.Checker = fakeChecker{}

func (f fakeChecker) Check(context.Context, *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
	return f.resp, f.err
}

type rig struct {
	st         *fakeStore
	client     *nats.Conn
	dispatched chan *cortexv1.JobRequest
}

func newRig(t *testing.T, checker scheduler.Checker, refuse store.State) *rig {
	t.Helper()
	natsURL := bustest.StartServer(t)
	r := &rig{st: &fakeStore{changes: map[string][]store.Change{}, refuse: refuse}, dispatched: make(chan *cortexv1.JobRequest, 10)}
	var err error
	r.client, err = nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.client.Close)
	if _, err := r.client.Subscribe("job.>", func(m *nats.Msg) {
		if p, err := bus.Decode(m.Data); err == nil && m.Subject == bus.JobSubject(p.GetJobRequest().GetPool(), p.GetJobRequest().GetTopic()) {
			r.dispatched <- p.GetJobRequest()
		}
	}); err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(natsURL, "scheduler-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	router, err := scheduler.NewRouter(map[string]string{"job.echo": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	s := scheduler.New(conn, r.st, checker, router, slog.New(slog.DiscardHandler))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return r
}

func (r *rig) publish(t *testing.T, subject string, p *cortexv1.BusPacket) {
	t.Helper()
	p.ProtocolVersion = bus.ProtocolVersion
	data, err := bus.Encode(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.client.Publish(subject, data); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) submit(t *testing.T, id, topic string) {
	t.Helper()
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{
		JobRequest: &cortexv1.JobRequest{JobId: id, Topic: topic, Attempt: 1},
	}})
}

// waitChanges polls until the job has n recorded changes.
func (r *rig) waitChanges(t *testing.T, id string, n int) []store.Change {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.st.get(id)) < n && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	got := r.st.get(id)
	if len(got) != n {
		t.Fatalf("job %s: changes %+v, want %d", id, got, n)
	}
	return got
}

func (r *rig) noDispatch(t *testing.T) {
	t.Helper()
	if err := r.client.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-r.dispatched:
		t.Fatalf("job %s was dispatched", req.GetJobId())
	default:
	}
}

var allow = &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow-jobs"}

func TestAllowedJobIsRecordedThenDispatched(t *testing.T) {
	r := newRig(t, fakeChecker{resp: allow}, "")
	r.submit(t, "j1", "job.echo")
	got := r.waitChanges(t, "j1", 1)
	if got[0].To != store.Dispatched || got[0].Pool != "echo" {
		t.Fatalf("change %+v, want DISPATCHED to pool echo", got[0])
	}
	req := <-r.dispatched
	if req.GetJobId() != "j1" || req.GetPool() != "echo" {
		t.Fatalf("dispatched %v", req)
	}
}

func TestDeniedJobIsRecordedNotDispatched(t *testing.T) {
	deny := &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: "deny-sys-destroy", Reason: "never"}
	r := newRig(t, fakeChecker{resp: deny}, "")
	r.submit(t, "j1", "sys.destroy")
	got := r.waitChanges(t, "j1", 1)
	if got[0] != (store.Change{To: store.Denied, Rule: "deny-sys-destroy", Reason: "never"}) {
		t.Fatalf("change %+v", got[0])
	}
	r.noDispatch(t)
}

func TestCheckerErrorDenies(t *testing.T) {
	r := newRig(t, fakeChecker{resp: allow, err: errors.New("kernel exploded")}, "")
	r.submit(t, "j1", "job.echo")
	got := r.waitChanges(t, "j1", 1)
	if got[0].To != store.Denied || got[0].Rule != bus.RuleFailClosed || !strings.Contains(got[0].Reason, "kernel exploded") {
		t.Fatalf("change %+v, want DENIED fail-closed with the error", got[0])
	}
	r.noDispatch(t)
}

func TestUnroutableTopicFailsWithRoutes(t *testing.T) {
	r := newRig(t, fakeChecker{resp: allow}, "")
	r.submit(t, "j1", "job.nowhere")
	got := r.waitChanges(t, "j1", 1)
	if got[0].To != store.Failed || !strings.Contains(got[0].Reason, "job.echo") {
		t.Fatalf("change %+v, want FAILED listing the routable topics", got[0])
	}
	r.noDispatch(t)
}

func TestRefusedDispatchIsNotPublished(t *testing.T) {
	r := newRig(t, fakeChecker{resp: allow}, store.Dispatched)
	r.submit(t, "j1", "job.echo")
	if got := r.waitChanges(t, "j1", 1); got[0].To != store.Dispatched {
		t.Fatalf("change %+v, want an attempt at DISPATCHED", got[0])
	}
	r.noDispatch(t)
}

func TestResultsAreRecorded(t *testing.T) {
	r := newRig(t, fakeChecker{resp: allow}, "")
	for id, res := range map[string]*cortexv1.JobResult{
		"ok":  {JobId: "ok", WorkerId: "w1", State: cortexv1.JobState_JOB_STATE_COMPLETED},
		"bad": {JobId: "bad", WorkerId: "w1", State: cortexv1.JobState_JOB_STATE_FAILED, Error: "boom"},
	} {
		r.publish(t, bus.SubjectJobResult, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobResult{JobResult: res}})
		got := r.waitChanges(t, id, 1)
		want := store.Change{To: store.Completed, WorkerID: "w1"}
		if id == "bad" {
			want = store.Change{To: store.Failed, WorkerID: "w1", Reason: "boom"}
		}
		if got[0] != want {
			t.Errorf("%s: change %+v, want %+v", id, got[0], want)
		}
	}
}

func TestRouter(t *testing.T) {
	if _, err := scheduler.NewRouter(map[string]string{"sys.x": "p"}); err == nil {
		t.Error("a sys.* route was accepted")
	}
	if _, err := scheduler.NewRouter(map[string]string{"job.x": "a.b"}); err == nil {
		t.Error("a pool with a dot was accepted")
	}
	routes, err := scheduler.ParseRoutes([]string{"job.a=p1", "job.b=p2"})
	if err != nil || routes["job.a"] != "p1" || routes["job.b"] != "p2" {
		t.Errorf("ParseRoutes = %v, %v", routes, err)
	}
	if _, err := scheduler.ParseRoutes([]string{"job.a"}); err == nil {
		t.Error("a route without = was accepted")
	}
}
