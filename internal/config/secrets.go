package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
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
	f, err := os.Open(path)
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

// Hint says what to give when a TLS connection failed with err: the CA
// bundle of a server we do not trust, or the client certificate a server
// requires. It is "" for errors it cannot explain.
func (f TLSFiles) Hint(err error) string {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var notTLS tls.RecordHeaderError
	msg := err.Error()
	switch {
	case errors.As(err, &unknown):
		return "the server's TLS certificate is not signed by a CA we trust; give its CA bundle with --" + f.Prefix + "-ca"
	case errors.As(err, &hostname):
		return "the server's TLS certificate is not for this host name; dial the name it was issued for"
	case errors.As(err, &notTLS):
		return "the server does not speak TLS"
	case f.Cert != "":
	case strings.Contains(msg, "tls: certificate required"):
		// crypto/tls keeps the alert type unexported.
		return fmt.Sprintf("the server asks for a client certificate; give --%[1]s-cert and --%[1]s-key", f.Prefix)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		strings.Contains(msg, "after TLS handshake"):
		// With TLS 1.3 the server's refusal of a client without a
		// certificate may come after the client thinks it is done.
		return fmt.Sprintf("the server closed the connection; if it asks for a client certificate, give --%[1]s-cert and --%[1]s-key", f.Prefix)
	}
	return ""
}

// ServerTLS is the TLS config of a server that presents the certificate in
// certFile (PEM, its chain after it) with the private key in keyFile, for
// HTTP/2 and HTTP/1.1. flag names the certificate's setting in errors,
// which never hold the key.
func ServerTLS(flag, certFile, keyFile string) (*tls.Config, error) {
	certPEM, err := readLimited(flag, certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readLimited(flag+" key", keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--%s %s with its key %s: %w", flag, certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}, nil
}
