package store

import (
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/google/uuid"
)

// Key layout. Every key of a job carries its shard's hash tag, {0} to {f}:
//
//	job:{s}:<id>   the record (a hash)        ctx:{s}:<id>  its input
//	res:{s}:<id>   its output                 idem:{s}:<tenant>:<hash>  an idempotency key
//	idx:{s}:<tenant>  the tenant's jobs of shard s (a lex-ordered set)
//	lease:{s}      deadlines of shard s's live jobs (a sorted set, for the reconciler)
//	dlq:{s}        shard s's dead letters (a sorted set by time)
//
// On Redis Cluster every key of one tag hashes to one slot, so each script,
// which touches one job and its shard's indexes, stays atomic there, and
// the indexes that span jobs are split in Shards keys rather than being one
// hot key. A job's shard is the last hex digit of its id (UUIDv7 ids end in
// random bits); a job created with an idempotency key gets an id whose
// shard is that key's (NewJobID).
const Shards = 16

const hexDigits = "0123456789abcdef"

// shardOf is the shard of a job id: its last hex digit, or for an id that
// does not end in one (never a job's), a stable stand-in.
func shardOf(id string) int {
	if id == "" {
		return 0
	}
	c := id[len(id)-1]
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	}
	return int(c) % Shards
}

func tag(shard int) string { return "{" + hexDigits[shard:shard+1] + "}" }

func jobKey(id string) string     { return jobPrefix + tag(shardOf(id)) + ":" + id }
func ctxKey(id string) string     { return contextPrefix + tag(shardOf(id)) + ":" + id }
func resKey(id string) string     { return resultPrefix + tag(shardOf(id)) + ":" + id }
func leaseKeyOf(id string) string { return leaseKey(shardOf(id)) }
func dlqKeyOf(id string) string   { return dlqKey(shardOf(id)) }

func leaseKey(shard int) string { return leasePrefix + tag(shard) }
func dlqKey(shard int) string   { return dlqPrefix + tag(shard) }
func indexKey(shard int, tenant string) string {
	return indexPrefix + tag(shard) + ":" + tenant
}

// idemShard is the shard of a tenant's idempotency key.
func idemShard(tenant, key string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(tenant))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % Shards)
}

// NewJobID makes a job id, a UUIDv7. With an idempotency key its last hex
// digit is set to the key's shard, so the job and its key share a slot.
func NewJobID(tenant, idempotencyKey string) (string, error) {
	u, err := uuid.NewV7()
	if err != nil {
		return "", fmt.Errorf("make job id: %w", err)
	}
	id := u.String()
	if idempotencyKey != "" {
		id = id[:len(id)-1] + hexDigits[idemShard(tenant, idempotencyKey):][:1]
	}
	return id, nil
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
