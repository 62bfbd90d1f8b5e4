package top

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// fakeSource is a cluster in memory: lists answer from its fields, the
// streams send what is pushed on events and decisions.
type fakeSource struct {
	mu        sync.Mutex
	pools     []*cortexv1.PoolInfo
	workers   []*cortexv1.WorkerInfo
	jobs      []*cortexv1.Job
	results   map[string]string
	down      error
	actions   []string
	events    chan *cortexv1.Job
	decisions chan *cortexv1.SafetyDecisionEvent
}

var _ Source = (*fakeSource)(nil)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func newFake() *fakeSource {
	return &fakeSource{
		pools: []*cortexv1.PoolInfo{{Pool: "echo", Workers: 1, ActiveJobs: 6, Capacity: 8, Topics: []string{"job.echo"}}},
		workers: []*cortexv1.WorkerInfo{{WorkerId: "echo-1", Pool: "echo", MaxParallelJobs: 8, ActiveJobs: 6,
			LastHeartbeat: timestamppb.New(t0.Add(-2 * time.Second)), FirstSeen: timestamppb.New(t0.Add(-time.Hour))}},
		jobs: []*cortexv1.Job{
			job("job-held", cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL, "job.deploy", 3),
			job("job-done", cortexv1.JobState_JOB_STATE_COMPLETED, "job.echo", 2),
			job("job-denied", cortexv1.JobState_JOB_STATE_DENIED, "sys.destroy", 1),
		},
		results:   map[string]string{"job-done": "hello back"},
		events:    make(chan *cortexv1.Job, 100),
		decisions: make(chan *cortexv1.SafetyDecisionEvent, 100),
	}
}

func job(id string, st cortexv1.JobState, topic string, ageMin int) *cortexv1.Job {
	at := t0.Add(-time.Duration(ageMin) * time.Minute)
	return &cortexv1.Job{JobId: id, State: st, Topic: topic, Pool: "echo", TenantId: "acme", Version: 1,
		CreatedAt: timestamppb.New(at), UpdatedAt: timestamppb.New(at.Add(time.Second)),
		Transitions: []*cortexv1.JobTransition{{State: cortexv1.JobState_JOB_STATE_PENDING, At: timestamppb.New(at)}, {State: st, At: timestamppb.New(at.Add(time.Second))}},
		Safety:      &cortexv1.SafetyVerdict{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow-jobs"}}
}

func decision(id string, d cortexv1.Decision, rule, topic string) *cortexv1.SafetyDecisionEvent {
	return &cortexv1.SafetyDecisionEvent{JobId: id, TenantId: "acme", Topic: topic, DecidedAt: timestamppb.New(t0),
		Verdict: &cortexv1.SafetyVerdict{Decision: d, Rule: rule, Reason: "because " + rule}}
}

func (f *fakeSource) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *fakeSource) setDown(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = err
}

func (f *fakeSource) Pools(context.Context) ([]*cortexv1.PoolInfo, error) { return f.pools, f.err() }
func (f *fakeSource) Workers(context.Context) ([]*cortexv1.WorkerInfo, error) {
	return f.workers, f.err()
}
func (f *fakeSource) Jobs(context.Context, int) ([]*cortexv1.Job, error) { return f.jobs, f.err() }

func (f *fakeSource) Job(_ context.Context, id string) (*cortexv1.Job, error) {
	for _, j := range f.jobs {
		if j.GetJobId() == id {
			return j, nil
		}
	}
	return nil, errors.New("not found")
}

func (f *fakeSource) Result(_ context.Context, id string) (*cortexv1.GetResultResponse, error) {
	return &cortexv1.GetResultResponse{JobId: id, Output: &cortexv1.GetResultResponse_Text{Text: f.results[id]}}, nil
}

func (f *fakeSource) Events(ctx context.Context, fn func(*cortexv1.Job, uint64)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case j := <-f.events:
			fn(j, 0)
		}
	}
}

func (f *fakeSource) Decisions(ctx context.Context, fn func(*cortexv1.SafetyDecisionEvent, uint64)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case d := <-f.decisions:
			fn(d, 0)
		}
	}
}

func (f *fakeSource) act(verb, id string, st cortexv1.JobState) (*cortexv1.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, verb+" "+id)
	return &cortexv1.Job{JobId: id, State: st}, nil
}

func (f *fakeSource) Approve(_ context.Context, id string) (*cortexv1.Job, error) {
	return f.act("approve", id, cortexv1.JobState_JOB_STATE_PENDING)
}

func (f *fakeSource) Reject(_ context.Context, id, _ string) (*cortexv1.Job, error) {
	return f.act("reject", id, cortexv1.JobState_JOB_STATE_DENIED)
}

func (f *fakeSource) Drain(_ context.Context, id string) error {
	_, err := f.act("drain", id, cortexv1.JobState_JOB_STATE_UNSPECIFIED)
	return err
}

func (f *fakeSource) Cancel(_ context.Context, id, _ string) (*cortexv1.Job, error) {
	return f.act("cancel", id, cortexv1.JobState_JOB_STATE_CANCELLED)
}
