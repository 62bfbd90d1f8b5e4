package bus

import (
	"errors"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/coalesce"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Job events are batched naturally: PublishJobEvent queues the event, and
// one sender per connection (internal/coalesce) publishes what is queued,
// one packet per send. An idle connection sends each event at once, alone (a JobEvent with job
// set, as before); a busy one sends many changes in one packet (JobEvent
// with jobs), so that a gateway or scheduler decodes one packet instead of
// hundreds. No timer adds latency, and a connection's events keep their
// order.

// Bounds of one event packet: its encoded jobs stay well under
// MaxPacketSize, and a burst reaches watchers in pieces they can take.
const (
	maxEventBytes = 48 << 10
	maxEventJobs  = 256
)

// ErrClosing is the error of an event published while its connection
// closes.
var ErrClosing = errors.New("the bus connection is closing")

// eventQueue is a connection's job events waiting to be sent: one sender
// (internal/coalesce, one batch in flight) keeps their order.
type eventQueue struct {
	mu     sync.Mutex
	closed bool
	out    *coalesce.Batcher[*cortexv1.Job]
}

// PublishJobEvent reports a job after a state change on SubjectJobEvent.
// Events are best effort: the event is queued and sent soon after, and an
// error (the connection is closing) is for the caller to log, not to undo
// the change it reports. j must not be changed after the call.
func (c *Conn) PublishJobEvent(traceID string, j *cortexv1.Job) error {
	if j.GetTraceId() == "" {
		j.TraceId = traceID
	}
	e := &c.events
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosing
	}
	if e.out == nil {
		e.out = coalesce.New(1, takeEvents, c.sendEvents)
	}
	e.out.Add(j)
	return nil
}

// PublishJobEventsNow reports new jobs at once, in as few packets as fit,
// ahead of anything the connection publishes after the call: a gateway
// announces the jobs it created before it hands them to the schedulers, so
// that every watcher sees a job PENDING before any later change of it.
// Like PublishJobEvent, an error is for the caller to log. The jobs must
// not be changed after the call.
func (c *Conn) PublishJobEventsNow(jobs []*cortexv1.Job) error {
	c.events.mu.Lock()
	closed := c.events.closed
	c.events.mu.Unlock()
	if closed {
		return ErrClosing
	}
	for len(jobs) > 0 {
		n := max(takeEvents(jobs), 1)
		c.sendEvents(jobs[:n])
		jobs = jobs[n:]
	}
	return nil
}

// takeEvents is how many of the queued events make one packet.
func takeEvents(queued []*cortexv1.Job) int {
	n, size := 0, 0
	for ; n < len(queued) && n < maxEventJobs; n++ {
		if size += proto.Size(queued[n]); n > 0 && size > maxEventBytes {
			break
		}
	}
	return n
}

// sendEvents publishes a batch of events as one packet: a lone event in
// JobEvent.job with its trace on the packet, more in JobEvent.jobs.
func (c *Conn) sendEvents(batch []*cortexv1.Job) {
	ev := &cortexv1.JobEvent{Jobs: batch}
	trace := ""
	if len(batch) == 1 {
		ev = &cortexv1.JobEvent{Job: batch[0]}
		trace = batch[0].GetTraceId()
	}
	if err := c.Publish(SubjectJobEvent, &cortexv1.BusPacket{TraceId: trace, Payload: &cortexv1.BusPacket_JobEvent{JobEvent: ev}}); err != nil {
		c.log.Warn("publish job events", "events", len(batch), "err", err)
	}
}

// flushEvents refuses further events and sends what is queued.
func (c *Conn) flushEvents() {
	e := &c.events
	e.mu.Lock()
	e.closed = true
	out := e.out
	e.mu.Unlock()
	if out != nil {
		out.Wait()
	}
}

// EventJobs returns the jobs of a JobEvent packet, whether it carries one
// change or a batch; nil when p is not a job event or carries none.
func EventJobs(p *cortexv1.BusPacket) []*cortexv1.Job {
	ev := p.GetJobEvent()
	if j := ev.GetJob(); j != nil {
		return append([]*cortexv1.Job{j}, ev.GetJobs()...)
	}
	return ev.GetJobs()
}
