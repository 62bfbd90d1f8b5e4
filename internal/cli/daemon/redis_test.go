package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/testcerts"
)

func TestRedisEndpointOptions(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("redis-pw-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certs := testcerts.Write(t, dir)
	tlsFiles := config.TLSFiles{CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}

	ro, err := daemon.RedisEndpoint{URL: "rediss://cortex@redis.example:6380/2", PasswordFile: pw, TLS: tlsFiles}.Options()
	if err != nil {
		t.Fatal(err)
	}
	if ro.Username != "cortex" || ro.Password != "redis-pw-secret" || ro.DB != 2 {
		t.Errorf("user %q, password from file %v, db %d", ro.Username, ro.Password == "redis-pw-secret", ro.DB)
	}
	if ro.TLSConfig == nil || ro.TLSConfig.RootCAs == nil || len(ro.TLSConfig.Certificates) != 1 || ro.TLSConfig.ServerName != "redis.example" {
		t.Errorf("TLS config %+v: want the CA, the client certificate and the URL's host as server name", ro.TLSConfig)
	}

	for _, tc := range []struct {
		name string
		ep   daemon.RedisEndpoint
		want string
	}{
		{"two passwords", daemon.RedisEndpoint{URL: "redis://:other-secret@h:1", PasswordFile: pw}, "--redis-url holds a password and --redis-password-file gives another"},
		{"TLS files without rediss", daemon.RedisEndpoint{URL: "redis://h:1", TLS: tlsFiles}, "--redis-ca, --redis-cert and --redis-key are for TLS: use a rediss:// URL"},
		{"missing password file", daemon.RedisEndpoint{URL: "redis://h:1", PasswordFile: pw + ".missing"}, "--redis-password-file: open"},
		{"bad URL", daemon.RedisEndpoint{URL: "http://:other-secret@h:1"}, "redis url http://:xxxxx@h:1: "},
		{"key without cert", daemon.RedisEndpoint{URL: "rediss://h:1", TLS: config.TLSFiles{Key: certs.ClientKey}}, "--redis-cert and --redis-key go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.ep.Options()
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Options = %v, want an error starting %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows a secret", err)
			}
		})
	}

	for _, tc := range []struct {
		ep   daemon.RedisEndpoint
		want bool
	}{
		{daemon.RedisEndpoint{URL: "redis://h:1"}, false},
		{daemon.RedisEndpoint{URL: "rediss://cortex@h:1"}, false},
		{daemon.RedisEndpoint{URL: "redis://:p@h:1"}, true},
		{daemon.RedisEndpoint{URL: "rediss://cortex@h:1", PasswordFile: pw}, true},
	} {
		if got := tc.ep.Authenticated(); got != tc.want {
			t.Errorf("Authenticated(%+v) = %v, want %v", tc.ep, got, tc.want)
		}
	}
}

// TestRedisClusterEndpointOptions: a Redis Cluster's URL takes the same
// password file and TLS files as a single server's, and its ?addr= seeds.
func TestRedisClusterEndpointOptions(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("redis-pw-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certs := testcerts.Write(t, dir)
	ep := daemon.RedisEndpoint{URL: "rediss://cortex@r1.example:6380?addr=r2.example:6380&addr=r3.example:6380", PasswordFile: pw,
		TLS: config.TLSFiles{CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}, Cluster: true}
	co, err := ep.ClusterOptions()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"r1.example:6380", "r2.example:6380", "r3.example:6380"}; strings.Join(co.Addrs, ",") != strings.Join(want, ",") {
		t.Errorf("seeds %v, want %v", co.Addrs, want)
	}
	if co.Username != "cortex" || co.Password != "redis-pw-secret" {
		t.Errorf("user %q, password from file %v", co.Username, co.Password == "redis-pw-secret")
	}
	if co.TLSConfig == nil || co.TLSConfig.RootCAs == nil || len(co.TLSConfig.Certificates) != 1 {
		t.Errorf("TLS config %+v: want the CA and the client certificate", co.TLSConfig)
	}
	if err := ep.Check(); err != nil {
		t.Errorf("Check = %v", err)
	}
	ep.TLS, ep.URL = config.TLSFiles{CA: certs.CA}, "redis://r1.example:6380"
	if err := ep.Check(); err == nil || !strings.Contains(err.Error(), "use a rediss:// URL") {
		t.Errorf("TLS files with a redis:// cluster URL: Check = %v, want the rediss:// advice", err)
	}
}
