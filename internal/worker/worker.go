// Package worker is the worker runtime: it takes jobs of one pool from the
// bus (those the scheduler placed on its own subject, and any sent to the
// pool's queue group), reads each input from the store, runs the
// plugin registered for the job's topic under the job's timeout, records a
// completion (output and COMPLETED in one script) or reports a failure to
// the scheduler, stops a job when asked to cancel it, and sends a
// Heartbeat every few seconds. It owns concurrency and draining; what a job
// does is the plugin's business.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/ids"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
)

// Store is what the worker needs from the memory fabric.
type Store interface {
	Start(ctx context.Context, id string, attempt uint32, workerID string, now time.Time) (*store.Job, string, error)
	Finish(ctx context.Context, id string, attempt uint32, output string, now time.Time) (*store.Job, error)
}

var _ Store = (*store.Store)(nil)

// Defaults for Options.
const (
	DefaultMaxParallel       = 64
	DefaultHeartbeatInterval = 3 * time.Second
	DefaultShutdownGrace     = 10 * time.Second
)

// Options configures a worker.
type Options struct {
	// ID names the worker on the bus; generated from the pool when empty.
	ID string
	// Pool is the pool the worker serves.
	Pool string
	// MaxParallel bounds the jobs run at once.
	MaxParallel int
	// Handlers maps job topics to plugins.
	Handlers map[string]plugins.Handler
	// HeartbeatInterval is the time between heartbeats.
	HeartbeatInterval time.Duration
	// Version is reported in heartbeats (default: the module version of
	// the build, else "dev").
	Version string
	// Capabilities are reported in heartbeats: what the worker can do
	// beyond its topics ("python3", "gpu"). When empty, the kinds of its
	// topics are reported (job.echo: "echo").
	Capabilities []string
	// ShutdownGrace is how long Stop lets running jobs finish before it
	// cancels their context.
	ShutdownGrace time.Duration
}

// Worker runs jobs of one pool.
type Worker struct {
	conn      *bus.Conn
	store     Store
	opts      Options
	topics    []string
	log       *slog.Logger
	active    atomic.Int32
	completed atomic.Uint64
	failed    atomic.Uint64
	// cancelJobs ends the jobs' context; Stop calls it once the grace
	// period is over.
	cancelJobs context.CancelFunc
	// running holds a cancel function per job being run.
	mu        sync.Mutex
	running   map[string]context.CancelCauseFunc
	stopBeats context.CancelFunc
	// beatsDone is closed when the heartbeat loop has returned.
	beatsDone chan struct{}
	// draining is set once Stop began; heartbeats say so.
	draining atomic.Bool
}

// CheckOptions reports what is wrong with opts, before anything connects.
func CheckOptions(opts Options) error {
	if !bus.ValidToken(opts.Pool) {
		return fmt.Errorf("worker: pool %q must be 1-64 characters of a-z, 0-9, - and _", opts.Pool)
	}
	if len(opts.Handlers) == 0 {
		return errors.New("worker: no handlers registered")
	}
	if opts.ID != "" && !bus.ValidToken(opts.ID) {
		return fmt.Errorf("worker: id %q must be 1-64 characters of a-z, 0-9, - and _", opts.ID)
	}
	if opts.MaxParallel < 0 {
		return fmt.Errorf("worker: max parallel jobs %d must be positive", opts.MaxParallel)
	}
	return nil
}

// New checks opts and returns a worker.
func New(conn *bus.Conn, st Store, opts Options, log *slog.Logger) (*Worker, error) {
	if err := CheckOptions(opts); err != nil {
		return nil, err
	}
	if opts.ID == "" {
		opts.ID = NewID(opts.Pool)
	}
	if opts.MaxParallel <= 0 {
		opts.MaxParallel = DefaultMaxParallel
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = DefaultShutdownGrace
	}
	topics := make([]string, 0, len(opts.Handlers))
	for t := range opts.Handlers {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	if opts.Version == "" {
		opts.Version = buildVersion()
	}
	if len(opts.Capabilities) == 0 {
		opts.Capabilities = kinds(topics)
	}
	return &Worker{
		conn: conn, store: st, opts: opts, topics: topics,
		log:     log.With("worker_id", opts.ID, "pool", opts.Pool),
		running: map[string]context.CancelCauseFunc{},
	}, nil
}

// NewID makes a worker id for pool: <pool>-<random>.
func NewID(pool string) string { return pool + "-" + ids.Hex(4) }

// Conn is the worker's bus connection.
func (w *Worker) Conn() *bus.Conn { return w.conn }

// ID is the worker's id.
func (w *Worker) ID() string { return w.opts.ID }

// Start takes jobs of the pool and sends heartbeats until Stop. It returns
// once the subscription is in place and the first heartbeat is out.
func (w *Worker) Start(ctx context.Context) error {
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	beatCtx, stopBeats := context.WithCancel(ctx)
	w.cancelJobs, w.stopBeats = cancelJobs, stopBeats
	// Jobs come on the worker's own subject, where the scheduler places
	// them, and on the pool's subjects (queue group), where anything else
	// may publish one for whichever worker of the pool takes it. One set
	// of slots bounds both to MaxParallel running jobs.
	slots := make(chan struct{}, w.opts.MaxParallel)
	onJob := func(ctx context.Context, p *cortexv1.BusPacket, _ string) error {
		req := p.GetJobRequest()
		if req == nil {
			return bus.WrongPayload(p, "a job request")
		}
		slots <- struct{}{}
		defer func() { <-slots }()
		w.handle(ctx, p.GetTraceId(), req)
		return nil
	}
	_, err := w.conn.Subscribe(jobCtx, bus.WorkerSubject(w.opts.Pool, w.opts.ID), "", w.opts.MaxParallel, onJob)
	if err == nil {
		_, err = w.conn.Subscribe(jobCtx, bus.PoolSubjects(w.opts.Pool), bus.WorkerQueue(w.opts.Pool), w.opts.MaxParallel, onJob)
	}
	if err == nil {
		_, err = w.conn.Subscribe(beatCtx, bus.SubjectJobCancel, "", 1, w.onCancel)
	}
	if err == nil {
		err = w.conn.Flush(ctx)
	}
	if err != nil {
		cancelJobs()
		stopBeats()
		return fmt.Errorf("worker %s: %w", w.opts.ID, err)
	}
	w.beat()
	w.beatsDone = make(chan struct{})
	go func() {
		defer close(w.beatsDone)
		tick := time.NewTicker(w.opts.HeartbeatInterval)
		defer tick.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-tick.C:
				w.beat()
			}
		}
	}()
	return nil
}

// Stop takes no new jobs, lets running ones finish for up to the shutdown
// grace period (then cancels their context), reports their results, and
// closes the connection. Its last heartbeat, sent first, says the worker
// is draining.
func (w *Worker) Stop() {
	w.stopBeats()
	if w.beatsDone != nil {
		<-w.beatsDone
	}
	if !w.draining.Swap(true) {
		w.beat()
	}
	grace := time.AfterFunc(w.opts.ShutdownGrace, w.cancelJobs)
	w.conn.Close()
	grace.Stop()
	w.cancelJobs()
}

func (w *Worker) beat() {
	hb := &cortexv1.Heartbeat{
		WorkerId:          w.opts.ID,
		Pool:              w.opts.Pool,
		ActiveJobs:        uint32(w.active.Load()),
		MaxParallelJobs:   uint32(w.opts.MaxParallel),
		Topics:            w.topics,
		CompletedJobs:     w.completed.Load(),
		FailedJobs:        w.failed.Load(),
		Version:           w.opts.Version,
		CpuLoad:           cpuLoad(),
		Capabilities:      w.opts.Capabilities,
		HeartbeatInterval: durationpb.New(w.opts.HeartbeatInterval),
		Draining:          w.draining.Load(),
	}
	err := w.conn.Publish(bus.HeartbeatSubject(w.opts.ID), &cortexv1.BusPacket{
		Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: hb},
	})
	if err != nil {
		w.log.Warn("send heartbeat", "err", err)
	}
}

// Causes of a job's context ending early.
var (
	errCancelled = errors.New("the job was cancelled")
	errTimedOut  = errors.New("the job ran past its timeout")
)

// onCancel stops a job this worker is running; the job is already recorded
// CANCELLED, so nothing is reported.
func (w *Worker) onCancel(_ context.Context, p *cortexv1.BusPacket, _ string) error {
	c := p.GetJobCancel()
	if c == nil {
		return bus.WrongPayload(p, "a job cancel")
	}
	w.mu.Lock()
	cancel := w.running[c.GetJobId()]
	w.mu.Unlock()
	if cancel != nil {
		w.log.Info("cancelling job", "job_id", c.GetJobId())
		cancel(errCancelled)
	}
	return nil
}

func (w *Worker) track(id string, cancel context.CancelCauseFunc) func() {
	w.mu.Lock()
	w.running[id] = cancel
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.running, id)
		w.mu.Unlock()
	}
}

func (w *Worker) handle(ctx context.Context, traceID string, req *cortexv1.JobRequest) {
	w.active.Add(1)
	defer w.active.Add(-1)
	started := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer w.track(req.GetJobId(), cancel)()
	timeout := req.GetTimeout().AsDuration()
	if timeout > 0 {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeoutCause(ctx, timeout, errTimedOut)
		defer stop()
	}
	res := &cortexv1.JobResult{
		JobId:     req.GetJobId(),
		Attempt:   req.GetAttempt(),
		WorkerId:  w.opts.ID,
		StartedAt: timestamppb.New(started),
	}
	output, err := w.run(ctx, traceID, req, started)
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNoPrompt) {
		// The job moved on without us (cancelled, finished, expired, or
		// failed for want of its input, which Start recorded): nothing to
		// report.
		w.log.Info("skipped job", "job_id", req.GetJobId(), "err", err)
		return
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, errCancelled) {
		w.log.Info("job cancelled", "job_id", req.GetJobId())
		return
	}
	if err == nil {
		// Recorded whatever happens to ctx now: the work is done.
		j, ferr := w.store.Finish(context.WithoutCancel(ctx), req.GetJobId(), req.GetAttempt(), output, time.Now())
		switch {
		case ferr == nil:
			w.completed.Add(1)
			if err := w.conn.PublishJobEvent(traceID, j.Proto()); err != nil {
				w.log.Warn("publish job event", "job_id", req.GetJobId(), "err", err)
			}
			return
		case errors.Is(ferr, store.ErrConflict), errors.Is(ferr, store.ErrNotFound):
			w.log.Info("result not recorded: the job moved on", "job_id", req.GetJobId(), "err", ferr)
			return
		}
		err = ferr
	}
	switch {
	case err != nil && errors.Is(cause, errTimedOut):
		res.State = cortexv1.JobState_JOB_STATE_TIMEOUT
		res.Error = fmt.Sprintf("the attempt ran past its timeout of %s", timeout)
		w.failed.Add(1)
	default:
		res.State = cortexv1.JobState_JOB_STATE_FAILED
		res.Error = truncate(err.Error(), maxErrorBytes)
		w.failed.Add(1)
	}
	res.FinishedAt = timestamppb.Now()
	err = w.conn.Publish(bus.SubjectJobResult, &cortexv1.BusPacket{
		TraceId: traceID,
		Payload: &cortexv1.BusPacket_JobResult{JobResult: res},
	})
	if err != nil {
		w.log.Error("report job result", "job_id", req.GetJobId(), "err", err)
	}
}

// run marks the job RUNNING, reads its input and runs its handler.
func (w *Worker) run(ctx context.Context, traceID string, req *cortexv1.JobRequest, now time.Time) (string, error) {
	h, ok := w.opts.Handlers[req.GetTopic()]
	if !ok {
		return "", fmt.Errorf("no handler for topic %s in pool %s (this worker serves %v)", req.GetTopic(), w.opts.Pool, w.topics)
	}
	j, input, err := w.store.Start(ctx, req.GetJobId(), req.GetAttempt(), w.opts.ID, now)
	if j != nil {
		if err := w.conn.PublishJobEvent(traceID, j.Proto()); err != nil {
			w.log.Warn("publish job event", "job_id", req.GetJobId(), "err", err)
		}
	}
	if err != nil {
		return "", err
	}
	job := &plugins.Job{
		ID:      req.GetJobId(),
		Topic:   req.GetTopic(),
		Tenant:  req.GetTenantId(),
		Attempt: req.GetAttempt(),
		Prompt:  input,
		Labels:  req.GetLabels(),
	}
	if req.GetBinaryPayload() {
		job.Prompt, job.Payload = "", []byte(input)
	}
	out, err := callHandler(ctx, h, job)
	if err != nil {
		return "", fmt.Errorf("handler for %s: %w", req.GetTopic(), err)
	}
	if out == nil {
		return "", nil
	}
	return out.Output, nil
}

// callHandler runs a plugin, turning a panic into an error so one bad job
// cannot take the worker down.
func callHandler(ctx context.Context, h plugins.Handler, job *plugins.Job) (res *plugins.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return h.Handle(ctx, job)
}

// maxErrorBytes bounds the error a result carries: it becomes the job's
// reason, and the result must fit in one bus packet.
const maxErrorBytes = 4 << 10

// truncate cuts s to at most n bytes on a UTF-8 boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len(" …(truncated)")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + " …(truncated)"
}
