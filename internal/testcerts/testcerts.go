// Package testcerts makes a throwaway certificate authority, a server
// certificate for 127.0.0.1 and localhost, and a client certificate, as PEM
// files, for tests of TLS connections. It is imported by tests only and
// never reaches the network.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Files are the PEM files Write makes.
type Files struct {
	CA         string // the CA's certificate
	ServerCert string // for 127.0.0.1 and localhost, signed by the CA
	ServerKey  string
	ClientCert string // a client certificate (CN cortex), signed by the CA
	ClientKey  string
	// OtherCA is a second CA that signed none of these: a client that
	// trusts it alone does not trust the server.
	OtherCA string
}

// Write makes the files in dir; it fails the test on any error.
func Write(t testing.TB, dir string) Files {
	t.Helper()
	f := Files{
		CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"), OtherCA: filepath.Join(dir, "other-ca.pem"),
	}
	ca, caKey := authority(t, "cortex test CA")
	writeCert(t, f.CA, ca.Raw)
	other, _ := authority(t, "another CA")
	writeCert(t, f.OtherCA, other.Raw)
	leaf(t, ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, f.ServerCert, f.ServerKey)
	leaf(t, ca, caKey, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "cortex"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, f.ClientCert, f.ClientKey)
	return f
}

func template(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func authority(t testing.TB, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := template(t, cn)
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func leaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, spec *x509.Certificate, certPath, keyPath string) {
	t.Helper()
	key := newKey(t)
	tmpl := template(t, spec.Subject.CommonName)
	tmpl.IPAddresses, tmpl.DNSNames, tmpl.ExtKeyUsage = spec.IPAddresses, spec.DNSNames, spec.ExtKeyUsage
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writeCert(t, certPath, der)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write(t, keyPath, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeCert(t testing.TB, path string, der []byte) {
	t.Helper()
	write(t, path, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func write(t testing.TB, path string, b *pem.Block) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatal(err)
	}
}
