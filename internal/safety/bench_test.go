package safety_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/safety"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Run with
//
//	go test -run '^$' -bench 'Check' -benchtime 20000x -count 5 ./internal/safety/
//
// p50-ns and p99-ns are percentiles of the time of one check; the goal is
// a p99 well under 20µs in process and under 300µs over the bus.

// benchPrompt returns n bytes of ordinary prompt text with no credential.
func benchPrompt(n int) string {
	const para = "Summarise the following incident report for the on-call channel. " +
		"At 14:02 UTC the scheduler stopped dispatching jobs on job.chat.completion; " +
		"the worker pool gpu-a reported no heartbeats for three minutes. " +
		"See https://status.example.org/incidents/2026-11-22 for the timeline.\n" +
		"for _, w := range pool.Workers() { if time.Since(w.LastSeen) > 30*time.Second { pool.Evict(w.ID) } }\n" +
		"Please list the likely causes and what we should check first, in under 200 words.\n"
	return strings.Repeat(para, n/len(para)+1)[:n]
}

// measure runs check b.N times and reports the 50th and 99th percentile
// of one check's time next to ns/op.
func measure(b *testing.B, check func() *cortexv1.CheckResponse) {
	b.Helper()
	durs := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		resp := check()
		durs[i] = time.Since(start)
		if resp.GetDecision() != cortexv1.Decision_DECISION_ALLOW {
			b.Fatalf("check %d: %v, want ALLOW", i, resp)
		}
	}
	b.StopTimer()
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(durs[len(durs)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkCheckInProcess(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"prompt=200B", 200}, {"prompt=4KiB", 4 << 10}} {
		b.Run(size.name, func(b *testing.B) {
			in := newInputs(map[string]string{"bench": benchPrompt(size.n)})
			k := safety.NewKernel("bench", in, discard())
			r := req("bench", "job.echo", size.n)
			ctx := context.Background()
			measure(b, func() *cortexv1.CheckResponse {
				resp, _ := k.Check(ctx, r)
				return resp
			})
			if in.calls.Load() == 0 {
				b.Fatal("the prompt was never read")
			}
		})
	}
}

func BenchmarkCheckOverBus(b *testing.B) {
	url := bustest.StartServer(b)
	in := newInputs(map[string]string{"bench": benchPrompt(200)})
	startKernel(b, url, in, nil)
	c := safety.NewClient(connect(b, url, "client"), time.Second)
	r := req("bench", "job.echo", 200)
	ctx := context.Background()
	measure(b, func() *cortexv1.CheckResponse {
		resp, _ := c.Check(ctx, r)
		return resp
	})
	if in.calls.Load() == 0 {
		b.Fatal("the prompt was never read")
	}
}

// BenchmarkCheckOverBusParallel asks one client from 256 goroutines at
// once, as a busy scheduler does, against a real kernel reading 200-byte
// prompts, with the default timeout and with a long one. denied-% counts
// the checks that failed closed (timeouts, an open breaker). Run with
//
//	go test -run '^$' -bench 'CheckOverBusParallel' -benchtime 20000x -count 5 ./internal/safety/
func BenchmarkCheckOverBusParallel(b *testing.B) {
	for _, timeout := range []time.Duration{safety.DefaultTimeout, 5 * time.Second} {
		b.Run("timeout="+timeout.String(), func(b *testing.B) {
			url := bustest.StartServer(b)
			in := newInputs(map[string]string{"bench": benchPrompt(200)})
			startKernel(b, url, in, nil)
			c := safety.NewClient(connect(b, url, "client"), timeout)
			r := req("bench", "job.echo", 200)
			ctx := context.Background()
			var denied atomic.Int64
			b.SetParallelism(128) // 128 × GOMAXPROCS (2 here) goroutines
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if resp, _ := c.Check(ctx, r); resp.GetDecision() != cortexv1.Decision_DECISION_ALLOW {
						denied.Add(1)
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(100*float64(denied.Load())/float64(b.N), "denied-%")
		})
	}
}

// BenchmarkCheckBatchInProcess decides a full client batch (256 checks
// reading 200-byte prompts) per op: what one CheckBatch costs the kernel,
// against the client's default timeout.
func BenchmarkCheckBatchInProcess(b *testing.B) {
	in := newInputs(map[string]string{"bench": benchPrompt(200)})
	k := safety.NewKernel("bench", in, discard())
	rs := make([]*cortexv1.CheckRequest, 256)
	for i := range rs {
		rs[i] = req("bench", "job.echo", 200)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		for _, resp := range k.CheckBatch(ctx, rs) {
			if resp.GetDecision() != cortexv1.Decision_DECISION_ALLOW {
				b.Fatalf("%v, want ALLOW", resp)
			}
		}
	}
}
