// Package bustest starts a throwaway NATS server for tests. It is imported
// by tests only.
package bustest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/nats-io/nats-server/v2/server"
)

// StartServer runs a NATS server on a free loopback port until the test
// ends and returns its client URL.
func StartServer(t testing.TB) string {
	t.Helper()
	return Start(t).ClientURL()
}

// Start runs a NATS server on a free loopback port until the test ends.
func Start(t testing.TB) *server.Server {
	t.Helper()
	return StartWith(t, &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
}

// StartWith runs a NATS server with opts until the test ends (TLS or
// authentication, say); opts should name 127.0.0.1 and a free port.
func StartWith(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("NATS not ready within 5s")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// StartJetStream runs a NATS server with JetStream (in memory) on a free
// loopback port until the test ends, with CortexOS's durable streams
// created, and returns its client URL.
func StartJetStream(t testing.TB) string {
	t.Helper()
	s := StartWith(t, &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir()})
	conn, err := bus.Connect(s.ClientURL(), "bustest", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.EnsureStreams(ctx, bus.MemoryStorage); err != nil {
		t.Fatal(err)
	}
	return s.ClientURL()
}
