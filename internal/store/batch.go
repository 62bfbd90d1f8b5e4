package store

import (
	"context"
	"sync"
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
	// batchTimeout bounds one pipeline, so that the calls in it fail
	// within seconds when Redis stops answering (a stalled server keeps
	// the connection open, and the client would go on trying): a pipeline
	// takes milliseconds, and the client's read timeout is 3 s.
	batchTimeout = 5 * time.Second
)

// queued is one command waiting for a pipeline: a script run (script,
// keys, args; with record, the job record keys[0] read right behind it), a
// plain command (add), or a transaction (tx: commands, each its name and
// arguments, on keys of one shard, run as MULTI/EXEC).
type queued struct {
	script *redis.Script
	keys   []string
	args   []any
	record bool
	add    func(context.Context, redis.Pipeliner) redis.Cmder
	tx     [][]any
	shard  int
	cmd    redis.Cmder
	rec    *redis.MapStringStringCmd
	// txCmds are the commands of a transaction run on its own (on a
	// cluster); cmd is the EXEC of one sent in a pipeline.
	txCmds []redis.Cmder
	done   chan struct{}
	// source sends the script's text (EVAL) rather than its hash: for a
	// Redis that answered NOSCRIPT.
	source bool
}

// queue adds q's commands to pipe. A transaction goes in as MULTI, its
// commands and EXEC, which a pipeline on one Redis sends as they are.
// Its commands are generic (Do): each answers QUEUED, and EXEC the
// answers.
func (q *queued) queue(ctx context.Context, pipe redis.Pipeliner) {
	if q.tx != nil {
		pipe.Do(ctx, "multi")
		for _, c := range q.tx {
			pipe.Do(ctx, c...)
		}
		q.cmd = pipe.Do(ctx, "exec")
		return
	}
	if q.script == nil {
		q.cmd = q.add(ctx, pipe)
		return
	}
	if q.source {
		q.cmd = q.script.Eval(ctx, pipe, q.keys, q.args...)
	} else {
		q.cmd = q.script.EvalSha(ctx, pipe, q.keys, q.args...)
	}
	if q.record {
		// Commands of one connection run in order: the read sees the
		// script's change (or a later one).
		q.rec = pipe.HGetAll(ctx, q.keys[0])
	}
}

// answer is a script's answer.
func (q *queued) answer() ([]string, error) { return q.cmd.(*redis.Cmd).StringSlice() }

// txErr is the first error of a transaction's commands, or why it did
// not run.
func (q *queued) txErr() error {
	if q.cmd == nil {
		for _, c := range q.txCmds {
			if err := c.Err(); err != nil {
				return err
			}
		}
		return nil
	}
	answers, err := q.cmd.(*redis.Cmd).Slice()
	if err != nil {
		return err
	}
	for _, a := range answers {
		if err, ok := a.(error); ok {
			return err
		}
	}
	return nil
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

// do queues q, waits until it has run and returns it.
func (b *batcher) do(q *queued) *queued {
	b.doAll([]*queued{q})
	return q
}

// doAll queues qs together (they share a pipeline, as far as maxBatch
// lets them) and waits until all have run.
func (b *batcher) doAll(qs []*queued) {
	for _, q := range qs {
		q.done = make(chan struct{})
	}
	b.out.Add(qs...)
	for _, q := range qs {
		<-q.done
	}
}

func (b *batcher) send(batch []*queued) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	pipeline(ctx, b.rdb, batch)
	for _, q := range batch {
		close(q.done)
	}
}

// pipeline sends qs in one round trip; each command keeps its own error. A
// Redis that lost its scripts (a restart; on a cluster, one node's
// failover) answers NOSCRIPT to those runs only, having changed nothing for
// them: just those are sent again with the script's text (EVAL), which
// also caches it on that node; no other node needs to answer.
//
// A cluster routes each command of a pipeline by its key, and MULTI and
// EXEC have none: there the transactions go apart, one MULTI/EXEC per
// shard (a shard's keys share a slot), at the same time as the pipeline.
func pipeline(ctx context.Context, rdb redis.UniversalClient, qs []*queued) {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		var wg sync.WaitGroup
		defer wg.Wait()
		byShard := map[int][]*queued{}
		rest := qs[:0:0]
		for _, q := range qs {
			if q.tx != nil {
				byShard[q.shard] = append(byShard[q.shard], q)
			} else {
				rest = append(rest, q)
			}
		}
		for _, txs := range byShard {
			wg.Go(func() { transact(ctx, c, txs) })
		}
		qs = rest
	}
	if len(qs) == 0 {
		return
	}
	pipe := rdb.Pipeline()
	for _, q := range qs {
		q.queue(ctx, pipe)
	}
	_, _ = pipe.Exec(ctx)
	var again []*queued
	for _, q := range qs {
		if q.script != nil && redis.HasErrorPrefix(q.cmd.Err(), "NOSCRIPT") {
			q.source = true
			again = append(again, q)
		}
	}
	if len(again) > 0 {
		pipe := rdb.Pipeline()
		for _, q := range again {
			q.queue(ctx, pipe)
		}
		_, _ = pipe.Exec(ctx)
	}
}

// transact runs transactions on keys of one shard as one MULTI/EXEC on a
// cluster.
func transact(ctx context.Context, c *redis.ClusterClient, txs []*queued) {
	pipe := c.TxPipeline()
	for _, q := range txs {
		q.txCmds = make([]redis.Cmder, len(q.tx))
		for i, args := range q.tx {
			q.txCmds[i] = pipe.Do(ctx, args...)
		}
	}
	_, _ = pipe.Exec(ctx)
}

// eval runs a script on one job's keys through the batcher; evalRecord
// reads the job record (keys[0]) right behind it.
func (s *Store) eval(script *redis.Script, keys []string, args ...any) *queued {
	return s.batch.do(&queued{script: script, keys: keys, args: args})
}

func (s *Store) evalRecord(script *redis.Script, keys []string, args ...any) *queued {
	return s.batch.do(&queued{script: script, keys: keys, args: args, record: true})
}

// hgetall and get read one key through the batcher.
func (s *Store) hgetall(key string) *redis.MapStringStringCmd {
	return s.batch.do(&queued{add: func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.HGetAll(ctx, key)
	}}).cmd.(*redis.MapStringStringCmd)
}

func (s *Store) get(key string) *redis.StringCmd {
	return s.batch.do(&queued{add: func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.Get(ctx, key)
	}}).cmd.(*redis.StringCmd)
}
