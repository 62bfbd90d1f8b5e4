package devstack_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/devstack"
)

func TestStackServesWithCredentialsOnly(t *testing.T) {
	ctx := context.Background()
	s, err := devstack.Start(ctx, devstack.Options{TTLTick: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)

	nc, err := nats.Connect(s.NATSURL)
	if err != nil {
		t.Fatalf("NATS with the URL's credentials: %v", err)
	}
	nc.Close()
	u, _ := url.Parse(s.NATSURL)
	if nc, err := nats.Connect("nats://" + u.Host); err == nil {
		nc.Close()
		t.Fatal("NATS accepted a connection without credentials")
	}
	js, err := jetStream(s.NATSURL)
	if err != nil || !js {
		t.Errorf("JetStream enabled = %v (%v), want true", js, err)
	}

	opts, err := redis.ParseURL(s.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis with the URL's password: %v", err)
	}
	anon := redis.NewClient(&redis.Options{Addr: opts.Addr})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil {
		t.Fatal("Redis answered without a password")
	}

	// TTLs follow the wall clock.
	if err := rdb.Set(ctx, "k", "v", 50*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Exists(ctx, "k").Val() == 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if rdb.Exists(ctx, "k").Val() == 1 {
		t.Fatal("a key with a 50ms TTL still exists after 5s")
	}
}

func jetStream(u string) (bool, error) {
	nc, err := nats.Connect(u)
	if err != nil {
		return false, err
	}
	defer nc.Close()
	_, err = nc.Request("$JS.API.INFO", nil, 2*time.Second)
	return err == nil, err
}

func TestCloseFreesPortsAndData(t *testing.T) {
	s, err := devstack.Start(context.Background(), devstack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	natsURL, redisAddr := s.NATSURL, s.Redis.Addr()
	s.Close()
	if nc, err := nats.Connect(natsURL, nats.Timeout(time.Second)); err == nil {
		nc.Close()
		t.Error("NATS still answers after Close")
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err == nil {
		t.Error("Redis still answers after Close")
	}
}

// A data directory holds one stack's JetStream store: a second stack on
// it is refused, naming the first one's process, until the first stops.
func TestDataDirServesOneStackAtATime(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	first, err := devstack.Start(ctx, devstack.Options{DataDir: dir, NoRedis: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = devstack.Start(ctx, devstack.Options{DataDir: dir, NoRedis: true})
	want := fmt.Sprintf("--data-dir %s is in use by another cortexctl up (process %d)", dir, os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second stack on the same data dir: %v, want an error saying %q", err, want)
	}
	first.Close()
	again, err := devstack.Start(ctx, devstack.Options{DataDir: dir, NoRedis: true})
	if err != nil {
		t.Fatalf("the data dir stays locked after its stack stopped: %v", err)
	}
	again.Close()
}

// A data directory that cannot be one is refused at once, by its flag.
func TestDataDirThatIsAFileIsRefused(t *testing.T) {
	file := filepath.Join(t.TempDir(), "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := devstack.Start(context.Background(), devstack.Options{DataDir: file, NoRedis: true})
	if err == nil || !strings.Contains(err.Error(), "--data-dir "+file+": not a directory") {
		t.Fatalf("data dir that is a file: %v, want it refused as not a directory", err)
	}
}
