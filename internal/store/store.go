// Package store is the Redis memory fabric: prompts (ctx:<id>), results
// (res:<id>) and job records (job:<id>) with their state machine. Every state
// change is one Lua compare-and-set, so a transition the state machine does
// not allow (a late result after a denial, say) changes nothing. It must not
// know about NATS or any service.
package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// State is a job's lifecycle state as stored in job:<id>.
type State string

// The job states. COMPLETED, FAILED and DENIED are terminal.
const (
	Pending    State = "PENDING"
	Scheduled  State = "SCHEDULED"
	Dispatched State = "DISPATCHED"
	Running    State = "RUNNING"
	Completed  State = "COMPLETED"
	Failed     State = "FAILED"
	Denied     State = "DENIED"
)

// Proto is the wire form of s.
func (s State) Proto() cortexv1.JobState {
	return cortexv1.JobState(cortexv1.JobState_value["JOB_STATE_"+string(s)])
}

// Errors returned by the store.
var (
	ErrNotFound = errors.New("job not found")
	// ErrConflict means the state machine refused a transition.
	ErrConflict = errors.New("job state conflict")
	// ErrNoPrompt means a job's prompt was gone when a worker came to run
	// it; the job has been marked FAILED.
	ErrNoPrompt = errors.New("job prompt is gone")
)

// Key prefixes. Pointers on the bus are redis://<key>.
const (
	contextPrefix = "ctx:"
	resultPrefix  = "res:"
	jobPrefix     = "job:"
)

// ContextPtr is the pointer to a job's prompt carried on the bus.
func ContextPtr(id string) string { return "redis://" + contextPrefix + id }

// ResultPtr is the pointer to a job's result carried on the bus.
func ResultPtr(id string) string { return "redis://" + resultPrefix + id }

// Options tunes a Store.
type Options struct {
	// Retention is how long a job's keys live after it is created.
	Retention time.Duration
}

// DefaultRetention keeps jobs for a day.
const DefaultRetention = 24 * time.Hour

// Store reads and writes jobs in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention time.Duration
}

// New wraps a Redis client.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	return &Store{rdb: rdb, retention: opts.Retention}
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping Redis: %w", err)
	}
	return nil
}

// NewJob is what the gateway records when it accepts a job.
type NewJob struct {
	ID     string
	Topic  string
	Tenant string
	Prompt string
}

// Job is a job record.
type Job struct {
	ID        string
	Topic     string
	Tenant    string
	State     State
	Reason    string
	Rule      string
	Pool      string
	WorkerID  string
	Attempt   uint32
	CreatedAt time.Time
	UpdatedAt time.Time
}

// CreateJob stores the prompt and the job record as PENDING in one
// MULTI/EXEC round trip. Job ids are UUIDv7s made by the gateway, so a
// create never meets an existing job.
func (s *Store) CreateJob(ctx context.Context, j NewJob, now time.Time) error {
	ts := strconv.FormatInt(now.UnixMicro(), 10)
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, contextPrefix+j.ID, j.Prompt, s.retention)
		p.HSet(ctx, jobPrefix+j.ID,
			"state", string(Pending), "topic", j.Topic, "tenant", j.Tenant,
			"attempt", "1", "created_at", ts, "updated_at", ts)
		p.PExpire(ctx, jobPrefix+j.ID, s.retention)
		return nil
	})
	if err != nil {
		return fmt.Errorf("create job %s: %w", j.ID, err)
	}
	return nil
}

// Change is one state transition and the fields recorded with it.
type Change struct {
	To       State
	Reason   string
	Rule     string
	Pool     string
	WorkerID string
}

func (c Change) args(now time.Time) []any {
	args := []any{string(c.To), "updated_at", strconv.FormatInt(now.UnixMicro(), 10)}
	for _, f := range [...]struct{ k, v string }{
		{"reason", c.Reason}, {"rule", c.Rule}, {"pool", c.Pool}, {"worker_id", c.WorkerID},
	} {
		if f.v != "" {
			args = append(args, f.k, f.v)
		}
	}
	return args
}

// Transition moves a job to c.To if the state machine allows it from the
// job's current state. ErrNotFound if there is no such job, ErrConflict
// (with the current state) if the move is not allowed.
func (s *Store) Transition(ctx context.Context, id string, c Change, now time.Time) error {
	res, err := transitionScript.Run(ctx, s.rdb, []string{jobPrefix + id}, c.args(now)...).Text()
	return transitionErr(id, c.To, res, err)
}

func transitionErr(id string, to State, res string, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("move job %s to %s: %w", id, to, err)
	case res == "":
		return fmt.Errorf("move job %s to %s: %w", id, to, ErrNotFound)
	case res != "OK":
		return fmt.Errorf("move job %s from %s to %s: %w", id, res, to, ErrConflict)
	}
	return nil
}

// Start marks a dispatched job RUNNING on workerID and returns its prompt,
// in one script. A job whose prompt is gone is marked FAILED instead, and
// Start returns ErrNoPrompt.
func (s *Store) Start(ctx context.Context, id, workerID string, now time.Time) (string, error) {
	res, err := startScript.Run(ctx, s.rdb, []string{jobPrefix + id, contextPrefix + id},
		workerID, strconv.FormatInt(now.UnixMicro(), 10)).StringSlice()
	if err != nil {
		return "", fmt.Errorf("start job %s: %w", id, err)
	}
	switch {
	case len(res) == 2 && res[0] == "OK":
		return res[1], nil
	case len(res) == 1 && res[0] == "NOPROMPT":
		return "", fmt.Errorf("start job %s: %w", id, ErrNoPrompt)
	case len(res) == 1:
		return "", transitionErr(id, Running, res[0], nil)
	}
	return "", fmt.Errorf("start job %s: unexpected script answer %q", id, res)
}

// PutResult stores a job's output under res:<id>.
func (s *Store) PutResult(ctx context.Context, id, output string) error {
	if err := s.rdb.Set(ctx, resultPrefix+id, output, s.retention).Err(); err != nil {
		return fmt.Errorf("store result of job %s: %w", id, err)
	}
	return nil
}

// Get returns a job record and, when it has completed, its result.
func (s *Store) Get(ctx context.Context, id string) (*Job, string, error) {
	pipe := s.rdb.Pipeline()
	h := pipe.HGetAll(ctx, jobPrefix+id)
	r := pipe.Get(ctx, resultPrefix+id)
	_, _ = pipe.Exec(ctx)
	fields, err := h.Result()
	if err != nil {
		return nil, "", fmt.Errorf("read job %s: %w", id, err)
	}
	if len(fields) == 0 {
		return nil, "", fmt.Errorf("read job %s: %w", id, ErrNotFound)
	}
	j := parseJob(id, fields)
	result, err := r.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("read result of job %s: %w", id, err)
	}
	if j.State != Completed {
		result = ""
	}
	return j, result, nil
}

func parseJob(id string, f map[string]string) *Job {
	attempt, _ := strconv.ParseUint(f["attempt"], 10, 32)
	return &Job{
		ID:        id,
		Topic:     f["topic"],
		Tenant:    f["tenant"],
		State:     State(f["state"]),
		Reason:    f["reason"],
		Rule:      f["rule"],
		Pool:      f["pool"],
		WorkerID:  f["worker_id"],
		Attempt:   uint32(attempt),
		CreatedAt: parseMicros(f["created_at"]),
		UpdatedAt: parseMicros(f["updated_at"]),
	}
}

func parseMicros(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMicro(n).UTC()
}
