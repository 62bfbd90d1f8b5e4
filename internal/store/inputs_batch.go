package store

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// InputBatch reads the inputs of several jobs in one pipeline (one round
// trip; on a cluster, one per node): prompts[i] and errs[i] are those of
// ids[i], each as Input would return it.
func (s *Store) InputBatch(ctx context.Context, ids []string) (prompts []string, errs []error) {
	prompts, errs = make([]string, len(ids)), make([]error, len(ids))
	if len(ids) == 0 {
		return prompts, errs
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, ctxKey(id))
	}
	// Each read keeps its own error.
	_, _ = pipe.Exec(ctx)
	for i, cmd := range cmds {
		prompts[i], errs[i] = inputOf(ids[i], cmd)
	}
	return prompts, errs
}
