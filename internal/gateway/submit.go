package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/ids"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Bounds of the job options a client may set.
const (
	MaxPriority       = routing.MaxPriority
	MaxAttempts       = 10
	MaxTimeout        = 24 * time.Hour
	maxIdempotencyKey = 256
)

// SubmitJob validates and records a job, then hands it to the scheduler.
func (g *Gateway) SubmitJob(ctx context.Context, req *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error) {
	if err := requireWrite(ctx, "submit jobs"); err != nil {
		return nil, err
	}
	done, err := g.admit()
	if err != nil {
		return nil, err
	}
	defer done()
	nj, err := g.accept(ctx, req)
	if err != nil {
		return nil, err
	}
	return g.submitAccepted(ctx, nj)
}

// submitAccepted records an accepted job and hands it to the scheduler.
func (g *Gateway) submitAccepted(ctx context.Context, nj store.NewJob) (*cortexv1.SubmitJobResponse, error) {
	now := time.Now()
	existing, err := g.store.CreateJob(ctx, nj, now)
	res, handOff, created, err := g.recorded(ctx, nj, existing, err, now)
	if created != nil {
		g.announce([]*cortexv1.Job{created})
	}
	if handOff != nil {
		g.handOff(ctx, []bus.Durable{*handOff})
	}
	return res, err
}

// accept validates a request and makes its job's record.
func (g *Gateway) accept(ctx context.Context, req *cortexv1.SubmitJobRequest) (store.NewJob, error) {
	if err := g.validateSubmit(req); err != nil {
		return store.NewJob{}, err
	}
	tenant := tenantFrom(ctx)
	id, err := store.NewJobID(tenant, req.GetIdempotencyKey())
	if err != nil {
		return store.NewJob{}, connect.NewError(connect.CodeInternal, "could not make a job id, try again")
	}
	pool, _ := g.router.Pool(req.GetTopic())
	nj := newJob(id, tenant, req, g.router.Defaults(pool))
	nj.TraceID = ids.Hex(16)
	return nj, nil
}

// recorded answers for a job the store was asked to create (existing and
// err are what it said): with the hand-off of a job to the schedulers, and
// for a new job its record, to announce before the hand-off.
func (g *Gateway) recorded(ctx context.Context, nj store.NewJob, existing string, err error, now time.Time) (*cortexv1.SubmitJobResponse, *bus.Durable, *cortexv1.Job, error) {
	switch {
	case errors.Is(err, store.ErrIdempotencyMismatch):
		return nil, nil, nil, connect.Errorf(connect.CodeAlreadyExists,
			"idempotency key %.60q was already used by job %s for a different request; use a new key for a new job", nj.IdempotencyKey, existing)
	case timedOut(err):
		// The store may yet carry out the create it was sent: the job
		// then runs (the reconciler hands it on), and a blind retry
		// would make a second one.
		g.log.Error("record job", "trace_id", nj.TraceID, "job_id", nj.ID, "err", err)
		return nil, nil, nil, connect.Errorf(connect.CodeUnavailable,
			"the job store did not answer in time: job %s may have been recorded all the same, and then it runs; look for it (cortexctl jobs get %s) before you submit again, or submit with an idempotency key, which makes a retry safe", nj.ID, nj.ID)
	case err != nil:
		g.log.Error("record job", "trace_id", nj.TraceID, "job_id", nj.ID, "err", err)
		return nil, nil, nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable; nothing was recorded, try again")
	case existing != "":
		j, err := g.store.Get(ctx, existing)
		if err != nil {
			g.log.Error("read job", "job_id", existing, "err", err)
			return nil, nil, nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again")
		}
		res := &cortexv1.SubmitJobResponse{JobId: existing, State: j.State.Proto(), Deduplicated: true, TraceId: j.TraceID}
		if j.State == store.Pending {
			// The first hand-off may have failed (the client retries
			// because it did): hand it on again rather than wait for the
			// reconciler. The stream drops the copy if it has the first,
			// and a scheduler drops a job it already holds.
			d := bus.Submit(j.Trace(), j.Request(), strconv.FormatUint(j.Version, 10))
			return res, &d, nil, nil
		}
		return res, nil, nil, nil
	}
	j := nj.Record(now)
	g.metrics.Submitted(j.Topic)
	created := j.Proto()
	created.TraceId = j.Trace()
	d := bus.Submit(j.Trace(), j.Request(), strconv.FormatUint(j.Version, 10))
	g.log.Debug("job accepted", "trace_id", j.TraceID, "job_id", j.ID, "topic", j.Topic, "tenant", j.Tenant)
	return &cortexv1.SubmitJobResponse{JobId: j.ID, State: cortexv1.JobState_JOB_STATE_PENDING, TraceId: j.TraceID}, &d, created, nil
}

// timedOut reports whether err is a store call that ran out of time: its
// command may have been carried out, or may still be.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// announce publishes the PENDING events of jobs just created, ahead of
// their hand-off.
func (g *Gateway) announce(created []*cortexv1.Job) {
	if err := g.bus.PublishJobEventsNow(created); err != nil {
		g.log.Warn("publish job events", "jobs", len(created), "first_job_id", created[0].GetJobId(), "err", err)
	}
}

// handOff stores recorded jobs in the submit stream for the schedulers.
// A job the bus does not take is not lost: it is PENDING in the store, and
// the reconciler hands it on within a redrive interval, so the client
// still gets its id.
func (g *Gateway) handOff(ctx context.Context, ds []bus.Durable) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handOffTimeout)
	defer cancel()
	errs := g.bus.PublishDurables(ctx, ds)
	for i, d := range ds {
		if errs[i] == nil {
			continue
		}
		if b := d.Packet.GetJobBatch(); b != nil {
			g.log.Warn("hand jobs to the schedulers; the reconciler will", "jobs", len(b.GetJobs()), "first_job_id", b.GetJobs()[0].GetJobId(), "err", errs[i])
			continue
		}
		g.log.Warn("hand job to the schedulers; the reconciler will", "trace_id", d.Packet.GetTraceId(), "job_id", d.Packet.GetJobRequest().GetJobId(), "err", errs[i])
	}
}

// handOffTimeout bounds how long a submit waits for the bus to store its
// jobs; past it the reconciler hands them on.
const handOffTimeout = 3 * time.Second

// MaxBatch bounds the jobs of one SubmitJobs call.
const MaxBatch = 1000

// SubmitJobs validates and records many jobs in one round trip to the
// store and hands them on together; each job is answered as SubmitJob
// would answer it alone.
func (g *Gateway) SubmitJobs(ctx context.Context, req *cortexv1.SubmitJobsRequest) (*cortexv1.SubmitJobsResponse, error) {
	if err := requireWrite(ctx, "submit jobs"); err != nil {
		return nil, err
	}
	if n := len(req.GetJobs()); n == 0 || n > MaxBatch {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "a batch holds 1 to %d jobs, not %d; split it", MaxBatch, n)
	}
	done, err := g.admit()
	if err != nil {
		return nil, err
	}
	defer done()
	res := &cortexv1.SubmitJobsResponse{Results: make([]*cortexv1.SubmitJobsResult, len(req.GetJobs()))}
	var jobs []store.NewJob
	var at []int
	for i, r := range req.GetJobs() {
		nj, err := g.accept(ctx, r)
		if err != nil {
			res.Results[i] = batchResult(nil, err)
			continue
		}
		jobs, at = append(jobs, nj), append(at, i)
	}
	now := time.Now()
	// New jobs travel together, in as few messages as fit; a job found
	// again by its idempotency key is handed on alone, under the name of
	// its first hand-off, so the stream drops it if it has that.
	var fresh, again []bus.Durable
	var created []*cortexv1.Job
	for k, c := range g.store.CreateJobs(ctx, jobs, now) {
		one, d, j, err := g.recorded(ctx, jobs[k], c.Existing, c.Err, now)
		res.Results[at[k]] = batchResult(one, err)
		if j != nil {
			created = append(created, j)
		}
		switch {
		case d == nil:
		case one.GetDeduplicated():
			again = append(again, *d)
		default:
			fresh = append(fresh, *d)
		}
	}
	if len(created) > 0 {
		g.announce(created)
	}
	if ds := append(bus.Batched(fresh, 0), again...); len(ds) > 0 {
		g.handOff(ctx, ds)
	}
	return res, nil
}

func batchResult(one *cortexv1.SubmitJobResponse, err error) *cortexv1.SubmitJobsResult {
	if err != nil {
		return &cortexv1.SubmitJobsResult{ErrorCode: connect.CodeOf(err).String(), Error: errorMessage(err)}
	}
	return &cortexv1.SubmitJobsResult{JobId: one.GetJobId(), State: one.GetState(), Deduplicated: one.GetDeduplicated(), TraceId: one.GetTraceId()}
}

// errorMessage is a Connect error's message without its code prefix.
func errorMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// newJob is the store record of an accepted request. The options the
// request leaves unset (priority, timeout, max attempts) take the defaults
// of the topic's pool, and are recorded on the job as if sent.
func newJob(id, tenant string, req *cortexv1.SubmitJobRequest, d routing.Defaults) store.NewJob {
	nj := store.NewJob{
		ID:             id,
		Topic:          req.GetTopic(),
		Tenant:         tenant,
		Input:          req.GetPrompt(),
		Labels:         req.GetLabels(),
		Priority:       d.Priority,
		Timeout:        d.Timeout,
		MaxAttempts:    max(d.MaxAttempts, 1),
		IdempotencyKey: req.GetIdempotencyKey(),
	}
	if req.Priority != nil {
		nj.Priority = req.GetPriority()
	}
	if req.Timeout != nil {
		nj.Timeout = req.GetTimeout().AsDuration()
	}
	if req.MaxAttempts != nil {
		nj.MaxAttempts = req.GetMaxAttempts()
	}
	if req.Payload != nil {
		nj.Input, nj.Binary = string(req.GetPayload()), true
	}
	if nj.IdempotencyKey != "" {
		nj.Fingerprint = fingerprint(req)
	}
	return nj
}

// fingerprint identifies what a request asks for, so that an idempotency
// key reused for a different request is caught. It hashes the request as
// sent, not the job it became: an option left unset is hashed as unset, not
// as the pool default it took. So a retry of the same request with the same
// key finds the first job even if the routing table (and its defaults)
// changed in between, while leaving an option unset and setting it to the
// value of today's default are different requests.
func fingerprint(req *cortexv1.SubmitJobRequest) string {
	h := sha256.New()
	field := func(s string) {
		_ = binary.Write(h, binary.LittleEndian, uint64(len(s)))
		h.Write([]byte(s))
	}
	field(req.GetTopic())
	if req.Payload != nil {
		field(string(req.GetPayload()))
	} else {
		field(req.GetPrompt())
	}
	labels := req.GetLabels()
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		field(k)
		field(labels[k])
	}
	// -1 stands for unset: no valid value is negative.
	opts := []int64{-1, -1, -1}
	if req.Priority != nil {
		opts[0] = int64(req.GetPriority())
	}
	if req.Timeout != nil {
		opts[1] = int64(req.GetTimeout().AsDuration())
	}
	if req.MaxAttempts != nil {
		opts[2] = int64(req.GetMaxAttempts())
	}
	_ = binary.Write(h, binary.LittleEndian, opts)
	if req.Payload != nil {
		h.Write([]byte{1})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func (g *Gateway) validateSubmit(req *cortexv1.SubmitJobRequest) error {
	topic := req.GetTopic()
	if !bus.ValidTopic(topic) {
		return connect.Errorf(connect.CodeInvalidArgument,
			"topic %.80q is not valid: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo", topic)
	}
	if !g.router.Routable(topic) {
		return connect.Errorf(connect.CodeInvalidArgument,
			"no pool serves topic %s; routable topics: %s", topic, strings.Join(g.router.Topics(), ", "))
	}
	if req.GetPrompt() != "" && req.Payload != nil {
		return connect.NewError(connect.CodeInvalidArgument, "set prompt or payload, not both")
	}
	if n := len(req.GetPrompt()) + len(req.GetPayload()); n > g.maxPrompt {
		return connect.Errorf(connect.CodeInvalidArgument,
			"the input is %d bytes, over the %d byte limit; store large data elsewhere and send a reference", n, g.maxPrompt)
	}
	if !utf8.ValidString(req.GetPrompt()) {
		return connect.NewError(connect.CodeInvalidArgument, "prompt is not valid UTF-8; send bytes as payload instead")
	}
	if err := validateLabels(req.GetLabels()); err != nil {
		return err
	}
	if p := req.GetPriority(); p < 0 || p > MaxPriority {
		return connect.Errorf(connect.CodeInvalidArgument, "priority %d is out of range: use 0-%d (higher runs first)", p, MaxPriority)
	}
	if req.MaxAttempts != nil && (req.GetMaxAttempts() < 1 || req.GetMaxAttempts() > MaxAttempts) {
		return connect.Errorf(connect.CodeInvalidArgument, "max attempts %d is out of range: use 1-%d", req.GetMaxAttempts(), MaxAttempts)
	}
	if t := req.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 || t.AsDuration() > MaxTimeout {
			return connect.Errorf(connect.CodeInvalidArgument, "timeout %s is out of range: use more than 0s and at most %s", t.AsDuration(), MaxTimeout)
		}
	}
	if k := req.GetIdempotencyKey(); len(k) > maxIdempotencyKey || !utf8.ValidString(k) {
		return connect.Errorf(connect.CodeInvalidArgument, "idempotency key must be UTF-8 text of at most %d bytes", maxIdempotencyKey)
	}
	return nil
}

func validateLabels(labels map[string]string) error {
	if n := len(labels); n > maxLabels {
		return connect.Errorf(connect.CodeInvalidArgument, "%d labels, at most %d are allowed", n, maxLabels)
	}
	for k, v := range labels {
		if k == "" || len(k) > maxLabelBytes || len(v) > maxLabelBytes || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return connect.Errorf(connect.CodeInvalidArgument,
				"label %.40q: keys must be 1-%d bytes and values at most %d bytes of UTF-8", k, maxLabelBytes, maxLabelBytes)
		}
	}
	return nil
}
