package bus

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/telemetry"
)

// Endpoint is a NATS server to dial and how to prove who we are to it and
// trust it: the URL (which may hold user:password or a token) and, for
// secrets that live in files (Kubernetes secrets), a .creds file, an nkey
// seed file, or a user with a password file; TLS takes a CA bundle and a
// client certificate and key. The zero value but URL dials the URL as it
// is.
type Endpoint struct {
	URL          string
	Creds        string // --nats-creds: a .creds file (user JWT and nkey seed)
	NKey         string // --nats-nkey: a file holding an nkey seed
	User         string // --nats-user, with PasswordFile
	PasswordFile string // --nats-password-file
	TLS          config.TLSFiles
	// InProcess, when set, is a server in this process to connect to
	// without a socket (an embedded server); the URL still names it.
	InProcess nats.InProcessConnProvider
	// NoEcho keeps what the connection publishes from coming back to its
	// own subscriptions (a scheduler needs other components' job events,
	// not its own, which it has handled already). JetStream deliveries
	// come from the server and are not affected.
	NoEcho bool
}

// Authenticated says whether the endpoint proves who it is: credentials in
// the URL, a creds or nkey file, a password file, or a client certificate
// (which NATS can map to a user).
func (e Endpoint) Authenticated() bool {
	if e.Creds != "" || e.NKey != "" || e.PasswordFile != "" || e.TLS.Cert != "" {
		return true
	}
	u, err := url.Parse(e.URL)
	if err != nil || u.User == nil {
		return false
	}
	p, ok := u.User.Password()
	return u.User.Username() != "" || ok && p != ""
}

// Check reports settings that do not go together and files that cannot be
// read, without dialling; errors name the flag, never a secret.
func (e Endpoint) Check() error {
	_, err := e.options()
	return err
}

// options turns the endpoint's files into nats.Go options.
func (e Endpoint) options() ([]nats.Option, error) {
	u, err := url.Parse(e.URL)
	if err != nil {
		return nil, fmt.Errorf("nats url %s: %w", telemetry.RedactURL(e.URL), telemetry.URLError(err))
	}
	var opts []nats.Option
	ways := 0
	if e.Creds != "" {
		ways++
		// nats.go reads the file at each connect; read it now so that a
		// missing or unreadable file stops the start with its name.
		if _, err := config.ReadSecret("nats-creds", e.Creds); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(e.Creds))
	}
	if e.NKey != "" {
		ways++
		opt, err := nats.NkeyOptionFromSeed(e.NKey)
		if err != nil {
			// The seed is not repeated; the error says what was wrong.
			return nil, fmt.Errorf("--nats-nkey %s: %w", e.NKey, config.WithoutPath(err))
		}
		opts = append(opts, opt)
	}
	switch {
	case e.User != "" && e.PasswordFile == "":
		return nil, errors.New("--nats-user needs --nats-password-file (the file holding that user's password)")
	case e.PasswordFile != "":
		ways++
		user := e.User
		if user == "" {
			user = u.User.Username()
		}
		if user == "" {
			return nil, errors.New("--nats-password-file needs --nats-user (or a user in --nats-url, nats://user@host:port)")
		}
		if _, inURL := u.User.Password(); inURL {
			return nil, errors.New("--nats-url holds a password and --nats-password-file gives another: keep one")
		}
		pass, err := config.ReadSecret("nats-password-file", e.PasswordFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(user, pass))
	}
	if ways > 1 {
		return nil, errors.New("--nats-creds, --nats-nkey and --nats-password-file are alternatives: give one")
	}
	if e.tls() {
		tc, err := e.tlsFiles().Config(nil)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// tlsFiles are the TLS files, named by their flags (--nats-ca ...) in
// errors.
func (e Endpoint) tlsFiles() config.TLSFiles {
	f := e.TLS
	f.Prefix = "nats"
	return f
}

// tls says whether the endpoint asks for TLS.
func (e Endpoint) tls() bool {
	return e.TLS.Any() || strings.HasPrefix(e.URL, "tls://")
}

// connectError explains a failed dial: what to give when the server's
// certificate is not trusted, or when TLS is required but not used.
func (e Endpoint) connectError(err error) error {
	at := telemetry.RedactURL(e.URL)
	// A server that requires TLS gets it even from a client without TLS
	// settings (nats.go follows the server), so every TLS error can come.
	if hint := e.tlsFiles().Hint(err); hint != "" {
		return fmt.Errorf("connect to NATS at %s: %s: %w", at, hint, err)
	}
	switch {
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("connect to NATS at %s: TLS was asked for (--nats-ca, --nats-cert or tls://) but the server does not offer it: %w", at, err)
	case errors.Is(err, nats.ErrAuthorization):
		return fmt.Errorf("connect to NATS at %s: the server refused our credentials (check the user and password, creds or nkey): %w", at, err)
	}
	return fmt.Errorf("connect to NATS at %s: %w", at, err)
}
