// Package up is `cortexctl up`: the whole stack in one process, on
// embedded NATS and Redis or on remote ones. It maps flags to
// ClusterOptions, starts the cluster, prints the endpoints, writes the
// context file, and blocks until interrupted.
package up

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/telemetry"
)

// Options are up's flags.
type Options struct {
	Cluster  ClusterOptions
	Routes   daemon.RouteFlags
	LogLevel string
	// NoContext skips writing the context file.
	NoContext bool
	// LLM configures a chat-llm worker (none without --llm-base-url).
	LLM daemon.LLMFlags
}

// echoParallel is the built-in echo worker's default slots. The echo
// handler returns at once, so a slot is held by the job's way around
// (its dispatch, its start and its recorded result) rather than by work:
// with the daemon's 64, a full bench (-n 20000 -c 4 --batch 200 against a
// redis-server) held it near 8,000 jobs/s with CPU to spare; 1024
// reached ~10,000. A worker daemon keeps 64 (--max-parallel): two workers
// with many slots each, neither ever full, do not share a burst of such
// jobs evenly (a 10k bench split from 35/65 to 61/39 at 1024 slots, 49/51
// to 52/48 at 64), and up runs one echo worker.
const echoParallel = 1024

// NewCmdUp returns the up command.
func NewCmdUp() *cobra.Command {
	o := &Options{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run the whole stack in one process (dev mode)",
		Long: `Run the gateway, scheduler, safety kernel and an echo worker in one process.

With no --nats-url / --redis-url it starts an embedded NATS server (JetStream
on) and an embedded Redis (miniredis): state is in memory and is gone when up
stops. Both listen on 127.0.0.1 with random passwords, shown in their URLs.
up writes the gateway address and a dev API key (an admin key) to the
context "local", so 'cortexctl submit' in another terminal needs no flags.

The safety kernel enforces --policy FILE, or the built-in default policy;
the file is reloaded when it changes and on SIGHUP.

--python also starts a worker of pool code-python, which runs job.code.python
jobs (their prompt is Python source) with that interpreter in a sandbox; the
banner says what the sandbox isolates here. The built-in policy lets only
up's own tenant (default) run code.

--routes FILE maps job topics to pools, with each pool's job defaults; the
built-in workers serve pool echo, code-python with --python and chat-llm
with --llm-base-url (job.chat.llm jobs go to that OpenAI-compatible API;
the key comes from --llm-api-key-file or $CORTEX_LLM_API_KEY). Without
--routes, up routes only the topics of the pools it runs.`,
		Example: `  cortexctl up
  cortexctl up --listen 127.0.0.1:8080
  cortexctl up --policy policy.yaml --shadow-policy next-policy.yaml
  cortexctl up --routes routing.yaml
  cortexctl up --python                      # python3 from PATH
  cortexctl up --python=/usr/bin/python3
  cortexctl up --llm-base-url http://127.0.0.1:11434/v1 --llm-model llama3.2
  cortexctl up --nats-url nats://user:pass@nats:4222 --redis-url redis://:pass@redis:6379/0
  cortexctl up --nats-url nats://n1:4222,nats://n2:4222,nats://n3:4222 --stream-replicas 3 \
    --redis-url 'redis://:pass@r1:6379?addr=r2:6379&addr=r3:6379' --redis-cluster`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return upRun(cmd, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Cluster.Listen, "listen", "127.0.0.1:7470", "gateway address (gRPC, gRPC-Web and HTTP/JSON)")
	fs.StringVar(&o.Cluster.NATSURL, "nats-url", "", "use this NATS server instead of the embedded one")
	fs.StringVar(&o.Cluster.RedisURL, "redis-url", "", "use this Redis instead of the embedded miniredis")
	daemon.AddRedisClusterFlag(cmd, &o.Cluster.RedisCluster)
	daemon.AddStreamReplicasFlag(cmd, &o.Cluster.StreamReplicas)
	fs.IntVar(&o.Cluster.NATSPort, "nats-port", 0, "port of the embedded NATS server on 127.0.0.1 (default: a free one; not with --nats-url)")
	fs.IntVar(&o.Cluster.RedisPort, "redis-port", 0, "port of the embedded Redis on 127.0.0.1 (default: a free one; not with --redis-url)")
	fs.StringVar(&o.Cluster.DataDir, "data-dir", "", "directory where the embedded JetStream keeps jobs in flight on disk (default: in memory; not with --nats-url, whose server keeps its own); one up at a time, and jobs outlive up only with --redis-url too")
	daemon.AddLeaseFlag(cmd, &o.Cluster.Lease)
	fs.DurationVar(&o.Cluster.SafetyTimeout, "safety-timeout", upSafetyTimeout, "how long the scheduler waits for a safety decision before denying the job")
	fs.IntVar(&o.Cluster.WorkerParallel, "worker-parallel", echoParallel, "jobs the built-in echo worker runs at once")
	daemon.AddPolicyFlags(cmd, &o.Cluster.Policy)
	daemon.AddRouteFlags(cmd, &o.Routes)
	daemon.AddModelsFlag(cmd, &o.Cluster.Models)
	fs.StringVar(&o.LogLevel, "log-level", "warn", "log level of the components: debug, info, warn or error")
	fs.BoolVar(&o.NoContext, "no-context", false, "do not write the context file")
	fs.StringVar(&o.Cluster.Python, "python", "", "also run pool code-python (job.code.python) with this interpreter; --python alone uses python3 from PATH")
	fs.Lookup("python").NoOptDefVal = "python3"
	daemon.AddLLMFlags(cmd, &o.LLM)
	cmdutil.BindConfig(cmd)
	daemon.CheckRanges(cmd,
		daemon.StreamReplicasRange(&o.Cluster.StreamReplicas),
		daemon.LeaseRange(&o.Cluster.Lease),
		daemon.SafetyTimeoutRange(&o.Cluster.SafetyTimeout),
		daemon.Between("worker-parallel", &o.Cluster.WorkerParallel, 1, bus.MaxWorkerSlots, "the jobs the echo worker runs at once"))
	return cmd
}

// upSafetyTimeout is up's --safety-timeout. A decision is denied when it
// takes longer, so the daemons' 500 ms (safety.DefaultTimeout) suits a
// kernel of its own with its own Redis; up runs every component on one
// machine, and under an all-out `cortexctl bench` on the embedded Redis a
// kernel's read of the prompts waits behind every other script: 500 ms
// denied 8-23% of the jobs of `bench -n 10000 --batch 10`. A kernel that
// is down is still found at once, by the circuit breaker.
const upSafetyTimeout = 5 * time.Second

func upRun(cmd *cobra.Command, o *Options) error {
	start := time.Now()
	if err := cmdutil.CheckListen("listen", o.Cluster.Listen); err != nil {
		return err
	}
	log, err := cmdutil.Logger(cmd, o.LogLevel)
	if err != nil {
		return err
	}
	if err := daemon.CheckPolicyFiles(o.Cluster.Policy); err != nil {
		return err
	}
	if o.Cluster.StreamReplicas, err = daemon.StreamReplicas(cmd, o.Cluster.StreamReplicas); err != nil {
		return err
	}
	if o.LLM.Set() {
		o.Cluster.LLM = &o.LLM
	}
	if o.Cluster.RedisCluster && o.Cluster.RedisURL == "" {
		return &cmdutil.UsageError{Err: errors.New("--redis-cluster needs --redis-url: the embedded Redis is one node")}
	}
	if o.Cluster.DataDir != "" && o.Cluster.NATSURL != "" {
		return &cmdutil.UsageError{Err: errors.New("--data-dir is where the embedded NATS keeps its streams; with --nats-url the remote NATS server keeps its own: " +
			"drop --data-dir (or --nats-url, to use the embedded NATS)")}
	}
	for _, p := range []struct {
		flag, url string
		port      int
	}{{"nats-port", o.Cluster.NATSURL, o.Cluster.NATSPort}, {"redis-port", o.Cluster.RedisURL, o.Cluster.RedisPort}} {
		switch {
		case p.port < 0 || p.port > 65535:
			return &cmdutil.UsageError{Err: fmt.Errorf("--%s %d is not a port: use 1 to 65535 (0: a free one)", p.flag, p.port)}
		case p.port != 0 && p.url != "":
			return &cmdutil.UsageError{Err: fmt.Errorf("--%s is the port of the embedded server, which a --%s-url replaces: drop one", p.flag, strings.TrimSuffix(p.flag, "-port"))}
		}
	}
	if o.Cluster.StreamReplicas > 1 && o.Cluster.NATSURL == "" {
		return &cmdutil.UsageError{Err: errors.New("--stream-replicas above 1 needs --nats-url naming a NATS cluster: the embedded NATS is one server")}
	}
	if o.Routes.File != "" || len(o.Routes.Pairs) > 0 {
		if o.Cluster.Routes, err = o.Routes.Router(); err != nil {
			return err
		}
	}
	if o.Cluster.RedisURL != "" {
		daemon.TuneGC()
	}
	daemon.SurviveClosedOutput()
	ctx := cmd.Context()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	o.Cluster.Reload = hup
	c, err := StartCluster(ctx, o.Cluster, log)
	if err != nil {
		return err
	}
	server := "http://" + c.GatewayAddr
	contextPath := "not written: --no-context"
	if !o.NoContext {
		contextPath, err = client.SaveContext(client.LocalContext, client.Context{
			Server: server, APIKey: c.APIKey, NATSURL: c.NATSURL, RedisURL: c.RedisURL,
		}, true)
		if err != nil {
			_ = c.Close()
			return err
		}
	}
	printBanner(cmd.OutOrStdout(), c, server, contextPath, time.Since(start))
	serveErr := c.Wait(ctx)
	daemon.SayStopping(cmd.ErrOrStderr(), "up", c.Stopping)
	if err := c.Close(); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}

// streamsNote says where jobs in flight are kept.
func streamsNote(c *Cluster) string {
	if c.Streams == bus.MemoryStorage {
		keep := "--data-dir DIR keeps them on disk"
		if c.Stack != nil && c.Stack.Redis != nil {
			keep = "--data-dir DIR with --redis-url URL keeps them"
		}
		return "JetStream work queues in memory: jobs in flight are lost when up stops (" + keep + ")"
	}
	if c.Stack != nil && c.Stack.NATS != nil {
		note := "JetStream work queues on disk in " + c.Stack.DataDir
		if c.Stack.Redis != nil {
			// The streams outlive up; the records they point at do not.
			note += "; but job records live in the embedded Redis, in memory, so jobs are still lost when up stops (add --redis-url to keep them)"
		}
		return note
	}
	return "JetStream work queues on the NATS server's disk"
}

// unservedWarning warns of pool, which routes (of topics) lead to and no
// worker of the stack serves, and says how to serve it: the worker command
// for a built-in pool; for another, a worker with a plugin for its topics,
// which 'cortexctl worker --pool' alone does not have.
func unservedWarning(pool string, topics []string) string {
	msg := "routes lead to pool " + pool + ", which no worker of this stack serves: its jobs wait for "
	switch {
	case pool == daemon.PoolLLM:
		return msg + "one (cortexctl worker --pool " + pool + " --llm-base-url URL ...)"
	case slices.Contains(daemon.BuiltInPools, pool):
		return msg + "one (cortexctl worker --pool " + pool + " ...)"
	}
	plugin := "plugins of its own"
	if len(topics) > 0 {
		plugin = "a plugin for " + strings.Join(topics, ", ")
	}
	return msg + "a worker built with " + plugin + " (see \"Write your own worker\" in the README)"
}

func printBanner(w io.Writer, c *Cluster, server, contextPath string, took time.Duration) {
	// Embedded servers' URLs are shown whole, so a worker or redis-cli can
	// use them; a remote server's password is the operator's and stays hidden.
	natsURL, natsNote := telemetry.RedactURL(c.NATSURL), "remote"
	redisURL, redisNote := telemetry.RedactURL(c.RedisURL), "remote: state is kept there"
	if c.Stack != nil && c.Stack.NATS != nil {
		natsURL, natsNote = c.NATSURL, "embedded, JetStream on"
	}
	if c.Stack != nil && c.Stack.Redis != nil {
		redisURL, redisNote = c.RedisURL, "embedded miniredis: dev state is in memory and is lost when up stops"
	}
	fmt.Fprintf(w, "CortexOS dev stack\n")
	fmt.Fprintf(w, "  gateway  %s  (gRPC, gRPC-Web and HTTP/JSON)\n", server)
	fmt.Fprintf(w, "  metrics  %s/metrics  (Prometheus; /healthz, /readyz)\n", server)
	fmt.Fprintf(w, "  nats     %s  (%s)\n", natsURL, natsNote)
	fmt.Fprintf(w, "  redis    %s  (%s)\n", redisURL, redisNote)
	fmt.Fprintf(w, "  streams  %s\n", streamsNote(c))
	fmt.Fprintf(w, "  api key  %s  (tenant default, admin)\n", c.APIKey)
	if c.Kernel != nil {
		p := c.Kernel.Status()
		line := fmt.Sprintf("%s %s (%s)", p.GetActive().GetName(), p.GetActive().GetHash(), p.GetActive().GetOrigin())
		if sh := p.GetShadow(); sh != nil {
			line += fmt.Sprintf("; shadow %s %s", sh.GetName(), sh.GetHash())
		}
		fmt.Fprintf(w, "  policy   %s\n", line)
	}
	for _, p := range c.Pools {
		fmt.Fprintf(w, "  worker   %s  (pool %s: %s)\n", p.WorkerID, p.Pool, strings.Join(p.Topics, ", "))
		if p.About != "" {
			fmt.Fprintf(w, "           %s\n", p.About)
		}
	}
	for _, pool := range c.Unserved() {
		fmt.Fprintf(w, "  warning  %s\n", unservedWarning(pool, c.routedTopics(pool)))
	}
	fmt.Fprintf(w, "  context  %s (%s)\n", client.LocalContext, contextPath)
	try := "no route leads to a worker of this stack"
	if topic, ok := c.TryTopic(); ok {
		try = fmt.Sprintf("try 'cortexctl submit --topic %s --prompt hello --wait'", topic)
	}
	fmt.Fprintf(w, "ready in %s: %s; Ctrl-C stops\n", took.Round(time.Millisecond), try)
}
