package gateway

import (
	"context"
	"errors"
	"strconv"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Dead letters: jobs that ended FAILED or TIMEOUT with no attempt left,
// or that their pool's workers took MaxDeliver times without an ack. A
// tenant sees and acts on its own only.

// ListDeadLetters lists the caller's dead letters, newest first.
func (g *Gateway) ListDeadLetters(ctx context.Context, req *cortexv1.ListDeadLettersRequest) (*cortexv1.ListDeadLettersResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var before time.Time
	if tok := req.GetPageToken(); tok != "" {
		ms, err := strconv.ParseInt(tok, 10, 64)
		if err != nil || ms <= 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, "page token is not valid: pass the previous page's next page token (nextPageToken in JSON; the CLI's --page) unchanged, or start again without one")
		}
		before = time.UnixMilli(ms)
	}
	dead, err := g.store.DeadLetters(ctx, tenantFrom(ctx), size+1, before)
	if err != nil {
		g.log.Error("read dead letters", "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again")
	}
	res := &cortexv1.ListDeadLettersResponse{}
	if len(dead) > size {
		dead = dead[:size]
		res.NextPageToken = strconv.FormatInt(dead[size-1].At.UnixMilli(), 10)
	}
	for _, d := range dead {
		res.DeadLetters = append(res.DeadLetters, &cortexv1.DeadLetter{Job: d.Job.Proto(), DeadAt: timestamppb.New(d.At)})
	}
	return res, nil
}

// GetDeadLetter returns one of the caller's dead letters. A job of the
// caller's that is not in the queue is FailedPrecondition, as for retry
// and drop; another tenant's job is NotFound.
func (g *Gateway) GetDeadLetter(ctx context.Context, req *cortexv1.GetDeadLetterRequest) (*cortexv1.GetDeadLetterResponse, error) {
	j, err := g.ownJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	at, dead, err := g.store.DeadLetterAt(ctx, j.ID)
	if err != nil {
		return nil, g.readErr(j.ID, err)
	}
	if !dead {
		return nil, connect.Errorf(connect.CodeFailedPrecondition,
			"job %s is not in the dead-letter queue (it is %s); see cortexctl jobs get %s", j.ID, j.State, j.ID)
	}
	return &cortexv1.GetDeadLetterResponse{DeadLetter: &cortexv1.DeadLetter{Job: j.Proto(), DeadAt: timestamppb.New(at)}}, nil
}

// RetryDeadLetter gives a dead letter one more attempt, through the
// safety gate again.
func (g *Gateway) RetryDeadLetter(ctx context.Context, req *cortexv1.RetryDeadLetterRequest) (*cortexv1.RetryDeadLetterResponse, error) {
	if err := requireWrite(ctx, "retry dead letters"); err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if len(reason) > 512 || !utf8.ValidString(reason) {
		return nil, connect.NewError(connect.CodeInvalidArgument, "reason must be UTF-8 text of at most 512 bytes")
	}
	if reason == "" {
		reason = "retried from the dead-letter queue"
	}
	j, err := g.ownJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	after, err := g.store.Revive(ctx, j.ID, reason, time.Now())
	if errors.Is(err, store.ErrConflict) {
		return nil, notDeadLetter(j)
	}
	if err != nil {
		return nil, g.readErr(j.ID, err)
	}
	if err := g.bus.PublishJobEvent(after.Trace(), after.Proto()); err != nil {
		g.log.Warn("publish job event", "trace_id", after.Trace(), "job_id", j.ID, "err", err)
	}
	g.handOff(ctx, []bus.Durable{bus.Submit(after.Trace(), after.Request(), strconv.FormatUint(after.Version, 10))})
	return &cortexv1.RetryDeadLetterResponse{Job: after.Proto()}, nil
}

// DropDeadLetter takes a job out of the dead-letter queue.
func (g *Gateway) DropDeadLetter(ctx context.Context, req *cortexv1.DropDeadLetterRequest) (*cortexv1.DropDeadLetterResponse, error) {
	if err := requireWrite(ctx, "drop dead letters"); err != nil {
		return nil, err
	}
	j, err := g.ownJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	dropped, err := g.store.DropDeadLetter(ctx, j.ID, j.Attempt, j.Reason, time.Now())
	if err != nil {
		return nil, g.readErr(j.ID, err)
	}
	if !dropped {
		return nil, notDeadLetter(j)
	}
	if after, err := g.store.Get(ctx, j.ID); err == nil {
		j = after // with the reason that says it was dropped
	}
	return &cortexv1.DropDeadLetterResponse{Job: j.Proto()}, nil
}

func notDeadLetter(j *store.Job) error {
	return connect.Errorf(connect.CodeFailedPrecondition,
		"job %s is not in the dead-letter queue (it is %s); see cortexctl dlq list", j.ID, j.State)
}
