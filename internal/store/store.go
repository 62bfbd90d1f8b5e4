// Package store is the Redis memory fabric: inputs, outputs, job records
// with their state machine and attempt history, a per-tenant index of jobs,
// idempotency keys, the deadlines the reconciler watches (lease) and the
// dead-letter queue; keys.go gives the layout, which works unchanged on
// Redis Cluster. Every state change is one Lua compare-and-set guarded by
// the state machine and the attempt number, so a transition that is not
// allowed (a late result after a cancel, say) changes nothing. It must not
// know about NATS or any service.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Errors returned by the store.
var (
	ErrNotFound = errors.New("job not found")
	// ErrConflict means the state machine or the attempt guard refused a
	// transition.
	ErrConflict = errors.New("job state conflict")
	// ErrNoPrompt means a job's input was gone when a worker came to run
	// it; the job has been marked FAILED.
	ErrNoPrompt = errors.New("job prompt is gone")
	// ErrIdempotencyMismatch means an idempotency key was reused for a
	// different request.
	ErrIdempotencyMismatch = errors.New("idempotency key already used for a different request")
)

// ConflictError is the ErrConflict a refused transition returns: it says
// where the job stood.
type ConflictError struct {
	ID      string
	To      State
	State   State
	Attempt uint32
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("move job %s from %s (attempt %d) to %s: %v", e.ID, e.State, e.Attempt, e.To, ErrConflict)
}

// Is makes errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Key prefixes. Pointers on the bus are redis://<key>.
const (
	contextPrefix = "ctx:"
	resultPrefix  = "res:"
	jobPrefix     = "job:"
	indexPrefix   = "idx:"
	idemPrefix    = "idem:"
	leasePrefix   = "lease:"
	dlqPrefix     = "dlq:"
)

// ContextPtr is the pointer to a job's input carried on the bus.
func ContextPtr(id string) string { return "redis://" + ctxKey(id) }

// ResultPtr is the pointer to a job's output carried on the bus.
func ResultPtr(id string) string { return "redis://" + resKey(id) }

// Options tunes a Store.
type Options struct {
	// Retention is how long a job's keys live after it is created.
	Retention time.Duration
	// Lease is how long a dispatched or running attempt may go without
	// news (a start, or a worker extending it) before the reconciler takes
	// it for lost; the deadline recorded is twice this, so that the bus's
	// own redelivery, after one lease, comes first.
	Lease time.Duration
	// Redrive is how long a PENDING job may wait before the reconciler
	// hands it to a scheduler again.
	Redrive time.Duration
}

// Defaults for Options.
const (
	DefaultRetention = 24 * time.Hour
	DefaultLease     = 30 * time.Second
	DefaultRedrive   = 10 * time.Second
)

// Store reads and writes jobs in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention time.Duration
	lease     time.Duration
	redrive   time.Duration
	// batch pipelines concurrent single-job commands (batch.go).
	batch *batcher
	// trips counts round trips to Redis (a command or a pipeline each).
	trips *atomic.Uint64
	// lastTrim is when (µs) a create last trimmed an index of each shard.
	lastTrim *[Shards]atomic.Int64
}

// trimInterval spaces the trims of tenants' indexes: a trim costs a sort of
// the whole set in miniredis, and List skips expired entries anyway.
const trimInterval = time.Minute

// New wraps a Redis client.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	if opts.Redrive <= 0 {
		opts.Redrive = DefaultRedrive
	}
	s := &Store{rdb: rdb, retention: opts.Retention, lease: opts.Lease, redrive: opts.Redrive, trips: new(atomic.Uint64), lastTrim: new([Shards]atomic.Int64),
		batch: newBatcher(rdb)}
	rdb.AddHook(tripCounter{s.trips})
	return s
}

// RoundTrips counts the round trips this store has made to Redis: each
// command, script or pipeline is one. docs/STORE.md lists how many a job
// takes.
func (s *Store) RoundTrips() uint64 { return s.trips.Load() }

// tripCounter is a go-redis hook that counts round trips.
type tripCounter struct{ n *atomic.Uint64 }

func (tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (c tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !allHandshake(cmds) {
			c.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// handshake reports whether cmd is part of opening a connection (which
// go-redis sends through the same hooks), not work.
func handshake(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "auth", "client", "select":
		return true
	}
	return false
}

func allHandshake(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		if !handshake(c) {
			return false
		}
	}
	return true
}

// Ping checks that Redis answers, and gives up when ctx ends: a Redis that
// stopped answering (a stalled server, a network that drops packets) keeps
// its connections open, and the client's own read timeouts and retries
// would take it ten seconds and more to say so. The ping left running ends
// with those.
func (s *Store) Ping(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.ping(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("ping Redis: no answer: %w", context.Cause(ctx))
	}
}

// ping is Ping without the bound. On a Redis Cluster it asks every master
// at once and is answered by the first that replies: a master that is down
// stalls only the jobs of its own shards, and a keyless PING to it would
// first spend its dial retries there.
func (s *Store) ping(ctx context.Context) error {
	c, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		if err := s.rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("ping Redis: %w", err)
		}
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	answered := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			if err := m.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("master %s: %w", m.Options().Addr, err)
			}
			once.Do(func() { close(answered) })
			return nil
		})
	}()
	select {
	case <-answered:
		return nil
	case err := <-done:
		// Every ping has ended: one may have answered all the same.
		select {
		case <-answered:
			return nil
		default:
		}
		if err == nil {
			err = errors.New("the cluster has no master")
		}
		return fmt.Errorf("ping Redis Cluster: no master answers: %w", err)
	}
}

// NewJob is what the gateway records when it accepts a job.
type NewJob struct {
	// ID is a UUIDv7: the tenant's index orders jobs by it.
	ID     string
	Topic  string
	Tenant string
	// Input is the prompt text, or bytes when Binary is set.
	Input       string
	Binary      bool
	Labels      map[string]string
	Priority    int32
	Timeout     time.Duration
	MaxAttempts uint32
	// IdempotencyKey, when set, makes CreateJob return the job an earlier
	// create with the same key and tenant made. Fingerprint identifies the
	// request, so a key reused for a different one is refused.
	IdempotencyKey string
	Fingerprint    string
	// TraceID names the job's story in bus packets and logs.
	TraceID string
}

// CreateJob stores the input and the job record as PENDING and indexes
// the job, in one step (a MULTI/EXEC transaction, or a script for a job
// with an idempotency key). When j carries an idempotency key already used
// by the tenant, nothing is created: CreateJob returns the earlier job's
// id, and ErrIdempotencyMismatch too if that job came from a different
// request.
func (s *Store) CreateJob(ctx context.Context, j NewJob, now time.Time) (existing string, err error) {
	q, err := s.creation(j, now)
	if err != nil {
		return "", err
	}
	return created(j, s.batch.do(q))
}

// Created is the outcome of one job of CreateJobs, as CreateJob returns it.
type Created struct {
	Existing string
	Err      error
}

// CreateJobs is CreateJob for many jobs in one round trip (a pipeline of
// transactions and scripts). Each job succeeds or fails alone.
func (s *Store) CreateJobs(ctx context.Context, jobs []NewJob, now time.Time) []Created {
	out := make([]Created, len(jobs))
	runs := make([]*queued, len(jobs))
	for i, j := range jobs {
		runs[i], out[i].Err = s.creation(j, now)
	}
	pipeline(ctx, s.rdb, compact(runs))
	for i, q := range runs {
		if q != nil {
			out[i].Existing, out[i].Err = created(jobs[i], q)
		}
	}
	return out
}

// compact is runs without the nils (the runs left out).
func compact(runs []*queued) []*queued {
	out := make([]*queued, 0, len(runs))
	for _, q := range runs {
		if q != nil {
			out = append(out, q)
		}
	}
	return out
}

// creation is what records j: createScript for a job with an idempotency
// key, else createCommands in a transaction.
func (s *Store) creation(j NewJob, now time.Time) (*queued, error) {
	labels, err := json.Marshal(j.Labels)
	if err != nil {
		return nil, fmt.Errorf("create job %s: %w", j.ID, err)
	}
	ts := micros(now)
	binary := "0"
	if j.Binary {
		binary = "1"
	}
	shard := shardOf(j.ID)
	trim := ""
	if last := s.lastTrim[shard].Load(); now.UnixMicro()-last >= trimInterval.Microseconds() && s.lastTrim[shard].CompareAndSwap(last, now.UnixMicro()) {
		trim = "(" + indexBound(now.Add(-s.retention))
	}
	retention, deadline := s.retention.Milliseconds(), millis(now.Add(s.redrive))
	fields := []any{
		fState, string(Pending), fTopic, j.Topic, fTenant, j.Tenant, fLabels, string(labels),
		fPriority, strconv.Itoa(int(j.Priority)), fTimeout, strconv.FormatInt(j.Timeout.Milliseconds(), 10),
		fMaxAttempts, strconv.Itoa(int(j.MaxAttempts)), fAttempt, "1",
		fPromptSize, strconv.Itoa(len(j.Input)), fBinary, binary,
		fCreated, ts, fUpdated, ts, enteredPre + string(Pending), ts, fVersion, "1", fTrace, j.TraceID,
	}
	keys := []string{jobKey(j.ID), ctxKey(j.ID), indexKey(shard, j.Tenant), leaseKey(shard)}
	if j.IdempotencyKey == "" {
		return &queued{tx: createCommands(j.ID, keys, j.Input, retention, trim, deadline, fields), shard: shard}, nil
	}
	if idemShard(j.Tenant, j.IdempotencyKey) != shard {
		return nil, fmt.Errorf("create job %s: the id is not in its idempotency key's shard (make it with NewJobID)", j.ID)
	}
	keys = append(keys, idempotencyKey(j.Tenant, j.IdempotencyKey))
	args := append([]any{j.ID, j.Input, retention, trim, j.Fingerprint, deadline}, fields...)
	return &queued{script: createScript, keys: keys, args: args}, nil
}

// createCommands are the commands of createScript, less the idempotency
// key: keys = job, ctx, index, lease. Run as one transaction, they need no
// Lua, whose setup for a call of 38 arguments cost Redis as much as the
// commands themselves (measured: 30 µs of CPU a job with the script, 16 µs
// with the transaction).
func createCommands(id string, keys []string, input string, retention int64, trim, deadline string, fields []any) [][]any {
	cmds := [][]any{
		{"set", keys[1], input, "px", retention},
		append([]any{"hset", keys[0]}, fields...),
		{"pexpire", keys[0], retention},
		{"zadd", keys[2], 0, id},
	}
	if trim != "" {
		cmds = append(cmds, []any{"zremrangebylex", keys[2], "-", trim})
	}
	return append(cmds, []any{"pexpire", keys[2], retention}, []any{"zadd", keys[3], deadline, id})
}

// created reads the outcome of q, the creation of j.
func created(j NewJob, q *queued) (string, error) {
	if q.tx != nil {
		if err := q.txErr(); err != nil {
			return "", fmt.Errorf("create job %s: %w", j.ID, err)
		}
		return "", nil
	}
	res, err := q.answer()
	switch {
	case err != nil:
		return "", fmt.Errorf("create job %s: %w", j.ID, err)
	case len(res) == 2 && res[0] == "EXISTS":
		id, fingerprint, _ := strings.Cut(res[1], " ")
		if fingerprint != j.Fingerprint {
			return id, fmt.Errorf("create job: %w (job %s)", ErrIdempotencyMismatch, id)
		}
		return id, nil
	case len(res) == 1 && res[0] == "OK":
		return "", nil
	}
	return "", fmt.Errorf("create job %s: unexpected script answer %q", j.ID, res)
}

func idempotencyKey(tenant, key string) string {
	sum := sha256.Sum256([]byte(key))
	return idemPrefix + tag(idemShard(tenant, key)) + ":" + tenant + ":" + hex.EncodeToString(sum[:16])
}

// indexBound is the smallest UUIDv7 string of a job created at t: its
// first 48 bits are the Unix time in milliseconds.
func indexBound(t time.Time) string {
	ms := uint64(max(t.UnixMilli(), 0))
	return fmt.Sprintf("%08x-%04x", ms>>16, ms&0xffff)
}

// Change is one state transition and the fields recorded with it.
type Change struct {
	To State
	// Attempt, when not zero, must be the job's current attempt.
	Attempt uint32
	// Retry starts the next attempt (To must be PENDING); Outcome is how the
	// attempt it ends ended (FAILED or TIMEOUT), for the attempt history.
	Retry   bool
	Outcome State
	// Due, for a move to PENDING, is when the job may run again (a retry's
	// backoff): the reconciler re-drives it a Redrive after that.
	Due time.Time
	// DeadLetter lists the job in the dead-letter queue (a final FAILED or
	// TIMEOUT that ran out of attempts).
	DeadLetter bool
	// Overdue makes the move only if the job's deadline has passed: the
	// reconciler read an overdue job, and the job may have moved on (and
	// got a new deadline) since.
	Overdue bool
	// Holder, when set, makes the move only if the job records no worker
	// or this one: the result of a worker whose attempt another worker
	// took over changes nothing.
	Holder     string
	Reason     string
	Pool       string
	WorkerID   string
	Safety     *Verdict
	ResultSize *uint64
	// Approval records a person's answer to a job held for approval.
	Approval *Approval
}

func (s *Store) args(id string, c Change, now time.Time) []any {
	retry := "0"
	if c.Retry {
		retry = "1"
	}
	dead := "0"
	if c.DeadLetter {
		dead = "1"
	}
	overdue := ""
	if c.Overdue {
		overdue = millis(now)
	}
	args := []any{string(c.To), strconv.FormatUint(uint64(c.Attempt), 10), micros(now), retry, string(c.Outcome),
		s.deadline(c.To, c.Due, now), dead, id, overdue, c.Holder}
	for _, f := range [...]struct{ k, v string }{
		{fReason, c.Reason}, {fPool, c.Pool}, {fWorker, c.WorkerID},
	} {
		if f.v != "" {
			args = append(args, f.k, f.v)
		}
	}
	if v := c.Safety; v != nil {
		args = append(args, fDecision, v.Decision, fRule, v.Rule, fSafety, v.Reason, fPolicy, v.Policy)
	}
	if a := c.Approval; a != nil {
		approved := "0"
		if a.Approved {
			approved = "1"
		}
		args = append(args, fApproved, approved, fApprovalBy, a.By, fApprovalMsg, a.Comment, fApprovalAt, micros(a.At),
			fApprovalAtt, strconv.FormatUint(uint64(a.Attempt), 10), fApprovalRul, a.Rule)
	}
	if c.ResultSize != nil {
		args = append(args, fResultSize, strconv.FormatUint(*c.ResultSize, 10))
	}
	return args
}

// Transition moves a job to c.To if the state machine allows it from the
// job's current state (and c.Attempt, if set, is the current attempt), and
// returns the record after the change (or after a later one, see
// readBack). ErrNotFound if there is no such job, a *ConflictError
// (ErrConflict) if the move is not allowed.
func (s *Store) Transition(ctx context.Context, id string, c Change, now time.Time) (*Job, error) {
	if err := c.check(id); err != nil {
		return nil, err
	}
	return s.moved(id, c.To, s.evalRecord(transitionScript, transitionKeys(id), s.args(id, c, now)...))
}

// check refuses a change that cannot be asked of the script.
func (c Change) check(id string) error {
	if c.Retry && (c.To != Pending || c.WorkerID != "") {
		return fmt.Errorf("move job %s: a retry goes to PENDING and names no worker", id)
	}
	return nil
}

// transitionKeys are transitionScript's keys for a job.
func transitionKeys(id string) []string { return []string{jobKey(id), leaseKeyOf(id), dlqKeyOf(id)} }

// moved reads the answer of a script that moves a job to a state (a
// transition, finish, wait or revive): the record after the change, or why
// there was none.
func (s *Store) moved(id string, to State, q *queued) (*Job, error) {
	res, err := q.answer()
	switch {
	case err != nil:
		return nil, fmt.Errorf("move job %s to %s: %w", id, to, err)
	case len(res) > 0 && res[0] == "OK":
		return s.readBack(id, to, q)
	}
	return nil, refusal(id, to, res)
}

// readBack is the record a script changed, as read right behind it in the
// same round trip: the record after the change, or after a later one
// another client made in between (its version says which). A read that
// failed (the connection dropped between the two answers) is made once
// more; the change stands even when that fails too.
func (s *Store) readBack(id string, to State, q *queued) (*Job, error) {
	f, err := q.rec.Result()
	if err != nil {
		f, err = s.hgetall(jobKey(id)).Result()
	}
	if err == nil && len(f) == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read job %s after its move to %s (the move was made): %w", id, to, err)
	}
	return parseJob(id, f), nil
}

// Move is one job's transition for TransitionMany.
type Move struct {
	ID     string
	Change Change
}

// Moved is the outcome of one Move, as Transition returns it.
type Moved struct {
	Job *Job
	Err error
}

// TransitionMany applies many transitions in one round trip (a pipeline of
// scripts); each succeeds or fails alone, as Transition would.
func (s *Store) TransitionMany(ctx context.Context, moves []Move, now time.Time) []Moved {
	out := make([]Moved, len(moves))
	runs := make([]*queued, len(moves))
	for i, m := range moves {
		if out[i].Err = m.Change.check(m.ID); out[i].Err == nil {
			runs[i] = &queued{script: transitionScript, keys: transitionKeys(m.ID), args: s.args(m.ID, m.Change, now), record: true}
		}
	}
	pipeline(ctx, s.rdb, compact(runs))
	for i, q := range runs {
		if q != nil {
			out[i].Job, out[i].Err = s.moved(moves[i].ID, moves[i].Change.To, q)
		}
	}
	return out
}

// SetPendingReason records the pool attempt of a PENDING job was routed to
// and why it is still waiting (no live worker in the pool, say), keeping
// it PENDING, and returns the
// record. A job that is not PENDING at that attempt changes nothing: a
// *ConflictError; ErrNotFound if there is no such job.
func (s *Store) SetPendingReason(ctx context.Context, id string, attempt uint32, pool, reason string, now time.Time) (*Job, error) {
	return s.moved(id, Pending, s.evalRecord(waitScript, []string{jobKey(id)},
		strconv.FormatUint(uint64(attempt), 10), micros(now), reason, pool))
}

// refusal is the error for a script's {""} or {"CONFLICT", state, attempt}.
func refusal(id string, to State, res []string) error {
	if len(res) == 3 && res[0] == "CONFLICT" {
		return &ConflictError{ID: id, To: to, State: State(res[1]), Attempt: uint32(parseInt(res[2]))}
	}
	if len(res) >= 1 && res[0] == "" {
		return fmt.Errorf("move job %s to %s: %w", id, to, ErrNotFound)
	}
	return fmt.Errorf("move job %s to %s: unexpected script answer %.100q", id, to, res)
}

// Start marks attempt of a dispatched job RUNNING on workerID and returns
// the record (see readBack) and the input, in one script; the job's deadline becomes
// twice lease from now. With takeover (the bus redelivered the attempt
// because its first holder stopped acknowledging it) a job RUNNING at that
// attempt is taken over too. A job whose input is gone is marked FAILED
// instead: Start returns that record and ErrNoPrompt.
func (s *Store) Start(ctx context.Context, id string, attempt uint32, workerID string, takeover bool, lease time.Duration, now time.Time) (*Job, string, error) {
	over := "0"
	if takeover {
		over = "1"
	}
	q := s.evalRecord(startScript, []string{jobKey(id), ctxKey(id), leaseKeyOf(id)},
		workerID, micros(now), itoa(attempt), millis(now.Add(2*lease)), id, over)
	res, err := q.answer()
	switch {
	case err != nil:
		return nil, "", fmt.Errorf("start job %s: %w", id, err)
	case len(res) == 2 && res[0] == "OK":
		j, err := s.readBack(id, Running, q)
		return j, res[1], err
	case len(res) == 1 && res[0] == "NOPROMPT":
		j, err := s.readBack(id, Failed, q)
		if err == nil {
			err = fmt.Errorf("start job %s: %w", id, ErrNoPrompt)
		}
		return j, "", err
	}
	return nil, "", refusal(id, Running, res)
}

// HandBack notes that workerID, which runs attempt of the job, hands it
// back to the stream as it stops: the worker that takes it over says so
// rather than that a lease ran out. A job no longer RUNNING there changes
// nothing.
func (s *Store) HandBack(ctx context.Context, id string, attempt uint32, workerID string) error {
	if err := s.eval(handBackScript, []string{jobKey(id)}, itoa(attempt), workerID).cmd.Err(); err != nil {
		return fmt.Errorf("hand back job %s: %w", id, err)
	}
	return nil
}

// Finish stores the output of attempt of a job RUNNING on workerID under
// res:<id>, its token usage (when not zero) on the job, and records the
// job COMPLETED, in one script, returning the record. A job that is no
// longer RUNNING at that attempt (cancelled, say), or that another worker
// took over (Start with takeover), changes nothing: a *ConflictError.
func (s *Store) Finish(ctx context.Context, id string, attempt uint32, workerID, output string, usage Usage, now time.Time) (*Job, error) {
	if workerID == "" {
		return nil, fmt.Errorf("finish job %s: no worker id", id)
	}
	return s.finish(ctx, id, attempt, workerID, time.Time{}, output, usage, now)
}

// Complete is Finish for an attempt that workerID ran, from started, without
// recording it RUNNING (see Peek): the job goes from DISPATCHED to
// COMPLETED in one script, with the worker and the start time recorded as
// Start would have. A job no longer DISPATCHED at that attempt changes
// nothing: a *ConflictError.
func (s *Store) Complete(ctx context.Context, id string, attempt uint32, workerID string, started time.Time, output string, usage Usage, now time.Time) (*Job, error) {
	if workerID == "" {
		return nil, fmt.Errorf("complete job %s: no worker id", id)
	}
	return s.finish(ctx, id, attempt, workerID, started, output, usage, now)
}

// finish records attempt COMPLETED on workerID: from RUNNING on that
// worker when started is zero, else from DISPATCHED, run since started.
func (s *Store) finish(ctx context.Context, id string, attempt uint32, workerID string, started time.Time, output string, usage Usage, now time.Time) (*Job, error) {
	u, from := "", ""
	if usage != (Usage{}) {
		u = usage.String()
	}
	if !started.IsZero() {
		from = micros(started)
	}
	return s.moved(id, Completed, s.evalRecord(finishScript, []string{jobKey(id), resKey(id), leaseKeyOf(id)},
		itoa(attempt), micros(now), output, s.retention.Milliseconds(), len(output), id, u, workerID, from))
}

// Peek reads the input of attempt of a DISPATCHED job for a worker about to
// run it, in one round trip and recording nothing: a job that ends soon
// goes from DISPATCHED to COMPLETED in one script (Complete), and one that
// runs on is recorded RUNNING with Start. A *ConflictError when the job is
// not DISPATCHED at that attempt, ErrNotFound when there is no job, and
// ErrNoPrompt when its input is gone (Start records why the job failed).
func (s *Store) Peek(ctx context.Context, id string, attempt uint32) (string, error) {
	p := &peek{id: id, attempt: attempt}
	s.batch.do(&queued{add: p.add})
	return p.result()
}

// Peeked is one job's answer to PeekAll, as Peek gives it.
type Peeked struct {
	Input string
	Err   error
}

// PeekAll is Peek for several jobs at once, in one round trip (through the
// same queue as Peek, sharing it with what else is queued): answer i is
// that of attempts[i] of job ids[i].
func (s *Store) PeekAll(ctx context.Context, ids []string, attempts []uint32) []Peeked {
	peeks := make([]*peek, len(ids))
	runs := make([]*queued, len(ids))
	for i, id := range ids {
		peeks[i] = &peek{id: id, attempt: attempts[i]}
		runs[i] = &queued{add: peeks[i].add}
	}
	s.batch.doAll(runs)
	out := make([]Peeked, len(ids))
	for i, p := range peeks {
		out[i].Input, out[i].Err = p.result()
	}
	return out
}

// peek is one job's reads for Peek: its state and attempt, and its input.
type peek struct {
	id      string
	attempt uint32
	state   *redis.SliceCmd
	input   *redis.StringCmd
}

func (p *peek) add(ctx context.Context, pipe redis.Pipeliner) redis.Cmder {
	p.state = pipe.HMGet(ctx, jobKey(p.id), "state", "attempt")
	p.input = pipe.Get(ctx, ctxKey(p.id))
	return p.input
}

func (p *peek) result() (string, error) {
	cur, err := p.state.Result()
	if err != nil {
		return "", fmt.Errorf("read job %s: %w", p.id, err)
	}
	st, _ := cur[0].(string)
	at, _ := cur[1].(string)
	switch {
	case st == "":
		return "", fmt.Errorf("read job %s: %w", p.id, ErrNotFound)
	case st != string(Dispatched) || at != itoa(p.attempt):
		return "", &ConflictError{ID: p.id, To: Running, State: State(st), Attempt: uint32(parseInt(at))}
	}
	return inputOf(p.id, p.input)
}

// Get returns a job record.
func (s *Store) Get(ctx context.Context, id string) (*Job, error) {
	fields, err := s.hgetall(jobKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", id, err)
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("read job %s: %w", id, ErrNotFound)
	}
	return parseJob(id, fields), nil
}

// Output returns a job record and, when the job has COMPLETED, its output.
func (s *Store) Output(ctx context.Context, id string) (*Job, string, error) {
	pipe := s.rdb.Pipeline()
	h := pipe.HGetAll(ctx, jobKey(id))
	r := pipe.Get(ctx, resKey(id))
	_, _ = pipe.Exec(ctx)
	fields, err := h.Result()
	if err != nil {
		return nil, "", fmt.Errorf("read job %s: %w", id, err)
	}
	if len(fields) == 0 {
		return nil, "", fmt.Errorf("read job %s: %w", id, ErrNotFound)
	}
	j := parseJob(id, fields)
	if j.State != Completed {
		return j, "", nil
	}
	out, err := r.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("read result of job %s: %w", id, err)
	}
	return j, out, nil
}

// Input returns a job's stored input (prompt text or payload bytes).
func (s *Store) Input(ctx context.Context, id string) (string, error) {
	return inputOf(id, s.get(ctxKey(id)))
}

// inputOf is the answer to a read of job id's input: ErrNoPrompt when it
// is gone.
func inputOf(id string, cmd *redis.StringCmd) (string, error) {
	in, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("read input of job %s: %w", id, ErrNoPrompt)
	}
	if err != nil {
		return "", fmt.Errorf("read input of job %s: %w", id, err)
	}
	return in, nil
}

// Policy keys: the policy `cortexctl policy apply` put in force, so that
// kernels that start later load it too. They never expire.
const (
	activePolicyKey = "policy:active"
	shadowPolicyKey = "policy:shadow"
)

func policyKey(shadow bool) string {
	if shadow {
		return shadowPolicyKey
	}
	return activePolicyKey
}

// SavePolicy stores an applied policy's file name and text; empty text
// removes it.
func (s *Store) SavePolicy(ctx context.Context, shadow bool, name, source string) error {
	var err error
	if source == "" {
		err = s.rdb.Del(ctx, policyKey(shadow)).Err()
	} else {
		err = s.rdb.HSet(ctx, policyKey(shadow), "name", name, "source", source).Err()
	}
	if err != nil {
		return fmt.Errorf("store policy: %w", err)
	}
	return nil
}

// LoadPolicy returns the applied policy's file name and text ("" when none
// was applied).
func (s *Store) LoadPolicy(ctx context.Context, shadow bool) (name, source string, err error) {
	f, err := s.rdb.HGetAll(ctx, policyKey(shadow)).Result()
	if err != nil {
		return "", "", fmt.Errorf("read policy: %w", err)
	}
	return f["name"], f["source"], nil
}
