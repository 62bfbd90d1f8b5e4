package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxSecretBytes bounds a secret file (a password, a key list, a PEM
// bundle).
const maxSecretBytes = 1 << 20

// ReadSecret reads a secret from a file, as Kubernetes mounts them: the
// whole file less trailing newlines. flag names the setting in errors,
// which never hold the secret.
func ReadSecret(flag, path string) (string, error) {
	data, err := readLimited(flag, path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		return "", fmt.Errorf("--%s %s: the file is empty", flag, path)
	}
	return s, nil
}

func readLimited(flag, path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // the operator names the file
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", flag, path, err)
	}
	if len(data) > maxSecretBytes {
		return nil, fmt.Errorf("--%s %s: larger than %d bytes", flag, path, maxSecretBytes)
	}
	return data, nil
}

// TLSFiles are the PEM files of a client's TLS settings; prefix is the
// flags' prefix (nats, redis) for error messages.
type TLSFiles struct {
	Prefix string
	CA     string // CA bundle that signs the server's certificate
	Cert   string // client certificate
	Key    string // its private key
}

// Any says whether any file is given.
func (f TLSFiles) Any() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Config builds a client TLS config from the files onto base (nil for a
// new one; base keeps its ServerName). Without a CA the system's roots are
// trusted. A certificate needs its key and a key its certificate.
func (f TLSFiles) Config(base *tls.Config) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if base != nil {
		c = base.Clone()
		c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
	}
	if f.CA != "" {
		pem, err := readLimited(f.Prefix+"-ca", f.CA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--%s-ca %s: no PEM certificate in the file", f.Prefix, f.CA)
		}
		c.RootCAs = pool
	}
	switch {
	case f.Cert == "" && f.Key == "":
	case f.Cert == "" || f.Key == "":
		return nil, fmt.Errorf("--%[1]s-cert and --%[1]s-key go together: give both (the client certificate and its private key)", f.Prefix)
	default:
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			// LoadX509KeyPair's errors name a file or a PEM problem, never
			// the key itself.
			return nil, fmt.Errorf("--%[1]s-cert/--%[1]s-key: %w", f.Prefix, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
