package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/telemetry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// drainTimeout bounds how long a subscription's drain may take.
const drainTimeout = 30 * time.Second

// Conn is a NATS connection that speaks BusPacket: it stamps what it
// publishes and decodes what it receives, dropping and counting packets that
// do not decode instead of passing them on.
type Conn struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	senderID string
	log      *slog.Logger
	dropped  atomic.Uint64

	mu          sync.Mutex
	subs        []*Subscription
	onReconnect []func()
	// events are the job events waiting to be sent (events.go).
	events eventQueue
}

// Connect dials NATS at rawURL. name identifies this component instance in
// every packet it sends (sender_id) and in the server's connection list.
func Connect(rawURL, name string, log *slog.Logger) (*Conn, error) {
	return Endpoint{URL: rawURL}.Connect(name, log)
}

// Connect dials the endpoint, as the package's Connect does a bare URL.
func (e Endpoint) Connect(name string, log *slog.Logger) (*Conn, error) {
	secure, err := e.options()
	if err != nil {
		return nil, err
	}
	c := &Conn{senderID: name, log: log}
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.Timeout(2 * time.Second),
		nats.DrainTimeout(drainTimeout),
		// An outage of the bus shows in the logs, not only in /readyz.
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("lost the NATS connection; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "server", telemetry.RedactURL(nc.ConnectedUrl()))
			c.reconnected()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("NATS asynchronous error", "subject", subject, "err", err)
		}),
	}, secure...)
	if e.InProcess != nil {
		opts = append(opts, nats.InProcessServer(e.InProcess))
	}
	if e.NoEcho {
		opts = append(opts, nats.NoEcho())
	}
	nc, err := nats.Connect(e.URL, opts...)
	if err != nil {
		return nil, e.connectError(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("JetStream on %s: %w", telemetry.RedactURL(e.URL), err)
	}
	c.nc, c.js = nc, js
	return c, nil
}

// OnReconnect has fn called each time the connection is back after it was
// lost: what was published meanwhile did not reach this connection's
// subscriptions.
func (c *Conn) OnReconnect(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onReconnect = append(c.onReconnect, fn)
}

func (c *Conn) reconnected() {
	c.mu.Lock()
	fns := slices.Clone(c.onReconnect)
	c.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// NATS exposes the underlying connection for tests and health checks.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// SenderID is the name this connection stamps on every packet.
func (c *Conn) SenderID() string { return c.senderID }

// Dropped counts the packets received that did not decode or did not belong
// on their subject.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

// Close drains every subscription (each stops taking packets, delivers what
// it holds and waits for its handlers), then flushes what was published and
// closes the connection. Handlers may still publish while it drains.
func (c *Conn) Close() {
	c.mu.Lock()
	subs := c.subs
	c.subs = nil
	c.mu.Unlock()
	for _, s := range subs {
		s.Drain()
	}
	c.flushEvents()
	if c.nc.IsConnected() {
		_ = c.nc.FlushTimeout(2 * time.Second)
	}
	c.nc.Close()
}

func (c *Conn) stamp(p *cortexv1.BusPacket) {
	p.SenderId = c.senderID
	p.ProtocolVersion = ProtocolVersion
	if p.CreatedAt == nil {
		p.CreatedAt = timestamppb.Now()
	}
}

// Publish stamps and sends a packet.
func (c *Conn) Publish(subject string, p *cortexv1.BusPacket) error {
	c.stamp(p)
	data, err := Encode(p)
	if err != nil {
		return err
	}
	if err := c.nc.Publish(subject, data); err != nil {
		return fmt.Errorf("publish on %s: %w", subject, err)
	}
	return nil
}

// Request sends a packet and waits for the reply packet until ctx ends. A
// reply that does not decode is counted as dropped and wraps ErrMalformed.
func (c *Conn) Request(ctx context.Context, subject string, p *cortexv1.BusPacket) (*cortexv1.BusPacket, error) {
	c.stamp(p)
	data, err := Encode(p)
	if err != nil {
		return nil, err
	}
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, fmt.Errorf("request on %s: %w", subject, err)
	}
	reply, err := Decode(msg.Data)
	if err != nil {
		c.drop(msg.Subject, len(msg.Data), err)
		return nil, err
	}
	return reply, nil
}

// Gather publishes a packet to every subscriber of subject and collects
// their replies until ctx ends, which is how it returns normally: the
// number of responders is not known in advance. When NATS answers that
// nobody listens on subject, it returns at once, with no reply. Replies
// that do not decode are dropped and counted.
func (c *Conn) Gather(ctx context.Context, subject string, p *cortexv1.BusPacket) ([]*cortexv1.BusPacket, error) {
	c.stamp(p)
	data, err := Encode(p)
	if err != nil {
		return nil, err
	}
	inbox := c.nc.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := c.nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, fmt.Errorf("gather on %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, fmt.Errorf("gather on %s: %w", subject, err)
	}
	var replies []*cortexv1.BusPacket
	for {
		select {
		case <-ctx.Done():
			return replies, nil
		case m := <-ch:
			if len(m.Data) == 0 && m.Header.Get("Status") == noResponders {
				return replies, nil
			}
			r, err := Decode(m.Data)
			if err != nil {
				c.drop(m.Subject, len(m.Data), err)
				continue
			}
			replies = append(replies, r)
		}
	}
}

// noResponders is the status NATS answers a request with when nobody
// listens on its subject.
const noResponders = "503"

// Handler processes one decoded packet. reply is the subject to answer on,
// empty when the sender expects no answer. A handler returns an error only
// for a packet it cannot use (a payload that does not belong on the
// subject); such packets are dropped and counted like undecodable ones.
type Handler func(ctx context.Context, p *cortexv1.BusPacket, reply string) error

// Subscription is one subject's consumer: NATS delivers, handlers run on
// goroutines, at most the subscription's concurrency at once.
type Subscription struct {
	conn *Conn
	nc   *nats.Conn
	sub  *nats.Subscription
	wg   sync.WaitGroup

	mu      sync.Mutex
	drained bool
}

// Subscribe delivers every packet on subject (within queue group queue, if
// not empty) to h, running up to concurrency handlers at once. Packets that
// do not decode are dropped and counted. Handlers get ctx; cancelling it
// does not stop delivery: Drain or Conn.Close does.
func (c *Conn) Subscribe(ctx context.Context, subject, queue string, concurrency int, h Handler) (*Subscription, error) {
	return subscribe(c, ctx, subject, queue, concurrency, Decode, h)
}

// subscribe is Subscribe with packets read by decode.
func subscribe[T any](c *Conn, ctx context.Context, subject, queue string, concurrency int, decode func([]byte) (T, error),
	h func(ctx context.Context, p T, reply string) error) (*Subscription, error) {
	if concurrency < 1 {
		concurrency = 1
	}
	s := &Subscription{conn: c, nc: c.nc}
	sem := make(chan struct{}, concurrency)
	cb := func(m *nats.Msg) {
		p, err := decode(m.Data)
		if err != nil {
			c.drop(m.Subject, len(m.Data), err)
			return
		}
		// Blocking here leaves further packets in the client's pending
		// buffer until a handler is free.
		sem <- struct{}{}
		if !s.track() {
			<-sem
			c.log.Error("packet delivered after drain, dropped", "subject", m.Subject)
			return
		}
		go func() {
			defer func() { <-sem; s.wg.Done() }()
			if err := h(ctx, p, m.Reply); err != nil {
				c.drop(m.Subject, len(m.Data), err)
			}
		}()
	}
	var err error
	if queue == "" {
		s.sub, err = c.nc.Subscribe(subject, cb)
	} else {
		s.sub, err = c.nc.QueueSubscribe(subject, queue, cb)
	}
	if err == nil {
		// Bursts wait in the client's pending buffer while handlers run.
		err = s.sub.SetPendingLimits(1<<20, 256<<20)
	}
	if err != nil {
		if s.sub != nil {
			_ = s.sub.Unsubscribe()
		}
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	return s, nil
}

// track counts one more running handler, unless the subscription has been
// drained.
func (s *Subscription) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drained {
		return false
	}
	s.wg.Add(1)
	return true
}

// Drain stops taking packets, lets the handlers of those already received
// run, and returns when they are done (or the drain timed out). It is safe
// to call more than once.
func (s *Subscription) Drain() {
	// A drain completes with a round trip to the server; with the server
	// gone there is nobody to drain from, so stop at once.
	if !s.nc.IsConnected() {
		_ = s.sub.Unsubscribe()
	} else if err := s.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		_ = s.sub.Unsubscribe()
	}
	deadline := time.Now().Add(drainTimeout)
	for s.sub.IsValid() && time.Now().Before(deadline) {
		if !s.nc.IsConnected() {
			// The server went away during the drain (or before the client
			// noticed): it cannot complete, so stop waiting for it.
			_ = s.sub.Unsubscribe()
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.mu.Lock()
	s.drained = true
	s.mu.Unlock()
	s.wg.Wait()
}

// Close drains the subscription and forgets it, for a subscription that
// ends before its connection (one client's watch, say).
func (s *Subscription) Close() {
	s.Drain()
	c := s.conn
	c.mu.Lock()
	c.subs = slices.DeleteFunc(c.subs, func(o *Subscription) bool { return o == s })
	c.mu.Unlock()
}

func (c *Conn) drop(subject string, size int, err error) {
	c.dropped.Add(1)
	c.log.Warn("dropped malformed packet", "subject", subject, "bytes", size, "err", err)
}

// WrongPayload is the error a Handler returns for a packet whose payload
// does not belong on its subject.
func WrongPayload(p *cortexv1.BusPacket, want string) error {
	return fmt.Errorf("%w: want %s, got %T from %q", ErrMalformed, want, p.GetPayload(), p.GetSenderId())
}

// Flush waits until the server has processed everything sent so far, so a
// subscription is known to be in place.
func (c *Conn) Flush(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("flush NATS connection: %w", err)
	}
	return nil
}
