package daemon_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/cli"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/config"
	"github.com/cortex-os/core/internal/syncbuf"
	"github.com/cortex-os/core/internal/testcerts"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// The secrets of the secure stack; none may appear in any output.
const (
	natsPassword  = "nats-S3cret-pw"
	redisPassword = "redis-S3cret-pw"
	apiKey        = "k3y-Secret-acme-0123"
	wrongPassword = "Wr0ng-pw-guess"
)

// secureStack is a NATS server and a redis-server that speak only TLS
// (client certificates required) and only to user cortex with its
// password, and a config file that the daemons share.
type secureStack struct {
	dir       string
	certs     testcerts.Files
	natsURL   string
	redisAddr string
	config    string // the shared config file
	// A NATS server and a Redis without TLS, to dial with TLS settings.
	plainNATSURL, plainRedisAddr string
}

// file writes a file in the stack's directory and returns its path.
func (s *secureStack) file(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeConfig writes a config file of the given settings over the
// working ones (a value of "-" drops a key).
func (s *secureStack) writeConfig(t *testing.T, name string, override map[string]string) string {
	t.Helper()
	settings := map[string]string{
		"nats-url":            s.natsURL,
		"nats-user":           "cortex",
		"nats-password-file":  s.file(t, "nats-password", natsPassword+"\n"),
		"nats-ca":             s.certs.CA,
		"nats-cert":           s.certs.ClientCert,
		"nats-key":            s.certs.ClientKey,
		"redis-url":           "rediss://cortex@" + s.redisAddr + "/0",
		"redis-password-file": s.file(t, "redis-password", redisPassword+"\n"),
		"redis-ca":            s.certs.CA,
		"redis-cert":          s.certs.ClientCert,
		"redis-key":           s.certs.ClientKey,
		"api-keys-file":       s.file(t, "api-keys", "# tenant acme\n"+apiKey+":acme\n"),
		"listen":              "127.0.0.1:0",
		"metrics-listen":      `""`,
		"log-level":           "debug",
	}
	for k, v := range override {
		settings[k] = v
	}
	var b strings.Builder
	b.WriteString("# shared by every daemon of the test\n")
	for k, v := range settings {
		if v != "-" {
			fmt.Fprintf(&b, "%s: %s\n", k, v)
		}
	}
	return s.file(t, name, b.String())
}

func startSecureStack(t *testing.T) *secureStack {
	t.Helper()
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (apt-get install redis-server); CI installs it")
	}
	s := &secureStack{dir: t.TempDir()}
	s.certs = testcerts.Write(t, s.dir)
	certs := s.certs

	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: s.certs.ServerCert, KeyFile: s.certs.ServerKey, CaFile: s.certs.CA, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := bustest.StartWith(t, &server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(),
		TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2,
		Username: "cortex", Password: natsPassword,
	})
	s.natsURL = "nats://" + ns.Addr().String()

	s.redisAddr = startRedis(t, redisServer, s.dir, &certs)
	s.plainNATSURL = bustest.StartServer(t)
	s.plainRedisAddr = startRedis(t, redisServer, s.dir, nil)
	s.config = s.writeConfig(t, "cortex.yaml", nil)
	return s
}

// startRedis runs redis-server on a free 127.0.0.1 port until the test
// ends. With certs it speaks only TLS (no plain port) and requires client
// certificates; either way the default user is off and user cortex signs
// in with redisPassword.
func startRedis(t *testing.T, bin, dir string, certs *testcerts.Files) string {
	t.Helper()
	for attempt := 0; attempt < 5; attempt++ {
		port := strconv.Itoa(freePort(t))
		addr := net.JoinHostPort("127.0.0.1", port)
		args := []string{"--bind", "127.0.0.1", "--port", port,
			"--user", "default", "off",
			"--user", "cortex", "on", ">" + redisPassword, "~*", "&*", "+@all",
			"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no"}
		ep := daemon.RedisEndpoint{URL: "redis://cortex:" + redisPassword + "@" + addr + "/0"}
		if certs != nil {
			args = append(args, "--port", "0", "--tls-port", port,
				"--tls-cert-file", certs.ServerCert, "--tls-key-file", certs.ServerKey,
				"--tls-ca-cert-file", certs.CA, "--tls-auth-clients", "yes")
			ep = daemon.RedisEndpoint{URL: "rediss://cortex:" + redisPassword + "@" + addr + "/0",
				TLS: config.TLSFiles{CA: certs.CA, Cert: certs.ClientCert, Key: certs.ClientKey}}
		}
		var logs syncbuf.Buffer
		cmd := exec.Command(bin, args...) //nolint:gosec // the test's own redis-server
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		err := waitForRedis(ep, exited)
		if err == nil {
			t.Cleanup(stop)
			return addr
		}
		stop()
		t.Logf("redis-server on %s did not answer (%v); output:\n%s", addr, err, logs.String())
	}
	t.Fatal("redis-server did not start")
	return ""
}

// waitForRedis pings the server until it answers, it exits, or 10s pass.
func waitForRedis(ep daemon.RedisEndpoint, exited <-chan struct{}) error {
	ro, err := ep.Options()
	if err != nil {
		return err
	}
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = rdb.Ping(ctx).Err()
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// run is one cortexctl command run in-process, as the binary runs it.
type run struct {
	name   string
	out    syncbuf.Buffer
	done   chan int
	cancel context.CancelFunc
}

func start(args ...string) *run {
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{name: args[0], done: make(chan int, 1), cancel: cancel}
	go func() { r.done <- cli.Main(ctx, args, strings.NewReader(""), &r.out, &r.out) }()
	return r
}

// wait returns the command's exit code; it fails the test if the command
// runs on past the deadline.
func (r *run) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case code := <-r.done:
		return code
	case <-time.After(d):
		r.cancel()
		t.Fatalf("cortexctl %s still running after %s; output:\n%s", r.name, d, r.out.String())
		return -1
	}
}

// waitFor polls the command's output for re until the deadline.
func (r *run) waitFor(t *testing.T, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(r.out.String()); m != nil {
			return m
		}
		select {
		case code := <-r.done:
			t.Fatalf("cortexctl %s exited %d; output:\n%s", r.name, code, r.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("cortexctl %s did not print %s within %s; output:\n%s", r.name, re, d, r.out.String())
	return nil
}

// assertNoSecrets fails if any secret shows in out.
func assertNoSecrets(t *testing.T, what, out string) {
	t.Helper()
	for _, secret := range []string{natsPassword, redisPassword, apiKey, wrongPassword} {
		if strings.Contains(out, secret) {
			t.Errorf("%s shows a secret (%q):\n%s", what, secret, out)
		}
	}
}

// TestSecureStack runs the four daemons, as 'cortexctl <daemon> --config
// FILE' runs them, against NATS and Redis that require TLS with client
// certificates and a user with a password, all from one shared config
// file with secrets in files; a job submitted with a key from
// --api-keys-file completes. Wrong passwords and missing TLS are refused
// with errors that name NATS or Redis and what to do, and no secret shows
// in any output, at log level debug.
func TestSecureStack(t *testing.T) {
	s := startSecureStack(t)

	var daemons []*run
	t.Cleanup(func() {
		for _, d := range daemons {
			d.cancel()
		}
		for _, d := range daemons {
			if code := d.wait(t, 30*time.Second); code != 0 {
				t.Errorf("cortexctl %s exited %d after SIGTERM; output:\n%s", d.name, code, d.out.String())
			}
			assertNoSecrets(t, "cortexctl "+d.name, d.out.String())
		}
	})
	ready := map[string]*regexp.Regexp{
		"safety":    regexp.MustCompile(`safety kernel running`),
		"scheduler": regexp.MustCompile(`scheduler running`),
		"worker":    regexp.MustCompile(`worker \S+ \(pool echo\) running`),
		"gateway":   regexp.MustCompile(`gateway listening on (https://\S+);`),
	}
	var gatewayURL string
	for _, name := range []string{"safety", "scheduler", "worker", "gateway"} {
		args := []string{name, "--config", s.config}
		if name == "gateway" {
			// The API over TLS too: keys and prompts never in clear.
			args = append(args, "--tls-cert", s.certs.ServerCert, "--tls-key", s.certs.ServerKey)
		}
		d := start(args...)
		daemons = append(daemons, d)
		m := d.waitFor(t, ready[name], 20*time.Second)
		if name == "gateway" {
			gatewayURL = m[1]
		}
	}

	caPEM, err := os.ReadFile(s.certs.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	overTLS := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
	defer overTLS.CloseIdleConnections()
	if res, err := (&http.Client{Transport: overTLS}).Get(gatewayURL + "/healthz"); err != nil || res.ProtoMajor != 2 {
		t.Fatalf("GET /healthz over TLS: %v, %v; want an answer over HTTP/2", res, err)
	} else {
		res.Body.Close()
	}
	gw, err := client.NewWithTransport(gatewayURL, apiKey, overTLS)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := gw.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "over TLS"})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	state := cortexv1.JobState_JOB_STATE_UNSPECIFIED
	for state != cortexv1.JobState_JOB_STATE_COMPLETED {
		if ctx.Err() != nil {
			t.Fatalf("job %s is %s, not COMPLETED, after 30s", sub.GetJobId(), state)
		}
		got, err := gw.GetJob(ctx, &cortexv1.GetJobRequest{JobId: sub.GetJobId()})
		if err != nil {
			t.Fatalf("get job: %v", err)
		}
		state = got.GetJob().GetState()
		if state != cortexv1.JobState_JOB_STATE_COMPLETED {
			time.Sleep(20 * time.Millisecond)
		}
	}
	res, err := gw.GetResult(ctx, &cortexv1.GetResultRequest{JobId: sub.GetJobId()})
	if err != nil || res.GetText() != "over TLS" {
		t.Fatalf("result = %q, %v; want the echo of the prompt", res.GetText(), err)
	}
	t.Logf("job %s COMPLETED over TLS with authentication", sub.GetJobId())

	// What is refused: each case is a scheduler started with one setting
	// changed; it fails at its first contact with the server.
	wrong := s.file(t, "wrong-password", wrongPassword+"\n")
	for _, tc := range []struct {
		name     string
		override map[string]string
		want     []string
	}{
		{"wrong NATS password", map[string]string{"nats-password-file": wrong},
			[]string{"connect to NATS at " + s.natsURL, "refused our credentials", "Authorization Violation"}},
		{"wrong Redis password", map[string]string{"redis-password-file": wrong},
			[]string{"redis at rediss://", "refused our credentials", "WRONGPASS"}},
		{"NATS without our CA", map[string]string{"nats-ca": "-", "nats-cert": "-", "nats-key": "-"},
			[]string{"connect to NATS at " + s.natsURL, "not signed by a CA we trust", "--nats-ca"}},
		{"NATS with another CA", map[string]string{"nats-ca": s.certs.OtherCA},
			[]string{"connect to NATS at " + s.natsURL, "--nats-ca"}},
		{"TLS to a plain NATS server", map[string]string{"nats-url": s.plainNATSURL},
			[]string{"connect to NATS at " + s.plainNATSURL, "the server does not offer it"}},
		{"NATS without a client certificate", map[string]string{"nats-cert": "-", "nats-key": "-"},
			[]string{"connect to NATS at " + s.natsURL, "give --nats-cert and --nats-key"}},
		{"plain Redis to the TLS port", map[string]string{"redis-url": "redis://cortex@" + s.redisAddr + "/0", "redis-ca": "-", "redis-cert": "-", "redis-key": "-"},
			[]string{"redis at redis://", "use a rediss:// URL"}},
		{"Redis without a client certificate", map[string]string{"redis-cert": "-", "redis-key": "-"},
			[]string{"redis at rediss://", "give --redis-cert and --redis-key"}},
		{"TLS Redis URL to a plain server", map[string]string{"redis-url": "rediss://cortex@" + s.plainRedisAddr + "/0"},
			[]string{"redis at rediss://", "no answer to TLS", "redis:// URL"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := s.writeConfig(t, "refused.yaml", tc.override)
			r := start("scheduler", "--config", cfg)
			code := r.wait(t, 30*time.Second)
			out := r.out.String()
			if code != 1 {
				t.Fatalf("exit %d, want 1 (refused); output:\n%s", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			assertNoSecrets(t, "the refusal", out)
			t.Logf("%s: %s", tc.name, strings.TrimSpace(out))
		})
	}
}
