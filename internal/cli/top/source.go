package top

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Source is what top reads from a cluster and the actions it takes, all
// through the gateway API the other commands use. Events and Decisions
// block, handing each message to fn, until the stream ends or ctx does;
// dropped counts the messages the gateway skipped for a slow reader.
type Source interface {
	Pools(ctx context.Context) ([]*cortexv1.PoolInfo, error)
	Workers(ctx context.Context) ([]*cortexv1.WorkerInfo, error)
	// Jobs lists the n newest jobs.
	Jobs(ctx context.Context, n int) ([]*cortexv1.Job, error)
	Job(ctx context.Context, id string) (*cortexv1.Job, error)
	Result(ctx context.Context, id string) (*cortexv1.GetResultResponse, error)
	Events(ctx context.Context, fn func(job *cortexv1.Job, dropped uint64)) error
	Decisions(ctx context.Context, fn func(ev *cortexv1.SafetyDecisionEvent, dropped uint64)) error
	Approve(ctx context.Context, id string) (*cortexv1.Job, error)
	Reject(ctx context.Context, id, reason string) (*cortexv1.Job, error)
	Cancel(ctx context.Context, id, reason string) (*cortexv1.Job, error)
	Drain(ctx context.Context, workerID string) error
}

// eventStates are the job changes top follows: arrivals, starts, ends and
// holds. SCHEDULED and DISPATCHED are left out: they add two messages a
// job to decode and change no figure top shows (a job queues from PENDING
// until RUNNING, or until its end for one that ends before it is recorded
// RUNNING).
var eventStates = []cortexv1.JobState{
	cortexv1.JobState_JOB_STATE_PENDING, cortexv1.JobState_JOB_STATE_RUNNING, cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL,
	cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
	cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT,
}

// clientSource is a Source over the gateway's Connect client.
type clientSource struct {
	c cortexv1connect.GatewayServiceClient
}

var _ Source = clientSource{}

// NewClientSource returns a Source that talks to the gateway through c.
func NewClientSource(c cortexv1connect.GatewayServiceClient) Source { return clientSource{c: c} }

func (s clientSource) Pools(ctx context.Context) ([]*cortexv1.PoolInfo, error) {
	res, err := s.c.ListPools(ctx, &cortexv1.ListPoolsRequest{})
	return res.GetPools(), err
}

func (s clientSource) Workers(ctx context.Context) ([]*cortexv1.WorkerInfo, error) {
	res, err := s.c.ListWorkers(ctx, &cortexv1.ListWorkersRequest{})
	return res.GetWorkers(), err
}

func (s clientSource) Jobs(ctx context.Context, n int) ([]*cortexv1.Job, error) {
	res, err := s.c.ListJobs(ctx, &cortexv1.ListJobsRequest{PageSize: uint32(max(n, 1))}) //nolint:gosec // n is small and positive
	return res.GetJobs(), err
}

func (s clientSource) Job(ctx context.Context, id string) (*cortexv1.Job, error) {
	res, err := s.c.GetJob(ctx, &cortexv1.GetJobRequest{JobId: id})
	return res.GetJob(), err
}

func (s clientSource) Result(ctx context.Context, id string) (*cortexv1.GetResultResponse, error) {
	return s.c.GetResult(ctx, &cortexv1.GetResultRequest{JobId: id})
}

func (s clientSource) Events(ctx context.Context, fn func(*cortexv1.Job, uint64)) error {
	st, err := s.c.StreamEvents(ctx, &cortexv1.StreamEventsRequest{States: eventStates, BatchWindow: durationpb.New(batchWindow)})
	if err != nil {
		return err
	}
	return receive(st, func(msg *cortexv1.StreamEventsResponse) { each(msg.GetJobs(), msg.GetDropped(), fn) })
}

func (s clientSource) Decisions(ctx context.Context, fn func(*cortexv1.SafetyDecisionEvent, uint64)) error {
	st, err := s.c.StreamDecisions(ctx, &cortexv1.StreamDecisionsRequest{BatchWindow: durationpb.New(batchWindow)})
	if err != nil {
		return err
	}
	return receive(st, func(msg *cortexv1.StreamDecisionsResponse) { each(msg.GetEvents(), msg.GetDropped(), fn) })
}

// batchWindow is how long the gateway gathers events for top before it
// sends them, in one message: at 1,000 jobs/s, a few messages a second
// rather than thousands, with the screen still current.
const batchWindow = 200 * time.Millisecond

// each hands fn every event of a batch, with the batch's count of dropped
// events on the first.
func each[T any](batch []T, dropped uint64, fn func(T, uint64)) {
	for _, v := range batch {
		fn(v, dropped)
		dropped = 0
	}
}

// receive hands every message of a server stream to each until the stream
// ends (nil at its end, else why).
func receive[M any](st interface {
	Receive() (M, error)
	Close() error
}, each func(M)) error {
	defer func() { _ = st.Close() }()
	for {
		msg, err := st.Receive()
		if err != nil {
			return eofNil(err)
		}
		each(msg)
	}
}

func (s clientSource) Approve(ctx context.Context, id string) (*cortexv1.Job, error) {
	res, err := s.c.ApproveJob(ctx, &cortexv1.ApproveJobRequest{JobId: id, Comment: "approved from cortexctl top"})
	return res.GetJob(), err
}

func (s clientSource) Reject(ctx context.Context, id, reason string) (*cortexv1.Job, error) {
	res, err := s.c.RejectJob(ctx, &cortexv1.RejectJobRequest{JobId: id, Reason: reason})
	return res.GetJob(), err
}

func (s clientSource) Drain(ctx context.Context, workerID string) error {
	_, err := s.c.DrainWorker(ctx, &cortexv1.DrainWorkerRequest{WorkerId: workerID})
	return err
}

func (s clientSource) Cancel(ctx context.Context, id, reason string) (*cortexv1.Job, error) {
	res, err := s.c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: id, Reason: reason})
	return res.GetJob(), err
}

// eofNil turns the end of a stream into a nil error: the gateway hung up.
func eofNil(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
