package store

// Test hooks into the key layout.

// JobKey, CtxKey are the keys of a job's record and input.
var (
	JobKey = jobKey
	CtxKey = ctxKey
)

// IndexKeys are the keys of a tenant's index, one per shard.
func IndexKeys(tenant string) []string {
	keys := make([]string, Shards)
	for sh := range Shards {
		keys[sh] = indexKey(sh, tenant)
	}
	return keys
}

// InKeyShard is id moved to the shard of a tenant's idempotency key, as
// NewJobID makes it.
func InKeyShard(id, tenant, key string) string {
	return id[:len(id)-1] + hexDigits[idemShard(tenant, key):][:1]
}

// LeaseKeyOf is the key of the deadlines of a job's shard.
var LeaseKeyOf = leaseKeyOf
