package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
)

// InsecureTenant owns every job when the gateway runs without keys.
const InsecureTenant = "default"

// Principal is who an API key speaks for.
type Principal struct {
	Tenant string
	// ReadOnly keys may read and watch jobs but not submit or cancel.
	ReadOnly bool
	// Admin keys may also approve and reject held jobs, apply policies and
	// watch every tenant's safety decisions.
	Admin bool
	// key names the key in records (approvals) without revealing it: the
	// first 8 hex digits of its SHA-256.
	key string
}

// Name says who acted, for records: "tenant (key 1a2b3c4d)".
func (p Principal) Name() string {
	if p.key == "" {
		return p.Tenant
	}
	return p.Tenant + " (key " + p.key + ")"
}

// ParseKeys reads API keys given as key:tenant, key:tenant:read (a
// read-only key) or key:tenant:admin, as in --api-keys and CORTEX_API_KEYS.
func ParseKeys(specs []string) (map[string]Principal, error) {
	keys := make(map[string]Principal, len(specs))
	for _, spec := range specs {
		parts := strings.Split(spec, ":")
		if len(parts) < 2 || len(parts) > 3 || parts[0] == "" {
			return nil, errors.New("want key:tenant, key:tenant:read or key:tenant:admin, e.g. s3cr3t-key:acme")
		}
		p := Principal{Tenant: parts[1]}
		if !bus.ValidToken(p.Tenant) {
			return nil, fmt.Errorf("tenant %q must be 1-64 characters of a-z, 0-9, - and _", p.Tenant)
		}
		if len(parts) == 3 {
			switch parts[2] {
			case "read":
				p.ReadOnly = true
			case "admin":
				p.Admin = true
			default:
				return nil, fmt.Errorf("scope %q is not known: use read (a read-only key) or admin", parts[2])
			}
		}
		if len(parts[0]) < 8 {
			return nil, fmt.Errorf("the key for tenant %s is %d characters; use at least 8 (cortexctl up makes 32)", p.Tenant, len(parts[0]))
		}
		if prev, dup := keys[parts[0]]; dup {
			return nil, fmt.Errorf("the same key is given twice (for tenants %s and %s); every key must be unique", prev.Tenant, p.Tenant)
		}
		keys[parts[0]] = p
	}
	return keys, nil
}

// keyring maps API keys, kept only as SHA-256 digests, to principals.
type keyring struct {
	digests map[[sha256.Size]byte]Principal
}

func newKeyring(keys map[string]Principal) *keyring {
	k := &keyring{digests: make(map[[sha256.Size]byte]Principal, len(keys))}
	for key, p := range keys {
		d := sha256.Sum256([]byte(key))
		p.key = hex.EncodeToString(d[:4])
		k.digests[d] = p
	}
	return k
}

// principal returns who a presented key speaks for. Digests are compared in
// constant time, so timing does not leak how much of a key matched.
func (k *keyring) principal(key string) (Principal, bool) {
	d := sha256.Sum256([]byte(key))
	for digest, p := range k.digests {
		if subtle.ConstantTimeCompare(d[:], digest[:]) == 1 {
			return p, true
		}
	}
	return Principal{}, false
}

type principalKey struct{}

func principalFrom(ctx context.Context) Principal {
	p, _ := ctx.Value(principalKey{}).(Principal)
	return p
}

func tenantFrom(ctx context.Context) string { return principalFrom(ctx).Tenant }

// requireAdmin refuses a key without the admin scope.
func requireAdmin(ctx context.Context, what string) error {
	if !principalFrom(ctx).Admin {
		return connect.Errorf(connect.CodePermissionDenied,
			"only an admin key can %s; give the key the :admin scope (key:tenant:admin)", what)
	}
	return nil
}

// requireWrite refuses a read-only key.
func requireWrite(ctx context.Context, what string) error {
	if principalFrom(ctx).ReadOnly {
		return connect.Errorf(connect.CodePermissionDenied,
			"this API key is read-only and cannot %s; use a key without the :read scope", what)
	}
	return nil
}

// authenticate is a server interceptor that resolves the bearer API key to
// a tenant, or refuses the call. With no keys configured (insecure mode)
// every caller is InsecureTenant.
func (g *Gateway) authenticate(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) error {
		if g.keys != nil && strings.HasPrefix(spec.Procedure, "/grpc.reflection.") {
			// Reflection describes the public schema, nothing of a tenant.
			return g.explainLimit(next(context.WithValue(ctx, principalKey{}, Principal{Tenant: InsecureTenant}), spec, stream))
		}
		var header string
		if info, ok := connect.CallInfoForServerContext(ctx); ok {
			header = info.RequestHeader().Get("Authorization")
		}
		p, err := g.principalFor(header)
		if err != nil {
			return err
		}
		return g.explainLimit(next(context.WithValue(ctx, principalKey{}, p), spec, stream))
	}
}

// principalFor resolves an Authorization header ("Bearer KEY") to who the
// key speaks for, or refuses it with an Unauthenticated error. The scheme
// is read in any case, as HTTP's are ("bearer KEY"), and spaces around the
// key are dropped. Without keys everyone is the admin of tenant default.
func (g *Gateway) principalFor(header string) (Principal, error) {
	if g.keys == nil {
		return Principal{Tenant: InsecureTenant, Admin: true}, nil
	}
	scheme, key, _ := strings.Cut(strings.TrimSpace(header), " ")
	key = strings.TrimSpace(key)
	bearer := strings.EqualFold(scheme, "Bearer")
	switch {
	case scheme == "" || bearer && key == "":
		return Principal{}, connect.NewError(connect.CodeUnauthenticated,
			"missing API key: send the header 'Authorization: Bearer YOUR_KEY' (cortexctl reads the key from --api-key, CORTEX_API_KEY or the context that 'cortexctl up' writes)")
	case !bearer:
		return Principal{}, connect.NewError(connect.CodeUnauthenticated,
			"the Authorization header is not 'Bearer YOUR_KEY': send the key after the word Bearer and a space")
	}
	p, ok := g.keys.principal(key)
	if !ok {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, "API key not recognised: check the key, or ask an operator for one")
	}
	return p, nil
}

// explainLimit rewrites the transport's answer to a request body over the
// read limit, which names neither the prompt limit nor what to do, and
// whose code (resource_exhausted, HTTP 429) tells clients to try again
// later: the same request never fits, so it is invalid_argument (400), as
// for an input over the limit.
func (g *Gateway) explainLimit(err error) error {
	if connect.CodeOf(err) == connect.CodeResourceExhausted && strings.Contains(err.Error(), "larger than configured max") {
		return connect.Errorf(connect.CodeInvalidArgument,
			"the request is too large: inputs are limited to %d bytes; store large data elsewhere and send a reference", g.maxPrompt)
	}
	return err
}

// ErrNoKeys is returned by New when no key is configured and insecure mode
// was not asked for.
var ErrNoKeys = errors.New("gateway: no API keys configured; pass --api-keys-file FILE (one key:tenant[:read|:admin] a line), --api-keys key:tenant, or set CORTEX_API_KEYS=key:tenant[,key:tenant...]; or run with --insecure to accept every caller as tenant \"default\"")
