// Package job holds the commands that submit jobs and follow them:
// `cortexctl submit`, `cortexctl jobs list|get|result|cancel|watch` and
// `cortexctl tail`. They talk to the gateway through the typed client only,
// print data on stdout and progress and errors on stderr.
package job

import (
	"context"
	"errors"
	"io"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Terminal reports whether no state follows s.
func Terminal(s cortexv1.JobState) bool {
	switch s {
	case cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
		cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		return true
	}
	return false
}

// reconnectDelay is the pause before watching again after the gateway
// dropped the stream (a restart, say).
const reconnectDelay = 500 * time.Millisecond

// WaitForEnd watches the job until it is finished or ctx ends, calling
// onChange (if not nil) with every version of the job it sees. A stream the
// gateway drops is resumed.
func WaitForEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job)) (*cortexv1.Job, error) {
	return FollowToEnd(ctx, c, id, onChange, nil)
}

// FollowToEnd is WaitForEnd that also hands onOutput (when not nil) the
// pieces of output the job's handler streams while it runs. Pieces are
// best effort: see follower for how to show them.
func FollowToEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job), onOutput func(*cortexv1.JobOutput) error) (*cortexv1.Job, error) {
	var seen uint64
	for {
		j, err := watchOnce(ctx, c, id, func(j *cortexv1.Job) {
			if j.GetVersion() > seen || seen == 0 {
				seen = j.GetVersion()
				if onChange != nil {
					onChange(j)
				}
			}
		}, onOutput)
		if j != nil && Terminal(j.GetState()) {
			return j, nil
		}
		if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(reconnectDelay):
		}
	}
}

// watchOnce follows one WatchJob stream to its end and returns the last
// version of the job it saw.
func watchOnce(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job), onOutput func(*cortexv1.JobOutput) error) (*cortexv1.Job, error) {
	stream, err := c.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: id, Output: onOutput != nil})
	if err != nil {
		return nil, err
	}
	defer func() { _ = stream.Close() }()
	var last *cortexv1.Job
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, err
		}
		if o := msg.GetOutput(); o != nil {
			if onOutput != nil {
				if err := onOutput(o); err != nil {
					return last, err
				}
			}
			continue
		}
		if msg.GetJob() == nil {
			continue
		}
		last = msg.GetJob()
		onChange(last)
	}
}

// endError is nil for a COMPLETED job and the exit-3 error otherwise.
func endError(j *cortexv1.Job) error {
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		return nil
	}
	e := &cmdutil.JobNotDoneError{JobID: j.GetJobId(), State: StateName(j.GetState()), Reason: j.GetReason()}
	if j.GetState() == cortexv1.JobState_JOB_STATE_DENIED {
		e.Rule = j.GetSafety().GetRule()
	}
	return e
}
