package harness

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// events records the terminal states announced on sys.job.event, per job.
type Events struct {
	mu        sync.Mutex
	terminal  map[string][]store.State // job id -> distinct terminal states announced, in order
	repeats   int                      // terminal events that repeated a state already announced
	received  atomic.Int64
	bad       atomic.Int64
	reconnect atomic.Int64
	dropped   atomic.Int64
}

// WatchEvents subscribes to sys.job.event for the whole test, reconnecting
// across NATS restarts. Events are best effort: what is missed while NATS is
// down is missed.
func WatchEvents(t *testing.T, h *Harness, url string) *Events {
	ev := &Events{terminal: map[string][]store.State{}}
	nc, err := nats.Connect(url,
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(*nats.Conn, error) {}),
		nats.ReconnectHandler(func(*nats.Conn) { ev.reconnect.Add(1) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				ev.dropped.Add(1)
			}
		}),
	)
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.Subscribe("sys.job.event", func(m *nats.Msg) {
		ev.received.Add(1)
		var p cortexv1.BusPacket
		if err := proto.Unmarshal(m.Data, &p); err != nil || len(bus.EventJobs(&p)) == 0 {
			ev.bad.Add(1)
			return
		}
		ev.mu.Lock()
		defer ev.mu.Unlock()
		for _, j := range bus.EventJobs(&p) {
			st := store.StateOf(j.GetState())
			if !st.Terminal() {
				continue
			}
			if slices.Contains(ev.terminal[j.GetJobId()], st) {
				ev.repeats++
				continue
			}
			ev.terminal[j.GetJobId()] = append(ev.terminal[j.GetJobId()], st)
		}
	})
	if err != nil {
		t.Fatalf("subscribe to sys.job.event: %v", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		t.Fatalf("NATS flush: %v", err)
	}
	h.Logf("watching sys.job.event")
	return ev
}
