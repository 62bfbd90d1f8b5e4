// Package routing owns the table that maps job topics to the worker pools
// that serve them. The gateway reads it to refuse topics no pool serves; the
// scheduler reads it to dispatch. It holds no state beyond the table.
package routing

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cortex-os/core/internal/bus"
)

// Router maps job topics to the pools that serve them.
type Router struct {
	routes map[string]string
}

// DefaultRoutes is the routing table `up` and the daemons start with.
func DefaultRoutes() map[string]string {
	return map[string]string{"job.echo": "echo", "job.sleep": "echo"}
}

// NewRouter checks a topic → pool table.
func NewRouter(routes map[string]string) (*Router, error) {
	for topic, pool := range routes {
		if !bus.ValidTopic(topic) || !strings.HasPrefix(topic, "job.") {
			return nil, fmt.Errorf("route %s=%s: topic must look like job.<kind>", topic, pool)
		}
		if !bus.ValidToken(pool) {
			return nil, fmt.Errorf("route %s=%s: pool must be 1-64 characters of a-z, 0-9, - and _", topic, pool)
		}
	}
	return &Router{routes: maps.Clone(routes)}, nil
}

// ParseRoutes reads "topic=pool" pairs, as given to --route.
func ParseRoutes(pairs []string) (map[string]string, error) {
	routes := map[string]string{}
	for _, p := range pairs {
		topic, pool, ok := strings.Cut(p, "=")
		if !ok {
			return nil, fmt.Errorf("route %q: want topic=pool, e.g. job.echo=echo", p)
		}
		routes[topic] = pool
	}
	return routes, nil
}

// Pool returns the pool serving topic.
func (r *Router) Pool(topic string) (string, bool) {
	pool, ok := r.routes[topic]
	return pool, ok
}

// Routable reports whether topic may be submitted: any topic outside job.*
// (the safety policy decides those), and job.* topics that a pool serves.
func (r *Router) Routable(topic string) bool {
	if !strings.HasPrefix(topic, "job.") {
		return true
	}
	_, ok := r.routes[topic]
	return ok
}

// Topics lists the routable topics, sorted.
func (r *Router) Topics() []string { return slices.Sorted(maps.Keys(r.routes)) }
