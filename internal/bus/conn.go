package bus

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/telemetry"
	"google.golang.org/protobuf/types/known/timestamppb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Conn is a NATS connection that speaks BusPacket: it stamps what it
// publishes and decodes what it receives, dropping and counting packets that
// do not decode instead of passing them on.
type Conn struct {
	nc       *nats.Conn
	senderID string
	log      *slog.Logger
	dropped  atomic.Uint64
	wg       sync.WaitGroup
}

// Connect dials NATS at url. name identifies this component instance in
// every packet it sends (sender_id) and in the server's connection list.
func Connect(url, name string, log *slog.Logger) (*Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.Timeout(2*time.Second),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", telemetry.RedactURL(url), err)
	}
	return &Conn{nc: nc, senderID: name, log: log}, nil
}

// NATS exposes the underlying connection for tests and health checks.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// SenderID is the name this connection stamps on every packet.
func (c *Conn) SenderID() string { return c.senderID }

// Dropped counts the packets received that did not decode.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

// Close drains subscriptions, waits for in-flight handlers and closes.
func (c *Conn) Close() {
	_ = c.nc.Drain()
	for c.nc.IsDraining() {
		time.Sleep(5 * time.Millisecond)
	}
	c.wg.Wait()
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

// Request sends a packet and waits for the reply packet until ctx ends.
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
	return Decode(msg.Data)
}

// Handler processes one decoded packet. reply is the subject to answer on,
// empty when the sender expects no answer. A handler returns an error only
// for a packet it cannot use (a payload that does not belong on the
// subject); such packets are dropped and counted like undecodable ones.
type Handler func(ctx context.Context, p *cortexv1.BusPacket, reply string) error

// Subscribe delivers every packet on subject (within queue group queue, if
// not empty) to h, running up to concurrency handlers at once. Packets that
// do not decode are dropped and counted. Handlers get ctx, which the caller
// cancels to stop them; Close waits for them.
func (c *Conn) Subscribe(ctx context.Context, subject, queue string, concurrency int, h Handler) (*nats.Subscription, error) {
	if concurrency < 1 {
		concurrency = 1
	}
	sem := make(chan struct{}, concurrency)
	cb := func(m *nats.Msg) {
		p, err := Decode(m.Data)
		if err != nil {
			c.drop(m.Subject, len(m.Data), err)
			return
		}
		sem <- struct{}{}
		c.wg.Add(1)
		go func() {
			defer func() { <-sem; c.wg.Done() }()
			if err := h(ctx, p, m.Reply); err != nil {
				c.drop(m.Subject, len(m.Data), err)
			}
		}()
	}
	var sub *nats.Subscription
	var err error
	if queue == "" {
		sub, err = c.nc.Subscribe(subject, cb)
	} else {
		sub, err = c.nc.QueueSubscribe(subject, queue, cb)
	}
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	// Bursts are absorbed by the client's pending buffer while handlers run.
	if err := sub.SetPendingLimits(1<<20, 256<<20); err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	return sub, nil
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
