// Package bustest starts a throwaway NATS server for tests. It is imported
// by tests only.
package bustest

import (
	"testing"
	"time"

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
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
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
