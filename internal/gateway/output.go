package gateway

import (
	"context"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// outputBuffer is how many pieces of a job's output wait for a slow
// follower before further pieces are dropped (the result stays whole).
const outputBuffer = 1024

// followOutput subscribes to the output job id's handler streams while it
// runs. Call stop when done with the channel.
func (g *Gateway) followOutput(ctx context.Context, id string) (pieces <-chan *cortexv1.JobOutput, stop func(), err error) {
	ch := make(chan *cortexv1.JobOutput, outputBuffer)
	sub, err := g.bus.Subscribe(ctx, bus.JobOutputSubject(id), "", 1, func(_ context.Context, p *cortexv1.BusPacket, _ string) error {
		o := p.GetJobOutput()
		if o == nil || o.GetJobId() != id {
			return bus.WrongPayload(p, "output of job "+id)
		}
		select {
		case ch <- o:
		default:
		}
		return nil
	})
	if err != nil {
		g.log.Warn("follow job output", "job_id", id, "err", err)
		return nil, nil, connect.NewError(connect.CodeUnavailable, "the bus is unavailable: cannot follow the job's output, try again")
	}
	return ch, sub.Close, nil
}

// flushOutput hands onOutput the pieces already waiting in pieces.
func flushOutput(pieces <-chan *cortexv1.JobOutput, onOutput func(*cortexv1.JobOutput) error) error {
	for {
		select {
		case o := <-pieces:
			if err := onOutput(o); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}
