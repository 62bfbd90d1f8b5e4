package bus

import (
	"errors"
	"sync"

	"google.golang.org/protobuf/proto"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Job events are batched naturally: PublishJobEvent queues the event, and
// one sender per connection publishes what is queued, one packet per send.
// An idle connection sends each event at once, alone (a JobEvent with job
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

// eventQueue is a connection's job events waiting for the sender.
type eventQueue struct {
	mu      sync.Mutex
	queue   []*cortexv1.Job
	sending bool
	closed  bool
	sent    sync.WaitGroup
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
	e.queue = append(e.queue, j)
	if !e.sending {
		e.sending = true
		e.sent.Add(1)
		go c.sendEvents()
	}
	return nil
}

// sendEvents publishes queued events until none is left.
func (c *Conn) sendEvents() {
	e := &c.events
	defer e.sent.Done()
	for {
		e.mu.Lock()
		n, size := 0, 0
		for ; n < len(e.queue) && n < maxEventJobs; n++ {
			if size += proto.Size(e.queue[n]); n > 0 && size > maxEventBytes {
				break
			}
		}
		batch := e.queue[:n:n]
		if e.queue = e.queue[n:]; len(e.queue) == 0 {
			e.queue = nil
		}
		if n == 0 {
			e.sending = false
			e.mu.Unlock()
			return
		}
		e.mu.Unlock()
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
}

// flushEvents sends what is queued and refuses further events.
func (c *Conn) flushEvents() {
	e := &c.events
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.sent.Wait()
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
