// Package daemon wires each CortexOS component to its NATS and Redis
// connections and runs it as a daemon (`cortexctl gateway|scheduler|safety|
// worker`). `cortexctl up` starts the same components through the same
// functions in one process, so what runs in dev is what runs in production.
package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/config"
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
	"github.com/cortex-os/core/plugins/middleware"
	"github.com/cortex-os/core/plugins/python"
	"github.com/cortex-os/core/plugins/sleep"
)

// instanceName names one component instance on the bus: component-<random>.
func instanceName(component string) string { return component + "-" + ids.Hex(4) }

var (
	_ scheduler.Checker = (*safety.Client)(nil)
	_ scheduler.Gate    = (*safety.Client)(nil)
)

// quietRedis drops go-redis's own log lines (dial retries printed to
// stderr); the errors they describe reach the caller as errors.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var silenceRedis sync.Once

// RedisEndpoint is a Redis server and how to sign in to it and trust it:
// the URL (redis:// or rediss:// for TLS, with an ACL user and password or
// a password alone), a file holding the password instead (Kubernetes
// secrets), and the TLS files of a rediss:// URL.
type RedisEndpoint struct {
	URL          string
	PasswordFile string // --redis-password-file
	TLS          config.TLSFiles
	// Cluster says the URL, plus its ?addr= seeds, names a Redis Cluster
	// (--redis-cluster; see scaleout.go).
	Cluster bool
}

// Authenticated says whether a password is given, in the URL or a file.
func (r RedisEndpoint) Authenticated() bool {
	if r.PasswordFile != "" {
		return true
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return false
	}
	p, ok := u.User.Password()
	return ok && p != ""
}

// Options parses the URL of a single server and applies the password file
// and TLS files. Errors name the flag, never a secret.
func (r RedisEndpoint) Options() (*redis.Options, error) {
	if err := r.checkSeeds(); err != nil {
		return nil, err
	}
	ro, err := redis.ParseURL(r.URL)
	if err != nil {
		return nil, fmt.Errorf("redis url %s: %w (want redis[s]://[user[:password]@]host:port[/db])", telemetry.RedactURL(r.URL), telemetry.URLError(err))
	}
	if err := r.secrets(&ro.Password, &ro.TLSConfig); err != nil {
		return nil, err
	}
	return ro, nil
}

// Check checks the settings (the URL, the files) without dialling.
func (r RedisEndpoint) Check() error {
	var err error
	if r.Cluster {
		_, err = r.ClusterOptions()
	} else {
		_, err = r.Options()
	}
	return err
}

// secrets applies the password file and the TLS files to what the URL
// gave.
func (r RedisEndpoint) secrets(password *string, tlsConfig **tls.Config) error {
	if r.PasswordFile != "" {
		if *password != "" {
			return errors.New("--redis-url holds a password and --redis-password-file gives another: keep one")
		}
		var err error
		if *password, err = config.ReadSecret("redis-password-file", r.PasswordFile); err != nil {
			return err
		}
	}
	if r.TLS.Any() {
		if *tlsConfig == nil {
			return errors.New("--redis-ca, --redis-cert and --redis-key are for TLS: use a rediss:// URL")
		}
		files := r.TLS
		files.Prefix = "redis" // in errors
		var err error
		if *tlsConfig, err = files.Config(*tlsConfig); err != nil {
			return err
		}
	}
	return nil
}

// pingTimeout bounds the first contact with Redis.
const pingTimeout = 3 * time.Second

// OpenStore connects to Redis, a single server or (r.Cluster) a Redis
// Cluster, and checks that it answers and is what r says it is.
func OpenStore(ctx context.Context, r RedisEndpoint, opts store.Options) (*store.Store, redis.UniversalClient, error) {
	silenceRedis.Do(func() { redis.SetLogger(quietRedis{}) })
	rdb, useTLS, err := r.client()
	if err != nil {
		return nil, nil, err
	}
	st := store.New(rdb, opts)
	pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	err = st.Ping(pingCtx)
	if mismatch := r.checkTopology(pingCtx, rdb, err); mismatch != nil {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("redis at %s: %w", telemetry.RedactURL(r.URL), mismatch)
	}
	if err != nil {
		_ = rdb.Close()
		return nil, nil, r.redisError(useTLS, err)
	}
	return st, rdb, nil
}

// redisError explains a failed first contact with Redis: a server that
// speaks only TLS drops a plain client without a word, and one that does
// not speak TLS answers a TLS client with plain text.
func (r RedisEndpoint) redisError(useTLS bool, err error) error {
	at := telemetry.RedactURL(r.URL)
	var refused redis.Error
	files := r.TLS
	files.Prefix = "redis" // in errors
	switch {
	case useTLS && files.Hint(err) != "":
		return fmt.Errorf("redis at %s: %s: %w", at, files.Hint(err), err)
	case useTLS && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("redis at %s: no answer to TLS within %s; a server without TLS gives none: check that it speaks TLS on that port, or use a redis:// URL: %w", at, pingTimeout, err)
	case !useTLS && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		return fmt.Errorf("redis at %s: the server closed the connection (%w); if it only speaks TLS, use a rediss:// URL and --redis-ca", at, err)
	case errors.As(err, &refused) && (strings.HasPrefix(refused.Error(), "WRONGPASS") || strings.HasPrefix(refused.Error(), "NOAUTH")):
		return fmt.Errorf("redis at %s: the server refused our credentials (check the user in the URL and the password): %w", at, err)
	}
	return fmt.Errorf("redis at %s: %w", at, err)
}

// StartSafety runs a safety kernel until ctx ends. It enforces the policy
// file if one is given, else the policy an operator last applied (kept in
// Redis), else the built-in default; and shadows files.Shadow, or the
// applied shadow policy. It reloads the files when they change or reload
// receives (SIGHUP). Close the returned connection to wait for in-flight
// checks.
func StartSafety(ctx context.Context, natsEP bus.Endpoint, st *store.Store, files safety.Files, reload <-chan os.Signal, m *telemetry.Metrics, log *slog.Logger) (*safety.Kernel, *bus.Conn, error) {
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
	conn, err := natsEP.Connect(name, log)
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
func ConnectDurable(ctx context.Context, natsEP bus.Endpoint, name string, log *slog.Logger) (*bus.Conn, error) {
	conn, err := natsEP.Connect(name, log)
	if err != nil {
		return nil, err
	}
	if err := conn.EnsureStreams(ctx, bus.FileStorage, 0); err != nil {
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
func StartScheduler(ctx context.Context, natsEP bus.Endpoint, st *store.Store, opts SchedulerOptions, log *slog.Logger) (*scheduler.Scheduler, error) {
	router := cmp.Or(opts.Routes, routing.Default())
	// Its own job events would only come back to be decoded and ignored.
	natsEP.NoEcho = true
	conn, err := ConnectDurable(ctx, natsEP, instanceName("scheduler"), log)
	if err != nil {
		return nil, err
	}
	so := []scheduler.Option{scheduler.WithMetrics(opts.Metrics)}
	if opts.Lease > 0 {
		so = append(so, scheduler.WithLease(opts.Lease))
	}
	s := scheduler.New(conn, st, safety.NewClient(conn, opts.SafetyTimeout).LogTo(log), router, log, so...)
	if err := s.Start(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// StartWorker runs a worker until it is stopped. opts must have passed
// worker.CheckOptions. The worker's bus name is its id.
func StartWorker(ctx context.Context, natsEP bus.Endpoint, st *store.Store, opts worker.Options, log *slog.Logger) (*worker.Worker, error) {
	if opts.ID == "" {
		opts.ID = worker.NewID(opts.Pool)
	}
	conn, err := ConnectDurable(ctx, natsEP, opts.ID, log)
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

// BuiltinPools names the pools PoolHandlers has plugins for.
func BuiltinPools() []string { return []string{"echo", python.Pool, PoolLLM} }

// PoolOptions configure the built-in plugins of PoolHandlers.
type PoolOptions struct {
	// Python is the interpreter of pool code-python: a path, or a name
	// looked up in PATH ("" for python3).
	Python string
	// LLM configures pool chat-llm (needed for it, nil otherwise).
	LLM *LLMFlags
	// Log receives the plugins' own warnings.
	Log *slog.Logger
}

// The worker measures its handlers' calls (middleware.Metrics).
var _ middleware.Recorder = (*telemetry.Metrics)(nil)

// handlerLimit bounds one call of a built-in plugin, whatever the job's
// own timeout (a job may have none): the longest nap of job.sleep, and a
// margin.
const handlerLimit = sleep.MaxDuration + time.Minute

// BuiltInPools are the pools PoolHandlers has plugins for: a worker of
// any other pool needs plugins of its own (README, "Write your own
// worker").
var BuiltInPools = []string{"echo", python.Pool, PoolLLM}

// PoolHandlers are the built-in plugins of a pool, each bounded by
// handlerLimit but job.echo, which waits on nothing (the worker adds panic
// recovery and metrics to every handler). about says what the pool's
// plugins need said when a worker starts ("" when nothing): for
// code-python, what Python jobs are isolated from here.
func PoolHandlers(pool string, o PoolOptions) (handlers map[string]plugins.Handler, about string, err error) {
	switch pool {
	case "echo":
		handlers = map[string]plugins.Handler{echo.Topic: echo.Handler, sleep.Topic: sleep.Handler}
	case python.Pool:
		r, err := python.New(python.Options{Python: o.Python, Log: o.Log})
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			// No such interpreter: the flag is wrong (exit status 2).
			return nil, "", &cmdutil.UsageError{Err: fmt.Errorf("--python: %w", err)}
		}
		if err != nil {
			return nil, "", err
		}
		handlers = map[string]plugins.Handler{python.Topic: r}
		about = fmt.Sprintf("python jobs run %s with %s", r.Python(), r.Isolation())
	case PoolLLM:
		if o.LLM == nil {
			o.LLM = &LLMFlags{}
		}
		h, cfg, err := o.LLM.Handler()
		if err != nil {
			return nil, "", err
		}
		handlers = map[string]plugins.Handler{llm.Topic: h}
		about = "chat jobs go to " + h.Endpoint() + ", model " + cmp.Or(cfg.Model, "of each chat request")
		if cfg.APIKey != "" {
			about += ", with an API key"
		}
	default:
		return nil, "", fmt.Errorf("pool %q has no built-in plugins; built-in pools: echo (job.echo, job.sleep), %s (%s, with --python), %s (%s, with --llm-base-url)",
			pool, python.Pool, python.Topic, PoolLLM, llm.Topic)
	}
	for topic, h := range handlers {
		// job.echo returns at once, waiting on nothing: bounding it would
		// only cost each job a timer and a context.
		if topic != echo.Topic {
			handlers[topic] = middleware.Timeout(handlerLimit)(h)
		}
	}
	return handlers, about, nil
}

// NewGateway returns a gateway on its own connection, routing by routes
// (routing.Default when nil).
func NewGateway(natsEP bus.Endpoint, st *store.Store, routes *routing.Router, opts gateway.Options, log *slog.Logger) (*gateway.Gateway, *bus.Conn, error) {
	opts.Router = cmp.Or(routes, routing.Default())
	if opts.Workers == nil {
		// Fed by heartbeats once the gateway starts; for ListWorkers/ListPools.
		opts.Workers = registry.New(registry.Options{Log: log})
	}
	conn, err := ConnectDurable(context.Background(), natsEP, instanceName("gateway"), log)
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
