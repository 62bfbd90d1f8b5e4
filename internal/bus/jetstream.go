package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Durable subjects. Submits and dispatched jobs travel on JetStream
// work-queue streams: a message stays in its stream until a consumer acks
// it, is redelivered when it is not acked within the consumer's AckWait
// (the lease), and leaves when acked, so a scheduler or worker that dies
// holding one does not lose it. Heartbeats, events and requests stay on
// core NATS (best effort).
const (
	// StreamSubmit holds SubjectJobSubmit: jobs waiting for a scheduler.
	StreamSubmit = "CORTEX_SUBMIT"
	// StreamJobs holds every job subject (job.<pool>.<kind>): jobs placed
	// in a pool, waiting for one of its workers.
	StreamJobs = "CORTEX_JOBS"
	// ConsumerScheduler is the durable consumer all schedulers share on
	// StreamSubmit, so each submit goes to one of them.
	ConsumerScheduler = "scheduler"
	// SubjectMaxDeliveries is where the server reports a job that its
	// pool's workers took MaxDeliver times without acking (JetStream's
	// advisory).
	SubjectMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamJobs + ".*"
)

// PoolConsumer is the durable consumer the workers of pool share on
// StreamJobs.
func PoolConsumer(pool string) string { return "pool-" + pool }

// Storage says where streams keep their messages.
type Storage = jetstream.StorageType

// Storage kinds.
const (
	FileStorage   = jetstream.FileStorage
	MemoryStorage = jetstream.MemoryStorage
)

// maxStreamAge bounds how long an unconsumed message stays in a stream
// (the reconciler has re-driven its job long before).
const maxStreamAge = 24 * time.Hour

// JetStream is the connection's JetStream context.
func (c *Conn) JetStream() jetstream.JetStream { return c.js }

// EnsureStreams creates the durable streams if they do not exist, with the
// given storage and replicas (0 means 1); existing streams keep their
// storage (it cannot change), and their replica count unless replicas is
// set and differs, in which case they are scaled to it (a NATS cluster
// moves the data). It fails with advice when the server has no JetStream,
// or has fewer JetStream servers than replicas.
func (c *Conn) EnsureStreams(ctx context.Context, storage Storage, replicas int) error {
	for _, cfg := range []jetstream.StreamConfig{
		{Name: StreamSubmit, Subjects: []string{SubjectJobSubmit}},
		{Name: StreamJobs, Subjects: []string{subjectJobPrefix + ">"}},
	} {
		cfg.Retention = jetstream.WorkQueuePolicy
		cfg.Storage = storage
		cfg.MaxAge = maxStreamAge
		cfg.Duplicates = 2 * time.Minute
		cfg.Replicas = max(replicas, 1)
		s, err := c.js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			_, err = c.js.CreateStream(ctx, cfg)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				err = nil
			}
		case err == nil && replicas > 0 && s.CachedInfo().Config.Replicas != replicas:
			have := s.CachedInfo().Config
			c.log.Warn("scaling a durable stream to the replicas asked for", "stream", cfg.Name, "from", have.Replicas, "to", replicas)
			have.Replicas = replicas
			_, err = c.js.UpdateStream(ctx, have)
		}
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return fmt.Errorf("stream %s: the NATS server has no JetStream; start it with -js (and -sd DIR to keep jobs on disk): %w", cfg.Name, err)
		}
		if err != nil && cfg.Replicas > 1 {
			return fmt.Errorf("stream %s with %d replicas: %w (replicas need a NATS cluster with at least that many JetStream servers up; use --stream-replicas 1 on a single server)", cfg.Name, cfg.Replicas, err)
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// StreamStorage reports the storage of the job stream, for `up` to say
// where jobs are kept.
func (c *Conn) StreamStorage(ctx context.Context) (Storage, error) {
	s, err := c.js.Stream(ctx, StreamJobs)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", StreamJobs, err)
	}
	return s.CachedInfo().Config.Storage, nil
}

// Durable is one packet for a durable subject; MsgID lets the stream drop
// a duplicate of it published within two minutes.
type Durable struct {
	Subject string
	MsgID   string
	Packet  *cortexv1.BusPacket
}

// PublishDurable stamps a packet and stores it in its stream, returning
// once the server has it.
func (c *Conn) PublishDurable(ctx context.Context, d Durable) error {
	return c.PublishDurables(ctx, []Durable{d})[0]
}

// PublishDurables stores many packets, all in flight at once, and returns
// each one's error.
func (c *Conn) PublishDurables(ctx context.Context, ds []Durable) []error {
	errs := make([]error, len(ds))
	futures := make([]jetstream.PubAckFuture, len(ds))
	for i, d := range ds {
		c.stamp(d.Packet)
		data, err := Encode(d.Packet)
		if err != nil {
			errs[i] = err
			continue
		}
		opts := []jetstream.PublishOpt{}
		if d.MsgID != "" {
			opts = append(opts, jetstream.WithMsgID(d.MsgID))
		}
		if len(ds) == 1 {
			_, err = c.js.Publish(ctx, d.Subject, data, opts...)
			if err != nil {
				errs[i] = fmt.Errorf("publish on %s: %w", d.Subject, err)
			}
			return errs
		}
		futures[i], err = c.js.PublishAsync(d.Subject, data, opts...)
		if err != nil {
			errs[i] = fmt.Errorf("publish on %s: %w", d.Subject, err)
		}
	}
	for i, d := range ds {
		f := futures[i]
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs[i] = fmt.Errorf("publish on %s: %w", d.Subject, err)
		case <-ctx.Done():
			errs[i] = fmt.Errorf("publish on %s: %w", d.Subject, ctx.Err())
		}
	}
	return errs
}

// Delivery is one message of a durable consumer: handlers settle it with
// Ack (done), Nak (again after a delay) or Term (never again), and keep
// its lease with InProgress while they work.
type Delivery struct {
	msg jetstream.Msg
}

// Ack settles the message as done.
func (d Delivery) Ack() { _ = d.msg.Ack() }

// Nak asks for the message again after delay.
func (d Delivery) Nak(delay time.Duration) { _ = d.msg.NakWithDelay(delay) }

// Term settles the message as never to be delivered again.
func (d Delivery) Term() { _ = d.msg.Term() }

// InProgress resets the message's AckWait: the handler is still on it.
func (d Delivery) InProgress() { _ = d.msg.InProgress() }

// Redelivered reports whether the message was delivered before.
func (d Delivery) Redelivered() bool {
	md, err := d.msg.Metadata()
	return err == nil && md.NumDelivered > 1
}

// DurableHandler processes one decoded message of a durable consumer and
// settles it. An error means the packet does not belong there: it is
// dropped, counted and terminated.
type DurableHandler func(ctx context.Context, p *cortexv1.BusPacket, d Delivery) error

// decodeDelivery decodes a message, or counts, logs and terminates one that
// does not decode.
func (c *Conn) decodeDelivery(m jetstream.Msg) (*cortexv1.BusPacket, bool) {
	p, err := Decode(m.Data())
	if err != nil {
		c.drop(m.Subject(), len(m.Data()), err)
		_ = m.Term()
		return nil, false
	}
	return p, true
}

// Consumer is a running durable consumer: Stop ends it.
type Consumer struct {
	cc jetstream.ConsumeContext
	wg sync.WaitGroup
}

// Consume runs h on every message of the durable consumer cfg of stream
// (created or updated to cfg), up to concurrency at once, until Stop.
func (c *Conn) Consume(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, concurrency int, h DurableHandler) (*Consumer, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	dc := &Consumer{}
	sem := make(chan struct{}, max(concurrency, 1))
	hctx := context.WithoutCancel(ctx)
	dc.cc, err = cons.Consume(func(m jetstream.Msg) {
		p, ok := c.decodeDelivery(m)
		if !ok {
			return
		}
		sem <- struct{}{}
		dc.wg.Add(1)
		go func() {
			defer func() { <-sem; dc.wg.Done() }()
			if err := h(hctx, p, Delivery{m}); err != nil {
				c.drop(m.Subject(), len(m.Data()), err)
				_ = m.Term()
			}
		}()
	}, jetstream.PullMaxMessages(max(concurrency, 1)))
	if err != nil {
		return nil, fmt.Errorf("consume %s on %s: %w", cfg.Durable, stream, err)
	}
	return dc, nil
}

// Stop stops taking messages and waits for the handlers of those taken.
// Messages fetched but not yet handed out go back to the stream when their
// AckWait runs out.
func (dc *Consumer) Stop() {
	dc.cc.Stop()
	<-dc.cc.Closed()
	dc.wg.Wait()
}

// Puller takes messages of a durable consumer only when asked, as many as
// the caller has room for: a worker pulls no more jobs than it has free
// slots.
type Puller struct {
	c    *Conn
	cons jetstream.Consumer
}

// Puller creates or updates the durable consumer cfg of stream and returns
// a puller on it.
func (c *Conn) Puller(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (*Puller, error) {
	cons, err := c.js.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return &Puller{c: c, cons: cons}, nil
}

// Pulled is one decoded message of a Puller.
type Pulled struct {
	Packet   *cortexv1.BusPacket
	Delivery Delivery
	Subject  string
	Size     int
}

// Reject drops and counts a pulled packet whose payload does not belong
// on its subject (err says why), and terminates it.
func (p *Puller) Reject(m Pulled, err error) {
	p.c.drop(m.Subject, m.Size, err)
	m.Delivery.Term()
}

// Pull returns at most n messages: those waiting now, else the first to
// come within wait (none when nothing came). Messages that do not decode
// are dropped, counted and terminated.
func (p *Puller) Pull(n int, wait time.Duration) ([]Pulled, error) {
	out, err := p.fetch(p.cons.FetchNoWait(n))
	if len(out) > 0 || err != nil {
		return out, err
	}
	return p.fetch(p.cons.Fetch(1, jetstream.FetchMaxWait(wait)))
}

func (p *Puller) fetch(batch jetstream.MessageBatch, err error) ([]Pulled, error) {
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	var out []Pulled
	for m := range batch.Messages() {
		if pk, ok := p.c.decodeDelivery(m); ok {
			out = append(out, Pulled{Packet: pk, Delivery: Delivery{m}, Subject: m.Subject(), Size: len(m.Data())})
		}
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) && len(out) == 0 {
		return nil, fmt.Errorf("pull: %w", err)
	}
	return out, nil
}

// DeleteJobMessage removes one message of the job stream by sequence (a
// dead letter's, once recorded).
func (c *Conn) DeleteJobMessage(ctx context.Context, seq uint64) error {
	s, err := c.js.Stream(ctx, StreamJobs)
	if err == nil {
		err = s.DeleteMsg(ctx, seq)
	}
	if err != nil {
		return fmt.Errorf("delete message %d of %s: %w", seq, StreamJobs, err)
	}
	return nil
}

// JobMessage reads one message of the job stream by sequence.
func (c *Conn) JobMessage(ctx context.Context, seq uint64) (*cortexv1.BusPacket, error) {
	s, err := c.js.Stream(ctx, StreamJobs)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamJobs, err)
	}
	m, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("message %d of %s: %w", seq, StreamJobs, err)
	}
	return Decode(m.Data)
}

// Submit is the durable packet that hands a job to the schedulers. key
// (the record's version when the job was queued, say) names the message
// with the job id, so the stream drops a second copy of the same hand-off
// and never a later one.
func Submit(traceID string, req *cortexv1.JobRequest, key string) Durable {
	return Durable{
		Subject: SubjectJobSubmit,
		MsgID:   req.GetJobId() + ":" + key,
		Packet:  &cortexv1.BusPacket{TraceId: traceID, Payload: &cortexv1.BusPacket_JobRequest{JobRequest: req}},
	}
}

// JobsOf is the jobs a job message carries, one or a batch, with their
// traces; none when it carries something else.
func JobsOf(p *cortexv1.BusPacket) (jobs []*cortexv1.JobRequest, traceIDs []string) {
	if b := p.GetJobBatch(); b != nil {
		return b.GetJobs(), b.GetTraceIds()
	}
	if req := p.GetJobRequest(); req != nil {
		return []*cortexv1.JobRequest{req}, []string{p.GetTraceId()}
	}
	return nil, nil
}

// maxBatchBytes bounds the jobs packed in one JobBatch message, well under
// MaxPacketSize.
const maxBatchBytes = 48 << 10

// Batched packs job messages (submit hand-offs as Submit makes them, or
// jobs dispatched to a pool) into as few durable messages as fit:
// consecutive ones on the same subject go in one JobBatch message of at
// most maxJobs jobs (0: no bound but the size), named after its first and
// last, so the stream drops a second copy of the same batch. A job held
// back (not_before), or one alone, stays as it is. The schedulers decide a
// submitted batch's jobs together; a worker runs a dispatched batch's jobs
// each in its own slot.
func Batched(ds []Durable, maxJobs int) []Durable {
	var out []Durable
	var batch []Durable
	size := 0
	flush := func() {
		switch len(batch) {
		case 0:
			return
		case 1:
			out = append(out, batch[0])
		default:
			b := &cortexv1.JobBatch{}
			for _, d := range batch {
				b.Jobs = append(b.Jobs, d.Packet.GetJobRequest())
				b.TraceIds = append(b.TraceIds, d.Packet.GetTraceId())
			}
			out = append(out, Durable{
				Subject: batch[0].Subject,
				MsgID:   "batch:" + batch[0].MsgID + ":" + batch[len(batch)-1].MsgID,
				Packet:  &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobBatch{JobBatch: b}},
			})
		}
		batch, size = nil, 0
	}
	for _, d := range ds {
		req := d.Packet.GetJobRequest()
		if req == nil || req.GetNotBefore() != nil {
			flush()
			out = append(out, d)
			continue
		}
		n := proto.Size(req) + len(d.Packet.GetTraceId()) + 8
		if size+n > maxBatchBytes || len(batch) > 0 && (batch[0].Subject != d.Subject || len(batch) == maxJobs) {
			flush()
		}
		batch = append(batch, d)
		size += n
	}
	flush()
	return out
}
