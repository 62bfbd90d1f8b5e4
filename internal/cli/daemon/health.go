package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/store"
	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Readiness checks, for /readyz.
const readyTimeout = time.Second

// Ready reports what of NATS, Redis and the safety kernel is not
// reachable (nil when all are); st and kernel may be left out (nil,
// false) for a component that does not need them.
func Ready(ctx context.Context, conn *bus.Conn, st *store.Store, kernel bool) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var errs []error
	if !conn.NATS().IsConnected() {
		errs = append(errs, errors.New("NATS is not connected"))
	}
	if st != nil {
		if err := st.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("redis does not answer: %w", err))
		}
	}
	if kernel && len(errs) == 0 {
		_, err := conn.Request(ctx, bus.SubjectPolicyQuery, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: &cortexv1.PolicyQuery{}}})
		if err != nil {
			errs = append(errs, fmt.Errorf("no safety kernel answers: %w", err))
		}
	}
	return errors.Join(errs...)
}

// HealthHandler serves /metrics (m), /healthz (alive) and /readyz (ready
// answers nil).
func HealthHandler(m *telemetry.Metrics, ready func(context.Context) error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			log.Warn("readiness check", "err", err)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// ServeHealth serves HealthHandler on addr until ctx ends. It returns once
// it listens, with the address it listens on.
func ServeHealth(ctx context.Context, addr string, h http.Handler) (string, error) {
	ln, err := cmdutil.Listen("metrics-listen", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), nil
}
