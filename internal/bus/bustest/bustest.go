// Package bustest starts a throwaway NATS server for tests. It is imported
// by tests only.
package bustest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
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
	if err := conn.EnsureStreams(ctx, bus.MemoryStorage, 1); err != nil {
		t.Fatal(err)
	}
	return s.ClientURL()
}

// StartJetStreamCluster runs n NATS servers with JetStream (on disk) as one
// cluster on loopback until the test ends, and returns their client URLs
// once the cluster has a JetStream leader. No stream is created.
func StartJetStreamCluster(t testing.TB, n int) []string {
	t.Helper()
	// Every server routes to every other, so the route ports are picked
	// first: a clustered JetStream server refuses to start without routes.
	ports := make([]int, n)
	var routes []*url.URL
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	servers := make([]*server.Server, n)
	for i := range servers {
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
			ServerName: fmt.Sprintf("n%d", i+1), JetStream: true, StoreDir: t.TempDir(),
			Cluster: server.ClusterOpts{Name: "bustest", Host: "127.0.0.1", Port: ports[i]},
			Routes:  routes})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(s.Shutdown)
		servers[i] = s
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ready, leaders := 0, 0
		for _, s := range servers {
			if s.ReadyForConnections(10*time.Millisecond) && s.JetStreamIsClustered() && s.JetStreamIsCurrent() {
				ready++
			}
			if s.JetStreamIsLeader() {
				leaders++
			}
		}
		if ready == n && leaders == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the %d-node JetStream cluster did not form within 20s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	urls := make([]string, n)
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	return urls
}
