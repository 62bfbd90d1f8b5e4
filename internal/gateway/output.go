package gateway

import (
	"context"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// outputBuffer is how many pieces of a job's output wait for a slow
// follower before further pieces are dropped (the result stays whole).
const outputBuffer = 1024

// followOutput subscribes to the output job id's handler streams while it
// runs. Call stop when done with the channel.
func (g *Gateway) followOutput(ctx context.Context, id string) (pieces <-chan *cortexv1.JobOutput, stop func(), err error) {
	return g.subscribeOutput(ctx, bus.JobOutputSubject(id), func(o *cortexv1.JobOutput) bool { return o.GetJobId() == id })
}

// followTenantOutput subscribes to the output of every running job of
// tenant ("" for all) whose topic matches topic ("" for any).
func (g *Gateway) followTenantOutput(ctx context.Context, tenant, topic string) (pieces <-chan *cortexv1.JobOutput, stop func(), err error) {
	return g.subscribeOutput(ctx, bus.JobOutputSubject("*"), func(o *cortexv1.JobOutput) bool {
		return (tenant == "" || o.GetTenantId() == tenant) && (topic == "" || store.TopicMatches(topic, o.GetTopic()))
	})
}

// subscribeOutput hands the pieces of output on subject that match to the
// returned channel, dropping them when the reader lags.
func (g *Gateway) subscribeOutput(ctx context.Context, subject string, match func(*cortexv1.JobOutput) bool) (<-chan *cortexv1.JobOutput, func(), error) {
	ch := make(chan *cortexv1.JobOutput, outputBuffer)
	sub, err := g.bus.Subscribe(ctx, subject, "", 1, func(_ context.Context, p *cortexv1.BusPacket, _ string) error {
		o := p.GetJobOutput()
		if o == nil {
			return bus.WrongPayload(p, "job output")
		}
		if !match(o) {
			return nil
		}
		select {
		case ch <- o:
		default:
		}
		return nil
	})
	if err != nil {
		g.log.Warn("follow job output", "subject", subject, "err", err)
		return nil, nil, connect.NewError(connect.CodeUnavailable, "the bus is unavailable: cannot follow the job's output, try again")
	}
	return ch, sub.Close, nil
}

// outputSettle is how long a follower of a job that ended waits for more
// of its pieces once none comes.
const outputSettle = 25 * time.Millisecond

// flushOutput hands onOutput the pieces of a job that ended: those waiting
// in pieces, and those still on their way through this gateway. The end
// comes on another subscription than the pieces written before it, so it
// can overtake them; a piece that comes within outputSettle of the last
// one is still handed on. Nothing is waited for without a subscription.
func flushOutput(pieces <-chan *cortexv1.JobOutput, onOutput func(*cortexv1.JobOutput) error) error {
	if pieces == nil {
		return nil
	}
	settle := time.NewTimer(outputSettle)
	defer settle.Stop()
	for {
		select {
		case o := <-pieces:
			if err := onOutput(o); err != nil {
				return err
			}
			settle.Reset(outputSettle)
		case <-settle.C:
			return nil
		}
	}
}
