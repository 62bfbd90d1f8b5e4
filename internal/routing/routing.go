// Package routing owns the table that maps job topics to the worker pools
// that serve them, and each pool's job defaults (max attempts, timeout,
// priority). The table comes from a routing.yaml file (Load, Parse), from
// topic=pool pairs (NewRouter, ParseRoutes), or is the built-in one
// (Default). The gateway reads it to refuse topics no pool serves and to
// fill in what a submit left unset; the scheduler reads it to dispatch. A
// Router is immutable and safe for concurrent use; this package holds no
// other state and does no I/O beyond reading the file it is given.
package routing

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cortex-os/core/internal/bus"
)

// Bounds of the pool defaults, the same as those of a submit.
const (
	MaxAttempts = 10
	MaxTimeout  = 24 * time.Hour
	MaxPriority = bus.MaxPriority
)

// jobPrefix is the part every routed topic starts with.
const jobPrefix = "job."

// Defaults are what a job of a pool gets for the options its submit left
// unset.
type Defaults struct {
	// MaxAttempts is how many times a failing job runs (1-10).
	MaxAttempts uint32
	// Timeout bounds one attempt; 0 is no limit.
	Timeout time.Duration
	// Priority orders queued jobs, 0-9, higher first.
	Priority int32
}

// BuiltinDefaults apply to pools that set none, and to topics outside job.*:
// one attempt, no time limit, priority 0.
var BuiltinDefaults = Defaults{MaxAttempts: 1}

// Router maps job topics to the pools that serve them: an exact topic
// first, then the pattern with the longest prefix.
type Router struct {
	exact map[string]string
	// patterns by prefix ("job.chat." for job.chat.*), longest first.
	patterns []pattern
	defaults map[string]Defaults
}

type pattern struct {
	prefix string // with its trailing dot
	pool   string
}

// DefaultRoutes is the topic → pool table the daemons start with when
// given no routes: the topics of the built-in pools.
func DefaultRoutes() map[string]string {
	return map[string]string{"job.echo": "echo", "job.sleep": "echo", "job.code.python": "code-python", "job.chat.llm": "chat-llm"}
}

// Default returns the router of DefaultRoutes, with built-in defaults.
func Default() *Router { return DefaultOf() }

// defaultPoolDefaults are the job defaults of built-in pools that differ
// from BuiltinDefaults: a chat job whose model server was rate limited or
// briefly down is worth another try (the chat-llm plugin marks the errors
// that are not as permanent).
var defaultPoolDefaults = map[string]Defaults{"chat-llm": {MaxAttempts: 3}}

// DefaultOf returns the router of the DefaultRoutes served by pools (all
// of them when none are named), with the built-in pools' defaults: `up`
// routes only to the pools it runs.
func DefaultOf(pools ...string) *Router {
	routes := DefaultRoutes()
	if len(pools) > 0 {
		maps.DeleteFunc(routes, func(_, pool string) bool { return !slices.Contains(pools, pool) })
	}
	r, err := NewRouter(routes)
	if err != nil {
		panic(err) // DefaultRoutes is valid; TestDefault checks it.
	}
	for pool, d := range defaultPoolDefaults {
		if _, ok := r.defaults[pool]; ok {
			r.defaults[pool] = d
		}
	}
	return r
}

// NewRouter checks a topic → pool table, as given by --route. A topic may
// be a pattern ending in .* (job.chat.* serves every topic under
// job.chat.). Every pool gets BuiltinDefaults.
func NewRouter(routes map[string]string) (*Router, error) {
	b := newBuilder()
	for _, topic := range slices.Sorted(maps.Keys(routes)) {
		pool := routes[topic]
		if !bus.ValidToken(pool) {
			return nil, fmt.Errorf("route %s=%s: pool must be 1-64 characters of a-z, 0-9, - and _", topic, pool)
		}
		if msg := checkTopic(topic); msg != "" {
			return nil, fmt.Errorf("route %s=%s: %s", topic, pool, msg)
		}
		b.pool(pool, BuiltinDefaults)
		b.claim(topic, pool)
	}
	return b.router(), nil
}

// ParseRoutes reads "topic=pool" pairs, as given to --route.
func ParseRoutes(pairs []string) (map[string]string, error) {
	routes := map[string]string{}
	for _, p := range pairs {
		topic, pool, ok := strings.Cut(p, "=")
		if !ok {
			return nil, fmt.Errorf("route %q: want topic=pool, e.g. job.echo=echo", p)
		}
		if prev, dup := routes[topic]; dup && prev != pool {
			return nil, fmt.Errorf("route %q: topic %s is already routed to pool %s; a topic goes to one pool", p, topic, prev)
		}
		routes[topic] = pool
	}
	return routes, nil
}

// Pool returns the pool serving topic: the pool that lists topic itself,
// else the pool of the longest pattern that matches it.
func (r *Router) Pool(topic string) (string, bool) {
	if pool, ok := r.exact[topic]; ok {
		return pool, true
	}
	for _, p := range r.patterns {
		if strings.HasPrefix(topic, p.prefix) {
			return p.pool, true
		}
	}
	return "", false
}

// Routable reports whether topic may be submitted: any topic outside job.*
// (the safety policy decides those), and job.* topics that a pool serves.
func (r *Router) Routable(topic string) bool {
	if !strings.HasPrefix(topic, jobPrefix) {
		return true
	}
	_, ok := r.Pool(topic)
	return ok
}

// Topics lists the routable topics and patterns (as job.chat.*), sorted.
func (r *Router) Topics() []string {
	out := slices.Collect(maps.Keys(r.exact))
	for _, p := range r.patterns {
		out = append(out, p.prefix+"*")
	}
	slices.Sort(out)
	return out
}

// Pools lists the pool names, sorted.
func (r *Router) Pools() []string { return slices.Sorted(maps.Keys(r.defaults)) }

// Defaults returns the job defaults of pool; BuiltinDefaults for a pool
// the table does not name (or "", a topic outside job.*).
func (r *Router) Defaults(pool string) Defaults {
	if d, ok := r.defaults[pool]; ok {
		return d
	}
	return BuiltinDefaults
}

// checkTopic returns why topic (or pattern) cannot be routed, or "".
func checkTopic(topic string) string {
	if prefix, ok := strings.CutSuffix(topic, ".*"); ok {
		if prefix != "job" && (!strings.HasPrefix(prefix, jobPrefix) || !bus.ValidTopic(prefix)) {
			return "a pattern is a job.* topic followed by .*, e.g. job.chat.*"
		}
		if strings.Count(prefix, ".") >= 7 {
			return "the pattern matches nothing: a topic has at most 8 tokens"
		}
		return ""
	}
	if !strings.HasPrefix(topic, jobPrefix) {
		return "only job.* topics are routed to pools, e.g. job.echo"
	}
	if !bus.ValidTopic(topic) {
		return "not a valid topic: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo, or a pattern such as job.chat.*"
	}
	return ""
}

// builder collects checked routes into a Router. A topic claimed twice
// keeps its first pool; callers report the clash.
type builder struct {
	exact    map[string]string
	patterns map[string]string
	defaults map[string]Defaults
}

func newBuilder() *builder {
	return &builder{exact: map[string]string{}, patterns: map[string]string{}, defaults: map[string]Defaults{}}
}

func (b *builder) pool(name string, d Defaults) { b.defaults[name] = d }

// claim routes topic (checked by checkTopic) to pool and returns the pool
// that already had it, if any.
func (b *builder) claim(topic, pool string) (string, bool) {
	m, key := b.exact, topic
	if prefix, ok := strings.CutSuffix(topic, "*"); ok {
		m, key = b.patterns, prefix
	}
	if prev, ok := m[key]; ok {
		return prev, true
	}
	m[key] = pool
	return "", false
}

func (b *builder) router() *Router {
	r := &Router{exact: b.exact, defaults: b.defaults}
	for prefix, pool := range b.patterns {
		r.patterns = append(r.patterns, pattern{prefix: prefix, pool: pool})
	}
	slices.SortFunc(r.patterns, func(a, b pattern) int {
		return cmp.Or(cmp.Compare(len(b.prefix), len(a.prefix)), strings.Compare(a.prefix, b.prefix))
	})
	return r
}
