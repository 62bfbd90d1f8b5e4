package gateway

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"
	"github.com/google/uuid"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Page sizes of ListJobs.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// parseJobID checks a job id's shape before anything is read.
func parseJobID(raw string) (string, error) {
	id, err := uuid.Parse(raw)
	if err != nil || raw != id.String() {
		return "", connect.Errorf(connect.CodeInvalidArgument,
			"job id %.80q is not valid: job ids look like 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e (see cortexctl jobs list)", raw)
	}
	return raw, nil
}

// readErr turns a store error into the caller's answer. Another tenant's
// job is NotFound, exactly like a job that does not exist.
func (g *Gateway) readErr(id string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return notFound(id)
	}
	g.log.Error("read job", "job_id", id, "err", err)
	return connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again")
}

func notFound(id string) error {
	return connect.Errorf(connect.CodeNotFound, "job %s not found (jobs are kept for 24h; see cortexctl jobs list)", id)
}

// ownJob reads a job of the caller's tenant.
func (g *Gateway) ownJob(ctx context.Context, raw string) (*store.Job, error) {
	id, err := parseJobID(raw)
	if err != nil {
		return nil, err
	}
	j, err := g.store.Get(ctx, id)
	if err != nil {
		return nil, g.readErr(id, err)
	}
	if j.Tenant != tenantFrom(ctx) {
		return nil, notFound(id)
	}
	return j, nil
}

// GetJob returns a job of the caller's tenant.
func (g *Gateway) GetJob(ctx context.Context, req *cortexv1.GetJobRequest) (*cortexv1.GetJobResponse, error) {
	j, err := g.ownJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	pj := j.Proto()
	g.explainWait(pj)
	return &cortexv1.GetJobResponse{Job: pj}, nil
}

// GetResult returns the output of a COMPLETED job.
func (g *Gateway) GetResult(ctx context.Context, req *cortexv1.GetResultRequest) (*cortexv1.GetResultResponse, error) {
	id, err := parseJobID(req.GetJobId())
	if err != nil {
		return nil, err
	}
	j, out, err := g.store.Output(ctx, id)
	if err != nil {
		return nil, g.readErr(id, err)
	}
	if j.Tenant != tenantFrom(ctx) {
		return nil, notFound(id)
	}
	if j.State != store.Completed {
		msg := fmt.Sprintf("job %s is %s and has no result yet; wait for it with: cortexctl jobs watch %s", id, j.State, id)
		if j.State.Terminal() {
			msg = fmt.Sprintf("job %s ended %s and has no result: %s", id, j.State, j.Reason)
		}
		return nil, connect.NewError(connect.CodeFailedPrecondition, msg)
	}
	res := &cortexv1.GetResultResponse{JobId: id, State: j.State.Proto()}
	if utf8.ValidString(out) {
		res.Output = &cortexv1.GetResultResponse_Text{Text: out}
	} else {
		res.Output = &cortexv1.GetResultResponse_Data{Data: []byte(out)}
	}
	return res, nil
}

// ListJobs lists the caller's jobs, newest first.
func (g *Gateway) ListJobs(ctx context.Context, req *cortexv1.ListJobsRequest) (*cortexv1.ListJobsResponse, error) {
	q, err := listQuery(tenantFrom(ctx), req)
	if err != nil {
		return nil, err
	}
	jobs, next, err := g.store.List(ctx, q)
	if err != nil {
		g.log.Error("list jobs", "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again")
	}
	res := &cortexv1.ListJobsResponse{Jobs: make([]*cortexv1.Job, len(jobs))}
	for i, j := range jobs {
		res.Jobs[i] = j.Proto()
	}
	g.explainWait(res.Jobs...)
	if next != "" {
		res.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return res, nil
}

// pageSize is a request's page size: DefaultPageSize when unset, at most
// MaxPageSize.
func pageSize(n uint32) (int, error) {
	switch {
	case n == 0:
		return DefaultPageSize, nil
	case n > MaxPageSize:
		return 0, connect.Errorf(connect.CodeInvalidArgument, "page size %d is over the limit of %d", n, MaxPageSize)
	}
	return int(n), nil
}

func listQuery(tenant string, req *cortexv1.ListJobsRequest) (store.Query, error) {
	q := store.Query{Tenant: tenant, Topic: req.GetTopic(), Labels: req.GetLabels()}
	var err error
	if q.Limit, err = pageSize(req.GetPageSize()); err != nil {
		return q, err
	}
	if err := validateFilter(req.GetTopic(), req.GetStates(), req.GetLabels()); err != nil {
		return q, err
	}
	for _, s := range req.GetStates() {
		q.States = append(q.States, store.StateOf(s))
	}
	if t := req.GetPageToken(); t != "" {
		after, err := base64.RawURLEncoding.DecodeString(t)
		if _, perr := uuid.Parse(string(after)); err != nil || perr != nil {
			return q, connect.NewError(connect.CodeInvalidArgument, "page token is not valid: pass the previous page's next page token (nextPageToken in JSON; the CLI's --page) unchanged, or start again without one")
		}
		q.After = string(after)
	}
	return q, nil
}

// validateFilter checks the filters shared by ListJobs and StreamEvents.
func validateFilter(topic string, states []cortexv1.JobState, labels map[string]string) error {
	if topic != "" && !validTopicFilter(topic) {
		return connect.Errorf(connect.CodeInvalidArgument, "topic filter %.80q is not valid: use a topic such as job.echo, or a prefix such as job.*", topic)
	}
	for _, s := range states {
		if store.StateOf(s) == "" {
			return connect.Errorf(connect.CodeInvalidArgument, "state %v is not a job state: use PENDING, RUNNING, COMPLETED, FAILED, DENIED, CANCELLED, TIMEOUT ...", s)
		}
	}
	return validateLabels(labels)
}

// validTopicFilter accepts a topic, or a prefix of whole tokens followed
// by ".*" ("job.*").
func validTopicFilter(topic string) bool {
	prefix, ok := strings.CutSuffix(topic, ".*")
	if !ok {
		return bus.ValidTopic(topic)
	}
	return bus.ValidTopic(prefix+".x") || bus.ValidToken(prefix)
}

// CancelJob ends a job of the caller's tenant that has not finished, and
// asks any worker running it to stop.
func (g *Gateway) CancelJob(ctx context.Context, req *cortexv1.CancelJobRequest) (*cortexv1.CancelJobResponse, error) {
	if err := requireWrite(ctx, "cancel jobs"); err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if len(reason) > 512 || !utf8.ValidString(reason) {
		return nil, connect.NewError(connect.CodeInvalidArgument, "reason must be UTF-8 text of at most 512 bytes")
	}
	if reason == "" {
		reason = "cancelled by the client"
	}
	j, err := g.ownJob(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	if j.State == store.Cancelled {
		return &cortexv1.CancelJobResponse{Job: j.Proto()}, nil
	}
	if j.State.Terminal() {
		return nil, connect.Errorf(connect.CodeFailedPrecondition, "job %s already ended %s; only unfinished jobs can be cancelled", j.ID, j.State)
	}
	after, err := g.store.Transition(ctx, j.ID, store.Change{To: store.Cancelled, Reason: reason}, time.Now())
	var conflict *store.ConflictError
	switch {
	case errors.As(err, &conflict) && conflict.State == store.Cancelled:
		res, err := g.GetJob(ctx, &cortexv1.GetJobRequest{JobId: j.ID})
		return &cortexv1.CancelJobResponse{Job: res.GetJob()}, err
	case errors.As(err, &conflict):
		return nil, connect.Errorf(connect.CodeFailedPrecondition, "job %s ended %s before it could be cancelled", j.ID, conflict.State)
	case err != nil:
		return nil, g.readErr(j.ID, err)
	}
	g.metrics.Cancelled(after.Topic)
	if err := g.bus.PublishJobEvent(after.Trace(), after.Proto()); err != nil {
		g.log.Warn("publish job event", "trace_id", after.Trace(), "job_id", j.ID, "err", err)
	}
	// Decide from the record the cancel wrote, not the one read before it:
	// the job may have been dispatched in between. A job that was ever
	// dispatched may be on a worker (which ignores a job it does not run).
	_, dispatched := after.Entered[store.Dispatched]
	if dispatched {
		err := g.bus.Publish(bus.SubjectJobCancel, &cortexv1.BusPacket{
			TraceId: after.Trace(),
			Payload: &cortexv1.BusPacket_JobCancel{JobCancel: &cortexv1.JobCancel{JobId: j.ID, Reason: reason}},
		})
		if err != nil {
			// The job is CANCELLED whatever the worker does: its result
			// will be refused.
			g.log.Warn("ask worker to stop", "trace_id", after.Trace(), "job_id", j.ID, "err", err)
		}
	}
	return &cortexv1.CancelJobResponse{Job: after.Proto()}, nil
}
