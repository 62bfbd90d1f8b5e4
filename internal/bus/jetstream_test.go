package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
)

// replicasOf reads the replicas of both durable streams.
func replicasOf(t *testing.T, ctx context.Context, c *bus.Conn) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, name := range []string{bus.StreamSubmit, bus.StreamJobs} {
		s, err := c.JetStream().Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		got[name] = s.CachedInfo().Config.Replicas
	}
	return got
}

func wantReplicas(t *testing.T, ctx context.Context, c *bus.Conn, want int) {
	t.Helper()
	for name, n := range replicasOf(t, ctx, c) {
		if n != want {
			t.Errorf("stream %s has %d replicas, want %d", name, n, want)
		}
	}
}

// TestEnsureStreamsReplicas: on a 3-node cluster the streams are created
// with the replicas asked for; 0 keeps what exists; a number that differs
// scales existing streams.
func TestEnsureStreamsReplicas(t *testing.T) {
	urls := bustest.StartJetStreamCluster(t, 3)
	c := connect(t, strings.Join(urls, ","))
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := c.EnsureStreams(ctx, bus.FileStorage, 0); err != nil {
		t.Fatal(err)
	}
	wantReplicas(t, ctx, c, 1)
	if err := c.EnsureStreams(ctx, bus.FileStorage, 3); err != nil {
		t.Fatal(err)
	}
	wantReplicas(t, ctx, c, 3)
	// A daemon that does not ask (0) leaves them at 3.
	if err := c.EnsureStreams(ctx, bus.FileStorage, 0); err != nil {
		t.Fatal(err)
	}
	wantReplicas(t, ctx, c, 3)
}

// TestEnsureStreamsReplicasOnOneServer: replicas a single server cannot
// hold are refused with advice, and the streams stay as they were.
func TestEnsureStreamsReplicasOnOneServer(t *testing.T) {
	c := connect(t, bustest.StartJetStream(t))
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.EnsureStreams(ctx, bus.MemoryStorage, 3)
	if err == nil || !strings.Contains(err.Error(), "--stream-replicas 1") {
		t.Fatalf("EnsureStreams with 3 replicas on one server = %v, want an error advising --stream-replicas 1", err)
	}
	wantReplicas(t, ctx, c, 1)
}
