// Package worker is the worker runtime: it pulls jobs of one pool from the
// pool's durable job stream, never more than it has free slots, reads each
// input from the store, runs the plugin registered for the job's topic
// under the job's timeout while keeping the job's lease (in-progress acks
// on the stream, the deadline in the store), records a completion (output
// and COMPLETED in one script) or reports a failure to the scheduler, and
// only then acks the message. It stops a job when asked to cancel it, and
// sends a Heartbeat every few seconds. It owns concurrency and draining;
// what a job does is the plugin's business.
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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cortex-os/core/internal/buildinfo"
	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/ids"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/middleware"
)

// Store is what the worker needs from the memory fabric.
type Store interface {
	Start(ctx context.Context, id string, attempt uint32, workerID string, takeover bool, lease time.Duration, now time.Time) (*store.Job, string, error)
	Finish(ctx context.Context, id string, attempt uint32, workerID, output string, usage store.Usage, now time.Time) (*store.Job, error)
	Peek(ctx context.Context, id string, attempt uint32) (string, error)
	PeekAll(ctx context.Context, ids []string, attempts []uint32) []store.Peeked
	Complete(ctx context.Context, id string, attempt uint32, workerID string, started time.Time, output string, usage store.Usage, now time.Time) (*store.Job, error)
	ExtendLease(ctx context.Context, id string, attempt uint32, workerID string, lease time.Duration, now time.Time) error
	HandBack(ctx context.Context, id string, attempt uint32, workerID string) error
}

var _ Store = (*store.Store)(nil)

// Defaults for Options.
const (
	DefaultMaxParallel       = 64
	DefaultHeartbeatInterval = 3 * time.Second
	DefaultShutdownGrace     = 10 * time.Second
	// DefaultLease is the pool consumer's AckWait: a job not acked, nor
	// kept with an in-progress ack, for this long goes to another worker.
	DefaultLease = store.DefaultLease
	// DefaultMaxDeliver is how many times the pool's workers may take one
	// job without acking it before it goes to the dead-letter queue.
	DefaultMaxDeliver = 5
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
	// Version is reported in heartbeats (default: the build's, as
	// cortexctl version says it: the release version stamped in, the
	// module version of go install, else "dev").
	Version string
	// Capabilities are reported in heartbeats: what the worker can do
	// beyond its topics ("python3", "gpu"). When empty, the kinds of its
	// topics are reported (job.echo: "echo").
	Capabilities []string
	// ShutdownGrace is how long Stop lets running jobs finish before it
	// cancels their context.
	ShutdownGrace time.Duration
	// Lease is the pool consumer's AckWait (DefaultLease); the worker
	// renews it every third of it while a job runs.
	Lease time.Duration
	// MaxDeliver is the pool consumer's MaxDeliver (DefaultMaxDeliver).
	MaxDeliver int
	// Metrics records completions (nil: none).
	Metrics *telemetry.Metrics
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
	// running holds the jobs taken and not yet released, by id: a job
	// delivered twice (its message redelivered while it runs) is taken
	// twice.
	mu        sync.Mutex
	running   map[string][]*taken
	stopBeats context.CancelFunc
	// beatsDone is closed when the heartbeat loop has returned.
	beatsDone chan struct{}
	// draining is set once Stop began; heartbeats say so.
	draining atomic.Bool
	// stopPulling ends the pull loop; pulled is closed when it has
	// returned, and jobs counts the jobs being handled.
	stopPulling context.CancelFunc
	pulled      chan struct{}
	jobs        sync.WaitGroup
	// idle hands a job to a runner waiting for one (runJob).
	idle chan func()
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
	if opts.MaxParallel < 0 || opts.MaxParallel > bus.MaxWorkerSlots {
		return fmt.Errorf("worker: max parallel jobs %d: use 1 to %d", opts.MaxParallel, bus.MaxWorkerSlots)
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
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.MaxDeliver <= 0 {
		opts.MaxDeliver = DefaultMaxDeliver
	}
	topics := make([]string, 0, len(opts.Handlers))
	for t := range opts.Handlers {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	if opts.Version == "" {
		opts.Version = buildinfo.Get().Version
	}
	if len(opts.Capabilities) == 0 {
		opts.Capabilities = kinds(topics)
	}
	opts.Metrics.Dropped("worker", conn.Dropped)
	log = log.With("worker_id", opts.ID, "pool", opts.Pool)
	// Every handler: a panic fails the attempt instead of the worker, and
	// each call is measured.
	handlers := make(map[string]plugins.Handler, len(opts.Handlers))
	for topic, h := range opts.Handlers {
		handlers[topic] = middleware.Chain(h, middleware.Recover(log), middleware.Metrics(opts.Metrics))
	}
	opts.Handlers = handlers
	return &Worker{
		conn: conn, store: st, opts: opts, topics: topics, log: log,
		running: map[string][]*taken{}, idle: make(chan func()),
	}, nil
}

// NewID makes a worker id for pool: <pool>-<random>.
func NewID(pool string) string { return pool + "-" + ids.Hex(4) }

// Conn is the worker's bus connection.
func (w *Worker) Conn() *bus.Conn { return w.conn }

// ID is the worker's id.
func (w *Worker) ID() string { return w.opts.ID }

// Start takes jobs of the pool and sends heartbeats until Stop. It returns
// once the pool's consumer and the cancel subscription are in place and
// the first heartbeat is out.
func (w *Worker) Start(ctx context.Context) error {
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	beatCtx, stopBeats := context.WithCancel(ctx)
	w.cancelJobs, w.stopBeats = cancelJobs, stopBeats
	puller, err := w.conn.Puller(ctx, bus.StreamJobs, jetstream.ConsumerConfig{
		Durable:       bus.PoolConsumer(w.opts.Pool),
		FilterSubject: bus.PoolSubjects(w.opts.Pool),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       w.opts.Lease,
		MaxDeliver:    w.opts.MaxDeliver,
		MaxAckPending: -1,
		MaxWaiting:    4096,
	})
	if err == nil {
		_, err = w.conn.Subscribe(beatCtx, bus.SubjectJobCancel, "", 1, w.onCancel)
	}
	if err == nil {
		_, err = w.conn.Subscribe(beatCtx, bus.SubjectWorkerDrain, "", 1, w.onDrain)
	}
	if err == nil {
		// A registry that starts asks for a heartbeat now.
		_, err = w.conn.Subscribe(beatCtx, bus.SubjectBeatRequest, "", 1, func(context.Context, *cortexv1.BusPacket, string) error {
			w.beat()
			return nil
		})
	}
	if err == nil {
		err = w.conn.Flush(ctx)
	}
	if err != nil {
		cancelJobs()
		stopBeats()
		return fmt.Errorf("worker %s: %w", w.opts.ID, err)
	}
	pullCtx, stopPulling := context.WithCancel(context.WithoutCancel(ctx))
	w.stopPulling, w.pulled = stopPulling, make(chan struct{})
	go w.pull(pullCtx, jobCtx, puller)
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

// pullWait bounds one pull, and so how long Stop waits for the loop.
const pullWait = time.Second

// pull takes jobs from the pool's consumer while the worker has free
// slots, and runs each job on its own goroutine in a slot of its own,
// until ctx ends. A message may carry a batch of jobs: the worker pulls as
// many messages as its free slots would hold were they the size of the
// last one, and a job that finds no free slot waits for one (keeping its
// message's lease), so that never more than MaxParallel jobs run at once.
func (w *Worker) pull(ctx, jobCtx context.Context, p *bus.Puller) {
	defer close(w.pulled)
	slots := make(chan struct{}, w.opts.MaxParallel)
	perMessage := 1
	for ctx.Err() == nil {
		// Wait for one free slot, then reserve as many as are free.
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		free := 1
		for ; len(slots) < cap(slots); free++ {
			slots <- struct{}{}
		}
		msgs, err := p.Pull(max(free/perMessage, 1), pullWait)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("pull jobs", "err", err)
			time.Sleep(250 * time.Millisecond)
		}
		if ctx.Err() != nil {
			// Stop began while the pull waited: what came is not this
			// worker's to run any more; hand it straight back.
			for _, m := range msgs {
				m.Delivery.Nak(0)
			}
			for range free {
				<-slots
			}
			return
		}
		for _, m := range msgs {
			jobs, traces := bus.JobsOf(m.Packet)
			if len(jobs) == 0 {
				p.Reject(m, bus.WrongPayload(m.Packet, "a job request or a job batch"))
				continue
			}
			perMessage = len(jobs)
			msg := &message{d: m.Delivery, left: len(jobs)}
			// The jobs that have a slot now start together, the others
			// one by one as slots free up.
			now := min(free, len(jobs))
			if now > 0 {
				free -= now
				w.jobs.Add(now)
				go w.startTogether(jobCtx, msg, jobs[:now], traces[:now], slots)
			}
			for i := now; i < len(jobs); i++ {
				if !w.awaitSlot(ctx, slots, m.Delivery) {
					// Stop began: the job goes back with its message.
					msg.settle(settlement{kind: settleNak})
					continue
				}
				w.jobs.Add(1)
				w.runJob(func() {
					defer func() { <-slots; w.jobs.Done() }()
					msg.settle(w.handle(w.take(jobCtx, jobs[i].GetJobId()), traces[i], jobs[i], m.Delivery, nil))
				})
			}
		}
		for range free {
			<-slots
		}
	}
}

// startTogether runs jobs of msg that each hold a slot (the pull counted
// them in w.jobs already), off the pull loop. For a first delivery it
// reads their inputs in one round trip first (their handlers would each
// ask on their own); a redelivery starts each with Start instead.
func (w *Worker) startTogether(ctx context.Context, msg *message, jobs []*cortexv1.JobRequest, traces []string, slots chan struct{}) {
	// Taken before the read, so that a cancel arriving meanwhile reaches
	// them: the read would not see it.
	taken := make([]*taken, len(jobs))
	ids, attempts := make([]string, len(jobs)), make([]uint32, len(jobs))
	for i, req := range jobs {
		taken[i] = w.take(ctx, req.GetJobId())
		ids[i], attempts[i] = req.GetJobId(), req.GetAttempt()
	}
	var peeked []store.Peeked
	if !msg.d.Redelivered() {
		peeked = w.store.PeekAll(ctx, ids, attempts)
	}
	for i, req := range jobs {
		var pk *store.Peeked
		if i < len(peeked) {
			pk = &peeked[i]
		}
		w.runJob(func() {
			defer func() { <-slots; w.jobs.Done() }()
			msg.settle(w.handle(taken[i], traces[i], req, msg.d, pk))
		})
	}
}

// runJob runs job on a goroutine of its own: a runner that ran an earlier
// job and waits for the next, else a new one. A runner keeps the stack its
// jobs grew, where a fresh goroutine for every job grew (copied) its
// stack on every job: 5% of up's CPU at full load. A runner waits for the
// next job until the pull loop has ended. A new one starts only when none
// waits, so there are at most twice MaxParallel: those running a job, and
// those that gave back its slot and are on their way to wait.
func (w *Worker) runJob(job func()) {
	select {
	case w.idle <- job:
	default:
		go w.runner(job)
	}
}

func (w *Worker) runner(job func()) {
	for {
		job()
		select {
		case job = <-w.idle:
		case <-w.pulled:
			return
		}
	}
}

// awaitSlot takes a free slot for a job of d's message, keeping the
// message's lease while it waits; false when ctx ended first.
func (w *Worker) awaitSlot(ctx context.Context, slots chan struct{}, d bus.Delivery) bool {
	if ctx.Err() != nil {
		return false
	}
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	tick := time.NewTicker(w.opts.Lease / 3)
	defer tick.Stop()
	for {
		select {
		case slots <- struct{}{}:
			return true
		case <-ctx.Done():
			return false
		case <-tick.C:
			d.InProgress()
		}
	}
}

// settlement is what handling one job asks of its message.
type settlement struct {
	kind settleKind
	// delay is how long a nak'd message waits before it comes back.
	delay time.Duration
}

// settleKind orders what a job may ask of its message, least pressing
// first: a message is settled by the most pressing of its jobs' asks.
type settleKind int

const (
	// settleAck: the job is done with (recorded, reported, or it moved on
	// without this worker).
	settleAck settleKind = iota
	// settleNak: the job should run again, after the delay.
	settleNak
	// settleLeave: neither ack nor nak; the message comes back when its
	// lease runs out (the store is out of reach).
	settleLeave
)

// message is one pulled message of the pool's stream, settled once each of
// its jobs is. When it comes back (a nak, a lease run out), the jobs of it
// that ended are skipped: the store refuses to start them again.
type message struct {
	d bus.Delivery

	mu    sync.Mutex
	left  int
	worst settlement
}

// settle records what one job of m asks, and settles m after its last job.
func (m *message) settle(s settlement) {
	m.mu.Lock()
	if s.kind > m.worst.kind || s.kind == m.worst.kind && s.delay > m.worst.delay {
		m.worst = s
	}
	m.left--
	last := m.left == 0
	m.mu.Unlock()
	if !last {
		return
	}
	switch m.worst.kind {
	case settleAck:
		m.d.Ack()
	case settleNak:
		m.d.Nak(m.worst.delay)
	}
}

// onDrain drains the worker when asked by name.
func (w *Worker) onDrain(_ context.Context, p *cortexv1.BusPacket, _ string) error {
	d := p.GetWorkerDrain()
	if d == nil {
		return bus.WrongPayload(p, "a worker drain")
	}
	if d.GetWorkerId() == w.opts.ID {
		w.log.Info("draining: asked to", "by", d.GetBy())
		go w.Drain()
	}
	return nil
}

// Drain takes no new jobs: running ones finish, and heartbeats say the
// worker drains. The worker keeps running (and beating) until Stop.
// It returns once the pull loop has stopped; it may be called again.
func (w *Worker) Drain() {
	if !w.draining.Swap(true) {
		w.beat()
	}
	if w.stopPulling != nil {
		w.stopPulling()
		<-w.pulled
	}
}

// Running counts the jobs running now.
func (w *Worker) Running() int { return int(w.active.Load()) }

// Stopping says, as Stop begins, what it waits for: how many jobs are
// running and how long they get to finish.
func (w *Worker) Stopping() string {
	n := w.active.Load()
	if n == 0 {
		return "no job is running"
	}
	if n == 1 {
		return fmt.Sprintf("1 job is running: up to %s for it to finish, then it goes back to the stream for another worker", w.opts.ShutdownGrace)
	}
	return fmt.Sprintf("%d jobs are running: up to %s for them to finish, then they go back to the stream for another worker",
		n, w.opts.ShutdownGrace)
}

// Stop takes no new jobs, lets running ones finish for up to the shutdown
// grace period (then cancels them: they go back to the stream for another
// worker), reports their results, and closes the connection. Its last
// heartbeat, sent first, says the worker is draining.
func (w *Worker) Stop() {
	w.stopBeats()
	if w.beatsDone != nil {
		<-w.beatsDone
	}
	w.Drain()
	grace := time.AfterFunc(w.opts.ShutdownGrace, func() {
		w.mu.Lock()
		for _, ts := range w.running {
			for _, t := range ts {
				t.cancel(errShutdown)
			}
		}
		w.mu.Unlock()
	})
	w.jobs.Wait()
	grace.Stop()
	w.cancelJobs()
	w.conn.Close()
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
	// errTimedOut ends a job at its timeout; it matches
	// context.DeadlineExceeded, so that handlers and their metrics see a
	// timeout.
	errTimedOut error = jobTimedOut{}
	// errShutdown stops a job still running when the shutdown grace ran
	// out: it goes back to the stream for another worker.
	errShutdown = errors.New("the worker is shutting down")
	// errMovedOn stops a job the store no longer gives to this worker.
	errMovedOn = errors.New("the job is no longer this worker's (its lease was given up, or it was cancelled)")
	// errNotStarted is a job the store could not be asked to start.
	errNotStarted = errors.New("the job could not be started")
)

type jobTimedOut struct{}

func (jobTimedOut) Error() string        { return "the job ran past its timeout" }
func (jobTimedOut) Is(target error) bool { return target == context.DeadlineExceeded }

// onCancel stops a job this worker is running; the job is already recorded
// CANCELLED, so nothing is reported.
func (w *Worker) onCancel(_ context.Context, p *cortexv1.BusPacket, _ string) error {
	c := p.GetJobCancel()
	if c == nil {
		return bus.WrongPayload(p, "a job cancel")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if ts := w.running[c.GetJobId()]; len(ts) > 0 {
		w.log.Info("cancelling job", "trace_id", p.GetTraceId(), "job_id", c.GetJobId())
		for _, t := range ts {
			t.cancel(errCancelled)
		}
	}
	return nil
}

// taken is a job the worker took from a message: its context, which a
// cancel for the job ends from the moment it was taken.
type taken struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	id     string
}

// take starts the context of job id under ctx and has cancels for the job
// end it; release undoes that.
func (w *Worker) take(ctx context.Context, id string) *taken {
	ctx, cancel := context.WithCancelCause(ctx)
	t := &taken{ctx: ctx, cancel: cancel, id: id}
	w.mu.Lock()
	w.running[id] = append(w.running[id], t)
	w.mu.Unlock()
	return t
}

// release ends t's context and its tracking (and no other delivery's of
// the same job).
func (w *Worker) release(t *taken) {
	t.cancel(nil)
	w.mu.Lock()
	defer w.mu.Unlock()
	ts := slices.DeleteFunc(w.running[t.id], func(x *taken) bool { return x == t })
	if len(ts) == 0 {
		delete(w.running, t.id)
	} else {
		w.running[t.id] = ts
	}
}

// Redelivery delays: a job the worker could not start for want of the
// store goes back to the stream for this long times its deliveries.
const retryStartAfter = 2 * time.Second

// handle runs one job of message d and says how to settle it: ack once its
// outcome is recorded or reported (or the job moved on without it), hand
// it back (nak) when the store could not be reached to start it or when
// the worker is shutting down, leave it for its lease to run out when the
// outcome could not be recorded. peeked, when not nil, is the job's input
// as already read (peekAll). handle releases t.
func (w *Worker) handle(t *taken, traceID string, req *cortexv1.JobRequest, d bus.Delivery, peeked *store.Peeked) settlement {
	w.active.Add(1)
	defer w.active.Add(-1)
	defer w.release(t)
	started := time.Now()
	ctx, cancel := t.ctx, t.cancel
	timeout := req.GetTimeout().AsDuration()
	runCtx := ctx
	if timeout > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeoutCause(ctx, timeout, errTimedOut)
		defer stop()
	}
	stopLease := func() {}
	keep := func() { stopLease = w.keepLease(ctx, cancel, req, d) }
	out, quick, err := w.run(runCtx, traceID, req, d.Redelivered(), peeked, keep, cancel, started)
	stopLease()
	cause := context.Cause(runCtx)
	switch {
	case errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrNoPrompt):
		// The job moved on without us (cancelled, finished, retried
		// elsewhere, expired, or failed for want of its input, which
		// Start recorded): nothing to report.
		w.log.Info("skipped job", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
		return settlement{kind: settleAck}
	case errors.Is(err, errNotStarted), errors.Is(cause, errNotStarted):
		w.log.Warn("job not started; handed back to the stream", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
		return settlement{kind: settleNak, delay: retryStartAfter}
	case errors.Is(cause, errShutdown):
		if !quick {
			// Recorded RUNNING here: the worker that takes it over says
			// it was handed back.
			if err := w.store.HandBack(context.WithoutCancel(ctx), req.GetJobId(), req.GetAttempt(), w.opts.ID); err != nil {
				w.log.Warn("note the hand-back", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
			}
		}
		w.log.Info("job handed back at shutdown", "trace_id", traceID, "job_id", req.GetJobId())
		return settlement{kind: settleNak}
	case errors.Is(cause, errCancelled), errors.Is(cause, errMovedOn):
		w.log.Info("job stopped", "trace_id", traceID, "job_id", req.GetJobId(), "cause", cause)
		return settlement{kind: settleAck}
	}
	if err == nil {
		// Recorded whatever happens to ctx now: the work is done.
		if w.finish(context.WithoutCancel(ctx), traceID, req, out, quick, started) {
			return settlement{kind: settleAck}
		}
		// The store stayed out of reach: the message comes back after the
		// lease, to this or another worker, which takes the job over and
		// runs it again; only one outcome is ever recorded.
		w.log.Warn("result not recorded; the job will run again", "trace_id", traceID, "job_id", req.GetJobId())
		return settlement{kind: settleLeave}
	}
	res := &cortexv1.JobResult{
		JobId:      req.GetJobId(),
		Attempt:    req.GetAttempt(),
		WorkerId:   w.opts.ID,
		StartedAt:  timestamppb.New(started),
		FinishedAt: timestamppb.Now(),
		State:      cortexv1.JobState_JOB_STATE_FAILED,
		Error:      truncate(err.Error(), maxErrorBytes),
		Permanent:  plugins.IsPermanent(err),
	}
	switch {
	case errors.Is(cause, errTimedOut):
		res.State = cortexv1.JobState_JOB_STATE_TIMEOUT
		res.Error = fmt.Sprintf("the attempt ran past its timeout of %s", timeout)
	case errors.Is(err, context.DeadlineExceeded):
		// A limit of the handler's own (middleware.Timeout, the python
		// runner's wall clock): TIMEOUT, with the handler's reason.
		res.State = cortexv1.JobState_JOB_STATE_TIMEOUT
	}
	if quick {
		// A failed attempt is recorded RUNNING first: its end names the
		// worker on the record, as a retry's history does.
		_, _ = w.start(context.WithoutCancel(ctx), traceID, req, false, started)
	}
	w.failed.Add(1)
	w.log.Debug("job attempt ended", "trace_id", traceID, "job_id", req.GetJobId(), "attempt", req.GetAttempt(), "state", res.GetState().String())
	err = w.conn.Publish(bus.SubjectJobResult, &cortexv1.BusPacket{
		TraceId: traceID,
		Payload: &cortexv1.BusPacket_JobResult{JobResult: res},
	})
	if err != nil {
		// The lease runs out and the reconciler retries the attempt.
		w.log.Error("report job result", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
	}
	return settlement{kind: settleAck}
}

// finishTries bounds the attempts to record a completion while the store
// is out of reach.
const finishTries = 5

// finish records a completed job's output, trying again for a while when
// the store is out of reach, and reports whether the job is settled
// (recorded, or moved on so that there is nothing to record). A quick job,
// never recorded RUNNING, is recorded COMPLETED straight from DISPATCHED,
// with the time it started.
func (w *Worker) finish(ctx context.Context, traceID string, req *cortexv1.JobRequest, out *plugins.Result, quick bool, started time.Time) bool {
	var usage store.Usage
	if u := out.Usage; u != nil {
		usage = store.Usage{Prompt: u.PromptTokens, Completion: u.CompletionTokens, Total: u.TotalTokens}
	}
	for try := range finishTries {
		var j *store.Job
		var err error
		if quick {
			j, err = w.store.Complete(ctx, req.GetJobId(), req.GetAttempt(), w.opts.ID, started, out.Output, usage, time.Now())
		} else {
			j, err = w.store.Finish(ctx, req.GetJobId(), req.GetAttempt(), w.opts.ID, out.Output, usage, time.Now())
		}
		switch {
		case err == nil:
			w.log.Debug("job completed", "trace_id", traceID, "job_id", j.ID, "attempt", j.Attempt)
			w.completed.Add(1)
			w.opts.Metrics.Completed(j.Topic, j.Pool, j.CreatedAt, j.UpdatedAt)
			if err := w.conn.PublishJobEvent(traceID, j.Proto()); err != nil {
				w.log.Warn("publish job event", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
			}
			return true
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrNotFound):
			w.log.Info("result not recorded: the job moved on", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
			return true
		}
		w.log.Warn("record job result", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
		time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
	}
	return false
}

// keepLease renews a running job's lease every third of it, on the stream
// (in-progress ack) and in the store, until the returned function is
// called. When the store says the job is no longer this worker's (the
// reconciler gave up on it, or it was cancelled), the job is stopped.
func (w *Worker) keepLease(ctx context.Context, cancel context.CancelCauseFunc, req *cortexv1.JobRequest, d bus.Delivery) func() {
	ctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(w.opts.Lease / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				d.InProgress()
				err := w.store.ExtendLease(ctx, req.GetJobId(), req.GetAttempt(), w.opts.ID, w.opts.Lease, time.Now())
				if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
					cancel(errMovedOn)
					return
				}
			}
		}
	}()
	return func() { stop(); <-done }
}

// quickJob is how long a job runs before its worker records it RUNNING: a
// job that ends sooner goes from DISPATCHED to COMPLETED in one script, one
// event, and is never shown RUNNING. A redelivered job is recorded RUNNING
// at once (it takes over from a worker that stopped answering).
const quickJob = 50 * time.Millisecond

// run reads the job's input and runs its handler. A first delivery is run
// at once on a read of its input that records nothing; it is recorded
// RUNNING once it has run quickJob (promote), and quick reports that it
// ended before that. Any other delivery, or a job whose input cannot be
// read so, is marked RUNNING first (Start). peeked, when not nil, is that
// read, made already. A handler that returns no result completed with no
// output.
func (w *Worker) run(ctx context.Context, traceID string, req *cortexv1.JobRequest, takeover bool, peeked *store.Peeked, keep func(), cancel context.CancelCauseFunc, now time.Time) (out *plugins.Result, quick bool, err error) {
	h, ok := w.opts.Handlers[req.GetTopic()]
	if !ok {
		return nil, false, fmt.Errorf("no handler for topic %s in pool %s (this worker serves %v)", req.GetTopic(), w.opts.Pool, w.topics)
	}
	var input string
	if !takeover {
		if peeked != nil {
			input, err = peeked.Input, peeked.Err
		} else {
			input, err = w.store.Peek(ctx, req.GetJobId(), req.GetAttempt())
		}
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return nil, false, err
		}
		// Otherwise (the input is gone, the store did not answer) Start
		// records or says what is wrong.
		quick = err == nil
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, errTimedOut) {
		// Cancelled (or the worker stopping) since it was taken: the read
		// may predate the cancel. (A timeout that ran out meanwhile takes
		// its course, as it did before this check.)
		return nil, false, cause
	}
	stream := &outputStream{conn: w.conn, traceID: traceID, job: req}
	if quick {
		p := w.promote(ctx, traceID, req, keep, cancel, now)
		defer func() { quick = p.stop() }()
		// Whoever follows the output sees the job RUNNING first.
		stream.started = p.now
	} else {
		input, err = w.start(ctx, traceID, req, takeover, now)
		if err != nil {
			return nil, false, err
		}
		keep()
	}
	job := &plugins.Job{
		ID:      req.GetJobId(),
		Topic:   req.GetTopic(),
		Tenant:  req.GetTenantId(),
		Attempt: req.GetAttempt(),
		Prompt:  input,
		Labels:  req.GetLabels(),
		Stream:  stream,
	}
	if req.GetBinaryPayload() {
		job.Prompt, job.Payload = "", []byte(input)
	}
	out, err = h.Handle(ctx, job)
	if err != nil {
		return nil, quick, fmt.Errorf("handler for %s: %w", req.GetTopic(), err)
	}
	if out == nil {
		out = &plugins.Result{}
	}
	return out, quick, nil
}

// start marks the job RUNNING on this worker and returns its input.
func (w *Worker) start(ctx context.Context, traceID string, req *cortexv1.JobRequest, takeover bool, now time.Time) (string, error) {
	j, input, err := w.store.Start(ctx, req.GetJobId(), req.GetAttempt(), w.opts.ID, takeover, w.opts.Lease, now)
	if j != nil {
		if err := w.conn.PublishJobEvent(traceID, j.Proto()); err != nil {
			w.log.Warn("publish job event", "trace_id", traceID, "job_id", req.GetJobId(), "err", err)
		}
	}
	if err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoPrompt) {
		err = fmt.Errorf("%w: %w", errNotStarted, err)
	}
	return input, err
}

// promotion records a quick job RUNNING once it has run quickJob, or as
// soon as it writes output (now).
type promotion struct {
	timer  *time.Timer
	record func()
	done   chan struct{}
}

// promote has the job, running since now, recorded RUNNING after quickJob
// and its lease kept from then on; a job the store no longer gives to this
// worker is stopped, and one the store could not be asked about is stopped
// and handed back.
func (w *Worker) promote(ctx context.Context, traceID string, req *cortexv1.JobRequest, keep func(), cancel context.CancelCauseFunc, now time.Time) *promotion {
	p := &promotion{done: make(chan struct{})}
	p.record = func() {
		defer close(p.done)
		_, err := w.start(ctx, traceID, req, false, now)
		switch {
		case err == nil:
			keep()
		case errors.Is(err, errNotStarted):
			cancel(errNotStarted)
		default:
			cancel(errMovedOn)
		}
	}
	p.timer = time.AfterFunc(quickJob, p.record)
	return p
}

// now records the job RUNNING at once, unless that is done or under way;
// it returns when it is done.
func (p *promotion) now() {
	if p.timer.Stop() {
		p.record()
		return
	}
	<-p.done
}

// stop reports whether the job ended before it was recorded RUNNING; if
// not, it waits until the recording is over.
func (p *promotion) stop() bool {
	if p.timer.Stop() {
		return true
	}
	<-p.done
	return false
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
