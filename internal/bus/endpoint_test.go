package bus_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/config"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func secretFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEndpointAuthenticated(t *testing.T) {
	for _, tc := range []struct {
		ep   bus.Endpoint
		want bool
	}{
		{bus.Endpoint{URL: "nats://127.0.0.1:4222"}, false},
		{bus.Endpoint{URL: "tls://127.0.0.1:4222", TLS: config.TLSFiles{CA: "ca.pem"}}, false},
		{bus.Endpoint{URL: "nats://u:p@127.0.0.1:4222"}, true},
		{bus.Endpoint{URL: "nats://token@127.0.0.1:4222"}, true},
		{bus.Endpoint{URL: "nats://127.0.0.1:4222", Creds: "x.creds"}, true},
		{bus.Endpoint{URL: "nats://127.0.0.1:4222", NKey: "x.nk"}, true},
		{bus.Endpoint{URL: "nats://127.0.0.1:4222", User: "u", PasswordFile: "pw"}, true},
		{bus.Endpoint{URL: "nats://127.0.0.1:4222", TLS: config.TLSFiles{Cert: "c.pem", Key: "k.pem"}}, true},
	} {
		if got := tc.ep.Authenticated(); got != tc.want {
			t.Errorf("Authenticated(%+v) = %v, want %v", tc.ep, got, tc.want)
		}
	}
}

func TestEndpointCheck(t *testing.T) {
	pw := secretFile(t, "pw-secret\n")
	for _, tc := range []struct {
		name string
		ep   bus.Endpoint
		want string
	}{
		{"user without password", bus.Endpoint{URL: "nats://h:1", User: "u"}, "--nats-user needs --nats-password-file"},
		{"password without user", bus.Endpoint{URL: "nats://h:1", PasswordFile: pw}, "--nats-password-file needs --nats-user"},
		{"two passwords", bus.Endpoint{URL: "nats://u:other@h:1", PasswordFile: pw}, "--nats-url holds a password and --nats-password-file gives another"},
		{"creds and password", bus.Endpoint{URL: "nats://h:1", Creds: pw, User: "u", PasswordFile: pw}, "--nats-creds, --nats-nkey and --nats-password-file are alternatives: give one"},
		{"missing creds", bus.Endpoint{URL: "nats://h:1", Creds: pw + ".missing"}, "--nats-creds: open"},
		{"bad nkey", bus.Endpoint{URL: "nats://h:1", NKey: pw}, "--nats-nkey " + pw + ": "},
		{"cert without key", bus.Endpoint{URL: "nats://h:1", TLS: config.TLSFiles{Cert: pw}}, "--nats-cert and --nats-key go together"},
		{"bad url", bus.Endpoint{URL: "nats://u:p%zz@h:1"}, "nats url (unparseable URL)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ep.Check()
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Check = %v, want an error starting %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "pw-secret") || strings.Contains(err.Error(), "p%zz") {
				t.Errorf("error %q shows a secret", err)
			}
		})
	}
	if err := (bus.Endpoint{URL: "nats://u@h:1", PasswordFile: pw}).Check(); err != nil {
		t.Errorf("user in the URL with a password file: %v", err)
	}
}

// TestEndpointPasswordFileAndNKey signs in with a password from a file and
// with an nkey seed file, and is refused, saying so, with a wrong password.
func TestEndpointPasswordFileAndNKey(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	s := bustest.StartWith(t, &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "cortex", Password: "right-pw"}}, Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	log := slog.New(slog.DiscardHandler)
	for _, ep := range []bus.Endpoint{
		{URL: s.ClientURL(), User: "cortex", PasswordFile: secretFile(t, "right-pw\n")},
		{URL: s.ClientURL(), NKey: secretFile(t, string(seed))},
	} {
		c, err := ep.Connect("test", log)
		if err != nil {
			t.Fatalf("Connect(%+v): %v", ep, err)
		}
		c.Close()
	}
	_, err = bus.Endpoint{URL: s.ClientURL(), User: "cortex", PasswordFile: secretFile(t, "wrong-pw\n")}.Connect("test", log)
	if err == nil || !strings.Contains(err.Error(), "connect to NATS at "+s.ClientURL()+": the server refused our credentials") {
		t.Fatalf("wrong password: %v, want a refusal naming NATS", err)
	}
	if strings.Contains(err.Error(), "wrong-pw") {
		t.Errorf("error %q shows the password", err)
	}
}

// An endpoint with an in-process server talks to it over a pipe: it needs
// no socket, so a URL where nothing listens does not stop it.
func TestEndpointInProcessNeedsNoSocket(t *testing.T) {
	s := bustest.Start(t)
	ep := bus.Endpoint{URL: "nats://127.0.0.1:1", InProcess: s}
	c, err := ep.Connect("test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Connect in process: %v", err)
	}
	defer c.Close()
	if addr := c.NATS().ConnectedAddr(); addr != "pipe" {
		t.Errorf("connected to %q, want the server's in-process pipe", addr)
	}
	sub, err := c.NATS().SubscribeSync("in.process")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.NATS().Publish("in.process", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "hi" {
		t.Fatalf("round trip over the pipe: %v %v", m, err)
	}
	if _, err := (bus.Endpoint{URL: "nats://127.0.0.1:1"}).Connect("test", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("the same URL without the in-process server connected: the test proves nothing")
	}
}

// With NoEcho a connection does not get back what it publishes itself on
// its subscriptions, but does get what others publish, and the durable
// streams still deliver its own packets to it (a scheduler consumes the
// retries it publishes on sys.job.submit).
func TestEndpointNoEcho(t *testing.T) {
	url := bustest.StartJetStream(t)
	log := slog.New(slog.DiscardHandler)
	c, err := bus.Endpoint{URL: url, NoEcho: true}.Connect("quiet", log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := bus.Connect(url, "other", log)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	sub, err := c.NATS().SubscribeSync("echo.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, send := range []struct {
		conn *bus.Conn
		data string
	}{{c, "mine"}, {other, "theirs"}} {
		if err := send.conn.NATS().Publish("echo.test", []byte(send.data)); err != nil {
			t.Fatal(err)
		}
		if err := send.conn.NATS().Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "theirs" {
		t.Fatalf("first message %v, %v; want the other connection's (its own is not echoed)", m, err)
	}
	if m, err := sub.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("got %q after the other's: its own message came back", m.Data)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.EnsureStreams(ctx, bus.MemoryStorage, 0); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	cons, err := c.Consume(ctx, bus.StreamSubmit, jetstream.ConsumerConfig{Durable: "noecho-test", AckPolicy: jetstream.AckExplicitPolicy}, 1,
		func(_ context.Context, p *cortexv1.BusPacket, d bus.Delivery) error {
			d.Ack()
			got <- p.GetJobRequest().GetJobId()
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Stop()
	if err := c.PublishDurable(ctx, bus.Durable{Subject: bus.SubjectJobSubmit, Packet: &cortexv1.BusPacket{
		Payload: &cortexv1.BusPacket_JobRequest{JobRequest: &cortexv1.JobRequest{JobId: "j1", Topic: "job.echo"}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "j1" {
			t.Fatalf("consumed job %q, want j1", id)
		}
	case <-ctx.Done():
		t.Fatal("its own durable packet never reached its consumer")
	}
}
