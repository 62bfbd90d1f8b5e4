package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"strings"

	"connectrpc.com/connect/v2"
)

// InsecureTenant owns every job when the gateway runs without keys.
const InsecureTenant = "default"

// keyring maps API keys, kept only as SHA-256 digests, to tenants.
type keyring struct {
	digests map[[sha256.Size]byte]string
}

func newKeyring(keys map[string]string) *keyring {
	k := &keyring{digests: make(map[[sha256.Size]byte]string, len(keys))}
	for key, tenant := range keys {
		k.digests[sha256.Sum256([]byte(key))] = tenant
	}
	return k
}

// tenant returns the tenant of a presented key. Digests are compared in
// constant time, so timing does not leak how much of a key matched.
func (k *keyring) tenant(key string) (string, bool) {
	d := sha256.Sum256([]byte(key))
	for digest, tenant := range k.digests {
		if subtle.ConstantTimeCompare(d[:], digest[:]) == 1 {
			return tenant, true
		}
	}
	return "", false
}

type tenantKey struct{}

func tenantFrom(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey{}).(string)
	return t
}

// authenticate is a server interceptor that resolves the bearer API key to
// a tenant, or refuses the call. With no keys configured (insecure mode)
// every caller is InsecureTenant.
func (g *Gateway) authenticate(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
		if g.keys == nil {
			return next(context.WithValue(ctx, tenantKey{}, InsecureTenant), spec, stream)
		}
		var header string
		if info, ok := connect.CallInfoForServerContext(ctx); ok {
			header = info.RequestHeader().Get("Authorization")
		}
		key, ok := strings.CutPrefix(header, "Bearer ")
		if !ok || key == "" {
			return connect.NewError(connect.CodeUnauthenticated,
				"missing API key: send the header 'Authorization: Bearer YOUR_KEY' (cortexctl reads the key from --api-key, CORTEX_API_KEY or the context that 'cortexctl up' writes)")
		}
		tenant, ok := g.keys.tenant(key)
		if !ok {
			return connect.NewError(connect.CodeUnauthenticated, "API key not recognised: check the key, or ask an operator for one")
		}
		return next(context.WithValue(ctx, tenantKey{}, tenant), spec, stream)
	}
}

// ErrNoKeys is returned by New when no key is configured and insecure mode
// was not asked for.
var ErrNoKeys = errors.New("gateway: no API keys configured; set CORTEX_API_KEYS=key:tenant[,key:tenant...] or pass --api-keys key:tenant, or run with --insecure to accept every caller as tenant \"default\"")
