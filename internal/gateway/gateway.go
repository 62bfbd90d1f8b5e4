// Package gateway is the public API: one Connect service that answers gRPC,
// gRPC-Web and HTTP/JSON on one port, with gRPC server reflection. It
// authenticates callers and scopes them to their tenant, validates every
// request at the edge, records accepted jobs in the store and hands them to
// the scheduler over the bus, and fans job events out to watchers. It never
// decides or runs a job.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"connectrpc.com/connect/v2/connectproto"
	"connectrpc.com/grpcreflect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Store is what the gateway needs from the memory fabric.
type Store interface {
	CreateJob(ctx context.Context, j store.NewJob, now time.Time) (string, error)
	CreateJobs(ctx context.Context, jobs []store.NewJob, now time.Time) []store.Created
	Transition(ctx context.Context, id string, c store.Change, now time.Time) (*store.Job, error)
	Get(ctx context.Context, id string) (*store.Job, error)
	Output(ctx context.Context, id string) (*store.Job, string, error)
	List(ctx context.Context, q store.Query) ([]*store.Job, string, error)
	SavePolicy(ctx context.Context, shadow bool, name, source string) error
	Ping(ctx context.Context) error
	DeadLetters(ctx context.Context, tenant string, limit int, before time.Time) ([]store.DeadLetter, error)
	DeadLetterAt(ctx context.Context, id string) (time.Time, bool, error)
	Revive(ctx context.Context, id, reason string, now time.Time) (*store.Job, error)
	DropDeadLetter(ctx context.Context, id string, attempt uint32, reason string, now time.Time) (bool, error)
}

// Bus is what the gateway needs from the bus.
type Bus interface {
	Publish(subject string, p *cortexv1.BusPacket) error
	PublishDurables(ctx context.Context, ds []bus.Durable) []error
	PublishJobEvent(traceID string, j *cortexv1.Job) error
	PublishJobEventsNow(jobs []*cortexv1.Job) error
	OnReconnect(fn func())
	Subscribe(ctx context.Context, subject, queue string, concurrency int, h bus.Handler) (*bus.Subscription, error)
	SubscribeJobEvents(ctx context.Context, concurrency int, h func(context.Context, *bus.EventPacket) error) (*bus.Subscription, error)
	Request(ctx context.Context, subject string, p *cortexv1.BusPacket) (*cortexv1.BusPacket, error)
	Gather(ctx context.Context, subject string, p *cortexv1.BusPacket) ([]*cortexv1.BusPacket, error)
}

// Router says which topics a pool serves, and with which job defaults.
type Router interface {
	Routable(topic string) bool
	Topics() []string
	Pool(topic string) (string, bool)
	Pools() []string
	Defaults(pool string) routing.Defaults
}

var (
	_ Store                                 = (*store.Store)(nil)
	_ Bus                                   = (*bus.Conn)(nil)
	_ Router                                = (*routing.Router)(nil)
	_ cortexv1connect.GatewayServiceHandler = (*Gateway)(nil)
)

// bodyLimit bounds an API request's body, for a prompt limit of
// maxPrompt: room for a prompt at the limit in any encoding a client may
// send, since the limit itself is checked on the decoded input. JSON takes
// the most, up to 6 bytes per byte (`\u00e9` for the two bytes of é, as
// Python's json writes it, or `\u0001`); base64 takes 4 per 3. A batch of
// jobs shares it.
func bodyLimit(maxPrompt int) int { return 6*maxPrompt + 64<<10 }

// Limits at the edge.
const (
	DefaultMaxPromptBytes = 1 << 20
	maxLabels             = 32
	maxLabelBytes         = 256
)

// Options configures a Gateway.
type Options struct {
	// Keys maps API keys to who they speak for. Empty means every call is
	// refused unless Insecure is set.
	Keys map[string]Principal
	// Insecure accepts callers without a key, as tenant "default".
	Insecure bool
	// MaxPromptBytes bounds a prompt or payload (DefaultMaxPromptBytes
	// when zero).
	MaxPromptBytes int
	// Router refuses job.* topics that no pool serves.
	Router Router
	// Workers lists workers and pools; Start starts it. Without it,
	// ListWorkers and ListPools are Unimplemented.
	Workers Workers
	// Metrics records submits and is served on /metrics (nil: neither).
	Metrics *telemetry.Metrics
	// Models are listed by the OpenAI-compatible GET /v1/models beside
	// those the live chat-llm workers name (see ModelCapability).
	Models []string
}

// Gateway serves the public API.
type Gateway struct {
	store     Store
	bus       Bus
	router    Router
	keys      *keyring
	maxPrompt int
	log       *slog.Logger
	jobs      *hub[*cortexv1.Job]
	decisions *hub[*cortexv1.SafetyDecisionEvent]
	workers   Workers
	metrics   *telemetry.Metrics
	// modelNames are Options.Models.
	modelNames []string
	// closing is closed when Serve stops, to end open streams.
	closing   chan struct{}
	closeOnce sync.Once
	// admitting guards refusing (set by StopAccepting) and admitted, the
	// calls taking jobs in now (see admit).
	admitting sync.Mutex
	refusing  bool
	admitted  sync.WaitGroup
}

// StopAccepting has the gateway refuse new jobs from now on (Unavailable:
// nothing recorded, submit again later), while it goes on serving reads
// and streams: a stack that stops this way lets the clients that follow
// their jobs see them end, as the workers finish them, before Serve stops.
// It returns once the calls that were taking jobs in have handed them on
// to the schedulers, or after wait.
func (g *Gateway) StopAccepting(wait time.Duration) {
	g.admitting.Lock()
	g.refusing = true
	g.admitting.Unlock()
	done := make(chan struct{})
	go func() { g.admitted.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		g.log.Warn("stopping: calls still taking jobs in after the wait", "wait", wait)
	}
}

// admit lets a call take jobs in (record and hand them on) unless the
// gateway stops accepting; done ends the call's part that StopAccepting
// waits for.
func (g *Gateway) admit() (done func(), err error) {
	g.admitting.Lock()
	defer g.admitting.Unlock()
	if g.refusing {
		return nil, errStopping
	}
	g.admitted.Add(1)
	return g.admitted.Done, nil
}

// stopping reports whether StopAccepting was called.
func (g *Gateway) stopping() bool {
	g.admitting.Lock()
	defer g.admitting.Unlock()
	return g.refusing
}

// errStopping refuses a job while the gateway stops.
var errStopping = connect.NewError(connect.CodeUnavailable, "the gateway is stopping and takes no new jobs; nothing was recorded, submit again once it is back")

// New checks opts and returns a gateway. Without keys it refuses to start
// unless opts.Insecure is set.
func New(st Store, b Bus, opts Options, log *slog.Logger) (*Gateway, error) {
	if opts.Router == nil {
		return nil, errors.New("gateway: no routing table")
	}
	for _, m := range opts.Models {
		if m == "" || len(m) > maxModelBytes || !utf8.ValidString(m) {
			return nil, fmt.Errorf("gateway: model name %.40q: use 1-%d bytes of UTF-8", m, maxModelBytes)
		}
	}
	g := &Gateway{store: st, bus: b, router: opts.Router, maxPrompt: opts.MaxPromptBytes, log: log, jobs: newHub[*cortexv1.Job](), decisions: newHub[*cortexv1.SafetyDecisionEvent](), closing: make(chan struct{})}
	if g.maxPrompt <= 0 {
		g.maxPrompt = DefaultMaxPromptBytes
	}
	g.workers, g.metrics, g.modelNames = opts.Workers, opts.Metrics, slices.Clone(opts.Models)
	switch {
	case len(opts.Keys) > 0:
		g.keys = newKeyring(opts.Keys)
	case !opts.Insecure:
		return nil, ErrNoKeys
	}
	return g, nil
}

// Start fans job events and safety decisions from the bus out to WatchJob,
// StreamEvents and StreamDecisions callers, and feeds the worker registry
// (Options.Workers) with heartbeats, until ctx ends. Without it,
// job watchers still see every change by reading the store, only later.
func (g *Gateway) Start(ctx context.Context) error {
	// One handler at a time keeps events in the order they arrive.
	if _, err := g.bus.SubscribeJobEvents(ctx, 1, g.onEvent); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	if _, err := g.bus.Subscribe(ctx, bus.SubjectSafetyDecision, "", 1, g.onDecision); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	// What was published while the bus was away never reached the hubs:
	// every stream is told.
	g.bus.OnReconnect(func() {
		g.jobs.gap()
		g.decisions.gap()
	})
	if g.workers != nil {
		if err := g.workers.Start(ctx, g.bus); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

// apiJSON is the API's JSON codec: a request's errors say how protobuf's
// JSON mapping writes what it did not take (a duration, in seconds).
type apiJSON struct{ *connectproto.JSONCodec }

// durationHint ends the error of a request whose duration is not written
// as protobuf's JSON mapping wants.
const durationHint = `: write a duration in seconds, with an s ("30s", "90s", "0.5s")`

// bytesHint ends the error of a request whose bytes field (a payload) is
// not base64, as protobuf's JSON mapping writes bytes.
const bytesHint = ": write bytes in base64 (standard or URL-safe), as protobuf's JSON mapping does"

// UnmarshalRead decodes a request, as the codec it wraps does.
func (c apiJSON) UnmarshalRead(ctx context.Context, src io.Reader, msg any) error {
	err := c.JSONCodec.UnmarshalRead(ctx, src, msg)
	switch {
	case err == nil:
	case strings.Contains(err.Error(), "google.protobuf.Duration"):
		return fmt.Errorf("%w%s", err, durationHint)
	case strings.Contains(err.Error(), "invalid value for bytes field"):
		return fmt.Errorf("%w%s", err, bytesHint)
	}
	return err
}

// Handler serves the API, the OpenAI-compatible front door (/v1/...) and
// /healthz, /readyz.
func (g *Gateway) Handler() http.Handler {
	srv := connect.NewServer(g.authenticate)
	cortexv1connect.RegisterGatewayServiceHandler(srv, g)
	grpcreflect.Register(srv)
	mux := http.NewServeMux()
	// JSON requests are strict: a misspelt field ("promt") is an error, not
	// an empty job.
	strict := connectproto.NewJSONCodec()
	strict.UnmarshalOptions.DiscardUnknown = false
	connecthttp.Mount(mux, srv,
		connecthttp.WithCodecs(connectproto.NewBinaryCodec(), apiJSON{strict}),
		connecthttp.WithReadMaxBytes(bodyLimit(g.maxPrompt)),
		// Compressing small answers costs more CPU than it saves bytes.
		connecthttp.WithCompressMinBytes(8<<10))
	g.mountOpenAI(mux)
	if g.metrics != nil {
		mux.Handle("GET /metrics", g.metrics.Handler())
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if g.stopping() {
			http.Error(w, "not ready: stopping, no new jobs are taken", http.StatusServiceUnavailable)
			return
		}
		// Each check has a second: a probe wants an answer, not a wait.
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := g.store.Ping(ctx); err != nil {
			g.log.Warn("readiness check", "err", err)
			http.Error(w, "not ready: the job store does not answer", http.StatusServiceUnavailable)
			return
		}
		// A kernel answering over the bus proves NATS and the kernel.
		ctx, cancel = context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		_, err := g.bus.Request(ctx, bus.SubjectPolicyQuery, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: &cortexv1.PolicyQuery{}}})
		if err != nil {
			g.log.Warn("readiness check", "err", err)
			http.Error(w, "not ready: no safety kernel answers over NATS", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return explainContentType(mux)
}

// explainContentType answers a POST to an API procedure whose body is in
// no type the API reads (curl -d without a Content-Type, say) with 415 and
// a JSON error saying what to send, where a bare 415 leaves the caller
// guessing.
func explainContentType(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ct := r.Header.Get("Content-Type")
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/"+cortexv1connect.GatewayServiceName+"/") || apiContentType(ct) {
			next.ServeHTTP(w, r)
			return
		}
		msg := fmt.Sprintf("the API reads JSON or protobuf: send Content-Type: application/json (or application/proto), not %.80q", ct)
		if ct == "" || strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
			msg = "the API reads JSON or protobuf: send Content-Type: application/json (curl: -H 'Content-Type: application/json')"
		}
		body, _ := json.Marshal(map[string]string{"code": connect.CodeInvalidArgument.String(), "message": msg})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Accept-Post", "application/json, application/proto")
		w.WriteHeader(http.StatusUnsupportedMediaType)
		_, _ = w.Write(append(body, '\n'))
	})
}

// apiContentType reports whether ct is a body type of the Connect, gRPC
// or gRPC-Web protocols.
func apiContentType(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || mt == "application/proto" ||
		strings.HasPrefix(mt, "application/connect+") || strings.HasPrefix(mt, "application/grpc")
}

// Serve starts the event fan-out and answers on ln until ctx ends, then
// shuts down gracefully.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	if err := g.Start(ctx); err != nil {
		return err
	}
	// HTTP/2 with TLS (when ln is a TLS listener offering h2) or without.
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           g.Handler(),
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("gateway: %w", err)
	case <-ctx.Done():
	}
	g.closeOnce.Do(func() { close(g.closing) })
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("gateway shutdown: %w", err)
	}
	return nil
}
