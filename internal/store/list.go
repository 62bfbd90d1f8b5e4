package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Query selects a tenant's jobs for List.
type Query struct {
	Tenant string
	// States keeps jobs in any of these states (all when empty).
	States []State
	// Topic keeps jobs of this topic; a trailing ".*" keeps a prefix.
	Topic string
	// Labels keeps jobs carrying all of these labels.
	Labels map[string]string
	// Limit is the most jobs returned.
	Limit int
	// After continues below this job id (a previous page's Next).
	After string
}

// Matches reports whether j passes q's filters (the tenant aside).
func (q *Query) Matches(j *Job) bool {
	if len(q.States) > 0 && !slices.Contains(q.States, j.State) {
		return false
	}
	if q.Topic != "" && !TopicMatches(q.Topic, j.Topic) {
		return false
	}
	for k, v := range q.Labels {
		if got, ok := j.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// TopicMatches reports whether topic matches pattern: equal, or under the
// prefix of a pattern ending in ".*".
func TopicMatches(pattern, topic string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok && strings.HasSuffix(prefix, ".") {
		return strings.HasPrefix(topic, prefix)
	}
	return pattern == topic
}

// Scan bounds: a List reads index entries in batches and gives up on a
// sparse filter after maxScan entries, returning what it found and where to
// go on.
const (
	scanBatch = 200
	maxScan   = 5000
)

// List returns the tenant's jobs that match q, newest first, and the id to
// continue after ("" when the index is exhausted). The tenant's index is
// split in Shards sets; each batch reads the next ids below the cursor
// from all of them in one round trip and merges them: the first scanBatch
// of the merge are the tenant's next scanBatch ids overall.
func (s *Store) List(ctx context.Context, q Query) ([]*Job, string, error) {
	upper := "+"
	if q.After != "" {
		upper = "(" + q.After
	}
	var jobs []*Job
	for scanned := 0; scanned < maxScan; {
		ids, more, err := s.nextIDs(ctx, q.Tenant, upper)
		if err != nil {
			return nil, "", err
		}
		if len(ids) == 0 {
			return jobs, "", nil
		}
		found, gone, err := s.getMany(ctx, ids)
		if err != nil {
			return nil, "", fmt.Errorf("list jobs: %w", err)
		}
		byID := make(map[string]*Job, len(found))
		for _, j := range found {
			byID[j.ID] = j
		}
		full := ""
		for _, id := range ids {
			scanned++
			if j := byID[id]; j != nil && q.Matches(j) {
				jobs = append(jobs, j)
				if len(jobs) == q.Limit {
					full = id
					break
				}
			}
		}
		if len(gone) > 0 {
			// Expired jobs leave their index entry behind: tidy up.
			s.forget(ctx, gone, func(sh int) string { return indexKey(sh, q.Tenant) })
		}
		if full != "" {
			return jobs, full, nil
		}
		if !more {
			return jobs, "", nil
		}
		upper = "(" + ids[len(ids)-1]
	}
	return jobs, upper[1:], nil
}

// nextIDs returns the tenant's next scanBatch job ids below upper, newest
// first, and whether there may be more.
func (s *Store) nextIDs(ctx context.Context, tenant, upper string) ([]string, bool, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, Shards)
	for sh := range Shards {
		cmds[sh] = pipe.ZRevRangeByLex(ctx, indexKey(sh, tenant), &redis.ZRangeBy{Max: upper, Min: "-", Count: scanBatch})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, fmt.Errorf("list jobs: %w", err)
	}
	var ids []string
	more := false
	for _, c := range cmds {
		ids = append(ids, c.Val()...)
		more = more || len(c.Val()) == scanBatch
	}
	slices.SortFunc(ids, func(a, b string) int { return strings.Compare(b, a) })
	if len(ids) > scanBatch {
		ids, more = ids[:scanBatch], true
	}
	return ids, more, nil
}
