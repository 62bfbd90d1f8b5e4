// Package client is the typed gateway client the CLI (and later the TUI)
// uses, and the context file that tells it where the gateway is and which
// key to present. It talks to the gateway only, never to NATS or Redis.
package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// DefaultServer is the gateway address `cortexctl up` listens on by default.
const DefaultServer = "http://127.0.0.1:7470"

// New returns a client of the gateway at server that presents apiKey (if
// any) on every call.
func New(server, apiKey string) (cortexv1connect.GatewayServiceClient, error) {
	return NewWithTransport(server, apiKey, newTransport())
}

// NewFollowingContext is New for a target whose key is its context's:
// each call sends the key the context holds then (FollowContextKey).
func NewFollowingContext(t Target) (cortexv1connect.GatewayServiceClient, error) {
	return NewWithKey(t.Server, FollowContextKey(t), newTransport())
}

func newTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second}
}

// NewWithTransport is New over rt: for a gateway whose certificate a
// private CA signed, say, a transport that trusts that CA.
func NewWithTransport(server, apiKey string, rt http.RoundTripper) (cortexv1connect.GatewayServiceClient, error) {
	return NewWithKey(server, func() string { return apiKey }, rt)
}

// NewWithKey is NewWithTransport with the key each call sends read from
// key (FollowContextKey), none when it gives "".
func NewWithKey(server string, key func() string, rt http.RoundTripper) (cortexv1connect.GatewayServiceClient, error) {
	base, err := NormalizeServer(server)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: rt}
	c := connect.NewClient(connecthttp.NewTransport(hc, base), bearer(key))
	return cortexv1connect.NewGatewayServiceClient(c), nil
}

func bearer(key func() string) connect.ClientInterceptor {
	return func(next connect.ClientFunc) connect.ClientFunc {
		return func(ctx context.Context, spec connect.Spec) (connect.ClientStream, error) {
			if k := key(); k != "" {
				ctx, info := connect.NewClientContext(ctx)
				info.RequestHeader().Set("Authorization", "Bearer "+k)
				return next(ctx, spec)
			}
			return next(ctx, spec)
		}
	}
}

// NormalizeServer accepts "host:port" or an http(s) URL and returns a URL.
func NormalizeServer(server string) (string, error) {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("server %q: want host:port or an http(s):// URL, e.g. %s", server, DefaultServer)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}
