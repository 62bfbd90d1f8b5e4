package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/store"
)

// TestRedisURLsRefused: a URL that does not fit --redis-cluster (or its
// absence) is refused before anything is dialled, as a usage error that
// names the flag to change, and never shows the password.
func TestRedisURLsRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		url     string
		cluster bool
		want    string
		usage   bool // a usage error (exit 2): a flag to change
	}{
		{"seeds without --redis-cluster", "redis://:pw-secret@127.0.0.1:1?addr=127.0.0.1:2", false, "add --redis-cluster", true},
		{"a database on a cluster", "redis://:pw-secret@127.0.0.1:1/3?addr=127.0.0.1:2", true, "only database 0: drop /3", true},
		{"a bad seed", "redis://:pw-secret@127.0.0.1:1?addr=nohostport", true, "unable to parse addr", false},
		{"an unknown option", "redis://:pw-secret@127.0.0.1:1?colour=blue", true, "unexpected option", false},
		{"a bad scheme", "http://:pw-secret@127.0.0.1:1", true, "invalid URL scheme", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := OpenStore(context.Background(), RedisEndpoint{URL: tc.url, Cluster: tc.cluster}, store.Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OpenStore(%q, cluster=%v) = %v, want an error with %q", tc.url, tc.cluster, err, tc.want)
			}
			if strings.Contains(err.Error(), "pw-secret") {
				t.Errorf("the error shows the password: %v", err)
			}
			var usage *cmdutil.UsageError
			if got := errors.As(err, &usage); got != tc.usage {
				t.Errorf("usage error = %v, want %v (%v)", got, tc.usage, err)
			}
		})
	}
}

// TestOpenStoreRedisCluster runs against a real Redis Cluster
// (CORTEX_TEST_REDIS_CLUSTER, set by make test-cluster) and a real single
// redis-server (CORTEX_TEST_REDIS_URL, set by CI): --redis-cluster opens
// the cluster from one seed, and a mismatch either way is a clear error at
// startup rather than MOVED errors later.
func TestOpenStoreRedisCluster(t *testing.T) {
	addrs := os.Getenv("CORTEX_TEST_REDIS_CLUSTER")
	if addrs == "" {
		t.Skip(`CORTEX_TEST_REDIS_CLUSTER is not set: make test-cluster runs this test on a real Redis Cluster`)
	}
	seeds := strings.Split(addrs, ",")
	clusterURL := "redis://" + seeds[0]
	if len(seeds) > 1 {
		clusterURL += "?addr=" + strings.Join(seeds[1:], "&addr=")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("cluster", func(t *testing.T) {
		st, rdb, err := OpenStore(ctx, RedisEndpoint{URL: clusterURL, Cluster: true}, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer rdb.Close()
		if _, ok := rdb.(*redis.ClusterClient); !ok {
			t.Fatalf("OpenStore with --redis-cluster gave a %T, want a cluster client", rdb)
		}
		// Jobs of every shard: each lands on the master of its slot.
		for i := range 32 {
			id, err := store.NewJobID("t", "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Tenant: "t", Input: "x"}, time.Now()); err != nil {
				t.Fatalf("job %d: %v", i, err)
			}
			if j, err := st.Get(ctx, id); err != nil || j.State != store.Pending {
				t.Fatalf("job %d: %+v, %v", i, j, err)
			}
		}
	})
	t.Run("a cluster node without --redis-cluster", func(t *testing.T) {
		_, _, err := OpenStore(ctx, RedisEndpoint{URL: "redis://" + seeds[0]}, store.Options{})
		if err == nil || !strings.Contains(err.Error(), "add --redis-cluster") {
			t.Fatalf("OpenStore = %v, want an error saying to add --redis-cluster", err)
		}
	})
	t.Run("a single server with --redis-cluster", func(t *testing.T) {
		single := os.Getenv("CORTEX_TEST_REDIS_URL")
		if single == "" {
			t.Skip("CORTEX_TEST_REDIS_URL is not set (CI sets it)")
		}
		_, _, err := OpenStore(ctx, RedisEndpoint{URL: single, Cluster: true}, store.Options{})
		if err == nil || !strings.Contains(err.Error(), "drop --redis-cluster") {
			t.Fatalf("OpenStore = %v, want an error saying to drop --redis-cluster", err)
		}
	})
}
