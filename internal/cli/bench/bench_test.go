package bench_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/bench"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// startStack starts an in-process stack for the benchmark, on the Redis of
// CORTEX_TEST_REDIS_URL (the embedded one when unset), and returns a client
// of its gateway.
func startStack(b *testing.B) cortexv1connect.GatewayServiceClient {
	b.Helper()
	cl, err := up.StartCluster(context.Background(), up.ClusterOptions{Listen: "127.0.0.1:0", RedisURL: os.Getenv("CORTEX_TEST_REDIS_URL")}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Close() })
	c, err := client.New("http://"+cl.GatewayAddr, cl.APIKey)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkEchoJob measures one echo job from submit to recorded result
// through an in-process stack, driven by 32 concurrent clients.
func BenchmarkEchoJob(b *testing.B) {
	ctx := context.Background()
	c := startStack(b)
	b.ResetTimer()
	r, err := bench.Run(ctx, c, bench.Plain{Jobs: b.N, Concurrency: 32, Topic: "job.echo", Prompt: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	if r.NotDone != 0 {
		b.Fatalf("%d of %d jobs did not complete", r.NotDone, b.N)
	}
	b.ReportMetric(float64(r.Percentile(50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.Percentile(99).Microseconds()), "p99-µs")
}

// BenchmarkBatchedEcho measures echo jobs submitted in batches of 200 by 4
// clients and followed on one event stream, as `cortexctl bench --batch`
// does, through an in-process stack on the Redis of CORTEX_TEST_REDIS_URL
// (the embedded one when unset).
func BenchmarkBatchedEcho(b *testing.B) {
	ctx := context.Background()
	c := startStack(b)
	b.ResetTimer()
	r, err := bench.RunBatched(ctx, c, bench.Batched{Jobs: b.N, Concurrency: 4, Batch: 200, Topic: "job.echo", Prompt: "bench", Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	if r.NotDone != 0 {
		b.Fatalf("%d of %d jobs did not complete", r.NotDone, b.N)
	}
	b.ReportMetric(float64(b.N)/r.Elapsed.Seconds(), "jobs/s")
	b.ReportMetric(float64(r.Percentile(50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.Percentile(99).Microseconds()), "p99-µs")
}
