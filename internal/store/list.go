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
// continue after ("" when the index is exhausted).
func (s *Store) List(ctx context.Context, q Query) ([]*Job, string, error) {
	index := indexPrefix + q.Tenant
	upper := "+"
	if q.After != "" {
		upper = "(" + q.After
	}
	var jobs []*Job
	for scanned := 0; scanned < maxScan; {
		ids, err := s.rdb.ZRevRangeByLex(ctx, index, &redis.ZRangeBy{Max: upper, Min: "-", Count: scanBatch}).Result()
		if err != nil {
			return nil, "", fmt.Errorf("list jobs: %w", err)
		}
		if len(ids) == 0 {
			return jobs, "", nil
		}
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(ids))
		for i, id := range ids {
			cmds[i] = pipe.HGetAll(ctx, jobPrefix+id)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, "", fmt.Errorf("list jobs: %w", err)
		}
		var gone []any
		full := ""
		for i, id := range ids {
			scanned++
			fields := cmds[i].Val()
			if len(fields) == 0 {
				gone = append(gone, id)
				continue
			}
			if j := parseJob(id, fields); q.Matches(j) {
				jobs = append(jobs, j)
				if len(jobs) == q.Limit {
					full = id
					break
				}
			}
		}
		if len(gone) > 0 {
			// Expired jobs leave their index entry behind: tidy up.
			_ = s.rdb.ZRem(ctx, index, gone...).Err()
		}
		if full != "" {
			return jobs, full, nil
		}
		if len(ids) < scanBatch {
			return jobs, "", nil
		}
		upper = "(" + ids[len(ids)-1]
	}
	return jobs, upper[1:], nil
}
