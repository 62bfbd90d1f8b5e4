package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deadlines. Every job that is not final and not waiting for a person has
// an entry in its shard's lease:{s} set, scored with the time by which
// something must have happened to it: a PENDING job must have been
// dispatched (Redrive after it was queued, or after its retry is due), a
// DISPATCHED or RUNNING one must have been started or extended by its
// worker (twice the lease). The reconciler reads what is past its deadline
// (Due) and acts: it re-drives the PENDING ones and ends the attempts of the
// others. Every script keeps the entry in step with the state it writes.

func millis(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// deadline is the lease entry for a job entering state to at now ("" for
// none); due, when set, is when a PENDING job may run.
func (s *Store) deadline(to State, due, now time.Time) string {
	switch to {
	case Pending:
		if due.After(now) {
			return millis(due.Add(s.redrive))
		}
		return millis(now.Add(s.redrive))
	case Dispatched, Scheduled, Running:
		return millis(now.Add(2 * s.lease))
	}
	return ""
}

// ExtendLease moves the deadline of attempt of a job RUNNING on workerID to
// twice lease from now: a worker does so while it runs a long job. A
// *ConflictError when the job is not running that attempt on that worker.
func (s *Store) ExtendLease(ctx context.Context, id string, attempt uint32, workerID string, lease time.Duration, now time.Time) error {
	return s.moveDeadline(ctx, id, string(Running), attempt, workerID, now.Add(2*lease))
}

// Redrive is how long a PENDING job may wait before the reconciler
// re-drives it (Options.Redrive).
func (s *Store) Redrive() time.Duration { return s.redrive }

// PutOffRedrive moves the deadline of a job PENDING at attempt to a
// Redrive from now: the reconciler does so when it re-drives the job.
func (s *Store) PutOffRedrive(ctx context.Context, id string, attempt uint32, now time.Time) error {
	return s.moveDeadline(ctx, id, string(Pending), attempt, "", now.Add(s.redrive))
}

func (s *Store) moveDeadline(ctx context.Context, id, states string, attempt uint32, workerID string, at time.Time) error {
	res, err := s.eval(leaseScript, []string{jobKey(id), leaseKeyOf(id)},
		states, itoa(attempt), workerID, millis(at), id).answer()
	if err != nil {
		return fmt.Errorf("move deadline of job %s: %w", id, err)
	}
	if len(res) == 1 && res[0] == "OK" {
		return nil
	}
	return refusal(id, State(states), res)
}

// Due returns up to limit jobs per shard whose deadline is at or before
// now, in two round trips. Entries of jobs that are gone are removed.
func (s *Store) Due(ctx context.Context, now time.Time, limit int) ([]*Job, error) {
	pipe := s.rdb.Pipeline()
	ranges := make([]*redis.StringSliceCmd, Shards)
	for sh := range Shards {
		ranges[sh] = pipe.ZRangeByScore(ctx, leaseKey(sh), &redis.ZRangeBy{Min: "-inf", Max: millis(now), Count: int64(limit)})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read deadlines: %w", err)
	}
	var ids []string
	for _, r := range ranges {
		ids = append(ids, r.Val()...)
	}
	jobs, gone, err := s.getMany(ctx, ids)
	if err != nil {
		return nil, err
	}
	s.forget(ctx, gone, leaseKey)
	return jobs, nil
}

// getMany reads jobs in one round trip; gone lists the ids with no record.
func (s *Store) getMany(ctx context.Context, ids []string) (jobs []*Job, gone []string, err error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, jobKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("read jobs: %w", err)
	}
	for i, id := range ids {
		if f := cmds[i].Val(); len(f) > 0 {
			jobs = append(jobs, parseJob(id, f))
		} else {
			gone = append(gone, id)
		}
	}
	return jobs, gone, nil
}

// forget removes ids from their shard's set named by key (best effort:
// the entries are stale either way).
func (s *Store) forget(ctx context.Context, ids []string, key func(int) string) {
	if len(ids) == 0 {
		return
	}
	pipe := s.rdb.Pipeline()
	for _, id := range ids {
		pipe.ZRem(ctx, key(shardOf(id)), id)
	}
	_, _ = pipe.Exec(ctx)
}

// DeadLetter is a job in the dead-letter queue and when it went there.
type DeadLetter struct {
	Job *Job
	At  time.Time
}

// DeadLetters returns the tenant's dead letters, newest first, up to
// limit, starting below the time before (zero: from the newest). The
// queue is shared by tenants, split in Shards sets: it is read newest
// first in rounds of deadBatch entries per shard, until limit of the
// tenant's are found or maxScan entries were read.
func (s *Store) DeadLetters(ctx context.Context, tenant string, limit int, before time.Time) ([]DeadLetter, error) {
	upper := "+inf"
	if !before.IsZero() {
		upper = "(" + strconv.FormatInt(before.UnixMilli(), 10)
	}
	var out []DeadLetter
	seen := map[string]bool{}
	for scanned := 0; scanned < maxScan; {
		pipe := s.rdb.Pipeline()
		ranges := make([]*redis.ZSliceCmd, Shards)
		for sh := range Shards {
			ranges[sh] = pipe.ZRevRangeByScoreWithScores(ctx, dlqKey(sh), &redis.ZRangeBy{Max: upper, Min: "-inf", Count: deadBatch})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("read dead letters: %w", err)
		}
		at := map[string]time.Time{}
		var ids []string
		// Everything at or above next has been read in every shard.
		next, more := math.Inf(-1), false
		for _, r := range ranges {
			zs := r.Val()
			for _, z := range zs {
				id := z.Member.(string)
				if !seen[id] {
					seen[id] = true
					at[id] = time.UnixMilli(int64(z.Score))
					ids = append(ids, id)
				}
			}
			if len(zs) == deadBatch {
				more = true
				next = math.Max(next, zs[len(zs)-1].Score)
			}
		}
		scanned += len(ids)
		jobs, gone, err := s.getMany(ctx, ids)
		if err != nil {
			return nil, err
		}
		s.forget(ctx, gone, dlqKey)
		for _, j := range jobs {
			if j.Tenant == tenant && (!more || float64(at[j.ID].UnixMilli()) >= next) {
				out = append(out, DeadLetter{Job: j, At: at[j.ID]})
			} else if j.Tenant == tenant {
				delete(seen, j.ID) // below the safe bound: read again next round
			}
		}
		if !more || len(out) >= limit {
			break
		}
		upper = strconv.FormatFloat(next, 'f', 0, 64)
	}
	slices.SortFunc(out, func(a, b DeadLetter) int {
		if c := b.At.Compare(a.At); c != 0 {
			return c
		}
		return strings.Compare(b.Job.ID, a.Job.ID)
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// deadBatch is how many entries per shard DeadLetters reads per round.
const deadBatch = 200

// DeadLetterAt reports whether a job is in the dead-letter queue, and
// when it went there.
func (s *Store) DeadLetterAt(ctx context.Context, id string) (time.Time, bool, error) {
	score, err := s.rdb.ZScore(ctx, dlqKeyOf(id), id).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("read dead letter %s: %w", id, err)
	}
	return time.UnixMilli(int64(score)), true, nil
}

// Revive gives a dead letter one more attempt: PENDING at the next
// attempt, out of the queue, and returns the record. A *ConflictError for a
// job that is not a dead letter.
func (s *Store) Revive(ctx context.Context, id, reason string, now time.Time) (*Job, error) {
	return s.moved(id, Pending, s.evalRecord(reviveScript, []string{jobKey(id), leaseKeyOf(id), dlqKeyOf(id)},
		micros(now), millis(now.Add(s.redrive)), reason, id))
}

// DeadLetterNote ends the reason of a job put in the dead-letter queue;
// DropDeadLetter rewrites it.
const DeadLetterNote = "listed in the dead-letter queue: cortexctl dlq list"

// droppedNote stands for DeadLetterNote in the reason of a dropped job.
const droppedNote = "dropped from the dead-letter queue"

// DropDeadLetter takes a job out of the dead-letter queue; it keeps its
// final state, and its reason (reason, as read at attempt) says it was
// dropped rather than pointing to the queue. It reports whether the job
// was there, at that attempt.
func (s *Store) DropDeadLetter(ctx context.Context, id string, attempt uint32, reason string, now time.Time) (bool, error) {
	if strings.Contains(reason, DeadLetterNote) {
		reason = strings.Replace(reason, DeadLetterNote, droppedNote, 1)
	} else {
		reason = strings.TrimPrefix(reason+"; "+droppedNote, "; ")
	}
	n, err := dropScript.Run(ctx, s.rdb, []string{jobKey(id), dlqKeyOf(id)}, id, reason, micros(now), itoa(attempt)).Int()
	if err != nil {
		return false, fmt.Errorf("drop dead letter %s: %w", id, err)
	}
	return n == 1, nil
}

// WithLease is a store on the same client whose lease is lease (when
// positive), for a component started with its own --lease.
func (s *Store) WithLease(lease time.Duration) *Store {
	if lease <= 0 || lease == s.lease {
		return s
	}
	return &Store{rdb: s.rdb, retention: s.retention, lease: lease, redrive: s.redrive, trips: s.trips, lastTrim: s.lastTrim, batch: s.batch}
}
