// Package gateway is the public API: one Connect service that answers gRPC,
// gRPC-Web and HTTP/JSON on one port. It authenticates callers, validates
// every request at the edge, records accepted jobs in the store and hands
// them to the scheduler over the bus. It never decides or runs a job.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Store is what the gateway needs from the memory fabric.
type Store interface {
	CreateJob(ctx context.Context, j store.NewJob, now time.Time) error
	Transition(ctx context.Context, id string, c store.Change, now time.Time) error
	Get(ctx context.Context, id string) (*store.Job, string, error)
	Ping(ctx context.Context) error
}

// Publisher sends packets on the bus.
type Publisher interface {
	Publish(subject string, p *cortexv1.BusPacket) error
}

var (
	_ Store                                 = (*store.Store)(nil)
	_ Publisher                             = (*bus.Conn)(nil)
	_ cortexv1connect.GatewayServiceHandler = (*Gateway)(nil)
)

// Limits at the edge.
const (
	DefaultMaxPromptBytes = 1 << 20
	maxLabels             = 32
	maxLabelBytes         = 256
)

// Options configures a Gateway.
type Options struct {
	// Keys maps API keys to tenants. Empty means every call is refused
	// unless Insecure is set.
	Keys map[string]string
	// Insecure accepts callers without a key, as tenant "default".
	Insecure bool
	// MaxPromptBytes bounds a prompt (DefaultMaxPromptBytes when zero).
	MaxPromptBytes int
}

// Gateway serves the public API.
type Gateway struct {
	store     Store
	pub       Publisher
	keys      *keyring
	maxPrompt int
	log       *slog.Logger
}

// New checks opts and returns a gateway. Without keys it refuses to start
// unless opts.Insecure is set.
func New(st Store, pub Publisher, opts Options, log *slog.Logger) (*Gateway, error) {
	g := &Gateway{store: st, pub: pub, maxPrompt: opts.MaxPromptBytes, log: log}
	if g.maxPrompt <= 0 {
		g.maxPrompt = DefaultMaxPromptBytes
	}
	switch {
	case len(opts.Keys) > 0:
		g.keys = newKeyring(opts.Keys)
	case !opts.Insecure:
		return nil, ErrNoKeys
	}
	return g, nil
}

// Handler serves the API and /healthz, /readyz.
func (g *Gateway) Handler() http.Handler {
	srv := connect.NewServer(g.authenticate)
	cortexv1connect.RegisterGatewayServiceHandler(srv, g)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv,
		connecthttp.WithReadMaxBytes(g.maxPrompt+64<<10),
		// Compressing small answers costs more CPU than it saves bytes.
		connecthttp.WithCompressMinBytes(8<<10))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := g.store.Ping(r.Context()); err != nil {
			g.log.Warn("readiness check", "err", err)
			http.Error(w, "not ready: the job store does not answer", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Serve answers on ln until ctx ends, then shuts down gracefully.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	p := new(http.Protocols)
	p.SetHTTP1(true)
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
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("gateway shutdown: %w", err)
	}
	return nil
}

// SubmitJob validates and records a job, then hands it to the scheduler.
func (g *Gateway) SubmitJob(ctx context.Context, req *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error) {
	if err := g.validateSubmit(req); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, "could not make a job id")
	}
	jobID := id.String()
	tenant := tenantFrom(ctx)
	now := time.Now()
	err = g.store.CreateJob(ctx, store.NewJob{ID: jobID, Topic: req.GetTopic(), Tenant: tenant, Prompt: req.GetPrompt()}, now)
	if err != nil {
		g.log.Error("record job", "job_id", jobID, "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable; nothing was recorded, try again")
	}
	err = g.pub.Publish(bus.SubjectJobSubmit, &cortexv1.BusPacket{
		TraceId: jobID,
		Payload: &cortexv1.BusPacket_JobRequest{JobRequest: &cortexv1.JobRequest{
			JobId:      jobID,
			Topic:      req.GetTopic(),
			TenantId:   tenant,
			ContextPtr: store.ContextPtr(jobID),
			Attempt:    1,
			Labels:     req.GetLabels(),
			PromptSize: uint64(len(req.GetPrompt())),
		}},
	})
	if err != nil {
		g.log.Error("hand job to scheduler", "job_id", jobID, "err", err)
		// The client may be gone; the job must still not stay PENDING.
		_ = g.store.Transition(context.WithoutCancel(ctx), jobID, store.Change{To: store.Failed, Reason: "the bus was unavailable at submit"}, time.Now())
		return nil, connect.NewError(connect.CodeUnavailable, "the bus is unavailable; the job was not queued, try again")
	}
	return &cortexv1.SubmitJobResponse{JobId: jobID, State: cortexv1.JobState_JOB_STATE_PENDING}, nil
}

func (g *Gateway) validateSubmit(req *cortexv1.SubmitJobRequest) error {
	if !bus.ValidTopic(req.GetTopic()) {
		return connect.Errorf(connect.CodeInvalidArgument,
			"topic %q is not valid: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo", req.GetTopic())
	}
	if n := len(req.GetPrompt()); n > g.maxPrompt {
		return connect.Errorf(connect.CodeResourceExhausted, "prompt is %d bytes, over the %d byte limit", n, g.maxPrompt)
	}
	if n := len(req.GetLabels()); n > maxLabels {
		return connect.Errorf(connect.CodeInvalidArgument, "%d labels, at most %d are allowed", n, maxLabels)
	}
	for k, v := range req.GetLabels() {
		if k == "" || len(k) > maxLabelBytes || len(v) > maxLabelBytes {
			return connect.Errorf(connect.CodeInvalidArgument,
				"label %.40q: keys must be 1-%d bytes and values at most %d bytes", k, maxLabelBytes, maxLabelBytes)
		}
	}
	return nil
}

// GetJobStatus returns a job of the caller's tenant.
func (g *Gateway) GetJobStatus(ctx context.Context, req *cortexv1.GetJobStatusRequest) (*cortexv1.GetJobStatusResponse, error) {
	id, err := uuid.Parse(req.GetJobId())
	if err != nil {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "job id %.80q is not valid: job ids look like 0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e", req.GetJobId())
	}
	j, result, err := g.store.Get(ctx, id.String())
	if errors.Is(err, store.ErrNotFound) || err == nil && j.Tenant != tenantFrom(ctx) {
		return nil, connect.Errorf(connect.CodeNotFound, "job %s not found", req.GetJobId())
	}
	if err != nil {
		g.log.Error("read job", "job_id", req.GetJobId(), "err", err)
		return nil, connect.NewError(connect.CodeUnavailable, "the job store is unavailable, try again")
	}
	return &cortexv1.GetJobStatusResponse{
		JobId:     j.ID,
		State:     j.State.Proto(),
		Topic:     j.Topic,
		Reason:    j.Reason,
		Rule:      j.Rule,
		Result:    result,
		WorkerId:  j.WorkerID,
		Attempt:   j.Attempt,
		CreatedAt: timestamppb.New(j.CreatedAt),
		UpdatedAt: timestamppb.New(j.UpdatedAt),
	}, nil
}
