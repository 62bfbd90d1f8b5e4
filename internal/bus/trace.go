package bus

import "context"

type traceKey struct{}

// WithTrace carries a job's trace id in ctx, for the packets sent and the
// lines logged on its behalf further down.
func WithTrace(ctx context.Context, traceID string) context.Context {
	return context.WithValue(ctx, traceKey{}, traceID)
}

// TraceFrom is the trace id WithTrace put in ctx, or fallback.
func TraceFrom(ctx context.Context, fallback string) string {
	if t, ok := ctx.Value(traceKey{}).(string); ok && t != "" {
		return t
	}
	return fallback
}
