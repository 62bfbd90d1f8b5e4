package up

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/devstack"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/ids"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/worker"
	"github.com/cortex-os/core/plugins/python"
)

// ClusterOptions configures a whole stack in one process.
type ClusterOptions struct {
	// Listen is the gateway's address (127.0.0.1:0 picks a free port).
	Listen string
	// NATSURL and RedisURL point at remote servers; empty starts the
	// embedded ones.
	NATSURL  string
	RedisURL string
	// RedisCluster says RedisURL names a Redis Cluster.
	RedisCluster bool
	// StreamReplicas is the durable streams' replicas (0: keep those of
	// existing streams, create with 1).
	StreamReplicas int
	// DataDir holds the embedded JetStream's storage (temporary if empty).
	DataDir string
	// NATSPort and RedisPort are the embedded servers' ports (0: free ones).
	NATSPort, RedisPort int
	// Routes maps topics to pools, with their job defaults (when nil, the
	// default routes of the pools up runs).
	Routes *routing.Router
	// SafetyTimeout bounds each safety decision.
	SafetyTimeout time.Duration
	// WorkerParallel bounds the in-process echo worker's jobs at once.
	WorkerParallel int
	// NoSafety leaves the safety kernel out, for tests of failing closed.
	NoSafety bool
	// Policy names the policy files the kernel enforces and shadows.
	Policy safety.Files
	// Reload makes the kernel reload its policy files (SIGHUP).
	Reload <-chan os.Signal
	// Lease is the jobs' lease (store.DefaultLease when zero).
	Lease time.Duration
	// Python, when set, starts a worker of pool code-python too, running
	// this interpreter (a path, or a name looked up in PATH).
	Python string
	// LLM, when set, starts a worker of pool chat-llm too, on the
	// OpenAI-compatible API it names.
	LLM *daemon.LLMFlags
	// Models are listed by the gateway's GET /v1/models (gateway.Options.Models).
	Models []string
}

// ServedPool is a pool up runs a worker of.
type ServedPool struct {
	Pool     string
	WorkerID string
	Topics   []string
	// About is what the pool's plugins say about themselves (python's
	// isolation), or "".
	About string
}

// Cluster is a running stack: gateway, scheduler, safety kernel and an echo
// worker, on embedded or remote NATS and Redis.
type Cluster struct {
	Stack       *devstack.Stack // nil when both URLs were given
	GatewayAddr string
	APIKey      string
	NATSURL     string
	RedisURL    string
	Store       *store.Store
	WorkerID    string
	// Kernel is the in-process safety kernel (nil with NoSafety).
	Kernel *safety.Kernel
	// WorkerTopics lists the topics the in-process echo worker serves.
	WorkerTopics []string
	// Pools lists every pool up runs a worker of, echo first.
	Pools []ServedPool
	// Streams says where the durable streams keep jobs in flight: on disk
	// (bus.FileStorage) or in memory.
	Streams bus.Storage
	// Metrics is every component's registry, served on the gateway's
	// /metrics.
	Metrics *telemetry.Metrics

	cancel      context.CancelFunc
	stopServing context.CancelFunc // the gateway's, which stops last
	gateway     *gateway.Gateway
	serveDone   chan error
	gatewayConn *bus.Conn
	scheduler   *scheduler.Scheduler
	workers     []*worker.Worker
	routes      *routing.Router
	safetyConn  *bus.Conn
	conns       []*bus.Conn // every component's, for Dropped
	rdb         redis.UniversalClient
	closeOnce   sync.Once
}

// StartCluster boots every component and returns once the gateway accepts
// submits that will be carried through.
func StartCluster(ctx context.Context, opts ClusterOptions, log *slog.Logger) (c *Cluster, err error) {
	pools := []string{"echo"}
	if opts.Python != "" {
		pools = append(pools, python.Pool)
	}
	if opts.LLM != nil {
		pools = append(pools, daemon.PoolLLM)
	}
	if opts.Routes == nil {
		// Only topics that a worker here serves: the others are refused
		// at submit rather than left waiting.
		opts.Routes = routing.DefaultOf(pools...)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c = &Cluster{cancel: cancel, NATSURL: opts.NATSURL, RedisURL: opts.RedisURL, Metrics: telemetry.NewMetrics(), routes: opts.Routes}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if opts.NATSURL == "" || opts.RedisURL == "" {
		c.Stack, err = devstack.Start(ctx, devstack.Options{
			DataDir: opts.DataDir, NoNATS: opts.NATSURL != "", NoRedis: opts.RedisURL != "",
			NATSPort: opts.NATSPort, RedisPort: opts.RedisPort,
		})
		if err != nil && (opts.NATSPort != 0 || opts.RedisPort != 0) {
			return c, fmt.Errorf("%w (--nats-port and --redis-port pick the ports; 0 picks free ones)", err)
		}
		if err != nil {
			return c, err
		}
		if c.NATSURL == "" {
			c.NATSURL = c.Stack.NATSURL
		}
		if c.RedisURL == "" {
			c.RedisURL = c.Stack.RedisURL
		}
	}
	storeOpts := store.Options{Lease: opts.Lease}
	c.Store, c.rdb, err = daemon.OpenStore(ctx, daemon.RedisEndpoint{URL: c.RedisURL, Cluster: opts.RedisCluster}, storeOpts)
	if err != nil {
		return c, err
	}
	// Each component gets its own store on the shared client, as the
	// daemons each have theirs: a safety check's prompt read never waits
	// behind a worker's batch of scripts in one queue.
	ownStore := func() *store.Store { return store.New(c.rdb, storeOpts) }
	// The streams are made before any component asks for them: on disk
	// under --data-dir (or on a remote server), else in memory.
	if c.Streams, err = ensureStreams(ctx, c.NATSURL, opts.NATSURL == "" && opts.DataDir == "", opts.StreamReplicas, log); err != nil {
		return c, err
	}
	natsEP := bus.Endpoint{URL: c.NATSURL}
	if opts.NATSURL == "" {
		// The components reach the embedded server over in-process pipes:
		// no loopback socket, no syscalls per message.
		natsEP.InProcess = c.Stack.NATS
	}
	if !opts.NoSafety {
		c.Kernel, c.safetyConn, err = daemon.StartSafety(runCtx, natsEP, ownStore(), opts.Policy, opts.Reload, c.Metrics, log.With("component", "safety"))
		if err != nil {
			return c, err
		}
		c.conns = append(c.conns, c.safetyConn)
	}
	c.scheduler, err = daemon.StartScheduler(runCtx, natsEP, ownStore(), daemon.SchedulerOptions{
		Routes: opts.Routes, SafetyTimeout: opts.SafetyTimeout, Lease: opts.Lease, Metrics: c.Metrics,
	}, log.With("component", "scheduler"))
	if err != nil {
		return c, err
	}
	c.conns = append(c.conns, c.scheduler.Conn())
	for _, pool := range pools {
		wlog := log.With("component", "worker")
		handlers, about, err := daemon.PoolHandlers(pool, daemon.PoolOptions{Python: opts.Python, LLM: opts.LLM, Log: wlog})
		if err != nil {
			return c, fmt.Errorf("pool %s: %w", pool, err)
		}
		var capabilities []string
		if pool == daemon.PoolLLM {
			capabilities = opts.LLM.Capabilities()
		}
		maxParallel := 0 // the worker's default, for the pools that do real work
		if pool == "echo" {
			maxParallel = opts.WorkerParallel
		}
		w, err := daemon.StartWorker(runCtx, natsEP, ownStore(), worker.Options{
			Pool:         pool,
			MaxParallel:  maxParallel,
			Handlers:     handlers,
			Lease:        opts.Lease,
			Metrics:      c.Metrics,
			Capabilities: capabilities,
		}, wlog)
		if err != nil {
			return c, err
		}
		c.workers = append(c.workers, w)
		c.conns = append(c.conns, w.Conn())
		c.Pools = append(c.Pools, ServedPool{Pool: pool, WorkerID: w.ID(), Topics: slices.Sorted(maps.Keys(handlers)), About: about})
	}
	c.WorkerID, c.WorkerTopics = c.Pools[0].WorkerID, c.Pools[0].Topics

	c.APIKey = "cx_dev_" + ids.Hex(16)
	g, conn, err := daemon.NewGateway(natsEP, c.Store, opts.Routes, gateway.Options{
		Keys:    map[string]gateway.Principal{c.APIKey: {Tenant: gateway.InsecureTenant, Admin: true}},
		Metrics: c.Metrics,
		Models:  opts.Models,
	}, log.With("component", "gateway"))
	if err != nil {
		return c, err
	}
	c.gatewayConn = conn
	c.conns = append(c.conns, conn)
	ln, err := listen(opts.Listen)
	if err != nil {
		return c, err
	}
	c.GatewayAddr = ln.Addr().String()
	c.gateway = g
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	c.stopServing = stopServing
	c.serveDone = make(chan error, 1)
	go func() { c.serveDone <- g.Serve(serveCtx, ln) }()
	return c, nil
}

func listen(addr string) (net.Listener, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	return cmdutil.Listen("listen", addr)
}

// Unserved lists the pools that routes lead to and no worker of the
// stack serves (another process may run their workers).
func (c *Cluster) Unserved() []string {
	var out []string
	for _, pool := range c.routes.Pools() {
		if !slices.ContainsFunc(c.Pools, func(p ServedPool) bool { return p.Pool == pool }) {
			out = append(out, pool)
		}
	}
	return out
}

// routedTopics lists the topics (and topic patterns) routes lead to pool.
func (c *Cluster) routedTopics(pool string) []string {
	var out []string
	for _, t := range c.routes.Topics() {
		if p, ok := c.routes.Pool(t); ok && p == pool {
			out = append(out, t)
		}
	}
	return out
}

// TryTopic is a topic to try the stack with: routed to a pool the stack
// serves, and handled by its worker there (job.echo when it is).
func (c *Cluster) TryTopic() (string, bool) {
	var found []string
	for _, p := range c.Pools {
		for _, t := range p.Topics {
			if pool, ok := c.routes.Pool(t); ok && pool == p.Pool {
				found = append(found, t)
			}
		}
	}
	if len(found) == 0 {
		return "", false
	}
	if slices.Contains(found, "job.echo") {
		return "job.echo", true
	}
	return found[0], true
}

// Stopping says what stopping waits for: the running jobs of each worker
// (c.workers and c.Pools go together, in the same order). A stack whose
// records are in memory loses the jobs still running then.
func (c *Cluster) Stopping() string {
	running := 0
	notes := make([]string, len(c.workers))
	for i, w := range c.workers {
		running += w.Running()
		notes[i] = w.Stopping()
		if len(c.workers) > 1 {
			notes[i] = "pool " + c.Pools[i].Pool + ": " + notes[i]
		}
	}
	note := strings.Join(notes, "; ")
	if running > 0 && c.Stack != nil && c.Stack.Redis != nil {
		note += "; but this up keeps its job records in memory (embedded Redis), so any still running then are lost when it exits (--redis-url with --data-dir keeps them)"
	}
	return note
}

// Dropped counts the malformed packets the components have dropped.
func (c *Cluster) Dropped() uint64 {
	var n uint64
	for _, conn := range c.conns {
		n += conn.Dropped()
	}
	return n
}

// Wait blocks until ctx ends (nil) or the gateway stops serving (its
// error). Call Close after it.
func (c *Cluster) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-c.serveDone:
		c.serveDone = nil
		return err
	}
}

// stopAcceptingWait bounds the wait for submits in progress when up stops:
// a store call's limit (5s) and a hand-off's (3s), with room.
const stopAcceptingWait = 10 * time.Second

// Close stops the stack in an order that finishes what was accepted: the
// gateway stops taking new jobs; the scheduler decides and dispatches the
// submits it received; the worker finishes its jobs and reports them; the
// scheduler records those results; meanwhile the gateway still serves
// reads and streams, so whoever follows a job sees it end; then the
// gateway, the safety kernel, Redis and the embedded servers stop. It
// returns the gateway's serving error, if any.
func (c *Cluster) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.gateway != nil {
			c.gateway.StopAccepting(stopAcceptingWait)
		}
		c.cancel()
		if c.scheduler != nil {
			c.scheduler.StopSubmits()
		}
		for _, w := range c.workers {
			w.Stop()
		}
		if c.scheduler != nil {
			c.scheduler.Close()
		}
		if c.stopServing != nil {
			c.stopServing()
		}
		if c.serveDone != nil {
			err = <-c.serveDone
		}
		if c.gatewayConn != nil {
			c.gatewayConn.Close()
		}
		if c.safetyConn != nil {
			c.safetyConn.Close()
		}
		if c.rdb != nil {
			_ = c.rdb.Close()
		}
		if c.Stack != nil {
			c.Stack.Close()
		}
	})
	return err
}

// ensureStreams creates the durable streams, in memory when asked, and
// reports the storage they have (an existing stream keeps its own).
func ensureStreams(ctx context.Context, natsURL string, inMemory bool, replicas int, log *slog.Logger) (bus.Storage, error) {
	conn, err := bus.Connect(natsURL, "up-"+ids.Hex(4), log)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	storage := bus.FileStorage
	if inMemory {
		storage = bus.MemoryStorage
	}
	if err := conn.EnsureStreams(ctx, storage, replicas); err != nil {
		return 0, err
	}
	return conn.StreamStorage(ctx)
}
