package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	"github.com/cortex-os/core/internal/worker"
)

// Options are the flags every daemon shares: where NATS and Redis are,
// how to sign in to them and trust them. Secrets are read from files (or
// the URLs) when a connection is made; Options holds only paths.
type Options struct {
	NATS     bus.Endpoint
	Redis    RedisEndpoint
	Insecure bool
	LogLevel string
	// StreamReplicas: see scaleout.go.
	StreamReplicas int
	streams        bool // the daemon creates the durable streams
	// what is the daemon as messages call it ("safety kernel"); the
	// command's name when empty.
	what string
}

func (o *Options) addFlags(cmd *cobra.Command, redis bool) {
	fs := cmd.Flags()
	fs.StringVar(&o.NATS.URL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL (tls://... for TLS), with credentials (nats://user:pass@host:port) unless --nats-creds, --nats-nkey or --nats-user gives them")
	fs.StringVar(&o.NATS.Creds, "nats-creds", "", "NATS credentials file (.creds: user JWT and nkey seed)")
	fs.StringVar(&o.NATS.NKey, "nats-nkey", "", "file holding the nkey seed to sign in to NATS with")
	fs.StringVar(&o.NATS.User, "nats-user", "", "NATS user, with --nats-password-file")
	fs.StringVar(&o.NATS.PasswordFile, "nats-password-file", "", "file holding the NATS user's password")
	o.NATS.TLS.Prefix = "nats"
	addTLSFlags(cmd, &o.NATS.TLS, "NATS")
	if redis {
		fs.StringVar(&o.Redis.URL, "redis-url", "redis://127.0.0.1:6379/0", "Redis URL (rediss://... for TLS), with an ACL user and its password (redis://user:pass@host:port/db) or a password alone (redis://:pass@...); the password may come from --redis-password-file")
		fs.StringVar(&o.Redis.PasswordFile, "redis-password-file", "", "file holding the Redis password (of the user in --redis-url, if any)")
		o.Redis.TLS.Prefix = "redis"
		addTLSFlags(cmd, &o.Redis.TLS, "Redis")
		AddRedisClusterFlag(cmd, &o.Redis.Cluster)
	}
	if o.streams {
		AddStreamReplicasFlag(cmd, &o.StreamReplicas)
	}
	fs.BoolVar(&o.Insecure, "insecure", false, "start without authentication (NATS/Redis credentials, API keys); never in production")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	cmdutil.BindConfig(cmd)
	if o.streams {
		CheckRanges(cmd, StreamReplicasRange(&o.StreamReplicas))
	}
}

// name is the daemon as messages call it: "safety kernel", "scheduler".
func (o *Options) name(cmd *cobra.Command) string {
	if o.what != "" {
		return o.what
	}
	return cmd.Name()
}

// addTLSFlags adds --<prefix>-ca, --<prefix>-cert and --<prefix>-key.
func addTLSFlags(cmd *cobra.Command, f *config.TLSFiles, server string) {
	fs := cmd.Flags()
	caNote := "; turns TLS on"
	if f.Prefix == "redis" {
		caNote = "; TLS needs a rediss:// URL"
	}
	fs.StringVar(&f.CA, f.Prefix+"-ca", "", "CA bundle (PEM) that signs the "+server+" server's certificate (default: the system's)"+caNote)
	fs.StringVar(&f.Cert, f.Prefix+"-cert", "", "client certificate (PEM) to present to "+server+", with --"+f.Prefix+"-key")
	fs.StringVar(&f.Key, f.Prefix+"-key", "", "private key (PEM) of --"+f.Prefix+"-cert")
}

// checkAuth refuses settings that do not go together or name files that
// cannot be read, and, unless --insecure, a start without credentials.
// Nothing is dialled.
func (o *Options) checkAuth(redis bool) error {
	if err := o.NATS.Check(); err != nil {
		return &cmdutil.UsageError{Err: err}
	}
	if redis {
		if err := o.Redis.Check(); err != nil {
			return &cmdutil.UsageError{Err: err}
		}
	}
	if o.Insecure {
		return nil
	}
	if !o.NATS.Authenticated() {
		return &cmdutil.UsageError{Err: errors.New(
			"no NATS credentials: give --nats-creds FILE, --nats-nkey FILE, --nats-user NAME with --nats-password-file FILE, " +
				"or nats://user:pass@host:port in --nats-url; or pass --insecure to run without authentication")}
	}
	if redis && !o.Redis.Authenticated() {
		return &cmdutil.UsageError{Err: errors.New(
			"no Redis password: give --redis-password-file FILE (with the ACL user in the URL, rediss://user@host:port/0), " +
				"or redis://:pass@host:port/db in --redis-url; or pass --insecure to run without authentication")}
	}
	return nil
}

// unauthenticated names the servers the daemon reaches without
// credentials, which --insecure allows.
func (o *Options) unauthenticated(redis bool) []string {
	var off []string
	if !o.NATS.Authenticated() {
		off = append(off, "NATS")
	}
	if redis && !o.Redis.Authenticated() {
		off = append(off, "Redis")
	}
	return off
}

// env is what a daemon runs with once its flags have passed: a context
// that ends at SIGINT/SIGTERM, a logger and, for daemons that keep state,
// the store.
type env struct {
	ctx     context.Context
	cancel  context.CancelFunc
	metrics *telemetry.Metrics
	log     *slog.Logger
	store   *store.Store
	rdb     redis.UniversalClient
}

func (e *env) close() {
	e.cancel()
	if e.rdb != nil {
		_ = e.rdb.Close()
	}
}

// prepare checks credentials, builds the logger and opens the store (when
// redis is set). Call close on the result.
func (o *Options) prepare(cmd *cobra.Command, redis bool) (*env, error) {
	if err := o.checkAuth(redis); err != nil {
		return nil, err
	}
	if f := cmd.Flags().Lookup("metrics-listen"); f != nil && f.Value.String() != "" {
		if err := cmdutil.CheckListen(f.Name, f.Value.String()); err != nil {
			return nil, err
		}
	}
	TuneGC()
	SurviveClosedOutput()
	if off := o.unauthenticated(redis); len(off) > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: --insecure: the %s connects to %s without authentication; never run so in production\n",
			o.name(cmd), strings.Join(off, " and "))
	}
	replicas, err := StreamReplicas(cmd, o.StreamReplicas)
	if err != nil {
		return nil, err
	}
	log, err := cmdutil.Logger(cmd, o.LogLevel)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	e := &env{ctx: ctx, cancel: cancel, log: log.With("component", cmd.Name()), metrics: telemetry.NewMetrics()}
	if redis {
		if e.store, e.rdb, err = OpenStore(ctx, o.Redis, store.Options{}); err != nil {
			cancel()
			return nil, err
		}
	}
	if o.streams {
		if err := EnsureStreams(ctx, o.NATS, bus.FileStorage, replicas, e.log); err != nil {
			e.close()
			return nil, err
		}
	}
	return e, nil
}

// serveHealth serves /metrics, /healthz and /readyz on addr (none when
// empty) and says where.
func (e *env) serveHealth(cmd *cobra.Command, addr string, conn *bus.Conn, kernel bool) error {
	if addr == "" {
		return nil
	}
	h := HealthHandler(e.metrics, func(ctx context.Context) error { return Ready(ctx, conn, e.store, kernel) }, e.log)
	at, err := ServeHealth(e.ctx, addr, h)
	if err != nil && !cmd.Flags().Changed("metrics-listen") {
		// The default port is taken (another worker on this host, say):
		// take any free one rather than refuse to run.
		e.log.Warn("the default metrics address is taken; using a free port", "addr", addr, "err", err)
		at, err = ServeHealth(e.ctx, "127.0.0.1:0", h)
	}
	if err != nil {
		return &cmdutil.UsageError{Err: err}
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "metrics on http://%s/metrics (and /healthz, /readyz)\n", at)
	return nil
}

// AddMetricsFlag adds --metrics-listen with a component's default.
func AddMetricsFlag(cmd *cobra.Command, addr *string, def string) {
	cmd.Flags().StringVar(addr, "metrics-listen", def, "address to serve /metrics, /healthz and /readyz on (\"\" for none; when the default is taken, a free port, which the daemon prints)")
}

// storeWith is the env's store with lease as the store's lease.
func (e *env) storeWith(lease time.Duration) *store.Store {
	return e.store.WithLease(lease)
}

// AddLeaseFlag adds --lease.
func AddLeaseFlag(cmd *cobra.Command, lease *time.Duration) {
	cmd.Flags().DurationVar(lease, "lease", store.DefaultLease,
		"how long a job may go without news from its worker before another worker takes it; the reconciler gives up on it after twice this")
}

// serve blocks until the command's context ends, then says that it stops
// and what it waits for (stopping, when not nil), and calls stop.
func serve(cmd *cobra.Command, what string, stopping func() string, stop func()) error {
	fmt.Fprintf(cmd.ErrOrStderr(), "%s running; Ctrl-C or SIGTERM stops it\n", what)
	<-cmd.Context().Done()
	SayStopping(cmd.ErrOrStderr(), what, stopping)
	stop()
	return nil
}

// SayStopping tells a person who stopped a daemon (or up) what it still
// does, and how not to wait.
func SayStopping(w io.Writer, what string, stopping func() string) {
	note := ""
	if stopping != nil {
		note = ": " + stopping()
	}
	fmt.Fprintf(w, "%s stopping%s (Ctrl-C or SIGTERM again stops at once)\n", what, note)
}

// NewCmdSafety runs the safety kernel.
func NewCmdSafety() *cobra.Command {
	o := &Options{what: "safety kernel"}
	var files safety.Files
	var metricsAddr string
	cmd := &cobra.Command{
		Use:   "safety",
		Short: "Run the safety kernel as a daemon",
		Long: `Run the safety kernel: it answers every scheduler's checks on sys.safety.check
and publishes each decision on sys.safety.decision.

It enforces --policy FILE if given, else the policy last put in force with
'cortexctl policy apply' (kept in Redis), else the built-in default policy
(see 'cortexctl policy show'). --shadow-policy FILE is evaluated beside it and
recorded, never enforced. Files are reloaded when they change and on SIGHUP;
a file that does not compile is refused with file:line and the policy in force
stays. Redis is needed to read prompts for rules that look at the text.`,
		Example: `  cortexctl safety --nats-url nats://cortex:secret@127.0.0.1:4222 --redis-url redis://:secret@127.0.0.1:6379/0
  cortexctl safety --policy /etc/cortex/policy.yaml --shadow-policy /etc/cortex/next.yaml ...
  kill -HUP $(pidof cortexctl)   # reload the policy files now`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := CheckPolicyFiles(files); err != nil {
				return err
			}
			e, err := o.prepare(cmd, true)
			if err != nil {
				return err
			}
			defer e.close()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			k, conn, err := StartSafety(e.ctx, o.NATS, e.store, files, hup, e.metrics, e.log)
			if err != nil {
				return err
			}
			if err := e.serveHealth(cmd, metricsAddr, conn, false); err != nil {
				conn.Close()
				return err
			}
			st := k.Status().GetActive()
			fmt.Fprintf(cmd.ErrOrStderr(), "enforcing policy %s %s (%s)\n", st.GetName(), st.GetHash(), st.GetOrigin())
			return serve(cmd, "safety kernel", nil, conn.Close)
		},
	}
	o.addFlags(cmd, true)
	AddPolicyFlags(cmd, &files)
	AddMetricsFlag(cmd, &metricsAddr, "127.0.0.1:9471")
	return cmd
}

// AddPolicyFlags adds --policy and --shadow-policy.
func AddPolicyFlags(cmd *cobra.Command, files *safety.Files) {
	cmd.Flags().StringVar(&files.Policy, "policy", "", "policy file to enforce (default: the applied policy, else the built-in one)")
	cmd.Flags().StringVar(&files.Shadow, "shadow-policy", "", "policy file to evaluate beside it, recorded but never enforced")
}

// CheckPolicyFiles refuses files that do not compile before anything
// starts, with file:line errors.
func CheckPolicyFiles(files safety.Files) error {
	for _, f := range []string{files.Policy, files.Shadow} {
		if f == "" {
			continue
		}
		if _, err := policy.Load(f); err != nil {
			return &cmdutil.UsageError{Err: err}
		}
	}
	return nil
}

// NewCmdScheduler runs a scheduler.
func NewCmdScheduler() *cobra.Command {
	o := &Options{streams: true}
	var routes RouteFlags
	var safetyTimeout, lease time.Duration
	var metricsAddr string
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run a scheduler as a daemon",
		Long: `Run a scheduler: it takes submitted jobs from the durable submit stream
(JetStream CORTEX_SUBMIT), asks the safety kernel, records denials, queues
allowed jobs by priority and releases them into their pool's stream
(CORTEX_JOBS) while the pool has free capacity, retries failed attempts with
exponential backoff and jitter, and reconciles: a PENDING job nobody handed on
is re-driven, and an attempt whose lease ran out (--lease, twice over) is
retried or ends TIMEOUT in the dead-letter queue. Several schedulers share
the work safely. SIGTERM stops taking jobs, finishes those held, and exits.`,
		Example: "  cortexctl scheduler --nats-url nats://cortex:secret@127.0.0.1:4222 --redis-url redis://:secret@127.0.0.1:6379/0 --routes routing.yaml",
		Args:    cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			table, err := routes.Router()
			if err != nil {
				return err
			}
			e, err := o.prepare(cmd, true)
			if err != nil {
				return err
			}
			defer e.close()
			s, err := StartScheduler(e.ctx, o.NATS, e.storeWith(lease), SchedulerOptions{Routes: table, SafetyTimeout: safetyTimeout, Lease: lease, Metrics: e.metrics}, e.log)
			if err != nil {
				return err
			}
			if err := e.serveHealth(cmd, metricsAddr, s.Conn(), true); err != nil {
				s.Close()
				return err
			}
			return serve(cmd, "scheduler", func() string { return "finishing the jobs it holds" }, s.Close)
		},
	}
	o.addFlags(cmd, true)
	AddRouteFlags(cmd, &routes)
	cmd.Flags().DurationVar(&safetyTimeout, "safety-timeout", safety.DefaultTimeout, "how long to wait for a safety decision before denying the job")
	AddLeaseFlag(cmd, &lease)
	AddMetricsFlag(cmd, &metricsAddr, "127.0.0.1:9472")
	CheckRanges(cmd, SafetyTimeoutRange(&safetyTimeout), LeaseRange(&lease))
	return cmd
}

// NewCmdWorker runs a worker.
func NewCmdWorker() *cobra.Command {
	o := &Options{streams: true}
	wo := worker.Options{}
	var metricsAddr, pythonPath string
	var llmFlags LLMFlags
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker of one pool as a daemon",
		Long: `Run a worker: it pulls jobs of its pool from the durable job stream (consumer
pool-<pool>), never more than it has free slots, runs the plugin registered
for each job's topic, records or reports the result and only then acks the
job. While a job runs the worker renews its lease (--lease); a job whose
worker dies goes to another worker when the lease runs out, and one taken
--max-deliver times without an ack goes to the dead-letter queue. Workers of
a pool share its jobs; start more to add capacity. SIGTERM drains: no new
jobs, running ones finish (or go back to the stream after a grace period).
Built-in pools: echo (job.echo returns its prompt; job.sleep waits for the
duration in its prompt); code-python (job.code.python runs its prompt
as Python with --python, in a sandbox: a temporary directory, a stripped
environment, time, CPU, memory, file, process and output limits, and no
network where Linux user namespaces allow it; the worker says which); and
chat-llm (job.chat.llm runs the prompt, or a chat request in JSON, on the
OpenAI-compatible API at --llm-base-url, streaming the answer; the API key
comes from --llm-api-key-file or $CORTEX_LLM_API_KEY).`,
		Example: `  cortexctl worker --pool echo --nats-url nats://cortex:secret@127.0.0.1:4222 --redis-url redis://:secret@127.0.0.1:6379/0
  cortexctl worker --pool code-python --python /usr/bin/python3 --nats-url ... --redis-url ...
  cortexctl worker --pool chat-llm --llm-base-url http://127.0.0.1:11434/v1 --llm-model llama3.2 --nats-url ... --redis-url ...`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if llmFlags.Set() && wo.Pool != PoolLLM {
				return &cmdutil.UsageError{Err: fmt.Errorf("the --llm-* flags configure pool %s; this worker serves pool %s", PoolLLM, wo.Pool)}
			}
			log, err := cmdutil.Logger(cmd, o.LogLevel)
			if err != nil {
				return err
			}
			var about string
			wo.Handlers, about, err = PoolHandlers(wo.Pool, PoolOptions{Python: pythonPath, LLM: &llmFlags, Log: log.With("component", cmd.Name())})
			if err != nil {
				var usage *cmdutil.UsageError
				if errors.As(err, &usage) {
					return err
				}
				return &cmdutil.UsageError{Err: fmt.Errorf("--pool %s: %w", wo.Pool, err)}
			}
			if wo.Pool == PoolLLM && len(wo.Capabilities) == 0 {
				wo.Capabilities = llmFlags.Capabilities()
			}
			if err := worker.CheckOptions(wo); err != nil {
				return &cmdutil.UsageError{Err: err}
			}
			e, err := o.prepare(cmd, true)
			if err != nil {
				return err
			}
			defer e.close()
			if about != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), about)
			}
			wo.Metrics = e.metrics
			w, err := StartWorker(e.ctx, o.NATS, e.storeWith(wo.Lease), wo, e.log)
			if err != nil {
				return err
			}
			if err := e.serveHealth(cmd, metricsAddr, w.Conn(), false); err != nil {
				w.Stop()
				return err
			}
			return serve(cmd, fmt.Sprintf("worker %s (pool %s)", w.ID(), wo.Pool), w.Stopping, w.Stop)
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().StringVar(&wo.Pool, "pool", "echo", "the pool this worker serves: echo, code-python, chat-llm, or your own")
	cmd.Flags().StringVar(&pythonPath, "python", "python3", "the Python interpreter of pool code-python: a path, or a name looked up in PATH")
	cmd.Flags().StringVar(&wo.ID, "id", "", "worker id on the bus (default <pool>-<random>)")
	cmd.Flags().IntVar(&wo.MaxParallel, "max-parallel", worker.DefaultMaxParallel, "jobs run at once")
	cmd.Flags().DurationVar(&wo.HeartbeatInterval, "heartbeat", worker.DefaultHeartbeatInterval, "time between heartbeats")
	AddLeaseFlag(cmd, &wo.Lease)
	AddMetricsFlag(cmd, &metricsAddr, "127.0.0.1:9473")
	cmd.Flags().IntVar(&wo.MaxDeliver, "max-deliver", worker.DefaultMaxDeliver, "times the pool's workers may take one job without acking it before it is dead-lettered")
	AddLLMFlags(cmd, &llmFlags)
	cmd.Flags().StringSliceVar(&wo.Capabilities, "capability", nil, "what this worker offers beyond its plugins, repeatable (e.g. python3,gpu; default: its plugins' names), shown by 'cortexctl workers -o wide'")
	CheckRanges(cmd,
		Between("max-parallel", &wo.MaxParallel, 1, bus.MaxWorkerSlots, "the jobs this worker runs at once"),
		Positive("heartbeat", &wo.HeartbeatInterval, "the time between heartbeats"),
		LeaseRange(&wo.Lease),
		AtLeast("max-deliver", &wo.MaxDeliver, 1, "deliveries of a job before it is dead-lettered"))
	return cmd
}

// NewCmdGateway runs the API gateway.
func NewCmdGateway() *cobra.Command {
	o := &Options{streams: true}
	var listen string
	var keys []string
	var keysFile string
	var routes RouteFlags
	var maxPrompt int
	var models []string
	var tlsCert, tlsKey string
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Run the API gateway as a daemon",
		Long: `Run the API gateway: gRPC, gRPC-Web and HTTP/JSON on one port, plus /healthz
and /readyz. Every call needs an API key ('Authorization: Bearer <key>');
keys map to tenants and come from --api-keys or CORTEX_API_KEYS
(key:tenant[,key:tenant...]; key:tenant:read makes a read-only key, and
key:tenant:admin an admin one, which may also approve and reject jobs, drain
workers and apply policies) and
from --api-keys-file FILE (one a line, as a Kubernetes secret mounts it). Keys
are held only as SHA-256 digests. Without keys the gateway refuses to start
unless --insecure is given. A job.* topic that no pool serves (--routes FILE, or --route) is refused
at submit, and the options a submit leaves unset take its pool's defaults;
give the gateway the same routes as the schedulers.

With --tls-cert and --tls-key the gateway serves HTTPS (HTTP/2 and
HTTP/1.1), so that keys and prompts do not cross the network in clear;
without them, plain HTTP, for a gateway behind a proxy that ends TLS.
Clients then use an https:// --server (SSL_CERT_FILE=ca.pem for a private
CA).`,
		Example: `  CORTEX_API_KEYS=s3cr3t-key:acme cortexctl gateway --listen 0.0.0.0:7470 \
    --nats-url nats://cortex:secret@127.0.0.1:4222 --redis-url redis://:secret@127.0.0.1:6379/0`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cmdutil.CheckListen("listen", listen); err != nil {
				return err
			}
			var tlsConfig *tls.Config
			switch {
			case (tlsCert == "") != (tlsKey == ""):
				return &cmdutil.UsageError{Err: errors.New("--tls-cert and --tls-key go together: the certificate and its private key")}
			case tlsCert != "":
				var err error
				if tlsConfig, err = config.ServerTLS("tls-cert", tlsCert, tlsKey); err != nil {
					return &cmdutil.UsageError{Err: err}
				}
			}
			keyTable, err := apiKeys(keys, keysFile)
			if err != nil {
				return &cmdutil.UsageError{Err: err}
			}
			table, err := routes.Router()
			if err != nil {
				return err
			}
			if len(keyTable) == 0 {
				if !o.Insecure {
					return &cmdutil.UsageError{Err: gateway.ErrNoKeys}
				}
				fmt.Fprintln(cmd.ErrOrStderr(), `WARNING: --insecure without API keys: the gateway takes every caller as tenant "default", with admin rights`)
			}
			e, err := o.prepare(cmd, true)
			if err != nil {
				return err
			}
			defer e.close()
			g, conn, err := NewGateway(o.NATS, e.store, table, gateway.Options{Keys: keyTable, Insecure: o.Insecure, MaxPromptBytes: maxPrompt, Metrics: e.metrics, Models: models}, e.log)
			if err != nil {
				return err
			}
			defer conn.Close()
			ln, err := cmdutil.Listen("listen", listen)
			if err != nil {
				return err
			}
			scheme := "http"
			if tlsConfig != nil {
				ln, scheme = tls.NewListener(ln, tlsConfig), "https"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "gateway listening on %s://%s; Ctrl-C or SIGTERM stops it\n", scheme, ln.Addr())
			go func() {
				<-e.ctx.Done()
				SayStopping(cmd.ErrOrStderr(), "gateway", func() string { return "finishing the requests in progress" })
			}()
			return g.Serve(e.ctx, ln)
		},
	}
	o.addFlags(cmd, true)
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:7470", "address to serve the API on")
	cmd.Flags().StringSliceVar(&keys, "api-keys", nil, "API keys as key:tenant, key:tenant:read or key:tenant:admin, repeatable (also CORTEX_API_KEYS)")
	cmd.Flags().StringVar(&keysFile, "api-keys-file", "", "file of API keys, one key:tenant[:read|:admin] a line (# comments), added to --api-keys")
	AddRouteFlags(cmd, &routes)
	cmd.Flags().IntVar(&maxPrompt, "max-prompt-bytes", gateway.DefaultMaxPromptBytes, "largest prompt or payload accepted, in bytes")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM, its chain after it), with --tls-key")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "private key (PEM) of --tls-cert")
	AddModelsFlag(cmd, &models)
	CheckRanges(cmd, AtLeast("max-prompt-bytes", &maxPrompt, 1, "the largest prompt accepted, in bytes"))
	return cmd
}

// apiKeys reads --api-keys and --api-keys-file (one key:tenant[:scope] a
// line; blank lines and # comments skipped) into one table. Errors name the
// flag, or the file and line, never a key.
func apiKeys(flagKeys []string, file string) (map[string]gateway.Principal, error) {
	specs := slices.Clone(flagKeys)
	from := "--api-keys"
	if file != "" {
		text, err := config.ReadSecret("api-keys-file", file)
		if err != nil {
			return nil, err
		}
		for i, line := range strings.Split(text, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if _, err := gateway.ParseKeys([]string{line}); err != nil {
				return nil, fmt.Errorf("--api-keys-file %s:%d: %w", file, i+1, err)
			}
			specs = append(specs, line)
		}
		if len(flagKeys) > 0 {
			from = "--api-keys and --api-keys-file"
		}
	}
	keys, err := gateway.ParseKeys(specs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	return keys, nil
}

// AddModelsFlag adds --models, the models the OpenAI-compatible
// GET /v1/models lists beside those the live chat-llm workers name.
func AddModelsFlag(cmd *cobra.Command, models *[]string) {
	cmd.Flags().StringSliceVar(models, "models", nil, "models GET /v1/models lists besides those the live chat-llm workers name, repeatable (e.g. llama3.2,qwen2.5)")
}

// RouteFlags are --routes FILE and --route topic=pool, which pick the
// routing table of up, the gateway and the scheduler.
type RouteFlags struct {
	File  string
	Pairs []string
}

// AddRouteFlags adds --routes and --route to cmd.
func AddRouteFlags(cmd *cobra.Command, f *RouteFlags) {
	cmd.Flags().StringVar(&f.File, "routes", "", "routing file: topic patterns to pools, with per-pool job defaults (default: job.echo and job.sleep to pool echo, job.code.python to code-python, job.chat.llm to chat-llm; up keeps those of the pools it runs)")
	cmd.Flags().StringSliceVar(&f.Pairs, "route", nil, "topic=pool routes instead of --routes, repeatable; a topic may be a pattern such as job.chat.*")
}

// Router is the table of --routes or --route, or routing.Default. A file
// that does not load is a usage error (exit 2) naming its file:line.
func (f *RouteFlags) Router() (*routing.Router, error) {
	switch {
	case f.File != "" && len(f.Pairs) > 0:
		return nil, &cmdutil.UsageError{Err: errors.New("--routes and --route do not mix: put every route in the routing file")}
	case f.File != "":
		r, err := routing.Load(f.File)
		if _, ok := err.(interface{ Unwrap() []error }); ok {
			// One problem a line, each starting with its file:line.
			err = fmt.Errorf("routing file %s does not load; fix these and start again:\n%w", f.File, err)
		}
		if err != nil {
			return nil, &cmdutil.UsageError{Err: err}
		}
		return r, nil
	case len(f.Pairs) > 0:
		table, err := routing.ParseRoutes(f.Pairs)
		var r *routing.Router
		if err == nil {
			r, err = routing.NewRouter(table)
		}
		if err != nil {
			return nil, &cmdutil.UsageError{Err: fmt.Errorf("--route: %w", err)}
		}
		return r, nil
	}
	return routing.Default(), nil
}
