// Package devstack runs the infrastructure CortexOS needs inside one
// process: an embedded NATS server (JetStream on, loopback only) and an
// embedded Redis (miniredis, in memory, TTLs advanced by the wall clock). It is what `cortexctl up` and the
// in-process tests stand on. Both servers require the random credentials it
// generates, which appear in the URLs it returns. It knows nothing of jobs.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/cortex-os/core/internal/ids"
)

// Options configures the embedded stack.
type Options struct {
	// Host is the address both servers listen on (127.0.0.1 when empty).
	Host string
	// NATSPort and RedisPort pick the ports; 0 picks free ones.
	NATSPort  int
	RedisPort int
	// DataDir holds JetStream's storage; a temporary directory, removed on
	// Close, when empty.
	DataDir string
	// ReadyTimeout bounds the wait for NATS to accept connections.
	ReadyTimeout time.Duration
	// TTLTick is how often Redis TTLs advance (DefaultTTLTick when zero).
	TTLTick time.Duration
	// NoNATS and NoRedis leave one server out, when a remote one is used.
	NoNATS  bool
	NoRedis bool
}

// Stack is a running embedded NATS and Redis.
type Stack struct {
	NATS  *server.Server
	Redis *miniredis.Miniredis
	// NATSURL and RedisURL carry the credentials; treat them as secrets.
	NATSURL  string
	RedisURL string
	// DataDir is where JetStream keeps file-backed streams.
	DataDir string
	tmpDir  string
	// lock holds DataDir for this stack (lock.go).
	lock    *os.File
	stopTTL chan struct{}
	ttlDone chan struct{}
}

// DefaultTTLTick is how often the embedded Redis's TTLs advance. Each
// advance sorts every key under miniredis's lock, so it is kept rare: keys
// expire within 10 s of their time, which is plenty for a 24 h retention.
const DefaultTTLTick = 10 * time.Second

// advanceTTLs moves miniredis's TTLs forward with the wall clock once per
// tick, so keys expire as in Redis (to within a tick). miniredis's own
// ClockTTL(true) does the same on every command, re-sorting every key each
// time, which made a 2,000-job bench run 14x slower (78 jobs/s) than a
// 200-job one.
func advanceTTLs(mr *miniredis.Miniredis, tick time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(tick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			mr.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Start boots both servers and returns once NATS accepts connections.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 5 * time.Second
	}
	if opts.TTLTick <= 0 {
		opts.TTLTick = DefaultTTLTick
	}
	s := &Stack{}
	var err error
	if !opts.NoNATS {
		err = s.startNATS(opts)
	}
	if err == nil && !opts.NoRedis {
		err = s.startRedis(opts)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Stack) startNATS(opts Options) error {
	dataDir := opts.DataDir
	if dataDir == "" {
		tmp, err := os.MkdirTemp("", "cortex-devstack-")
		if err != nil {
			return fmt.Errorf("devstack: make JetStream dir: %w", err)
		}
		s.tmpDir, dataDir = tmp, tmp
	} else {
		lock, err := claimDataDir(dataDir)
		if err != nil {
			return err
		}
		s.lock = lock
	}
	s.DataDir = dataDir
	port := opts.NATSPort
	if port == 0 {
		port = server.RANDOM_PORT
	} else if ln, err := net.Listen("tcp", net.JoinHostPort(opts.Host, strconv.Itoa(port))); err != nil {
		// The server would only fail to become ready: say why now.
		return fmt.Errorf("devstack: start NATS on port %d: %w", port, err)
	} else {
		_ = ln.Close()
	}
	pass := secret()
	ns, err := server.NewServer(&server.Options{
		Host:       opts.Host,
		Port:       port,
		NoSigs:     true,
		NoLog:      true,
		JetStream:  true,
		StoreDir:   dataDir,
		Username:   "cortex",
		Password:   pass,
		MaxPayload: 1 << 20,
	})
	if err != nil {
		return fmt.Errorf("devstack: configure NATS: %w", err)
	}
	s.NATS = ns
	go ns.Start()
	if !ns.ReadyForConnections(opts.ReadyTimeout) {
		return fmt.Errorf("devstack: NATS not ready within %s", opts.ReadyTimeout)
	}
	addr, ok := ns.Addr().(*net.TCPAddr)
	if !ok {
		return errors.New("devstack: NATS has no TCP address")
	}
	s.NATSURL = (&url.URL{Scheme: "nats", User: url.UserPassword("cortex", pass), Host: net.JoinHostPort(opts.Host, strconv.Itoa(addr.Port))}).String()
	return nil
}

func (s *Stack) startRedis(opts Options) error {
	pass := secret()
	mr := miniredis.NewMiniRedis()
	mr.RequireAuth(pass)
	if err := mr.StartAddr(net.JoinHostPort(opts.Host, strconv.Itoa(opts.RedisPort))); err != nil {
		return fmt.Errorf("devstack: start Redis on port %d: %w", opts.RedisPort, err)
	}
	s.Redis = mr
	s.stopTTL = make(chan struct{})
	s.ttlDone = make(chan struct{})
	go advanceTTLs(mr, opts.TTLTick, s.stopTTL, s.ttlDone)
	// User "default" makes the URL work for redis-cli -u as well as go-redis.
	s.RedisURL = (&url.URL{Scheme: "redis", User: url.UserPassword("default", pass), Host: mr.Addr()}).String()
	return nil
}

func secret() string { return ids.Hex(16) }

// Close stops both servers and removes the temporary data directory. It is
// safe on a partly started stack.
func (s *Stack) Close() {
	if s.stopTTL != nil {
		close(s.stopTTL)
		<-s.ttlDone
	}
	if s.Redis != nil {
		s.Redis.Close()
	}
	if s.NATS != nil {
		s.NATS.Shutdown()
		s.NATS.WaitForShutdown()
	}
	if s.tmpDir != "" {
		_ = os.RemoveAll(s.tmpDir)
	}
	if s.lock != nil {
		_ = s.lock.Close()
	}
}
