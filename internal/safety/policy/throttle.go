package policy

import (
	"container/list"
	"fmt"
	"sync"
	"time"
)

// maxBuckets bounds the token buckets a Policy keeps: one per (THROTTLE
// rule, tenant, topic) seen recently, about 150 bytes each plus the tenant
// and topic strings, so a few MiB at most.
const maxBuckets = 1 << 16

// evictScan is how many least-recently-used buckets a full table examines
// for an idle one before refusing a new bucket.
const evictScan = 16

type verdict uint8

const (
	allowed verdict = iota
	overRate
	tableFull
)

type bucketKey struct {
	rule          int
	tenant, topic string
}

type bucket struct {
	key    bucketKey
	rate   Rate
	tokens float64
	last   time.Time
	elem   *list.Element
}

// level returns the bucket's tokens at now.
func (b *bucket) level(now time.Time) float64 {
	elapsed := now.Sub(b.last).Seconds()
	if elapsed < 0 {
		elapsed = 0 // a clock step back refills nothing
	}
	return min(float64(b.rate.Burst), b.tokens+elapsed*b.rate.PerSecond)
}

// limiter holds the token buckets of a Policy's THROTTLE rules, in
// least-recently-used order. A bucket that has refilled to its burst is
// idle: forgetting it changes nothing, so a full table evicts idle buckets.
// When the table is full of active buckets a new (tenant, topic) is denied
// rather than letting anybody exceed a rate: fail closed, and existing
// tenants keep their buckets.
type limiter struct {
	mu      sync.Mutex
	max     int
	buckets map[bucketKey]*bucket
	lru     list.List // of *bucket, most recently used first
}

func newLimiter(maxBuckets int) *limiter {
	return &limiter{max: maxBuckets, buckets: make(map[bucketKey]*bucket)}
}

// allow reports whether a job may pass rule r's rate for tenant and topic
// at now; with take it consumes a token.
func (l *limiter) allow(r *rule, tenant, topic string, now time.Time, take bool) verdict {
	key := bucketKey{rule: r.index, tenant: tenant, topic: topic}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if !take {
			if len(l.buckets) >= l.max && !l.canEvict(now) {
				return tableFull
			}
			return allowed
		}
		if len(l.buckets) >= l.max && !l.evict(now) {
			return tableFull
		}
		b = &bucket{key: key, rate: r.rate, tokens: float64(r.rate.Burst), last: now}
		b.elem = l.lru.PushFront(b)
		l.buckets[key] = b
	}
	level := b.level(now)
	if level < 1 {
		return overRate
	}
	if take {
		b.tokens = level - 1
		if now.After(b.last) {
			b.last = now
		}
		l.lru.MoveToFront(b.elem)
	}
	return allowed
}

// describe reports the bucket of rule r for tenant and topic at now.
func (l *limiter) describe(r *rule, tenant, topic string, now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	level := float64(r.rate.Burst)
	if b, ok := l.buckets[bucketKey{rule: r.index, tenant: tenant, topic: topic}]; ok {
		level = b.level(now)
	}
	return fmt.Sprintf("within rate (%g/s, burst %d): %.1f tokens left before this job", r.rate.PerSecond, r.rate.Burst, level)
}

// evict removes an idle bucket among the least recently used ones and
// reports whether it did.
func (l *limiter) evict(now time.Time) bool {
	e := l.lru.Back()
	for i := 0; i < evictScan && e != nil; i++ {
		b, _ := e.Value.(*bucket)
		prev := e.Prev()
		if b.level(now) >= float64(b.rate.Burst) {
			l.lru.Remove(e)
			delete(l.buckets, b.key)
			return true
		}
		e = prev
	}
	return false
}

// canEvict reports whether evict would succeed, without evicting.
func (l *limiter) canEvict(now time.Time) bool {
	e := l.lru.Back()
	for i := 0; i < evictScan && e != nil; i++ {
		b, _ := e.Value.(*bucket)
		if b.level(now) >= float64(b.rate.Burst) {
			return true
		}
		e = e.Prev()
	}
	return false
}

// len returns the number of buckets held.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// Inherit gives p the token buckets of prev's THROTTLE rules that p has
// unchanged (same name, condition and rate), as they stand now: a policy
// reloaded, or a shadow tried beside the active one, goes on from there
// rather than from full buckets. Full buckets let a burst through after
// every reload, and made a shadow disagree with the identical rule in
// force. Call it before p decides anything.
func (p *Policy) Inherit(prev *Policy) {
	if p == nil || prev == nil || p == prev || p.limiter == nil || prev.limiter == nil {
		return
	}
	same := map[int]int{} // prev's rule index: p's
	for _, r := range p.rules {
		for _, q := range prev.rules {
			if r.decision == Throttle && q.decision == Throttle && q.name == r.name && q.when == r.when && q.rate == r.rate {
				same[q.index] = r.index
			}
		}
	}
	if len(same) == 0 {
		return
	}
	// Copied under prev's lock, added under p's: never both at once.
	var copies []bucket
	prev.limiter.mu.Lock()
	for e := prev.limiter.lru.Back(); e != nil; e = e.Prev() { // least recently used first
		if b, _ := e.Value.(*bucket); b != nil {
			if idx, ok := same[b.key.rule]; ok {
				c := *b
				c.key.rule, c.elem = idx, nil
				copies = append(copies, c)
			}
		}
	}
	prev.limiter.mu.Unlock()
	l := p.limiter
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range copies {
		b := &copies[i]
		if _, ok := l.buckets[b.key]; ok || len(l.buckets) >= l.max {
			continue
		}
		b.elem = l.lru.PushFront(b)
		l.buckets[b.key] = b
	}
}
