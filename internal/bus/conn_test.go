package bus_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/syncbuf"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func connect(t *testing.T, url string) *bus.Conn {
	t.Helper()
	c, err := bus.Connect(url, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func request(id string) *cortexv1.BusPacket {
	return &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobRequest{JobRequest: &cortexv1.JobRequest{JobId: id, Topic: "job.echo"}}}
}

// Close lets every packet already received finish its handler, and the
// handlers may still publish while it drains.
func TestCloseFinishesReceivedPackets(t *testing.T) {
	url := bustest.StartServer(t)
	consumer, producer := connect(t, url), connect(t, url)
	defer producer.Close()
	var handled, echoed atomic.Int32
	echoes := connect(t, url)
	defer echoes.Close()
	if _, err := echoes.Subscribe(context.Background(), "echoes", "", 1, func(context.Context, *cortexv1.BusPacket, string) error {
		echoed.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	if _, err := consumer.Subscribe(context.Background(), "in", "", 2, func(_ context.Context, p *cortexv1.BusPacket, _ string) error {
		<-release
		handled.Add(1)
		return consumer.Publish("echoes", p)
	}); err != nil {
		t.Fatal(err)
	}
	// The subscriptions are in place at the server before anything is sent.
	for _, c := range []*bus.Conn{consumer, echoes} {
		if err := c.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	const n = 20
	for i := range n {
		if err := producer.Publish("in", request(string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	if err := producer.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := consumer.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	close(release)
	consumer.Close()
	if got := handled.Load(); got != n {
		t.Fatalf("handled %d of %d received packets before Close returned (dropped %d)", got, n, consumer.Dropped())
	}
	deadline := time.Now().Add(5 * time.Second)
	for echoed.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := echoed.Load(); got != n {
		t.Fatalf("%d of %d packets published during the drain arrived", got, n)
	}
}

// With the server gone there is nothing to drain from: Close must not wait
// out the drain timeout (30 s).
func TestCloseWithServerGone(t *testing.T) {
	s := bustest.Start(t)
	c := connect(t, s.ClientURL())
	if _, err := c.Subscribe(context.Background(), "in", "", 1, func(context.Context, *cortexv1.BusPacket, string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waiting 10s after the server went away")
	}
}

// lines is a slog handler's output that tests may read while it is written.
type lines struct{ syncbuf.Buffer }

func (l *lines) has(s string) bool { return strings.Contains(l.String(), s) }

// A connection logs when it loses its server and when it is back, so that
// an outage of the bus shows in the logs, and tells whoever asked
// (OnReconnect) that it is back.
func TestConnLogsLosingAndRegainingNATS(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true}
	s := bustest.StartWith(t, opts)
	port := s.Addr().(*net.TCPAddr).Port
	var out lines
	c, err := bus.Connect(s.ClientURL(), "test", slog.New(slog.NewTextHandler(&out, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var back atomic.Int32
	c.OnReconnect(func() { back.Add(1) })
	waitFor := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !out.has(what); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log within 10s:\n%s", what, out.String())
			}
		}
	}
	s.Shutdown()
	waitFor("lost the NATS connection; reconnecting")
	bustest.StartWith(t, &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	waitFor("reconnected to NATS")
	for deadline := time.Now().Add(5 * time.Second); back.Load() != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("OnReconnect called %d times, want once", back.Load())
		}
	}
}

// A gather on a subject nobody listens on ends at once, with no reply,
// when NATS says so: its empty status message is no malformed packet.
func TestGatherOnASubjectNobodyListensOn(t *testing.T) {
	c := connect(t, bustest.StartServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	replies, err := c.Gather(ctx, "sys.nobody.here", &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: &cortexv1.PolicyQuery{}}})
	if err != nil || len(replies) != 0 {
		t.Fatalf("gather: %d replies, %v; want none", len(replies), err)
	}
	if ctx.Err() != nil {
		t.Error("the gather waited out its window: NATS said nobody listens")
	}
	if n := c.Dropped(); n != 0 {
		t.Errorf("%d packets dropped as malformed, want none", n)
	}
}
