package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cortex-os/core/internal/cli/job"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Batched says how RunBatched submits.
type Batched struct {
	Jobs, Concurrency, Batch int
	// Rate paces submits to this many jobs a second overall (0: as fast as
	// the gateway takes them).
	Rate          float64
	Topic, Prompt string
	// Timeout bounds the wait for the last results.
	Timeout time.Duration
}

// RunBatched submits jobs in batches (SubmitJobs) from b.Concurrency
// clients and follows them all on one event stream, as a high-volume
// producer would. Latency is from the batch's submit to the job's end.
func RunBatched(ctx context.Context, c cortexv1connect.GatewayServiceClient, b Batched) (*Report, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	sent := make(map[string]time.Time, b.Jobs)
	ended := make(map[string]end, b.Jobs)
	r := &Report{Jobs: b.Jobs}
	stream, err := c.StreamEvents(ctx, &cortexv1.StreamEventsRequest{Topic: b.Topic, States: []cortexv1.JobState{
		cortexv1.JobState_JOB_STATE_COMPLETED, cortexv1.JobState_JOB_STATE_FAILED, cortexv1.JobState_JOB_STATE_DENIED,
		cortexv1.JobState_JOB_STATE_CANCELLED, cortexv1.JobState_JOB_STATE_TIMEOUT,
	}})
	if err != nil {
		return nil, err
	}
	streamErr := make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Receive()
			if err != nil {
				streamErr <- err
				return
			}
			j := msg.GetJob()
			if msg.GetDropped() > 0 {
				mu.Lock()
				r.Dropped += msg.GetDropped()
				mu.Unlock()
			}
			if !job.Terminal(j.GetState()) {
				continue
			}
			mu.Lock()
			if _, seen := ended[j.GetJobId()]; !seen {
				ended[j.GetJobId()] = end{time.Now(), j.GetState()}
			}
			mu.Unlock()
		}
	}()
	// A probe job proves the stream is listening before the clock starts.
	probe, err := c.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: b.Topic, Prompt: b.Prompt})
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, &mu, ended, probe.GetJobId(), 10*time.Second); err != nil {
		return nil, fmt.Errorf("the event stream did not see the probe job: %w", err)
	}

	start := time.Now()
	batches := make(chan int)
	go func() {
		defer close(batches)
		var tick <-chan time.Time
		if b.Rate > 0 {
			t := time.NewTicker(time.Duration(float64(time.Second) * float64(b.Batch) / b.Rate))
			defer t.Stop()
			tick = t.C
		}
		for left := b.Jobs; left > 0; left -= b.Batch {
			if tick != nil {
				select {
				case <-tick:
				case <-ctx.Done():
					return
				}
			}
			select {
			case batches <- min(b.Batch, left):
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, b.Concurrency)
	for range b.Concurrency {
		wg.Go(func() {
			for n := range batches {
				req := &cortexv1.SubmitJobsRequest{Jobs: make([]*cortexv1.SubmitJobRequest, n)}
				for i := range req.Jobs {
					req.Jobs[i] = &cortexv1.SubmitJobRequest{Topic: b.Topic, Prompt: b.Prompt}
				}
				t0 := time.Now()
				res, err := c.SubmitJobs(ctx, req)
				if err == nil {
					err = recordSent(&mu, sent, res, t0)
				}
				if err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, fmt.Errorf("bench stopped: %w", err)
	default:
	}
	// Wait until every job sent has ended, or the timeout.
	for deadline := time.Now().Add(b.Timeout); ; time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-streamErr:
			return nil, fmt.Errorf("event stream: %w", err)
		default:
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if endedAll(&mu, sent, ended) || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	for id, t0 := range sent {
		e, ok := ended[id]
		if !ok {
			continue
		}
		r.Latencies = append(r.Latencies, e.at.Sub(t0))
		r.ended(e.state)
		if e.at.After(last) {
			last = e.at
		}
	}
	r.Elapsed = last.Sub(start)
	slices.Sort(r.Latencies)
	r.NotDone = b.Jobs - r.Completed
	return r, nil
}

// end is when a job ended and how.
type end struct {
	at    time.Time
	state cortexv1.JobState
}

func endedAll(mu *sync.Mutex, sent map[string]time.Time, ended map[string]end) bool {
	mu.Lock()
	defer mu.Unlock()
	for id := range sent {
		if _, ok := ended[id]; !ok {
			return false
		}
	}
	return true
}

// recordSent notes the submit time of every job of a batch answer.
func recordSent(mu *sync.Mutex, sent map[string]time.Time, res *cortexv1.SubmitJobsResponse, t0 time.Time) error {
	mu.Lock()
	defer mu.Unlock()
	for _, one := range res.GetResults() {
		if one.GetError() != "" {
			return fmt.Errorf("a job was refused: %s: %s", one.GetErrorCode(), one.GetError())
		}
		sent[one.GetJobId()] = t0
	}
	return nil
}

// waitFor polls until ended holds id.
func waitFor(ctx context.Context, mu *sync.Mutex, ended map[string]end, id string, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		_, ok := ended[id]
		mu.Unlock()
		switch {
		case ok:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return errors.New("timed out")
		}
	}
}
