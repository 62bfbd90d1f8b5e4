package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/coalesce"
)

// Natural batching (internal/coalesce). Every single-job command of the
// store (a transition, start, finish, read) joins a queue; up to
// maxInFlight senders at a time each take what is queued and send it as one
// pipeline (one round trip). An idle store sends each command at once,
// alone; a busy one sends hundreds per round trip, without any timer adding
// latency. Results are each command's own, as if sent alone.

const (
	maxInFlight = 4
	maxBatch    = 512
	// batchTimeout bounds one pipeline (the commands' own timeouts are
	// shorter).
	batchTimeout = 30 * time.Second
)

// queued is one command waiting for a pipeline: a script run (script,
// keys, args) or a plain command (add).
type queued struct {
	script *redis.Script
	keys   []string
	args   []any
	add    func(context.Context, redis.Pipeliner) redis.Cmder
	cmd    redis.Cmder
	done   chan struct{}
}

type batcher struct {
	rdb redis.UniversalClient
	out *coalesce.Batcher[*queued]
}

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb}
	b.out = coalesce.New(maxInFlight, func(q []*queued) int { return min(len(q), maxBatch) }, b.send)
	return b
}

// do queues q, waits until it has run and returns its command.
func (b *batcher) do(q *queued) redis.Cmder {
	q.done = make(chan struct{})
	b.out.Add(q)
	<-q.done
	return q.cmd
}

func (b *batcher) send(batch []*queued) {
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	if len(batch) == 1 && batch[0].script != nil {
		// Alone: Run falls back to EVAL by itself.
		q := batch[0]
		q.cmd = q.script.Run(ctx, b.rdb, q.keys, q.args...)
		close(q.done)
		return
	}
	pipe := b.rdb.Pipeline()
	for _, q := range batch {
		if q.script != nil {
			q.cmd = q.script.EvalSha(ctx, pipe, q.keys, q.args...)
		} else {
			q.cmd = q.add(ctx, pipe)
		}
	}
	// Each command keeps its own error.
	_, _ = pipe.Exec(ctx)
	for _, q := range batch {
		if q.script != nil && redis.HasErrorPrefix(q.cmd.Err(), "NOSCRIPT") {
			// Redis lost its scripts (a restart) and ran nothing of this
			// one: run it again, loading the script.
			q.cmd = q.script.Run(ctx, b.rdb, q.keys, q.args...)
		}
		close(q.done)
	}
}

// eval runs a script on one job's keys through the batcher.
func (s *Store) eval(script *redis.Script, keys []string, args ...any) *redis.Cmd {
	return s.batch.do(&queued{script: script, keys: keys, args: args}).(*redis.Cmd)
}

// hgetall and get read one key through the batcher.
func (s *Store) hgetall(key string) *redis.MapStringStringCmd {
	return s.batch.do(&queued{add: func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.HGetAll(ctx, key)
	}}).(*redis.MapStringStringCmd)
}

func (s *Store) get(key string) *redis.StringCmd {
	return s.batch.do(&queued{add: func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.Get(ctx, key)
	}}).(*redis.StringCmd)
}
