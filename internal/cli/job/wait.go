// Package job holds the commands that submit jobs and follow them:
// `cortexctl submit`, `cortexctl jobs list|get|result|cancel|watch` and
// `cortexctl tail`. They talk to the gateway through the typed client only,
// print data on stdout and progress and errors on stderr.
package job

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Terminal reports whether no state follows s.
func Terminal(s cortexv1.JobState) bool {
	switch s {
	case cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
		cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT:
		return true
	}
	return false
}

// reconnectDelay is the pause before the first attempt to open a stream
// again after the gateway dropped it (a restart, say); each attempt that
// fails doubles it, up to maxReconnectDelay, and a stream that is back
// starts over from reconnectDelay.
const (
	reconnectDelay    = 500 * time.Millisecond
	maxReconnectDelay = 5 * time.Second
)

// streamSettled is how long a reopened stream that brings no message must
// stay open to count as back: a gateway that is down refuses the
// connection at once.
const streamSettled = time.Second

// Backoff is the pause between attempts to reach the gateway again: Min,
// doubled after each pause up to Max, until Reset. The zero value uses
// reconnectDelay and maxReconnectDelay.
type Backoff struct {
	Min, Max time.Duration
	next     time.Duration
}

// Next returns the pause before the next attempt.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = reconnectDelay
	}
	if hi < lo {
		hi = max(lo, maxReconnectDelay)
	}
	if b.next < lo {
		b.next = lo
	}
	d := b.next
	b.next = min(2*b.next, hi)
	return d
}

// Reset starts the pauses over, after a successful reconnect.
func (b *Backoff) Reset() { b.next = 0 }

// reconnector paces the attempts to open a stream again after the gateway
// dropped it and, when errOut is not nil, says so there: once when the
// stream breaks (not at every attempt) and once when it is back, with
// back, which says what may have been missed.
type reconnector struct {
	errOut io.Writer
	back   string
	// settled is how long a stream must stay open, when no message comes,
	// to count as back (streamSettled when 0).
	settled time.Duration
	// sleep waits d or until ctx ends, and now is the clock: a test's
	// clock replaces them (nil: the real ones).
	sleep func(ctx context.Context, d time.Duration) error
	now   func() time.Time

	mu      sync.Mutex
	backoff Backoff
	down    bool      // the stream broke and is not back yet
	downAt  time.Time // when it broke
}

// testClock, when not nil, gives the streams of the commands a test's
// clock (see reconnector).
var testClock *reconnector

func newReconnector(errOut io.Writer, back string) *reconnector {
	r := &reconnector{errOut: errOut, back: back}
	if testClock != nil {
		r.settled, r.sleep, r.now = testClock.settled, testClock.sleep, testClock.now
	}
	return r
}

func (r *reconnector) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// wait pauses before the next attempt.
func (r *reconnector) wait(ctx context.Context) error {
	r.mu.Lock()
	d := r.backoff.Next()
	r.mu.Unlock()
	if r.sleep != nil {
		return r.sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// broke notes that the stream broke with err and says so, once an outage.
func (r *reconnector) broke(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down {
		return
	}
	r.down, r.downAt = true, r.clock()
	if r.errOut != nil {
		fmt.Fprintf(r.errOut, "stream interrupted (%v); reconnecting\n", err)
	}
}

// up notes that the stream works: the pauses start over and, after an
// outage, the stream says it is back.
func (r *reconnector) up() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backoff.Reset()
	if !r.down {
		return
	}
	r.down = false
	if r.errOut != nil {
		fmt.Fprintf(r.errOut, "stream back after %s: %s\n", r.clock().Sub(r.downAt).Round(100*time.Millisecond), r.back)
	}
}

// attempt runs read, which reads one stream to its end and calls ok when a
// message comes, calling r.up once the stream counts as back: its first
// message, or when it has stayed open for r.settled.
func (r *reconnector) attempt(read func(ok func()) error) error {
	var once sync.Once
	ok := func() { once.Do(r.up) }
	settled := r.settled
	if settled <= 0 {
		settled = streamSettled
	}
	t := time.AfterFunc(settled, ok)
	err := read(ok)
	t.Stop()
	// Waits for an ok the timer may be running, and stops a later one.
	once.Do(func() {})
	return err
}

// resume runs read, which reads one stream to its end (calling ok with
// each message), again whenever the gateway drops the stream or cannot be
// reached, until ctx ends or read fails otherwise.
func (r *reconnector) resume(ctx context.Context, read func(ok func()) error) error {
	for {
		err := r.attempt(read)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connect.CodeOf(err) != connect.CodeUnavailable && !errors.Is(err, io.EOF) {
			return err
		}
		r.broke(err)
		if err := r.wait(ctx); err != nil {
			return err
		}
	}
}

// WaitForEnd watches the job until it is finished or ctx ends, calling
// onChange (if not nil) with every version of the job it sees. A stream the
// gateway drops is resumed, with backoff.
func WaitForEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job)) (*cortexv1.Job, error) {
	return FollowToEnd(ctx, c, id, onChange, nil, nil)
}

// FollowToEnd is WaitForEnd that also hands onOutput (when not nil) the
// pieces of output the job's handler streams while it runs. Pieces are
// best effort: see follower for how to show them. When notes is not nil,
// a broken stream is told there ("stream interrupted (...); reconnecting"),
// and its return.
func FollowToEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job), onOutput func(*cortexv1.JobOutput) error, notes io.Writer) (*cortexv1.Job, error) {
	return followToEnd(ctx, c, id, onChange, onOutput, newReconnector(notes, "still waiting for job "+id))
}

// followToEnd is FollowToEnd with rc pacing (and telling of) the
// reconnects. Every watch starts with the job as it is, so a reconnect
// misses none of its state, only versions it passed through meanwhile.
func followToEnd(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job), onOutput func(*cortexv1.JobOutput) error, rc *reconnector) (*cortexv1.Job, error) {
	var seen uint64
	for {
		var j *cortexv1.Job
		err := rc.attempt(func(ok func()) error {
			var err error
			j, err = watchOnce(ctx, c, id, func(j *cortexv1.Job) {
				ok()
				if j.GetVersion() > seen || seen == 0 {
					seen = j.GetVersion()
					if onChange != nil {
						onChange(j)
					}
				}
			}, onOutput)
			return err
		})
		if j != nil && Terminal(j.GetState()) {
			return j, nil
		}
		if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			err = io.EOF // the stream ended before the job did
		}
		rc.broke(err)
		if err := rc.wait(ctx); err != nil {
			return nil, err
		}
	}
}

// watchOnce follows one WatchJob stream to its end and returns the last
// version of the job it saw.
func watchOnce(ctx context.Context, c cortexv1connect.GatewayServiceClient, id string, onChange func(*cortexv1.Job), onOutput func(*cortexv1.JobOutput) error) (*cortexv1.Job, error) {
	stream, err := c.WatchJob(ctx, &cortexv1.WatchJobRequest{JobId: id, Output: onOutput != nil})
	if err != nil {
		return nil, err
	}
	defer func() { _ = stream.Close() }()
	var last *cortexv1.Job
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, err
		}
		if o := msg.GetOutput(); o != nil {
			if onOutput != nil {
				if err := onOutput(o); err != nil {
					return last, err
				}
			}
			continue
		}
		if msg.GetJob() == nil {
			continue
		}
		last = msg.GetJob()
		onChange(last)
	}
}

// endError is nil for a COMPLETED job and the exit-3 error otherwise.
func endError(j *cortexv1.Job) error {
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		return nil
	}
	e := &cmdutil.JobNotDoneError{JobID: j.GetJobId(), State: StateName(j.GetState()), Reason: j.GetReason()}
	if j.GetState() == cortexv1.JobState_JOB_STATE_DENIED {
		e.Rule = j.GetSafety().GetRule()
	}
	return e
}
