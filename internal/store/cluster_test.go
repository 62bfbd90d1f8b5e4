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
	l := newLifecycle(t, store.New(rdb, store.Options{}), rec)
	// One master forgets the store's scripts (restarted, or a replica that
	// never saw them took over); the others keep them.
	l.loseScripts = func(ctx context.Context) error {
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

	// The jobs must have spread over every master, or this was no test of
	// a cluster: count the masters the creates that worked wrote to.
	t.Run("jobs spread over all masters", func(t *testing.T) {
		hit := map[string]int{}
		for _, u := range rec.all() {
			if u.script && u.err == nil && (u.method == "CreateJob" || u.method == "CreateJobs") {
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
	l := newLifecycle(t, store.New(rdb, store.Options{}), rec)
	l.loseScripts = func(ctx context.Context) error { return rdb.ScriptFlush(ctx).Err() }
	l.run(miniredisJobs)

	// Only a lifecycle that went all the way recorded every path's keys.
	if l.failed() {
		t.Errorf("the lifecycle failed on miniredis, so not every path's keys were recorded:\n%s", l.failures())
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
	"CreateJob", "CreateJobs", "ForgetIdempotencyKey", "Finish", "Get", "Input", "List", "LoadPolicy",
	"Output", "Ping", "RoundTrips", "SavePolicy", "SetPendingReason", "Start", "Transition",
}

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
// (half made by CreateJob, half by one CreateJobs), listing them, and
// idempotency keys.
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
			j, input, err := l.st.Start(ctx, id, attempt, worker, now)
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
	output := "output of " + id
	finish := func(attempt uint32) bool {
		return l.do("Finish", func() error {
			j, err := l.st.Finish(ctx, id, attempt, output, now)
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
			run(1, "w-1") && finish(1) &&
			l.do("Finish", func() error {
				_, err := l.st.Finish(ctx, id, 1, "again", now)
				return wantConflict(err, store.Completed, 1)
			})
	case kRetry:
		ok = move(store.Change{To: store.Scheduled, Attempt: 1}) &&
			move(store.Change{To: store.Dispatched, Attempt: 1, Pool: "pool-a", Safety: allowVerdict}) &&
			run(1, "w-1") &&
			move(store.Change{To: store.Pending, Attempt: 1, Retry: true, Outcome: store.Failed, Reason: "worker lost"}) &&
			move(store.Change{To: store.Dispatched, Attempt: 2, Pool: "pool-a"}) &&
			run(2, "w-2") && finish(2) &&
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
				_, _, err := l.st.Start(ctx, id, 1, "w-1", now)
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
	for _, q := range []store.Query{
		{Tenant: tenant, Limit: 37},
		{Tenant: tenant, States: []store.State{store.Completed}, Limit: 50},
		{Tenant: tenant, States: []store.State{store.Failed, store.Timeout}, Topic: "job.echo"},
		{Tenant: tenant, Topic: "job.cluster.*", Limit: 11},
		{Tenant: tenant, Labels: map[string]string{"kind": "cancel"}},
		{Tenant: newTenant(l.t)},
	} {
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
// tenant: reused for the same request, for another, forgotten, and after
// Redis lost its scripts.
func (l *lifecycle) idempotency() {
	ctx := l.ctx
	tenant := newTenant(l.t)
	var made []string
	for k := range idemKeys {
		first := l.newJob(tenant, k)
		first.IdempotencyKey, first.Fingerprint = fmt.Sprintf("order-%d", k), fmt.Sprintf("request-%d", k)
		if !l.create(first) {
			continue
		}
		made = append(made, first.ID)
		same := first
		same.ID = newID(l.t)
		l.do("CreateJob", func() error {
			existing, err := l.st.CreateJob(ctx, same, now)
			if err != nil || existing != first.ID {
				return fmt.Errorf("CreateJob reusing key %q for the same request = %q, %s; want %s", same.IdempotencyKey, existing, fmt.Sprint(err), first.ID)
			}
			return nil
		})
		other := first
		other.ID, other.Fingerprint = newID(l.t), "another request"
		l.do("CreateJob", func() error {
			existing, err := l.st.CreateJob(ctx, other, now)
			if existing != first.ID || !errors.Is(err, store.ErrIdempotencyMismatch) {
				return fmt.Errorf("CreateJob reusing key %q for another request = %q, %s; want %s, ErrIdempotencyMismatch", other.IdempotencyKey, existing, fmt.Sprint(err), first.ID)
			}
			return nil
		})
		for _, dup := range []string{same.ID, other.ID} {
			l.do("Get", func() error {
				if _, err := l.st.Get(ctx, dup); !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("a deduplicated job was made: Get(%s) = %s", dup, fmt.Sprint(err))
				}
				return nil
			})
		}
		if !l.do("ForgetIdempotencyKey", func() error { return l.st.ForgetIdempotencyKey(ctx, tenant, first.IdempotencyKey) }) {
			continue
		}
		again := first
		again.ID = newID(l.t)
		if l.create(again) { // a forgotten key makes a new job
			made = append(made, again.ID)
		}
	}

	batch := make([]store.NewJob, idemKeys)
	for k := range batch {
		batch[k] = l.newJob(tenant, k)
		batch[k].IdempotencyKey, batch[k].Fingerprint = fmt.Sprintf("batch-%d", k), fmt.Sprintf("request-%d", k)
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
		dups[k].ID = newID(l.t)
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
			fresh[k] = l.newJob(tenant, k)
			fresh[k].IdempotencyKey, fresh[k].Fingerprint = fmt.Sprintf("after-restart-%d", k), fmt.Sprintf("request-%d", k)
		}
		for k, ok := range l.createBatch(fresh, true) {
			if ok {
				made = append(made, fresh[k].ID)
			}
		}
	}

	l.list(store.Query{Tenant: tenant, Limit: 25}, made)
}
