// Package daemon wires each CortexOS component to its NATS and Redis
// connections and runs it as a daemon (`cortexctl gateway|scheduler|safety|
// worker`). `cortexctl up` starts the same components through the same
// functions in one process, so what runs in dev is what runs in production.
package daemon

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/ids"
	"github.com/cortex-os/core/internal/registry"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/scheduler"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/worker"
	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/echo"
	"github.com/cortex-os/core/plugins/llm"
	"github.com/cortex-os/core/plugins/sleep"
)

// instanceName names one component instance on the bus: component-<random>.
func instanceName(component string) string { return component + "-" + ids.Hex(4) }

var _ scheduler.Checker = (*safety.Client)(nil)

// quietRedis drops go-redis's own log lines (dial retries printed to
// stderr); the errors they describe reach the caller as errors.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var silenceRedis sync.Once

// OpenStore connects to Redis at redisURL and checks that it answers.
func OpenStore(ctx context.Context, redisURL string, opts store.Options) (*store.Store, *redis.Client, error) {
	silenceRedis.Do(func() { redis.SetLogger(quietRedis{}) })
	ro, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, nil, fmt.Errorf("redis url %s: %w (want redis://[user:password@]host:port[/db])", telemetry.RedactURL(redisURL), telemetry.URLError(err))
	}
	ro.PoolSize = 256
	rdb := redis.NewClient(ro)
	st := store.New(rdb, opts)
	pingCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := st.Ping(pingCtx); err != nil {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("redis at %s: %w", telemetry.RedactURL(redisURL), err)
	}
	return st, rdb, nil
}

// StartSafety runs a safety kernel until ctx ends. It enforces the policy
// file if one is given, else the policy an operator last applied (kept in
// Redis), else the built-in default; and shadows files.Shadow, or the
// applied shadow policy. It reloads the files when they change or reload
// receives (SIGHUP). Close the returned connection to wait for in-flight
// checks.
func StartSafety(ctx context.Context, natsURL string, st *store.Store, files safety.Files, reload <-chan os.Signal, m *telemetry.Metrics, log *slog.Logger) (*safety.Kernel, *bus.Conn, error) {
	name := instanceName("safety")
	k := safety.NewKernel(name, st, log)
	k.SetMetrics(m)
	if err := k.LoadFiles(files); err != nil {
		return nil, nil, err
	}
	for _, shadow := range []bool{false, true} {
		if shadow && files.Shadow != "" || !shadow && files.Policy != "" {
			continue
		}
		if _, err := k.LoadStored(ctx, st, shadow); err != nil {
			if shadow {
				// The shadow is never enforced: run without it and say why.
				log.Error("the applied shadow policy does not load; running without a shadow", "err", err)
				continue
			}
			// Enforcing the built-in policy instead would decide with
			// rules nobody put in force: fail closed by not starting.
			return nil, nil, fmt.Errorf("the applied policy (policy:active in Redis) does not load, so this kernel will not decide: %w; "+
				"apply a good one with 'cortexctl policy apply FILE', or start the kernel with --policy FILE", err)
		}
	}
	conn, err := bus.Connect(natsURL, name, log)
	if err != nil {
		return nil, nil, err
	}
	m.Dropped("safety", conn.Dropped)
	if err := k.Start(ctx, conn, st); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if files.Policy != "" || files.Shadow != "" || reload != nil {
		go func() {
			if err := k.Watch(ctx, files, reload); err != nil {
				log.Error("policy files are not watched; reload with SIGHUP or cortexctl policy apply", "err", err)
			}
		}()
	}
	return k, conn, nil
}

// ConnectDurable dials NATS and makes sure the durable streams exist: a
// daemon creates them on file storage if no one has yet (`up` creates them
// first, on the storage it chose).
func ConnectDurable(ctx context.Context, natsURL, name string, log *slog.Logger) (*bus.Conn, error) {
	conn, err := bus.Connect(natsURL, name, log)
	if err != nil {
		return nil, err
	}
	if err := conn.EnsureStreams(ctx, bus.FileStorage); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// SchedulerOptions configures StartScheduler.
type SchedulerOptions struct {
	// Routes is the routing table (routing.Default when nil).
	Routes        *routing.Router
	SafetyTimeout time.Duration
	// Lease is how long a placed job may go without news (scheduler.DefaultLease).
	Lease time.Duration
	// Metrics records what the scheduler does (nil: nothing).
	Metrics *telemetry.Metrics
}

// StartScheduler runs a scheduler until it is closed.
func StartScheduler(ctx context.Context, natsURL string, st *store.Store, opts SchedulerOptions, log *slog.Logger) (*scheduler.Scheduler, error) {
	router := cmp.Or(opts.Routes, routing.Default())
	conn, err := ConnectDurable(ctx, natsURL, instanceName("scheduler"), log)
	if err != nil {
		return nil, err
	}
	so := []scheduler.Option{scheduler.WithMetrics(opts.Metrics)}
	if opts.Lease > 0 {
		so = append(so, scheduler.WithLease(opts.Lease))
	}
	s := scheduler.New(conn, st, safety.NewClient(conn, opts.SafetyTimeout), router, log, so...)
	if err := s.Start(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// StartWorker runs a worker until it is stopped. opts must have passed
// worker.CheckOptions. The worker's bus name is its id.
func StartWorker(ctx context.Context, natsURL string, st *store.Store, opts worker.Options, log *slog.Logger) (*worker.Worker, error) {
	if opts.ID == "" {
		opts.ID = worker.NewID(opts.Pool)
	}
	conn, err := ConnectDurable(ctx, natsURL, opts.ID, log)
	if err != nil {
		return nil, err
	}
	w, err := worker.New(conn, st, opts, log)
	if err == nil {
		err = w.Start(ctx)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return w, nil
}

// PoolHandlers are the built-in plugins of a pool.
func PoolHandlers(pool string) (map[string]plugins.Handler, error) {
	switch pool {
	case "echo":
		return map[string]plugins.Handler{echo.Topic: echo.Handler, sleep.Topic: sleep.Handler}, nil
	}
	return nil, fmt.Errorf("pool %q has no built-in plugins; built-in pools: echo (job.echo, job.sleep), %s (%s, with --llm-base-url)", pool, PoolLLM, llm.Topic)
}

// NewGateway returns a gateway on its own connection, routing by routes
// (routing.Default when nil).
func NewGateway(natsURL string, st *store.Store, routes *routing.Router, opts gateway.Options, log *slog.Logger) (*gateway.Gateway, *bus.Conn, error) {
	opts.Router = cmp.Or(routes, routing.Default())
	if opts.Workers == nil {
		// Fed by heartbeats once the gateway starts; for ListWorkers/ListPools.
		opts.Workers = registry.New(registry.Options{Log: log})
	}
	conn, err := ConnectDurable(context.Background(), natsURL, instanceName("gateway"), log)
	if err != nil {
		return nil, nil, err
	}
	opts.Metrics.Dropped("gateway", conn.Dropped)
	g, err := gateway.New(st, conn, opts, log)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return g, conn, nil
}
