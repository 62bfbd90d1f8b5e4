package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// fakeStore keeps job records in memory with the store's attempt guard and
// final terminal states, records every transition asked of it (refused or
// not), and refuses every move to one target state.
type fakeStore struct {
	mu      sync.Mutex
	jobs    map[string]*store.Job
	changes map[string][]store.Change
	refuse  store.State
	overdue map[string]bool
	dueErr  error
}

var _ scheduler.Store = (*fakeStore)(nil)

func clone(j *store.Job) *store.Job {
	c := *j
	c.Labels = maps.Clone(j.Labels)
	c.Entered = maps.Clone(j.Entered)
	return &c
}

func (f *fakeStore) Get(_ context.Context, id string) (*store.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, fmt.Errorf("read job %s: %w", id, store.ErrNotFound)
	}
	return clone(j), nil
}

func (f *fakeStore) Transition(_ context.Context, id string, c store.Change, now time.Time) (*store.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes[id] = append(f.changes[id], c)
	j, ok := f.jobs[id]
	if !ok {
		return nil, fmt.Errorf("move job %s: %w", id, store.ErrNotFound)
	}
	if c.To == f.refuse || j.State.Terminal() || (c.Attempt != 0 && c.Attempt != j.Attempt) {
		return nil, &store.ConflictError{ID: id, To: c.To, State: j.State, Attempt: j.Attempt}
	}
	j.State, j.UpdatedAt = c.To, now
	j.Entered[c.To] = now
	j.Version++
	if c.Retry {
		j.Attempt++
		j.WorkerID = ""
	}
	for dst, v := range map[*string]string{&j.Reason: c.Reason, &j.Pool: c.Pool, &j.WorkerID: c.WorkerID} {
		if v != "" {
			*dst = v
		}
	}
	if c.Safety != nil {
		j.Safety = *c.Safety
	}
	if c.ResultSize != nil {
		j.ResultSize = *c.ResultSize
	}
	return clone(j), nil
}

// TransitionMany is Transition for each move.
func (f *fakeStore) TransitionMany(ctx context.Context, moves []store.Move, now time.Time) []store.Moved {
	out := make([]store.Moved, len(moves))
	for i, m := range moves {
		out[i].Job, out[i].Err = f.Transition(ctx, m.ID, m.Change, now)
	}
	return out
}

// seed records a job of topic in state at attempt, as the gateway (and
// earlier attempts) left it.
func (f *fakeStore) seed(id, topic string, state store.State, attempt, maxAttempts uint32) *store.Job {
	f.mu.Lock()
	defer f.mu.Unlock()
	at := time.UnixMicro(1_700_000_000_000_000).UTC()
	j := &store.Job{
		ID: id, Topic: topic, Tenant: "acme", State: state, Labels: map[string]string{"team": "a"},
		Attempt: attempt, MaxAttempts: maxAttempts, PromptSize: 5, CreatedAt: at, UpdatedAt: at,
		Entered: map[store.State]time.Time{state: at}, Version: 1,
	}
	f.jobs[id] = j
	return clone(j)
}

func (f *fakeStore) SetPendingReason(_ context.Context, id string, attempt uint32, pool, reason string, now time.Time) (*store.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok {
		return nil, fmt.Errorf("set reason of job %s: %w", id, store.ErrNotFound)
	}
	if j.State != store.Pending || j.Attempt != attempt {
		return nil, &store.ConflictError{ID: id, To: store.Pending, State: j.State, Attempt: j.Attempt}
	}
	j.Reason, j.Pool, j.UpdatedAt = reason, pool, now
	j.Version++
	return clone(j), nil
}

// Due returns the jobs marked overdue with overdue, or dueErr when set (a
// store out of reach).
func (f *fakeStore) Due(_ context.Context, _ time.Time, _ int) ([]*store.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dueErr != nil {
		return nil, f.dueErr
	}
	var out []*store.Job
	for id := range f.overdue {
		if j, ok := f.jobs[id]; ok && !j.State.Terminal() {
			out = append(out, clone(j))
		}
	}
	return out, nil
}

// PutOffRedrive takes a PENDING job off the overdue list.
func (f *fakeStore) PutOffRedrive(_ context.Context, id string, attempt uint32, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, ok := f.jobs[id]
	if !ok || j.State != store.Pending || j.Attempt != attempt {
		return &store.ConflictError{ID: id, To: store.Pending}
	}
	delete(f.overdue, id)
	return nil
}

// Redrive is the store's default.
func (f *fakeStore) Redrive() time.Duration { return store.DefaultRedrive }

// overdue marks a job past its deadline, for the reconciler.
func (f *fakeStore) markOverdue(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overdue == nil {
		f.overdue = map[string]bool{}
	}
	f.overdue[id] = true
}

func (f *fakeStore) changesOf(id string) []store.Change {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changes[id]
}

// fakeChecker answers checks with answer and records them; while silent,
// it says its checks reach no kernel (scheduler.Gate).
type fakeChecker struct {
	mu     sync.Mutex
	checks []*cortexv1.CheckRequest
	calls  []int
	answer func(*cortexv1.CheckRequest) (*cortexv1.CheckResponse, error)
	silent atomic.Bool
	// mute makes CheckAll answer nothing at all, as a broken checker
	// might.
	mute bool
}

var (
	_ scheduler.Checker = (*fakeChecker)(nil)
	_ scheduler.Gate    = (*fakeChecker)(nil)
)

func (f *fakeChecker) Answering() bool { return !f.silent.Load() }

func answer(resp *cortexv1.CheckResponse, err error) *fakeChecker {
	return &fakeChecker{answer: func(*cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) { return resp, err }}
}

// CheckAll answers each check with answer; an error is a fail-closed
// DENY naming it, as the safety client answers.
func (f *fakeChecker) CheckAll(_ context.Context, rs []*cortexv1.CheckRequest, _ []string) []*cortexv1.CheckResponse {
	f.mu.Lock()
	f.checks = append(f.checks, rs...)
	f.calls = append(f.calls, len(rs))
	f.mu.Unlock()
	if f.mute {
		return nil
	}
	out := make([]*cortexv1.CheckResponse, len(rs))
	for i, r := range rs {
		resp, err := f.answer(r)
		if err != nil {
			resp = &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: bus.RuleFailClosed, Reason: "safety check failed: " + err.Error()}
		}
		out[i] = resp
	}
	return out
}

// callSizes are the sizes of the CheckAll calls so far.
func (f *fakeChecker) callSizes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeChecker) checksOf(id string) []*cortexv1.CheckRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*cortexv1.CheckRequest
	for _, c := range f.checks {
		if c.GetJobId() == id {
			out = append(out, c)
		}
	}
	return out
}

type rig struct {
	st         *fakeStore
	checker    *fakeChecker
	client     *nats.Conn
	dispatched chan *cortexv1.JobRequest
	s          *scheduler.Scheduler
	natsURL    string

	mu     sync.Mutex
	events []*cortexv1.Job
	marker int
}

// newRig starts a scheduler with one live worker, w-1 in pool echo, that
// has room for every job of a test.
func newRig(t *testing.T, checker *fakeChecker, refuse store.State) *rig {
	t.Helper()
	r := newBareRig(t, checker, refuse)
	r.beat(t, "w-1", "echo", 1000, false)
	r.waitWorker(t, "w-1", true)
	return r
}

// newBareRig starts a scheduler that has heard of no worker yet.
func newBareRig(t *testing.T, checker *fakeChecker, refuse store.State, opts ...scheduler.Option) *rig {
	t.Helper()
	natsURL := bustest.StartJetStream(t)
	r := &rig{
		st:         &fakeStore{jobs: map[string]*store.Job{}, changes: map[string][]store.Change{}, refuse: refuse},
		checker:    checker,
		dispatched: make(chan *cortexv1.JobRequest, 100),
		natsURL:    natsURL,
	}
	var err error
	r.client, err = nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.client.Close)
	// One subscription for everything keeps what the scheduler publishes
	// in the order it published it.
	if _, err := r.client.Subscribe(">", func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			return
		}
		if m.Subject == bus.SubjectJobEvent {
			r.mu.Lock()
			r.events = append(r.events, bus.EventJobs(p)...)
			r.mu.Unlock()
			return
		}
		// A dispatch: one job, or several released together.
		jobs, _ := bus.JobsOf(p)
		for _, req := range jobs {
			if req.GetPool() == "" || !strings.HasPrefix(m.Subject, "job."+req.GetPool()+".") {
				continue
			}
			select {
			case r.dispatched <- req:
			default: // tests that place many jobs count them otherwise
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.client.Flush(); err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(natsURL, "scheduler-test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	router, err := routing.NewRouter(map[string]string{"job.echo": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	opts = append([]scheduler.Option{scheduler.WithRetryBackoff(10*time.Millisecond, 40*time.Millisecond),
		scheduler.WithReconcileEvery(20 * time.Millisecond)}, opts...)
	s := scheduler.New(conn, r.st, checker, router, slog.New(slog.DiscardHandler), opts...)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	r.s = s
	return r
}

// beat sends a heartbeat of worker id in pool.
func (r *rig) beat(t *testing.T, id, pool string, maxParallel uint32, draining bool) {
	t.Helper()
	r.publish(t, bus.HeartbeatSubject(id), &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{
		WorkerId: id, Pool: pool, MaxParallelJobs: maxParallel, Draining: draining, Topics: []string{"job.echo"},
	}}})
}

// waitWorker polls until the scheduler lists worker id as live (or not
// live: draining or gone).
func (r *rig) waitWorker(t *testing.T, id string, live bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		isLive := false
		for _, w := range r.s.Workers().Workers {
			isLive = isLive || w.ID == id && w.State == registry.Live
		}
		if isLive == live {
			return
		}
	}
	t.Fatalf("worker %s: live is not %v; workers %+v", id, live, r.s.Workers().Workers)
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

// submit records a PENDING job with maxAttempts and submits it, as the
// gateway does.
func (r *rig) submit(t *testing.T, id, topic string, maxAttempts uint32) {
	t.Helper()
	j := r.st.seed(id, topic, store.Pending, 1, maxAttempts)
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{JobRequest: j.Request()}})
}

func (r *rig) result(t *testing.T, res *cortexv1.JobResult) {
	t.Helper()
	r.publish(t, bus.SubjectJobResult, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobResult{JobResult: res}})
}

// waitChanges polls until the job has n recorded changes.
func (r *rig) waitChanges(t *testing.T, id string, n int) []store.Change {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.st.changesOf(id)) < n && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	got := r.st.changesOf(id)
	if len(got) != n {
		t.Fatalf("job %s: changes %+v, want %d", id, got, n)
	}
	return got
}

func (r *rig) eventsOf(id string) []*cortexv1.Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*cortexv1.Job
	for _, e := range r.events {
		if e.GetJobId() == id {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent polls until a job event says id entered state.
func (r *rig) waitEvent(t *testing.T, id string, state store.State) *cortexv1.Job {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		for _, e := range r.eventsOf(id) {
			if e.GetState() == state.Proto() {
				return e
			}
		}
	}
	t.Fatalf("no %s event for job %s; events %v", state, id, r.eventsOf(id))
	return nil
}

// settle waits until a job completed after everything sent so far has had
// its event published, so that what the scheduler had in hand before is
// most likely out too. It proves nothing by itself; tests use it before
// checking that something did not happen.
func (r *rig) settle(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	r.marker++
	id := fmt.Sprintf("marker-%d", r.marker)
	r.mu.Unlock()
	r.st.seed(id, "job.echo", store.Running, 1, 1)
	r.result(t, &cortexv1.JobResult{JobId: id, Attempt: 1, WorkerId: "w-m", State: cortexv1.JobState_JOB_STATE_COMPLETED})
	r.waitEvent(t, id, store.Completed)
}

func (r *rig) noDispatch(t *testing.T) {
	t.Helper()
	r.settle(t)
	select {
	case req := <-r.dispatched:
		t.Fatalf("job %s was dispatched", req.GetJobId())
	default:
	}
}

func (r *rig) nextDispatch(t *testing.T) *cortexv1.JobRequest {
	t.Helper()
	select {
	case req := <-r.dispatched:
		return req
	case <-time.After(5 * time.Second):
		t.Fatal("nothing was dispatched")
		return nil
	}
}

var allow = &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow-jobs", Reason: "fine", PolicyVersion: "v1"}

var allowed = &store.Verdict{Decision: "ALLOW", Rule: "allow-jobs", Reason: "fine", Policy: "v1"}

func TestAllowedJobIsRecordedThenDispatched(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	r.submit(t, "j1", "job.echo", 1)
	got := r.waitChanges(t, "j1", 1)
	if want := (store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo", Safety: allowed}); !reflect.DeepEqual(got[0], want) {
		t.Fatalf("change %+v, want %+v", got[0], want)
	}
	req := r.nextDispatch(t)
	if req.GetJobId() != "j1" || req.GetPool() != "echo" || req.GetAttempt() != 1 || req.GetContextPtr() != store.ContextPtr("j1") {
		t.Fatalf("dispatched %v", req)
	}
	checks := r.checker.checksOf("j1")
	if len(checks) != 1 || checks[0].GetTopic() != "job.echo" || checks[0].GetTenantId() != "acme" ||
		checks[0].GetAttempt() != 1 || checks[0].GetPromptSize() != 5 || checks[0].GetLabels()["team"] != "a" {
		t.Fatalf("checks %v", checks)
	}
	if j, _ := r.st.Get(context.Background(), "j1"); j.State != store.Dispatched || j.Safety != *allowed {
		t.Errorf("record %+v, want DISPATCHED with the ALLOW verdict", j)
	}
}

func TestDeniedJobIsRecordedNotDispatched(t *testing.T) {
	deny := &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: "deny-sys-destroy", Reason: "never", PolicyVersion: "v1"}
	r := newRig(t, answer(deny, nil), "")
	r.submit(t, "j1", "sys.destroy", 1)
	got := r.waitChanges(t, "j1", 1)
	want := store.Change{To: store.Denied, Attempt: 1, Reason: "never", Safety: &store.Verdict{Decision: "DENY", Rule: "deny-sys-destroy", Reason: "never", Policy: "v1"}}
	if !reflect.DeepEqual(got[0], want) {
		t.Fatalf("change %+v, want %+v", got[0], want)
	}
	if j, _ := r.st.Get(context.Background(), "j1"); j.State != store.Denied || j.Safety != *want.Safety {
		t.Errorf("record %+v, want DENIED with the verdict", j)
	}
	r.noDispatch(t)
}

func TestNoValidAllowDeniesFailClosed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resp     *cortexv1.CheckResponse
		err      error
		rule     string
		inReason string
	}{
		{"checker error", allow, errors.New("kernel exploded"), bus.RuleFailClosed, "kernel exploded"},
		{"checker timeout", nil, fmt.Errorf("safety check: %w", context.DeadlineExceeded), bus.RuleFailClosed, "deadline exceeded"},
		{"unspecified decision", &cortexv1.CheckResponse{Rule: "r"}, nil, "r", "UNSPECIFIED is not ALLOW"},
		{"unknown decision", &cortexv1.CheckResponse{Decision: cortexv1.Decision(42), Rule: "r"}, nil, "r", "42 is not ALLOW"},
		{"no answer", nil, nil, bus.RuleFailClosed, "the checker gave no decision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, answer(tc.resp, tc.err), "")
			r.submit(t, "j1", "job.echo", 1)
			got := r.waitChanges(t, "j1", 1)
			c := got[0]
			if c.To != store.Denied || c.Attempt != 1 || c.Safety == nil || c.Safety.Decision != "DENY" ||
				c.Safety.Rule != tc.rule || !strings.Contains(c.Safety.Reason, tc.inReason) || c.Reason != c.Safety.Reason {
				t.Fatalf("change %+v (verdict %+v), want DENIED by DENY rule %q mentioning %q", c, c.Safety, tc.rule, tc.inReason)
			}
			r.noDispatch(t)
		})
	}
}

// A checker that gives fewer answers than it was asked (none here): the
// jobs left without one are denied fail-closed, and the scheduler does not
// fall over.
func TestMissingAnswerDenies(t *testing.T) {
	checker := answer(allow, nil)
	checker.mute = true
	r := newRig(t, checker, "")
	r.submit(t, "j1", "job.echo", 1)
	c := r.waitChanges(t, "j1", 1)[0]
	if c.To != store.Denied || c.Safety == nil || c.Safety.Decision != "DENY" || c.Safety.Rule != bus.RuleFailClosed ||
		!strings.Contains(c.Reason, "the checker gave no decision") {
		t.Fatalf("change %+v (verdict %+v), want DENIED fail-closed: the checker gave no decision", c, c.Safety)
	}
	r.noDispatch(t)
}

func TestUnroutableTopicFailsWithRoutes(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	r.submit(t, "j1", "job.nowhere", 1)
	got := r.waitChanges(t, "j1", 1)
	if got[0].To != store.Failed || got[0].Attempt != 1 || !strings.Contains(got[0].Reason, "job.echo") || !reflect.DeepEqual(got[0].Safety, allowed) {
		t.Fatalf("change %+v, want FAILED listing the routable topics", got[0])
	}
	r.noDispatch(t)
}

func TestRefusedDispatchIsNotPublished(t *testing.T) {
	r := newRig(t, answer(allow, nil), store.Dispatched)
	r.submit(t, "j1", "job.echo", 1)
	if got := r.waitChanges(t, "j1", 1); got[0].To != store.Dispatched {
		t.Fatalf("change %+v, want an attempt at DISPATCHED", got[0])
	}
	r.noDispatch(t)
	if ev := r.eventsOf("j1"); len(ev) != 0 {
		t.Errorf("events for a refused change: %v", ev)
	}
}

func TestResultsAreRecorded(t *testing.T) {
	size := uint64(5)
	for _, tc := range []struct {
		name string
		res  *cortexv1.JobResult
		want store.Change
	}{
		{
			"completed",
			&cortexv1.JobResult{State: cortexv1.JobState_JOB_STATE_COMPLETED, ResultSize: 5},
			store.Change{To: store.Completed, Attempt: 1, WorkerID: "w1", Holder: "w1", ResultSize: &size},
		},
		{
			"failed without attempts left",
			&cortexv1.JobResult{State: cortexv1.JobState_JOB_STATE_FAILED, Error: "boom"},
			store.Change{To: store.Failed, Attempt: 1, WorkerID: "w1", Holder: "w1", DeadLetter: true,
				Reason: "boom (attempt 1 of 1, none left; listed in the dead-letter queue: cortexctl dlq list)"},
		},
		{
			"timeout without attempts left",
			&cortexv1.JobResult{State: cortexv1.JobState_JOB_STATE_TIMEOUT, Error: "ran past 1s"},
			store.Change{To: store.Timeout, Attempt: 1, WorkerID: "w1", Holder: "w1", DeadLetter: true,
				Reason: "ran past 1s (attempt 1 of 1, none left; listed in the dead-letter queue: cortexctl dlq list)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, answer(allow, nil), "")
			r.st.seed("j1", "job.echo", store.Running, 1, 1)
			tc.res.JobId, tc.res.Attempt, tc.res.WorkerId = "j1", 1, "w1"
			r.result(t, tc.res)
			if got := r.waitChanges(t, "j1", 1); !reflect.DeepEqual(got[0], tc.want) {
				t.Errorf("change %+v, want %+v", got[0], tc.want)
			}
			if j, _ := r.st.Get(context.Background(), "j1"); j.State != tc.want.To {
				t.Errorf("job ended %s, want %s", j.State, tc.want.To)
			}
			r.noDispatch(t)
			if n := len(r.checker.checksOf("j1")); n != 0 {
				t.Errorf("the safety gate was asked %d times about a finished job", n)
			}
		})
	}
}

func TestFailedAttemptIsRetriedThroughTheSafetyGate(t *testing.T) {
	for _, state := range []cortexv1.JobState{cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_TIMEOUT} {
		t.Run(state.String(), func(t *testing.T) {
			r := newRig(t, answer(allow, nil), "")
			r.st.seed("j1", "job.echo", store.Running, 1, 3)
			r.result(t, &cortexv1.JobResult{JobId: "j1", Attempt: 1, WorkerId: "w1", State: state, Error: "boom"})
			got := r.waitChanges(t, "j1", 2)
			if c := got[0]; c.To != store.Pending || !c.Retry || c.Attempt != 1 || !strings.Contains(c.Reason, "boom") ||
				c.Due.IsZero() || !strings.Contains(c.Reason, "retrying in ") {
				t.Errorf("first change %+v, want a retry of attempt 1 to PENDING, due after a backoff", c)
			}
			if want := (store.Change{To: store.Dispatched, Attempt: 2, Pool: "echo", Safety: allowed}); !reflect.DeepEqual(got[1], want) {
				t.Errorf("second change %+v, want %+v", got[1], want)
			}
			checks := r.checker.checksOf("j1")
			if len(checks) != 1 || checks[0].GetAttempt() != 2 || checks[0].GetTopic() != "job.echo" || checks[0].GetTenantId() != "acme" {
				t.Errorf("checks %v, want one for attempt 2", checks)
			}
			if req := r.nextDispatch(t); req.GetJobId() != "j1" || req.GetAttempt() != 2 || req.GetPool() != "echo" || req.GetMaxAttempts() != 3 {
				t.Errorf("dispatched %v, want attempt 2 of j1", req)
			}
			if j, _ := r.st.Get(context.Background(), "j1"); j.State != store.Dispatched || j.Attempt != 2 {
				t.Errorf("record %+v, want attempt 2 DISPATCHED", j)
			}
		})
	}
}

func TestRetryDeniedByTheSafetyGateIsNotDispatched(t *testing.T) {
	checker := &fakeChecker{answer: func(r *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
		if r.GetAttempt() > 1 {
			return &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: "no-retries", Reason: "once only"}, nil
		}
		return allow, nil
	}}
	r := newRig(t, checker, "")
	r.st.seed("j1", "job.echo", store.Running, 1, 2)
	r.result(t, &cortexv1.JobResult{JobId: "j1", Attempt: 1, WorkerId: "w1", State: cortexv1.JobState_JOB_STATE_FAILED, Error: "boom"})
	got := r.waitChanges(t, "j1", 2)
	if c := got[1]; c.To != store.Denied || c.Attempt != 2 || c.Safety == nil || c.Safety.Rule != "no-retries" {
		t.Fatalf("change %+v, want attempt 2 DENIED by no-retries", c)
	}
	r.noDispatch(t)
}

func TestJobEventsArePublished(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	r.submit(t, "j1", "job.echo", 2)
	r.nextDispatch(t)
	r.result(t, &cortexv1.JobResult{JobId: "j1", Attempt: 1, WorkerId: "w1", State: cortexv1.JobState_JOB_STATE_FAILED, Error: "boom"})
	r.nextDispatch(t)
	r.result(t, &cortexv1.JobResult{JobId: "j1", Attempt: 2, WorkerId: "w2", State: cortexv1.JobState_JOB_STATE_COMPLETED, ResultSize: 3})
	last := r.waitEvent(t, "j1", store.Completed)
	if last.GetAttempt() != 2 || last.GetWorkerId() != "w2" || last.GetResultSize() != 3 || last.GetTenantId() != "acme" {
		t.Errorf("COMPLETED event %v", last)
	}
	r.settle(t)

	type step struct {
		state   cortexv1.JobState
		attempt uint32
		version uint64
	}
	var got []step
	for _, e := range r.eventsOf("j1") {
		got = append(got, step{e.GetState(), e.GetAttempt(), e.GetVersion()})
	}
	want := []step{
		{cortexv1.JobState_JOB_STATE_DISPATCHED, 1, 2},
		{cortexv1.JobState_JOB_STATE_PENDING, 2, 3},
		{cortexv1.JobState_JOB_STATE_DISPATCHED, 2, 4},
		{cortexv1.JobState_JOB_STATE_COMPLETED, 2, 5},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("events %v, want one per recorded transition %v", got, want)
	}
	if ev := r.eventsOf("j1")[0]; ev.GetSafety().GetDecision() != cortexv1.Decision_DECISION_ALLOW || ev.GetPool() != "echo" {
		t.Errorf("DISPATCHED event %v, want the ALLOW verdict and the pool", ev)
	}
}

func TestStaleResultChangesNothing(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	before := r.st.seed("j1", "job.echo", store.Running, 2, 3)
	for _, state := range []cortexv1.JobState{
		cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_TIMEOUT,
	} {
		r.result(t, &cortexv1.JobResult{JobId: "j1", Attempt: 1, WorkerId: "w-old", State: state, Error: "late"})
	}
	for _, c := range r.waitChanges(t, "j1", 3) {
		if c.Attempt != 1 || c.Retry {
			t.Errorf("change %+v, want one guarded by attempt 1 and no retry", c)
		}
	}
	r.noDispatch(t)
	if j, _ := r.st.Get(context.Background(), "j1"); !reflect.DeepEqual(j, before) {
		t.Errorf("stale results changed the job:\n got %+v\nwant %+v", j, before)
	}
	if ev := r.eventsOf("j1"); len(ev) != 0 {
		t.Errorf("events for stale results: %v", ev)
	}
	if n := len(r.checker.checksOf("j1")); n != 0 {
		t.Errorf("the safety gate was asked %d times about a stale result", n)
	}
}

// The jobs of a batched hand-off are checked together (one call to the
// checker) and each decided on its own, and a second copy of the batch (a
// redelivery) dispatches nothing this scheduler already placed.
func TestBatchedSubmitDecidesEachJob(t *testing.T) {
	deny := &cortexv1.CheckResponse{Decision: cortexv1.Decision_DECISION_DENY, Rule: "deny-sys", Reason: "never", PolicyVersion: "v1"}
	r := newRig(t, &fakeChecker{answer: func(c *cortexv1.CheckRequest) (*cortexv1.CheckResponse, error) {
		if c.GetTopic() == "sys.destroy" {
			return deny, nil
		}
		return allow, nil
	}}, "")
	batch := &cortexv1.JobBatch{}
	for _, j := range []struct{ id, topic string }{{"j1", "job.echo"}, {"j2", "sys.destroy"}, {"j3", "job.echo"}} {
		batch.Jobs = append(batch.Jobs, r.st.seed(j.id, j.topic, store.Pending, 1, 1).Request())
		batch.TraceIds = append(batch.TraceIds, "trace-"+j.id)
	}
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobBatch{JobBatch: batch}})
	got := map[string]bool{}
	for range 2 {
		got[r.nextDispatch(t).GetJobId()] = true
	}
	if !got["j1"] || !got["j3"] {
		t.Fatalf("dispatched %v, want j1 and j3", got)
	}
	if calls := r.checker.callSizes(); !slices.Equal(calls, []int{3}) {
		t.Errorf("checker calls of sizes %v, want one of the batch's 3 jobs", calls)
	}
	if c := r.waitChanges(t, "j2", 1); c[0].To != store.Denied || c[0].Safety.Rule != "deny-sys" {
		t.Fatalf("j2: %+v, want DENIED by deny-sys", c[0])
	}
	if ev := r.waitEvent(t, "j1", store.Dispatched); ev.GetTraceId() != "trace-j1" {
		t.Errorf("j1's event has trace %q, want the batch's trace-j1", ev.GetTraceId())
	}
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobBatch{JobBatch: batch}})
	r.noDispatch(t)
	for _, id := range []string{"j1", "j3"} {
		if n := len(r.checker.checksOf(id)); n != 1 {
			t.Errorf("%s was checked %d times, want once", id, n)
		}
	}
}

// TestSubmitHeldBackTooFarIsDropped: a job request held back further than
// any retry backs off (not_before years ahead) is malformed: dropped and
// counted, not left in the submit stream until it ages out.
func TestSubmitHeldBackTooFarIsDropped(t *testing.T) {
	r := newRig(t, answer(allow, nil), "")
	j := r.st.seed("j1", "job.echo", store.Pending, 1, 1)
	req := j.Request()
	req.NotBefore = timestamppb.New(time.Now().AddDate(1000, 0, 0))
	before := r.s.Conn().Dropped()
	r.publish(t, bus.SubjectJobSubmit, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}})
	for deadline := time.Now().Add(5 * time.Second); r.s.Conn().Dropped() == before; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request held back 1000 years was not dropped")
		}
	}
	r.noDispatch(t)
	if got := r.st.changesOf("j1"); len(got) != 0 {
		t.Errorf("changes %+v, want none", got)
	}
}
