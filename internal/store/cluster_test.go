package store_test

// Redis Cluster tests. The store must work on a Redis Cluster: every script
// and every MULTI block may only name keys of one hash slot, or Redis
// refuses it (CROSSSLOT). Two tests hold the store to that:
//
//   - TestEveryScriptTouchesOneSlot runs the whole job lifecycle on
//     miniredis, records the keys of every script call, MULTI block and
//     multi-key command, and checks that each names a single slot. It
//     always runs.
//   - TestClusterLifecycle runs the same lifecycle against a real Redis
//     Cluster, when CORTEX_TEST_REDIS_CLUSTER names one:
//
//     eval "$(.ci/redis-cluster.sh)"
//     go test -count=1 -run 'Cluster|OneSlot' ./internal/store
//     .ci/redis-cluster.sh stop
//
// Both only use the store's public API, so they hold whatever the key
// layout is.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
)

// clusterEnv names a Redis Cluster to run the cluster tests against: the
// comma-separated addresses of some of its nodes.
const clusterEnv = "CORTEX_TEST_REDIS_CLUSTER"

// Jobs per lifecycle: on a real cluster enough that their keys land on
// every master; on miniredis enough to take every path a few times.
const (
	clusterJobs   = 200
	miniredisJobs = 60
	// idemKeys is how many idempotency keys each idempotency step uses.
	idemKeys = 24
)

// clusterClient connects to the cluster CORTEX_TEST_REDIS_CLUSTER names, or
// skips the test when it is not set.
func clusterClient(t *testing.T) *redis.ClusterClient {
	t.Helper()
	addrs := os.Getenv(clusterEnv)
	if addrs == "" {
		t.Skipf(`%s is not set: eval "$(.ci/redis-cluster.sh)" starts a 3-master Redis Cluster on 127.0.0.1 and sets it`, clusterEnv)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	t.Cleanup(func() { _ = rdb.Close() })
	err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
		return c.Ping(ctx).Err()
	})
	if err != nil {
		t.Fatalf("%s=%s: %v", clusterEnv, addrs, err)
	}
	return rdb
}

// slotMasters maps each hash slot to the address of the master serving it,
// and lists the masters.
func slotMasters(t *testing.T, rdb *redis.ClusterClient) (owner []string, masters []string) {
	t.Helper()
	shards, err := rdb.ClusterShards(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLUSTER SHARDS: %v", err)
	}
	owner = make([]string, 16384)
	for _, s := range shards {
		for _, n := range s.Nodes {
			if n.Role != "master" || len(s.Slots) == 0 {
				continue
			}
			addr := net.JoinHostPort(cmp.Or(n.Endpoint, n.IP), strconv.FormatInt(n.Port, 10))
			for _, r := range s.Slots {
				for i := r.Start; i <= r.End; i++ {
					owner[i] = addr
				}
			}
			masters = append(masters, addr)
		}
	}
	slices.Sort(masters)
	if len(masters) < 3 {
		t.Fatalf("%s has %d masters (%v); the cluster tests want 3 (.ci/redis-cluster.sh starts such a cluster)", clusterEnv, len(masters), masters)
	}
	return owner, masters
}

func TestClusterLifecycle(t *testing.T) {
	rdb := clusterClient(t)
	owner, masters := slotMasters(t, rdb)
	rec := newKeyRecorder()
	rdb.AddHook(rec)
	l := newLifecycle(t, store.New(rdb, lifecycleOptions), rec)
	// One master forgets the store's scripts (restarted, or a replica that
	// never saw them took over); the others keep them.
	flushedAt := -1 // how many units were recorded when the master forgot
	l.loseScripts = func(ctx context.Context) error {
		flushedAt = len(rec.all())
		var flushed atomic.Int32
		err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			if c.Options().Addr != masters[0] {
				return nil
			}
			flushed.Add(1)
			return c.ScriptFlush(ctx).Err()
		})
		if err == nil && flushed.Load() != 1 {
			err = fmt.Errorf("flushed the scripts of %d masters, want master %s alone", flushed.Load(), masters[0])
		}
		return err
	}
	l.run(clusterJobs)
	l.report(t)

	// The batch after the flush must have met NOSCRIPT on that master (and
	// recovered: see CreateJobs), or the step tested nothing.
	t.Run("a master lost its scripts", func(t *testing.T) {
		if flushedAt < 0 {
			t.Skip("the lifecycle did not get as far as flushing a master's scripts")
		}
		var onIt, noscript int
		for _, u := range rec.all()[flushedAt:] {
			if u.method == "CreateJobs" && u.script && len(u.keys) > 0 && owner[keySlot(u.keys[0])] == masters[0] {
				onIt++
				if u.err != nil && strings.HasPrefix(u.err.Error(), "NOSCRIPT") {
					noscript++
				}
			}
		}
		switch {
		case onIt == 0:
			t.Skipf("no job of the batch after the flush had its keys on master %s", masters[0])
		case noscript == 0:
			t.Errorf("none of the %d script calls to master %s after it flushed its scripts answered NOSCRIPT", onIt, masters[0])
		}
	})

	// The jobs must have spread over every master, or this was no test of
	// a cluster: count the masters the creates that worked (scripts for
	// jobs with an idempotency key, transactions for the others) wrote to.
	t.Run("jobs spread over all masters", func(t *testing.T) {
		hit := map[string]int{}
		for _, u := range rec.all() {
			made := u.script || strings.HasPrefix(u.what, "multi[")
			if made && u.err == nil && (u.method == "CreateJob" || u.method == "CreateJobs") {
				for _, k := range u.keys {
					hit[owner[keySlot(k)]]++
				}
			}
		}
		if len(hit) == 0 {
			t.Skip("no create succeeded (see CreateJob and CreateJobs)")
		}
		for _, m := range masters {
			if hit[m] == 0 {
				t.Errorf("no created job has a key on master %s (keys per master: %v)", m, hit)
			}
		}
	})
}

// TestEveryScriptTouchesOneSlot checks the store's key layout against the
// rule of Redis Cluster: all the keys one script call (EVAL, EVALSHA), one
// MULTI…EXEC block or one multi-key command names must hash to the same
// slot. It runs the lifecycle on miniredis (which does not enforce the
// rule) and inspects the keys go-redis sent. Keys a script reaches without
// naming them in KEYS are out of its sight: TestClusterLifecycle catches
// those (Redis refuses them in a cluster).
func TestEveryScriptTouchesOneSlot(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := newKeyRecorder()
	rdb.AddHook(rec)
	l := newLifecycle(t, store.New(rdb, lifecycleOptions), rec)
	l.loseScripts = func(ctx context.Context) error { return rdb.ScriptFlush(ctx).Err() }
	l.run(miniredisJobs)
	t.Logf("checks per method: %v", l.calls)

	// Only a lifecycle that went all the way recorded every path's keys.
	if l.failed() {
		t.Errorf("the lifecycle failed on miniredis, so not every path's keys were recorded:\n%s", l.failures())
	}
	for _, m := range lifecycleMethods {
		if l.calls[m] == 0 {
			t.Errorf("the lifecycle never checked Store.%s on miniredis", m)
		}
	}
	units := rec.all()
	scripts := 0
	for _, u := range units {
		if u.script {
			scripts++
		}
	}
	if scripts == 0 {
		t.Fatal("no script call was recorded: the hook does not see the store's commands")
	}
	if unknown := rec.unknownCommands(); len(unknown) > 0 {
		t.Errorf("commands keysOf does not know the keys of (teach it): %v", unknown)
	}

	// Group the calls that span slots by method, command and key shape.
	type violation struct {
		example string
		n       int
	}
	bad := map[string]*violation{}
	for _, u := range units {
		slots := map[int]bool{}
		for _, k := range u.keys {
			slots[keySlot(k)] = true
		}
		if len(slots) < 2 {
			continue
		}
		shapes := make([]string, len(u.keys))
		examples := make([]string, len(u.keys))
		for i, k := range u.keys {
			shapes[i] = keyShape(k)
			examples[i] = fmt.Sprintf("%s (slot %d)", k, keySlot(k))
		}
		what := u.what
		if u.script {
			what = "script call" // EVAL and EVALSHA alike
		}
		what = fmt.Sprintf("%s: %s naming [%s]", u.method, what, strings.Join(shapes, " "))
		if bad[what] == nil {
			bad[what] = &violation{example: fmt.Sprintf("%d slots, e.g. %s", len(slots), strings.Join(examples, ", "))}
		}
		bad[what].n++
	}
	for _, what := range slices.Sorted(maps.Keys(bad)) {
		v := bad[what]
		t.Errorf("%s spans %s (%d calls like it)", what, v.example, v.n)
	}
}

// TestClusterKeySlot checks keySlot against slots Redis computed
// (`redis-cli cluster keyslot KEY`) and, when CORTEX_TEST_REDIS_CLUSTER is
// set, against the cluster's CLUSTER KEYSLOT.
func TestClusterKeySlot(t *testing.T) {
	want := map[string]int{
		"":                     0,
		"123456789":            12739,
		"foo":                  12182,
		"bar":                  5061,
		"job:abc":              7812,
		"job:{abc}":            7638,
		"ctx:{abc}":            7638,
		"abc":                  7638,
		"{user1000}.following": 3443,
		"{user1000}.followers": 3443,
		"foo{}{bar}":           8363,
		"foo{{bar}}zap":        4015,
		"{bar":                 4015,
		"foo{bar}{zap}":        5061,
		"}{bar}":               5061,
		"{":                    4092,
		"}":                    12090,
		"{}":                   15257,
		"idx:{t1}:3":           8943,
		"job:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b": 13286,
		"policy:active": 6883,
		"idem:{t}:x":    15891,
	}
	for key, slot := range want {
		if got := keySlot(key); got != slot {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, slot)
		}
	}
	if os.Getenv(clusterEnv) == "" {
		return
	}
	rdb := clusterClient(t)
	for key := range want {
		got, err := rdb.ClusterKeySlot(context.Background(), key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %q: %v", key, err)
		}
		if int(got) != keySlot(key) {
			t.Errorf("CLUSTER KEYSLOT %q = %d, keySlot says %d", key, got, keySlot(key))
		}
	}
}

// TestKeyRecorder checks that the recorder sees what the slot rule is
// about: a script's KEYS (not its ARGV), a MULTI block's keys as one unit,
// each command of a plain pipeline alone, and every key of a multi-key
// command.
func TestKeyRecorder(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	rec := newKeyRecorder()
	rdb.AddHook(rec)
	ctx := context.Background()

	rec.calling("script")
	script := redis.NewScript(`return redis.call('SET', KEYS[1], ARGV[1])`)
	if err := script.Run(ctx, rdb, []string{"a:{x}"}, "not-a-key").Err(); err != nil {
		t.Fatal(err)
	}
	rec.calling("multi")
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "b:{x}", "1", 0)
		p.HSet(ctx, "c:{y}", "f", "v")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec.calling("pipeline")
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Get(ctx, "d")
		p.Del(ctx, "e", "f")
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}

	var got []string
	for _, u := range rec.all() {
		if len(u.keys) > 0 {
			got = append(got, fmt.Sprintf("%s %s %v script=%t err=%v", u.method, u.what, u.keys, u.script, u.err))
		}
	}
	want := []string{
		// Run tries EVALSHA first; miniredis does not know the script yet.
		"script evalsha [a:{x}] script=true err=NOSCRIPT No matching script. Please use EVAL.",
		"script eval [a:{x}] script=true err=<nil>",
		"multi multi[set hset] [b:{x} c:{y}] script=false err=<nil>",
		"pipeline get [d] script=false err=<nil>",
		"pipeline del [e f] script=false err=<nil>",
	}
	if !slices.Equal(got, want) {
		t.Errorf("recorded:\n\t%s\nwant:\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
	if u := rec.unknownCommands(); len(u) > 0 {
		t.Errorf("unknown commands: %v", u)
	}
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of the
// key modulo 16384, or of its hash tag, the text between the first '{' and
// the first '}' after it, when that is not empty.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the
// checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := range len(s) {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

var (
	uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	hexRE  = regexp.MustCompile(`[0-9a-f]{32,}`)
	// numberRE is any number, to group errors about many jobs.
	numberRE = regexp.MustCompile(`[0-9]+`)
)

// keyShape is key with ids and hashes replaced by placeholders, so that
// the keys of many jobs read as one.
func keyShape(key string) string {
	return hexRE.ReplaceAllString(uuidRE.ReplaceAllString(key, "<id>"), "<hash>")
}

// --- recording keys ---------------------------------------------------------

// keyUnit is one thing Redis Cluster runs on a single slot: a script call,
// a MULTI…EXEC block or a command, with the keys it names.
type keyUnit struct {
	// method is the Store method that sent it.
	method string
	// what is the command, e.g. "evalsha" or "multi[hset zadd]".
	what   string
	script bool
	keys   []string
	// err is how it went (redis.Nil counts as success).
	err error
}

// keyRecorder is a go-redis hook that records a keyUnit for everything
// the client sends.
type keyRecorder struct {
	mu      sync.Mutex
	method  string
	units   []keyUnit
	unknown map[string]bool
}

func newKeyRecorder() *keyRecorder { return &keyRecorder{unknown: map[string]bool{}} }

// calling says which Store method the next commands come from.
func (r *keyRecorder) calling(method string) {
	r.mu.Lock()
	r.method = method
	r.mu.Unlock()
}

func (r *keyRecorder) all() []keyUnit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.units)
}

func (r *keyRecorder) unknownCommands() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.unknown))
}

func (r *keyRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *keyRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		r.record([]redis.Cmder{cmd}, func(redis.Cmder) error { return err })
		return err
	}
}

func (r *keyRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		r.record(cmds, redis.Cmder.Err)
		return err
	}
}

// record splits what one call sent (a command, or a pipeline, in which
// go-redis wraps a transaction in MULTI and EXEC) into units. errOf is
// how a command went: for a single command, what its hook returned
// (go-redis sets the error on the command only later); in a pipeline,
// the command's own error.
func (r *keyRecorder) record(cmds []redis.Cmder, errOf func(redis.Cmder) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var block *keyUnit // the MULTI block being read
	var names []string
	for _, cmd := range cmds {
		name := strings.ToLower(cmd.Name())
		switch {
		case name == "multi":
			block, names = &keyUnit{method: r.method}, nil
			continue
		case name == "exec" && block != nil:
			block.what = "multi[" + strings.Join(names, " ") + "]"
			r.units = append(r.units, *block)
			block = nil
			continue
		}
		keys, known := keysOf(cmd.Args())
		if !known {
			r.unknown[name] = true
		}
		err := errOf(cmd)
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		script := isScript(name)
		if block != nil {
			names = append(names, name)
			block.keys = append(block.keys, keys...)
			block.script = block.script || script
			if block.err == nil {
				block.err = err
			}
			continue
		}
		r.units = append(r.units, keyUnit{method: r.method, what: name, script: script, keys: keys, err: err})
	}
}

func isScript(name string) bool {
	switch name {
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		return true
	}
	return false
}

// keysOf lists the keys a command names; known is false for a command it
// does not know.
func keysOf(args []any) (keys []string, known bool) {
	if len(args) == 0 {
		return nil, true
	}
	arg := func(i int) string { return fmt.Sprint(args[i]) }
	all := func(from int) []string {
		var out []string
		for i := from; i < len(args); i++ {
			out = append(out, arg(i))
		}
		return out
	}
	// numbered reads "numkeys key..." starting at args[at].
	numbered := func(at int) []string {
		if at >= len(args) {
			return nil
		}
		n, _ := strconv.Atoi(arg(at))
		var out []string
		for i := at + 1; i <= at+n && i < len(args); i++ {
			out = append(out, arg(i))
		}
		return out
	}
	switch name := strings.ToLower(arg(0)); name {
	case "ping", "echo", "hello", "auth", "client", "select", "script", "info", "cluster", "command",
		"multi", "exec", "discard", "unwatch", "time", "dbsize", "flushdb", "flushall", "readonly", "readwrite",
		"config", "function", "publish", "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "quit", "role":
		return nil, true
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		return numbered(2), true
	case "del", "unlink", "exists", "touch", "mget", "watch", "sinter", "sunion", "sdiff", "sinterstore",
		"sunionstore", "sdiffstore", "pfcount", "pfmerge":
		return all(1), true
	case "mset", "msetnx":
		for i := 1; i < len(args); i += 2 {
			keys = append(keys, arg(i))
		}
		return keys, true
	case "rename", "renamenx", "smove", "rpoplpush", "lmove", "copy", "zrangestore":
		if len(args) < 3 {
			return all(1), true
		}
		return []string{arg(1), arg(2)}, true
	case "zunionstore", "zinterstore", "zdiffstore":
		if len(args) < 2 {
			return nil, true
		}
		return append([]string{arg(1)}, numbered(2)...), true
	case "zunion", "zinter", "zdiff", "zintercard", "sintercard", "lmpop", "zmpop":
		return numbered(1), true
	case "get", "set", "setex", "psetex", "setnx", "getdel", "getex", "getset", "append", "incr", "incrby",
		"decr", "decrby", "incrbyfloat", "strlen", "getrange", "setrange", "expire", "pexpire", "expireat",
		"pexpireat", "expiretime", "pexpiretime", "ttl", "pttl", "persist", "type", "dump", "restore",
		"hget", "hset", "hsetnx", "hmset", "hmget", "hgetall", "hdel", "hincrby", "hincrbyfloat", "hkeys",
		"hvals", "hlen", "hexists", "hscan", "hstrlen", "hrandfield", "hexpire", "hpexpire", "httl",
		"zadd", "zrem", "zrange", "zrevrange", "zrangebylex", "zrevrangebylex", "zrangebyscore",
		"zrevrangebyscore", "zremrangebylex", "zremrangebyscore", "zremrangebyrank", "zcard", "zcount",
		"zlexcount", "zscore", "zmscore", "zincrby", "zrank", "zrevrank", "zscan", "zpopmin", "zpopmax",
		"zrandmember", "sadd", "srem", "smembers", "sismember", "smismember", "scard", "sscan", "spop",
		"srandmember", "lpush", "rpush", "lpushx", "rpushx", "lpop", "rpop", "lrange", "llen", "ltrim",
		"lrem", "lindex", "lset", "linsert", "lpos", "xadd", "xrange", "xrevrange", "xlen", "xtrim", "xdel",
		"xack", "xclaim", "xautoclaim", "xpending", "xgroup", "pfadd", "setbit", "getbit", "bitcount",
		"bitpos", "object":
		if name == "xgroup" || name == "object" {
			if len(args) < 3 {
				return nil, true
			}
			return []string{arg(2)}, true
		}
		if len(args) < 2 {
			return nil, true
		}
		return []string{arg(1)}, true
	}
	return nil, false
}

// --- the lifecycle ------------------------------------------------------------

// lifecycle drives a store through every exported method, over many jobs
// and tenants, and tallies per method the checks made and the ones that
// failed (an error, or a wrong answer). A job stops at its first failed
// step, so a method no job reached has no checks.
type lifecycle struct {
	t   *testing.T
	ctx context.Context
	st  *store.Store
	rec *keyRecorder
	// loseScripts makes (part of) Redis forget its scripts, as a restart
	// does; nil to leave that step out.
	loseScripts func(context.Context) error

	calls map[string]int
	fails map[string][]string
}

// lifecycleMethods are the Store methods run calls.
var lifecycleMethods = []string{
	"Complete", "CreateJob", "CreateJobs", "DeadLetterAt", "DeadLetters", "DropDeadLetter", "Due", "ExtendLease", "Finish", "Get", "HandBack",
	"Input", "InputBatch", "List", "LoadPolicy", "Output", "Peek", "PeekAll", "Ping", "PutOffRedrive", "Redrive", "Revive", "RoundTrips",
	"SavePolicy", "SetPendingReason", "Start", "Transition", "TransitionMany", "WithLease",
}

// The lifecycle's store has short deadlines, so that Due finds jobs a few
// seconds after the test's fixed now.
const (
	testLease   = time.Second
	testRedrive = 2 * time.Second
	// scanBatch is how many index entries List reads per batch (list.go).
	scanBatch = 200
)

var lifecycleOptions = store.Options{Lease: testLease, Redrive: testRedrive}

func newLifecycle(t *testing.T, st *store.Store, rec *keyRecorder) *lifecycle {
	return &lifecycle{t: t, ctx: context.Background(), st: st, rec: rec, calls: map[string]int{}, fails: map[string][]string{}}
}

// enter says the next commands come from method.
func (l *lifecycle) enter(method string) {
	if l.rec != nil {
		l.rec.calling(method)
	}
}

// check records one check of method: a failure when err is not nil.
func (l *lifecycle) check(method string, err error) bool {
	l.calls[method]++
	if err != nil {
		l.fails[method] = append(l.fails[method], err.Error())
		return false
	}
	return true
}

// do calls method (in f, which returns what is wrong) and checks it.
func (l *lifecycle) do(method string, f func() error) bool {
	l.enter(method)
	return l.check(method, f())
}

func (l *lifecycle) failed() bool { return len(l.fails) > 0 }

// failures sums up every method's failures.
func (l *lifecycle) failures() string {
	var b strings.Builder
	for _, m := range slices.Sorted(maps.Keys(l.fails)) {
		fmt.Fprintf(&b, "%s: %d of %d checks failed:\n%s", m, len(l.fails[m]), l.calls[m], summarize(l.fails[m]))
	}
	return b.String()
}

// summarize groups errors that differ only in ids, most frequent first.
func summarize(errs []string) string {
	count := map[string]int{}
	example := map[string]string{}
	for _, e := range errs {
		shape := numberRE.ReplaceAllString(keyShape(e), "N")
		if count[shape] == 0 {
			example[shape] = e
		}
		count[shape]++
	}
	shapes := slices.SortedFunc(maps.Keys(count), func(a, b string) int { return cmp.Or(count[b]-count[a], strings.Compare(a, b)) })
	var b strings.Builder
	for i, s := range shapes {
		if i == 8 {
			fmt.Fprintf(&b, "\t... and %d more kinds\n", len(shapes)-i)
			break
		}
		fmt.Fprintf(&b, "\t%d× %s\n", count[s], example[s])
	}
	return b.String()
}

// report is one subtest per exported Store method: it fails when a check
// of the method failed, skips when no job got as far as the method.
func (l *lifecycle) report(t *testing.T) {
	typ := reflect.TypeFor[*store.Store]()
	for i := range typ.NumMethod() {
		name := typ.Method(i).Name
		t.Run(name, func(t *testing.T) {
			n, fails := l.calls[name], l.fails[name]
			switch {
			case !slices.Contains(lifecycleMethods, name):
				t.Errorf("the lifecycle does not call Store.%s: add it to lifecycle.run", name)
			case n == 0:
				t.Skip("not reached: no job got this far (see the methods that failed)")
			case len(fails) > 0:
				t.Errorf("%d of %d checks failed:\n%s", len(fails), n, summarize(fails))
			}
		})
	}
}

// kind is the path a job takes.
type kind int

const (
	kComplete kind = iota // dispatched, run, completed
	kRetry                // scheduled, run, retried, completed on attempt 2
	kApproval             // held for approval, approved, run, failed
	kCancel               // cancelled while pending
	kTimeout              // run, timed out
	kDeny                 // denied by policy
	kinds
)

var kindNames = [kinds]string{"complete", "retry", "approval", "cancel", "timeout", "deny"}

var (
	allowVerdict   = &store.Verdict{Decision: "ALLOW", Rule: "allow-all", Reason: "ok", Policy: "v1"}
	approveVerdict = &store.Verdict{Decision: "REQUIRE_APPROVAL", Rule: "needs-approval", Reason: "big job", Policy: "v1"}
	denyVerdict    = &store.Verdict{Decision: "DENY", Rule: "deny-it", Reason: "forbidden", Policy: "v1"}
)

// newJob is job i of tenant: its kind, topic, labels and input vary with i.
func (l *lifecycle) newJob(tenant string, i int) store.NewJob {
	nj := store.NewJob{
		ID:          newID(l.t),
		Topic:       [...]string{"job.echo", "job.cluster.sum"}[i%2],
		Tenant:      tenant,
		Input:       fmt.Sprintf("input of job %d", i),
		Labels:      map[string]string{"kind": kindNames[i%int(kinds)], "n": strconv.Itoa(i)},
		Priority:    int32(i % 5),
		Timeout:     time.Duration(i%4+1) * time.Minute,
		MaxAttempts: 3,
	}
	if i%7 == 3 {
		nj.Input, nj.Binary = string([]byte{0, 0xff, byte(i), '\n', 0x80}), true
	}
	return nj
}

// run is the lifecycle: policies, n jobs of one tenant along every path
// (half made by CreateJob, half by one CreateJobs), listing them, a tenant
// with more jobs than a List batch, deadlines (Due, ExtendLease,
// PutOffRedrive, WithLease), dead letters (DeadLetters, DeadLetterAt,
// Revive, DropDeadLetter, TransitionMany) and idempotency keys.
func (l *lifecycle) run(n int) {
	ctx := l.ctx
	trips := l.st.RoundTrips()
	l.do("Ping", func() error { return l.st.Ping(ctx) })
	l.policies()

	tenant := newTenant(l.t)
	jobs := make([]store.NewJob, n)
	for i := range jobs {
		jobs[i] = l.newJob(tenant, i)
	}
	var made []store.NewJob
	for _, nj := range jobs[:n/2] {
		if l.create(nj) {
			made = append(made, nj)
		}
	}
	for i, ok := range l.createBatch(jobs[n/2:], false) {
		if ok {
			made = append(made, jobs[n/2+i])
		}
	}
	last := map[string]*store.Job{}
	for _, nj := range made {
		last[nj.ID] = l.drive(nj, kind(slices.Index(kindNames[:], nj.Labels["kind"])))
	}
	l.lists(tenant, made, last)
	l.manyJobs(2*scanBatch + 50)
	l.deadlines()
	l.deadLetters()
	l.idempotency()

	l.do("RoundTrips", func() error {
		if got := l.st.RoundTrips(); got <= trips {
			return fmt.Errorf("RoundTrips = %d after the lifecycle, %d before", got, trips)
		}
		return nil
	})
}

// policies saves, loads and removes the active and the shadow policy.
func (l *lifecycle) policies() {
	ctx := l.ctx
	for _, shadow := range []bool{false, true} {
		name := fmt.Sprintf("policy-shadow-%t.yaml", shadow)
		source := fmt.Sprintf("# shadow %t\nrules: []\n", shadow)
		if !l.do("SavePolicy", func() error { return l.st.SavePolicy(ctx, shadow, name, source) }) {
			continue
		}
		l.do("LoadPolicy", func() error {
			gotName, gotSource, err := l.st.LoadPolicy(ctx, shadow)
			if err == nil && (gotName != name || gotSource != source) {
				err = fmt.Errorf("LoadPolicy(shadow %t) = %q, %q; want %q, %q", shadow, gotName, gotSource, name, source)
			}
			return err
		})
	}
	for _, shadow := range []bool{false, true} {
		if !l.do("SavePolicy", func() error { return l.st.SavePolicy(ctx, shadow, "", "") }) {
			continue
		}
		l.do("LoadPolicy", func() error {
			gotName, gotSource, err := l.st.LoadPolicy(ctx, shadow)
			if err == nil && (gotName != "" || gotSource != "") {
				err = fmt.Errorf("LoadPolicy(shadow %t) after removing it = %q, %q; want nothing", shadow, gotName, gotSource)
			}
			return err
		})
	}
}

// create makes nj with CreateJob, which must make a new job.
func (l *lifecycle) create(nj store.NewJob) bool {
	return l.do("CreateJob", func() error {
		existing, err := l.st.CreateJob(l.ctx, nj, now)
		if err == nil && existing != "" {
			err = fmt.Errorf("CreateJob(%s) = existing job %s, want a new job", nj.ID, existing)
		}
		return err
	})
}

// createBatch makes jobs with one CreateJobs, each of which must make a new
// job, and says which did. loseScripts first makes Redis forget its
// scripts.
func (l *lifecycle) createBatch(jobs []store.NewJob, loseScripts bool) []bool {
	if loseScripts {
		if err := l.loseScripts(l.ctx); err != nil {
			l.t.Errorf("make Redis forget its scripts: %v", err)
		}
	}
	l.enter("CreateJobs")
	res := l.st.CreateJobs(l.ctx, jobs, now)
	ok := make([]bool, len(jobs))
	if len(res) != len(jobs) {
		l.check("CreateJobs", fmt.Errorf("CreateJobs of %d jobs answered %d results", len(jobs), len(res)))
		return ok
	}
	for i, c := range res {
		err := c.Err
		if err == nil && c.Existing != "" {
			err = fmt.Errorf("CreateJobs: job %s reported as the existing job %s, want a new job", jobs[i].ID, c.Existing)
		}
		ok[i] = l.check("CreateJobs", err)
	}
	return ok
}

// drive takes a created job along the path of its kind, checking each
// step, and returns the last record a step answered.
func (l *lifecycle) drive(nj store.NewJob, k kind) *store.Job {
	ctx, id := l.ctx, nj.ID
	var last *store.Job
	seen := func(j *store.Job) {
		if j != nil {
			last = j
		}
	}
	move := func(c store.Change) bool {
		return l.do("Transition", func() error {
			j, err := l.st.Transition(ctx, id, c, now)
			if err != nil {
				return err
			}
			seen(j)
			if j.State != c.To {
				return fmt.Errorf("Transition(%s to %s) answered state %s", id, c.To, j.State)
			}
			return nil
		})
	}
	run := func(attempt uint32, worker string) bool {
		return l.do("Start", func() error {
			j, input, err := l.st.Start(ctx, id, attempt, worker, false, time.Minute, now)
			if err != nil {
				return err
			}
			seen(j)
			if input != nj.Input || j.State != store.Running || j.WorkerID != worker || j.Attempt != attempt {
				return fmt.Errorf("Start(%s, attempt %d) = %s on %q attempt %d, input %q; want RUNNING on %q attempt %d, input %q",
					id, attempt, j.State, j.WorkerID, j.Attempt, input, worker, attempt, nj.Input)
			}
			return nil
		})
	}
	// handBack notes the hand-back of a job RUNNING on worker, then has the
	// same worker take it again, as a redelivery would.
	handBack := func(attempt uint32, worker string) bool {
		return l.do("HandBack", func() error {
			if err := l.st.HandBack(ctx, id, attempt, worker); err != nil {
				return err
			}
			j, _, err := l.st.Start(ctx, id, attempt, worker, true, time.Minute, now)
			if err != nil {
				return err
			}
			seen(j)
			if j.State != store.Running || j.WorkerID != worker {
				return fmt.Errorf("after the hand-back, Start(%s) = %s on %q", id, j.State, j.WorkerID)
			}
			return nil
		})
	}
	output := "output of " + id
	finish := func(attempt uint32) bool {
		return l.do("Finish", func() error {
			j, err := l.st.Finish(ctx, id, attempt, "w-1", output, store.Usage{}, now)
			if err != nil {
				return err
			}
			seen(j)
			if j.State != store.Completed || j.ResultSize != uint64(len(output)) {
				return fmt.Errorf("Finish(%s) = %s with result size %d", id, j.State, j.ResultSize)
			}
			return nil
		})
	}
	// quick runs attempt as a worker does a job that ends soon: it reads
	// the input without recording anything, then records the attempt
	// COMPLETED straight from DISPATCHED.
	quick := func(attempt uint32, worker string) bool {
		return l.do("Peek", func() error {
			input, err := l.st.Peek(ctx, id, attempt)
			if err == nil && input != nj.Input {
				err = fmt.Errorf("Peek(%s, attempt %d) = %q, want %q", id, attempt, input, nj.Input)
			}
			return err
		}) && l.do("PeekAll", func() error {
			got := l.st.PeekAll(ctx, []string{id}, []uint32{attempt})
			switch {
			case len(got) != 1:
				return fmt.Errorf("PeekAll of one job gave %d answers", len(got))
			case got[0].Err != nil:
				return got[0].Err
			case got[0].Input != nj.Input:
				return fmt.Errorf("PeekAll(%s, attempt %d) = %q, want %q", id, attempt, got[0].Input, nj.Input)
			}
			return nil
		}) && l.do("Complete", func() error {
			j, err := l.st.Complete(ctx, id, attempt, worker, now, output, store.Usage{}, now)
			if err != nil {
				return err
			}
			seen(j)
			if j.State != store.Completed || j.WorkerID != worker || j.ResultSize != uint64(len(output)) {
				return fmt.Errorf("Complete(%s) = %s on %q with result size %d", id, j.State, j.WorkerID, j.ResultSize)
			}
			return nil
		})
	}
	get := func(check func(j *store.Job) error) bool {
		return l.do("Get", func() error {
			j, err := l.st.Get(ctx, id)
			if err != nil {
				return err
			}
			seen(j)
			return check(j)
		})
	}

	ok := get(func(j *store.Job) error {
		if want := nj.Record(now); !reflect.DeepEqual(j, want) {
			return fmt.Errorf("Get(%s) after create:\n got %+v\nwant %+v", id, j, want)
		}
		return nil
	}) && l.do("Input", func() error {
		in, err := l.st.Input(ctx, id)
		if err == nil && in != nj.Input {
			err = fmt.Errorf("Input(%s) = %q, want %q", id, in, nj.Input)
		}
		return err
	}) && l.do("InputBatch", func() error {
		// One pipeline over keys of several slots (nodes, on a cluster):
		// each read answers for its own job.
		gone := "no-such-job-" + id
		ins, errs := l.st.InputBatch(ctx, []string{id, gone})
		if len(ins) != 2 || ins[0] != nj.Input || errs[0] != nil || !errors.Is(errs[1], store.ErrNoPrompt) {
			return fmt.Errorf("InputBatch(%s, %s) = %q, %v; want its input, then ErrNoPrompt", id, gone, ins, errs)
		}
		return nil
	}) && l.do("SetPendingReason", func() error {
		j, err := l.st.SetPendingReason(ctx, id, 1, "pool-a", "waiting for a worker in pool-a", now)
		if err != nil {
			return err
		}
		seen(j)
		if j.State != store.Pending || j.Pool != "pool-a" || j.Reason != "waiting for a worker in pool-a" || j.Version != 2 {
			return fmt.Errorf("SetPendingReason(%s) = %+v", id, j)
		}
		return nil
	})
	if !ok {
		return last
	}

	switch k {
	case kComplete:
		ok = move(store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a", Safety: allowVerdict}) &&
			run(1, "w-1") && handBack(1, "w-1") && finish(1) &&
			l.do("Finish", func() error {
				_, err := l.st.Finish(ctx, id, 1, "w-1", "again", store.Usage{}, now)
				return wantConflict(err, store.Completed, 1)
			})
	case kRetry:
		ok = move(store.Change{To: store.Scheduled, Attempt: 1}) &&
			move(store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a", Safety: allowVerdict}) &&
			run(1, "w-1") &&
			move(store.Change{To: store.Pending, Attempt: 1, Retry: true, Outcome: store.Failed, Reason: "worker lost"}) &&
			move(store.Change{To: store.Dispatched, Attempt: 2, Pool: "pool-a"}) &&
			quick(2, "w-2") &&
			get(func(j *store.Job) error {
				a := j.Attempts
				if len(a) != 2 || a[0].Attempt != 1 || a[0].State != store.Failed || a[0].WorkerID != "w-1" ||
					a[1].Attempt != 2 || a[1].State != store.Completed || a[1].WorkerID != "w-2" {
					return fmt.Errorf("attempts of %s after a retry: %+v", id, a)
				}
				return nil
			})
	case kApproval:
		approval := &store.Approval{Approved: true, By: "alice", Comment: "fine", At: now, Attempt: 1, Rule: approveVerdict.Rule}
		ok = move(store.Change{To: store.AwaitingApproval, Attempt: 1, Safety: approveVerdict}) &&
			move(store.Change{To: store.Pending, Attempt: 1, Approval: approval}) &&
			move(store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a"}) &&
			run(1, "w-1") &&
			move(store.Change{To: store.Failed, Attempt: 1, Reason: "exit status 1"}) &&
			get(func(j *store.Job) error {
				if j.Approval == nil || !reflect.DeepEqual(*j.Approval, *approval) {
					return fmt.Errorf("approval of %s: %+v, want %+v", id, j.Approval, approval)
				}
				return nil
			})
	case kCancel:
		ok = move(store.Change{To: store.Cancelled, Attempt: 1, Reason: "cancelled by the test"}) &&
			l.do("Start", func() error {
				_, _, err := l.st.Start(ctx, id, 1, "w-1", false, time.Minute, now)
				return wantConflict(err, store.Cancelled, 1)
			}) &&
			l.do("Transition", func() error {
				_, err := l.st.Transition(ctx, id, store.Change{To: store.Dispatched}, now)
				return wantConflict(err, store.Cancelled, 1)
			})
	case kTimeout:
		ok = move(store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a"}) && run(1, "w-1") &&
			move(store.Change{To: store.Timeout, Attempt: 1, Reason: "deadline exceeded"})
	case kDeny:
		ok = move(store.Change{To: store.Denied, Attempt: 1, Safety: denyVerdict, Reason: "denied by policy"})
	}
	if !ok {
		return last
	}
	l.do("Output", func() error {
		j, out, err := l.st.Output(ctx, id)
		if err != nil {
			return err
		}
		want := ""
		if j.State == store.Completed {
			want = output
		}
		if !reflect.DeepEqual(j, last) || out != want {
			return fmt.Errorf("Output(%s) = %+v, %q; want %+v, %q", id, j, out, last, want)
		}
		return nil
	})
	return last
}

// wantConflict is nil when err is a *ConflictError saying the job stood in
// state at attempt.
func wantConflict(err error, state store.State, attempt uint32) error {
	var ce *store.ConflictError
	if errors.As(err, &ce) && errors.Is(err, store.ErrConflict) && ce.State == state && ce.Attempt == attempt {
		return nil
	}
	return fmt.Errorf("want a conflict with the job %s at attempt %d, got: %s", state, attempt, fmt.Sprint(err))
}

// lists checks List on the tenant's jobs: every page, and filters.
func (l *lifecycle) lists(tenant string, made []store.NewJob, last map[string]*store.Job) {
	l.queries(tenant, made, last,
		store.Query{Tenant: tenant, Limit: 37},
		store.Query{Tenant: tenant, States: []store.State{store.Completed}, Limit: 50},
		store.Query{Tenant: tenant, States: []store.State{store.Failed, store.Timeout}, Topic: "job.echo"},
		store.Query{Tenant: tenant, Topic: "job.cluster.*", Limit: 11},
		store.Query{Tenant: tenant, Labels: map[string]string{"kind": "cancel"}},
		store.Query{Tenant: newTenant(l.t)},
	)
}

// queries checks that each query lists the jobs of made (last holds their
// records, when they changed since they were created) that it matches.
func (l *lifecycle) queries(tenant string, made []store.NewJob, last map[string]*store.Job, queries ...store.Query) {
	for _, q := range queries {
		var want []string
		for _, nj := range made {
			j := last[nj.ID]
			if j == nil {
				j = nj.Record(now)
			}
			if q.Tenant == tenant && q.Matches(j) {
				want = append(want, nj.ID)
			}
		}
		l.list(q, want)
	}
}

// list checks that q lists the jobs of want, newest first, page by page.
func (l *lifecycle) list(q store.Query, want []string) {
	want = slices.Clone(want)
	slices.Sort(want) // UUIDv7s: oldest first
	slices.Reverse(want)
	l.do("List", func() error {
		var got []string
		for range 1000 {
			jobs, next, err := l.st.List(l.ctx, q)
			if err != nil {
				return err
			}
			if q.Limit > 0 && len(jobs) > q.Limit {
				return fmt.Errorf("List(%+v) answered %d jobs", q, len(jobs))
			}
			got = append(got, ids(jobs)...)
			if next == "" {
				break
			}
			q.After = next
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("List(tenant %s, states %v, topic %q, labels %v, limit %d) = %d jobs, want %d:\n got %v\nwant %v",
				q.Tenant, q.States, q.Topic, q.Labels, q.Limit, len(got), len(want), got, want)
		}
		return nil
	})
}

// idempotency runs CreateJob and CreateJobs with idempotency keys of one
// tenant: an id outside its key's shard, the key reused for the same
// request and for another, and a batch after Redis lost its scripts. Every
// id of an idempotent create is in its key's shard (store.NewJobID, or
// store.InKeyShard for a test's id), as the store requires.
func (l *lifecycle) idempotency() {
	ctx := l.ctx
	tenant := newTenant(l.t)
	// keyed is job k of tenant under an idempotency key, with an id in the
	// key's shard.
	keyed := func(k int, key, fingerprint string) store.NewJob {
		nj := l.newJob(tenant, k)
		nj.IdempotencyKey, nj.Fingerprint = key, fingerprint
		nj.ID = store.InKeyShard(nj.ID, tenant, key)
		return nj
	}
	var made []string
	for k := range idemKeys {
		first := keyed(k, fmt.Sprintf("order-%d", k), fmt.Sprintf("request-%d", k))
		// An id outside the key's shard is refused, and takes nothing.
		wrong := first
		wrong.ID = otherShard(first.ID)
		l.do("CreateJob", func() error {
			existing, err := l.st.CreateJob(ctx, wrong, now)
			if err == nil || !strings.Contains(err.Error(), "idempotency key's shard") || existing != "" {
				return fmt.Errorf("CreateJob with id %s outside the shard of key %q = %q, %s; want the id refused", wrong.ID, wrong.IdempotencyKey, existing, fmt.Sprint(err))
			}
			return nil
		})
		if k%2 == 0 {
			// As the gateway makes it.
			id, err := store.NewJobID(tenant, first.IdempotencyKey)
			if !l.check("CreateJob", err) {
				continue
			}
			first.ID = id
		}
		if !l.create(first) {
			continue
		}
		made = append(made, first.ID)
		same := first
		same.ID = store.InKeyShard(newID(l.t), tenant, same.IdempotencyKey)
		l.do("CreateJob", func() error {
			existing, err := l.st.CreateJob(ctx, same, now)
			if err != nil || existing != first.ID {
				return fmt.Errorf("CreateJob reusing key %q for the same request = %q, %s; want %s", same.IdempotencyKey, existing, fmt.Sprint(err), first.ID)
			}
			return nil
		})
		other := first
		other.ID, other.Fingerprint = store.InKeyShard(newID(l.t), tenant, other.IdempotencyKey), "another request"
		l.do("CreateJob", func() error {
			existing, err := l.st.CreateJob(ctx, other, now)
			if existing != first.ID || !errors.Is(err, store.ErrIdempotencyMismatch) {
				return fmt.Errorf("CreateJob reusing key %q for another request = %q, %s; want %s, ErrIdempotencyMismatch", other.IdempotencyKey, existing, fmt.Sprint(err), first.ID)
			}
			return nil
		})
		for _, dup := range []string{wrong.ID, same.ID, other.ID} {
			l.do("Get", func() error {
				if _, err := l.st.Get(ctx, dup); !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("a refused or deduplicated job was made: Get(%s) = %s", dup, fmt.Sprint(err))
				}
				return nil
			})
		}
	}

	batch := make([]store.NewJob, idemKeys)
	for k := range batch {
		batch[k] = keyed(k, fmt.Sprintf("batch-%d", k), fmt.Sprintf("request-%d", k))
	}
	// In a batch too, an id outside its key's shard fails alone.
	strays := []store.NewJob{keyed(0, "stray", "request-stray"), l.newJob(tenant, 1)} // the second has no key: any id will do
	strays[0].ID = otherShard(strays[0].ID)
	l.enter("CreateJobs")
	if res := l.st.CreateJobs(ctx, strays, now); len(res) != 2 {
		l.check("CreateJobs", fmt.Errorf("CreateJobs of 2 jobs answered %d results", len(res)))
	} else {
		err := res[1].Err
		if res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "idempotency key's shard") {
			err = fmt.Errorf("CreateJobs with id %s outside the shard of key %q = %q, %s; want the id refused", strays[0].ID, strays[0].IdempotencyKey, res[0].Existing, fmt.Sprint(res[0].Err))
		}
		if l.check("CreateJobs", err) {
			made = append(made, strays[1].ID)
		}
	}
	okBatch := l.createBatch(batch, false)
	for k, ok := range okBatch {
		if ok {
			made = append(made, batch[k].ID)
		}
	}
	// The same keys again: even ones for the same request, odd ones for
	// another.
	dups := make([]store.NewJob, idemKeys)
	for k := range dups {
		dups[k] = batch[k]
		dups[k].ID = store.InKeyShard(newID(l.t), tenant, batch[k].IdempotencyKey)
		if k%2 == 1 {
			dups[k].Fingerprint = "another request"
		}
	}
	l.enter("CreateJobs")
	res := l.st.CreateJobs(ctx, dups, now)
	for k, c := range res {
		if !okBatch[k] {
			continue
		}
		var err error
		switch {
		case k%2 == 0 && (c.Existing != batch[k].ID || c.Err != nil):
			err = fmt.Errorf("CreateJobs reusing key %q for the same request = %q, %s; want %s", dups[k].IdempotencyKey, c.Existing, fmt.Sprint(c.Err), batch[k].ID)
		case k%2 == 1 && (c.Existing != batch[k].ID || !errors.Is(c.Err, store.ErrIdempotencyMismatch)):
			err = fmt.Errorf("CreateJobs reusing key %q for another request = %q, %s; want %s, ErrIdempotencyMismatch", dups[k].IdempotencyKey, c.Existing, fmt.Sprint(c.Err), batch[k].ID)
		}
		l.check("CreateJobs", err)
	}

	// Redis forgot the scripts (on a cluster, one master did): a batch
	// must still make each job once, and not take a job it made for a
	// duplicate of itself.
	if l.loseScripts != nil {
		fresh := make([]store.NewJob, idemKeys)
		for k := range fresh {
			fresh[k] = keyed(k, fmt.Sprintf("after-restart-%d", k), fmt.Sprintf("request-%d", k))
		}
		for k, ok := range l.createBatch(fresh, true) {
			if ok {
				made = append(made, fresh[k].ID)
			}
		}
	}

	l.list(store.Query{Tenant: tenant, Limit: 25}, made)
	l.cancelAll(made)
}

// otherShard is id moved to the next shard: its last hex digit changed.
func otherShard(id string) string {
	const hex = "0123456789abcdef"
	i := strings.IndexByte(hex, id[len(id)-1])
	return id[:len(id)-1] + string(hex[(i+1)%len(hex)])
}

// manyJobs lists a tenant with more jobs than List reads in one batch, so
// that the merge of the tenant's shard indexes goes on batch after batch,
// then cancels them (in one TransitionMany), which takes them out of the
// deadlines.
func (l *lifecycle) manyJobs(n int) {
	tenant := newTenant(l.t)
	jobs := make([]store.NewJob, n)
	for i := range jobs {
		jobs[i] = l.newJob(tenant, i)
	}
	var made []store.NewJob
	var ids []string
	for i, ok := range l.createBatch(jobs, false) {
		if ok {
			made = append(made, jobs[i])
			ids = append(ids, jobs[i].ID)
		}
	}
	l.queries(tenant, made, map[string]*store.Job{},
		store.Query{Tenant: tenant},
		store.Query{Tenant: tenant, Limit: scanBatch - 50},
		store.Query{Tenant: tenant, Limit: scanBatch + 1},
		store.Query{Tenant: tenant, Topic: "job.echo", Limit: 90},
		store.Query{Tenant: tenant, Labels: map[string]string{"n": "7"}},
		store.Query{Tenant: tenant, States: []store.State{store.Running}},
	)
	l.cancelAll(ids)
}

// cancelAll cancels jobs in one TransitionMany, so that jobs a lifecycle
// leaves PENDING do not linger in the deadlines of a cluster reused by a
// later run.
func (l *lifecycle) cancelAll(ids []string) {
	if len(ids) == 0 {
		return
	}
	moves := make([]store.Move, len(ids))
	for i, id := range ids {
		moves[i] = store.Move{ID: id, Change: store.Change{To: store.Cancelled, Reason: "cleaned up by the test"}}
	}
	l.enter("TransitionMany")
	res := l.st.TransitionMany(l.ctx, moves, now)
	if len(res) != len(moves) {
		l.check("TransitionMany", fmt.Errorf("TransitionMany of %d moves answered %d results", len(moves), len(res)))
		return
	}
	for i, m := range res {
		err := m.Err
		if err == nil && (m.Job == nil || m.Job.ID != ids[i] || m.Job.State != store.Cancelled) {
			err = fmt.Errorf("TransitionMany cancelling %s answered %+v", ids[i], m.Job)
		}
		l.check("TransitionMany", err)
	}
}

// tracked is a job of the deadline checks and the deadline it should have
// (zero: none).
type tracked struct {
	id       string
	state    store.State
	attempt  uint32
	deadline time.Time
}

// deadlines checks the deadlines the reconciler watches: the one each state
// gives a job (a Redrive after it is queued or due, twice the lease after a
// dispatch or a start, none when final or held for approval), ExtendLease,
// PutOffRedrive and WithLease move them, and Due, probed just before and at
// each deadline, finds exactly the jobs past theirs.
func (l *lifecycle) deadlines() {
	ctx, st := l.ctx, l.st
	tenant := newTenant(l.t)
	const lease, redrive = testLease, testRedrive
	long := st.WithLease(10 * lease)
	if !l.do("WithLease", func() error {
		if st.WithLease(0) != st || st.WithLease(lease) != st {
			return errors.New("WithLease of no lease, or of the store's own, made another store")
		}
		if long == st {
			return errors.New("WithLease of a longer lease answered the store itself")
		}
		return nil
	}) || !l.do("Redrive", func() error {
		if st.Redrive() != redrive || long.Redrive() != redrive {
			return fmt.Errorf("Redrive %s, and %s WithLease, want %s", st.Redrive(), long.Redrive(), redrive)
		}
		return nil
	}) {
		return
	}

	var jobs []*tracked
	add := func(i int) *tracked {
		nj := l.newJob(tenant, i)
		if !l.create(nj) {
			return nil
		}
		j := &tracked{id: nj.ID, state: store.Pending, attempt: 1, deadline: now.Add(redrive)}
		jobs = append(jobs, j)
		return j
	}
	move := func(st *store.Store, j *tracked, c store.Change, at time.Time, deadline time.Time) bool {
		return j != nil && l.do("Transition", func() error {
			got, err := st.Transition(ctx, j.id, c, at)
			if err != nil {
				return err
			}
			if got.State != c.To {
				return fmt.Errorf("Transition(%s to %s) answered state %s", j.id, c.To, got.State)
			}
			j.state, j.attempt, j.deadline = got.State, got.Attempt, deadline
			return nil
		})
	}
	start := func(j *tracked, worker string, lease time.Duration, at time.Time) bool {
		return j != nil && l.do("Start", func() error {
			got, _, err := st.Start(ctx, j.id, j.attempt, worker, false, lease, at)
			if err != nil {
				return err
			}
			if got.State != store.Running || got.WorkerID != worker {
				return fmt.Errorf("Start(%s) = %s on %q", j.id, got.State, got.WorkerID)
			}
			j.state, j.deadline = store.Running, at.Add(2*lease)
			return nil
		})
	}
	dispatch := func(st *store.Store, j *tracked, at time.Time, lease time.Duration) bool {
		return move(st, j, store.Change{To: store.Dispatched, Attempt: j.attempt, Pool: "pool-a"}, at, at.Add(2*lease))
	}
	missing := newID(l.t)

	// Queued: a Redrive from its creation.
	queued := add(0)
	// Dispatched: twice the lease, or twice a WithLease's lease.
	dispatched := add(1)
	ok := dispatch(st, dispatched, now, lease)
	longLease := add(2)
	ok = dispatch(long, longLease, now, 10*lease) && ok
	// Running: twice the lease Start was given, then ExtendLease's.
	running := add(3)
	ok = dispatch(st, running, now, lease) && start(running, "w-1", 3*lease, now.Add(lease)) && ok
	if ok {
		ok = l.do("ExtendLease", func() error {
			if err := st.ExtendLease(ctx, running.id, 1, "w-1", 4*lease, now.Add(2*lease)); err != nil {
				return err
			}
			running.deadline = now.Add(2*lease + 8*lease)
			return nil
		}) && ok
		for _, c := range []struct {
			id      string
			attempt uint32
			worker  string
			state   store.State
		}{
			{running.id, 1, "w-2", store.Running},    // another worker
			{running.id, 2, "w-1", store.Running},    // another attempt
			{queued.id, 1, "", store.Pending},        // not running
			{dispatched.id, 1, "", store.Dispatched}, // not started
		} {
			l.do("ExtendLease", func() error {
				return wantConflict(st.ExtendLease(ctx, c.id, c.attempt, c.worker, time.Hour, now), c.state, 1)
			})
		}
		l.do("ExtendLease", func() error {
			if err := st.ExtendLease(ctx, missing, 1, "w-1", time.Hour, now); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("ExtendLease of a missing job = %s, want ErrNotFound", fmt.Sprint(err))
			}
			return nil
		})
	}
	// Retried: a Redrive after the retry is due, or after the retry when
	// it is due at once.
	backoff := add(4)
	ok = dispatch(st, backoff, now, lease) && start(backoff, "w-1", lease, now) &&
		move(st, backoff, store.Change{To: store.Pending, Attempt: 1, Retry: true, Outcome: store.Failed, Due: now.Add(5 * time.Second)},
			now.Add(lease), now.Add(5*time.Second+redrive)) && ok
	retried := add(5)
	ok = dispatch(st, retried, now, lease) && start(retried, "w-1", lease, now) &&
		move(st, retried, store.Change{To: store.Pending, Attempt: 1, Retry: true, Outcome: store.Timeout, Due: now},
			now.Add(lease), now.Add(lease+redrive)) && ok
	// Put off: a Redrive from when the reconciler put it off.
	putOff := add(6)
	if putOff != nil {
		ok = l.do("PutOffRedrive", func() error {
			if err := st.PutOffRedrive(ctx, putOff.id, 1, now.Add(4*time.Second)); err != nil {
				return err
			}
			putOff.deadline = now.Add(4*time.Second + redrive)
			return nil
		}) && ok
		l.do("PutOffRedrive", func() error {
			return wantConflict(st.PutOffRedrive(ctx, putOff.id, 2, now.Add(time.Hour)), store.Pending, 1)
		})
		l.do("PutOffRedrive", func() error {
			return wantConflict(st.PutOffRedrive(ctx, dispatched.id, 1, now.Add(time.Hour)), store.Dispatched, 1)
		})
		l.do("PutOffRedrive", func() error {
			if err := st.PutOffRedrive(ctx, missing, 1, now); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("PutOffRedrive of a missing job = %s, want ErrNotFound", fmt.Sprint(err))
			}
			return nil
		})
	}
	// Final, or held for a person: none; approved: a Redrive from then.
	cancelled := add(7)
	ok = move(st, cancelled, store.Change{To: store.Cancelled, Attempt: 1}, now, time.Time{}) && ok
	completed := add(8)
	ok = dispatch(st, completed, now, lease) && start(completed, "w-1", lease, now) && completed != nil &&
		l.do("Finish", func() error {
			if _, err := st.Finish(ctx, completed.id, 1, "w-1", "done", store.Usage{}, now.Add(lease)); err != nil {
				return err
			}
			completed.state, completed.deadline = store.Completed, time.Time{}
			return nil
		}) && ok
	held := add(9)
	ok = move(st, held, store.Change{To: store.AwaitingApproval, Attempt: 1, Safety: approveVerdict}, now, time.Time{}) && ok
	approved := add(10)
	ok = move(st, approved, store.Change{To: store.AwaitingApproval, Attempt: 1, Safety: approveVerdict}, now, time.Time{}) &&
		move(st, approved, store.Change{To: store.Pending, Attempt: 1}, now.Add(3*time.Second), now.Add(3*time.Second+redrive)) && ok
	if !ok || len(jobs) != 11 {
		return
	}

	// Probe Due just before and at every deadline, and at the ends.
	probes := []time.Time{now, now.Add(time.Hour)}
	for _, j := range jobs {
		if !j.deadline.IsZero() {
			probes = append(probes, j.deadline.Add(-time.Millisecond), j.deadline)
		}
	}
	slices.SortFunc(probes, time.Time.Compare)
	probes = slices.Compact(probes)
	for _, at := range probes {
		var want []string
		for _, j := range jobs {
			if !j.deadline.IsZero() && !j.deadline.After(at) {
				want = append(want, j.id)
			}
		}
		l.due(tenant, at, want, func(got *store.Job) error {
			for _, j := range jobs {
				if j.id == got.ID && (got.State != j.state || got.Attempt != j.attempt) {
					return fmt.Errorf("Due answered job %s %s at attempt %d, want %s at attempt %d", got.ID, got.State, got.Attempt, j.state, j.attempt)
				}
			}
			return nil
		})
	}
	l.do("Due", func() error {
		got, err := st.Due(ctx, now.Add(time.Hour), 1)
		if err == nil && len(got) > store.Shards {
			err = fmt.Errorf("Due with a limit of 1 answered %d jobs, more than one per shard", len(got))
		}
		return err
	})

	// Leaving: a final state takes every job out of the deadlines.
	var live []string
	for _, j := range jobs {
		if !j.deadline.IsZero() || j.state == store.AwaitingApproval {
			live = append(live, j.id)
		}
	}
	l.cancelAll(live)
	l.due(tenant, now.Add(time.Hour), nil, nil)
}

// due checks that Due(at) lists, of the tenant's jobs, those of want; check,
// when set, checks each of the tenant's jobs it answered.
func (l *lifecycle) due(tenant string, at time.Time, want []string, check func(*store.Job) error) {
	l.do("Due", func() error {
		// Other tenants' jobs (earlier runs on the same cluster) may be due
		// too: a generous limit, and only the tenant's jobs are compared.
		jobs, err := l.st.Due(l.ctx, at, 1000)
		if err != nil {
			return err
		}
		var got []string
		for _, j := range jobs {
			if j.Tenant != tenant {
				continue
			}
			got = append(got, j.ID)
			if check != nil {
				if err := check(j); err != nil {
					return err
				}
			}
		}
		slices.Sort(got)
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			return fmt.Errorf("Due(now+%s) = %d of the tenant's jobs, want %d:\n got %v\nwant %v", at.Sub(now), len(got), len(want), got, want)
		}
		return nil
	})
}

// deadLetters checks the dead-letter queue: a final FAILED or TIMEOUT with
// DeadLetter (by Transition and by TransitionMany) lists the job, newest
// first, under its tenant; Revive gives it one more attempt, which can
// complete; DropDeadLetter takes it out, keeping its state.
func (l *lifecycle) deadLetters() {
	ctx, st := l.ctx, l.st
	tenant := newTenant(l.t)
	jobs := make([]store.NewJob, 4)
	for i := range jobs {
		jobs[i] = l.newJob(tenant, i)
		jobs[i].MaxAttempts = 1
	}
	for _, ok := range l.createBatch(jobs, false) {
		if !ok {
			return
		}
	}
	d1, d2, d3, d4 := jobs[0].ID, jobs[1].ID, jobs[2].ID, jobs[3].ID
	for _, id := range []string{d1, d2, d3, d4} {
		if !l.do("Transition", func() error {
			_, err := st.Transition(ctx, id, store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a"}, now)
			return err
		}) || !l.do("Start", func() error {
			_, _, err := st.Start(ctx, id, 1, "w-1", false, testLease, now)
			return err
		}) {
			return
		}
	}
	missing := newID(l.t)
	at := map[string]time.Time{d1: now.Add(time.Second), d2: now.Add(2 * time.Second), d3: now.Add(3 * time.Second)}

	// One pipeline: a dead letter, a plain failure, a missing job, a retry
	// that names no PENDING (refused before Redis), a wrong attempt.
	moves := []store.Move{
		{ID: d1, Change: store.Change{To: store.Failed, Attempt: 1, DeadLetter: true, Reason: "out of attempts"}},
		{ID: d4, Change: store.Change{To: store.Failed, Attempt: 1, Reason: "exit status 2"}},
		{ID: missing, Change: store.Change{To: store.Failed, DeadLetter: true}},
		{ID: d2, Change: store.Change{To: store.Running, Retry: true}},
		{ID: d3, Change: store.Change{To: store.Failed, Attempt: 2, DeadLetter: true}},
	}
	l.enter("TransitionMany")
	res := st.TransitionMany(ctx, moves, at[d1])
	if len(res) != len(moves) {
		l.check("TransitionMany", fmt.Errorf("TransitionMany of %d moves answered %d results", len(moves), len(res)))
		return
	}
	for i, want := range []func(store.Moved) error{
		func(m store.Moved) error {
			if m.Err != nil || m.Job.State != store.Failed || len(m.Job.Attempts) != 1 || m.Job.Attempts[0].State != store.Failed {
				return fmt.Errorf("TransitionMany moving %s to FAILED as a dead letter = %+v, %s", d1, m.Job, fmt.Sprint(m.Err))
			}
			return nil
		},
		func(m store.Moved) error {
			if m.Err != nil || m.Job.State != store.Failed || m.Job.Reason != "exit status 2" {
				return fmt.Errorf("TransitionMany moving %s to FAILED = %+v, %s", d4, m.Job, fmt.Sprint(m.Err))
			}
			return nil
		},
		func(m store.Moved) error {
			if !errors.Is(m.Err, store.ErrNotFound) {
				return fmt.Errorf("TransitionMany moving a missing job = %s, want ErrNotFound", fmt.Sprint(m.Err))
			}
			return nil
		},
		func(m store.Moved) error {
			if m.Err == nil || errors.Is(m.Err, store.ErrConflict) {
				return fmt.Errorf("TransitionMany with a retry to RUNNING = %s, want it refused as malformed", fmt.Sprint(m.Err))
			}
			return nil
		},
		func(m store.Moved) error { return wantConflict(m.Err, store.Running, 1) },
	} {
		l.check("TransitionMany", want(res[i]))
	}
	if !l.do("Transition", func() error {
		_, err := st.Transition(ctx, d2, store.Change{To: store.Timeout, Attempt: 1, DeadLetter: true, Reason: "deadline exceeded"}, at[d2])
		return err
	}) || !l.do("Transition", func() error {
		_, err := st.Transition(ctx, d3, store.Change{To: store.Failed, Attempt: 1, DeadLetter: true, Reason: "exit status 3"}, at[d3])
		return err
	}) {
		return
	}

	isDead := func(id string, want bool) bool {
		return l.do("DeadLetterAt", func() error {
			when, got, err := st.DeadLetterAt(ctx, id)
			switch {
			case err == nil && got != want:
				err = fmt.Errorf("DeadLetterAt(%s) = %t, want %t", id, got, want)
			case err == nil && got && !when.Equal(time.UnixMilli(at[id].UnixMilli())):
				err = fmt.Errorf("DeadLetterAt(%s) = %s, want %s (when it failed, to the ms)", id, when, at[id])
			}
			return err
		})
	}
	letters := func(tenant string, limit int, before time.Time, want ...string) bool {
		return l.do("DeadLetters", func() error {
			got, err := st.DeadLetters(ctx, tenant, limit, before)
			if err != nil {
				return err
			}
			var gotIDs []string
			for _, d := range got {
				gotIDs = append(gotIDs, d.Job.ID)
				if w, ok := at[d.Job.ID]; ok && !d.At.Equal(w) {
					return fmt.Errorf("DeadLetters: %s went there at %s, want %s", d.Job.ID, d.At, w)
				}
				if d.Job.State != store.Failed && d.Job.State != store.Timeout {
					return fmt.Errorf("DeadLetters: %s is %s", d.Job.ID, d.Job.State)
				}
			}
			if !slices.Equal(gotIDs, want) {
				from := "the newest"
				if !before.IsZero() {
					from = "before now+" + before.Sub(now).String()
				}
				return fmt.Errorf("DeadLetters(limit %d, from %s) = %v, want %v", limit, from, gotIDs, want)
			}
			return nil
		})
	}
	ok := isDead(d1, true) && isDead(d2, true) && isDead(d3, true) && isDead(d4, false) && isDead(missing, false) &&
		letters(tenant, 10, time.Time{}, d3, d2, d1) &&
		letters(tenant, 2, time.Time{}, d3, d2) &&
		letters(tenant, 10, at[d2], d1) &&
		letters(newTenant(l.t), 10, time.Time{})
	if !ok {
		return
	}

	// Revive: one more attempt, with room for it, under a deadline.
	revived := now.Add(10 * time.Second)
	ok = l.do("Revive", func() error {
		j, err := st.Revive(ctx, d1, "retried by hand", revived)
		if err != nil {
			return err
		}
		if j.State != store.Pending || j.Attempt != 2 || j.MaxAttempts != 2 || j.Reason != "retried by hand" || j.WorkerID != "" {
			return fmt.Errorf("Revive(%s) = %+v", d1, j)
		}
		return nil
	}) && isDead(d1, false)
	if !ok {
		return
	}
	l.due(tenant, revived.Add(testRedrive-time.Millisecond), nil, nil)
	l.due(tenant, revived.Add(testRedrive), []string{d1}, nil)
	l.do("Revive", func() error {
		_, err := st.Revive(ctx, d1, "again", revived)
		return wantConflict(err, store.Pending, 2)
	})
	l.do("Revive", func() error {
		_, err := st.Revive(ctx, d4, "not a dead letter", revived)
		return wantConflict(err, store.Failed, 1)
	})
	l.do("Revive", func() error {
		if _, err := st.Revive(ctx, missing, "gone", revived); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("Revive of a missing job = %s, want ErrNotFound", fmt.Sprint(err))
		}
		return nil
	})
	// The revived attempt runs to the end.
	ok = l.do("Transition", func() error {
		_, err := st.Transition(ctx, d1, store.Change{To: store.Dispatched, Attempt: 2, Pool: "pool-a"}, revived)
		return err
	}) && l.do("Start", func() error {
		_, _, err := st.Start(ctx, d1, 2, "w-2", false, testLease, revived)
		return err
	}) && l.do("Finish", func() error {
		j, err := st.Finish(ctx, d1, 2, "w-2", "done at last", store.Usage{}, revived)
		if err == nil && (j.State != store.Completed || len(j.Attempts) != 2 || j.Attempts[0].State != store.Failed || j.Attempts[1].State != store.Completed) {
			err = fmt.Errorf("Finish(%s) of the revived attempt = %+v", d1, j)
		}
		return err
	})
	if ok {
		l.due(tenant, now.Add(time.Hour), nil, nil)
	}

	// Drop: out of the queue, still TIMEOUT, and no longer revivable.
	drop := func(id string, want bool) bool {
		return l.do("DropDeadLetter", func() error {
			got, err := st.DropDeadLetter(ctx, id, 1, "", now)
			if err == nil && got != want {
				err = fmt.Errorf("DropDeadLetter(%s) = %t, want %t", id, got, want)
			}
			return err
		})
	}
	ok = drop(d2, true) && drop(d2, false) && isDead(d2, false) &&
		l.do("Get", func() error {
			j, err := st.Get(ctx, d2)
			if err == nil && j.State != store.Timeout {
				err = fmt.Errorf("Get(%s) after DropDeadLetter = %s, want TIMEOUT", d2, j.State)
			}
			return err
		}) &&
		l.do("Revive", func() error {
			_, err := st.Revive(ctx, d2, "dropped", revived)
			return wantConflict(err, store.Timeout, 1)
		}) &&
		letters(tenant, 10, time.Time{}, d3)
	if ok {
		// Leave no dead letter behind on a reused cluster.
		_ = drop(d3, true) && letters(tenant, 10, time.Time{})
	}
}

// TestPingClusterWithAMasterDown: on a Redis Cluster, Ping answers when any
// master does (one down stalls only its own shards), and fails, naming a
// master, when none does. The cluster is two "masters" given by hand to the
// client: a miniredis, and an address where nothing listens.
func TestPingClusterWithAMasterDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	mr := miniredis.RunT(t)
	cluster := func(first, second string) *store.Store {
		rdb := redis.NewClusterClient(&redis.ClusterOptions{
			ClusterSlots: func(context.Context) ([]redis.ClusterSlot, error) {
				return []redis.ClusterSlot{
					{Start: 0, End: 8191, Nodes: []redis.ClusterNode{{ID: "a", Addr: first}}},
					{Start: 8192, End: 16383, Nodes: []redis.ClusterNode{{ID: "b", Addr: second}}},
				}, nil
			},
			MaxRetries: -1, DialTimeout: time.Second,
		})
		t.Cleanup(func() { _ = rdb.Close() })
		return store.New(rdb, store.Options{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cluster(dead, mr.Addr()).Ping(ctx); err != nil {
		t.Errorf("Ping with one master of two down = %v, want nil", err)
	}
	// go-redis may show a loopback host as "": look for the port.
	_, port, _ := net.SplitHostPort(dead)
	err = cluster(dead, dead).Ping(ctx)
	if err == nil || !strings.Contains(err.Error(), "no master answers") || !strings.Contains(err.Error(), ":"+port) {
		t.Errorf("Ping with every master down = %v, want an error naming the master at port %s", err, port)
	}
}
