package config_test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/testcerts"
)

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "password")
	if err := os.WriteFile(p, []byte("s3cret pw\r\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := config.ReadSecret("redis-password-file", p)
	if err != nil || got != "s3cret pw" {
		t.Errorf("ReadSecret = %q, %v; want the file less its trailing newlines", got, err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{empty, filepath.Join(dir, "missing")} {
		_, err := config.ReadSecret("redis-password-file", path)
		if err == nil || !strings.Contains(err.Error(), "--redis-password-file") {
			t.Errorf("ReadSecret(%s) = %v, want an error naming the flag", path, err)
		}
	}
}

func TestTLSFilesConfig(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	c, err := config.TLSFiles{Prefix: "nats", CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}.Config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.RootCAs == nil || len(c.Certificates) != 1 {
		t.Errorf("config has roots %v and %d certificates; want the CA and the client certificate", c.RootCAs != nil, len(c.Certificates))
	}
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		files config.TLSFiles
		want  string
	}{
		{config.TLSFiles{Prefix: "redis", Cert: certs.ClientCert}, "--redis-cert and --redis-key go together"},
		{config.TLSFiles{Prefix: "redis", Key: certs.ClientKey}, "--redis-cert and --redis-key go together"},
		{config.TLSFiles{Prefix: "nats", CA: notPEM}, "--nats-ca " + notPEM + ": no PEM certificate in the file"},
		{config.TLSFiles{Prefix: "nats", CA: notPEM + ".missing"}, "--nats-ca: open"},
		{config.TLSFiles{Prefix: "nats", Cert: certs.ClientCert, Key: certs.ServerKey}, "--nats-cert/--nats-key: "},
		{config.TLSFiles{Prefix: "nats", Cert: certs.ClientKey, Key: certs.ClientKey}, "--nats-cert/--nats-key: "},
	} {
		_, err := tc.files.Config(nil)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Config(%+v) = %v, want an error starting %q", tc.files, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("error %q shows key material", err)
		}
	}
}

func TestTLSFilesHint(t *testing.T) {
	noCert := config.TLSFiles{Prefix: "redis"}
	withCert := config.TLSFiles{Prefix: "redis", Cert: "c.pem", Key: "k.pem"}
	for _, tc := range []struct {
		files config.TLSFiles
		err   error
		want  string
	}{
		{noCert, fmt.Errorf("ping: %w", x509.UnknownAuthorityError{}), "give its CA bundle with --redis-ca"},
		{noCert, errors.New("remote error: tls: certificate required"), "give --redis-cert and --redis-key"},
		{noCert, errors.New("tls error: connection closed by remote after TLS handshake"), "if it asks for a client certificate, give --redis-cert"},
		{withCert, errors.New("remote error: tls: certificate required"), ""},
		{noCert, errors.New("connection refused"), ""},
	} {
		if got := tc.files.Hint(tc.err); !strings.Contains(got, tc.want) || (tc.want == "") != (got == "") {
			t.Errorf("Hint(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestServerTLS(t *testing.T) {
	certs := testcerts.Write(t, t.TempDir())
	c, err := config.ServerTLS("tls-cert", certs.ServerCert, certs.ServerKey)
	if err != nil || len(c.Certificates) != 1 || !slices.Equal(c.NextProtos, []string{"h2", "http/1.1"}) {
		t.Fatalf("ServerTLS = %+v, %v; want the pair, for h2 and http/1.1", c, err)
	}
	for name, files := range map[string][2]string{
		"a missing certificate":   {filepath.Join(t.TempDir(), "none.pem"), certs.ServerKey},
		"another pair's key":      {certs.ServerCert, certs.ClientKey},
		"a key for a certificate": {certs.ServerKey, certs.ServerKey},
	} {
		_, err := config.ServerTLS("tls-cert", files[0], files[1])
		if err == nil || !strings.Contains(err.Error(), "--tls-cert") {
			t.Errorf("%s: %v, want an error naming --tls-cert", name, err)
		}
	}
}
