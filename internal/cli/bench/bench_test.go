package bench_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/cortex-os/core/internal/cli/bench"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/client"
)

// BenchmarkEchoJob measures one echo job from submit to recorded result
// through an in-process stack, driven by 32 concurrent clients.
func BenchmarkEchoJob(b *testing.B) {
	ctx := context.Background()
	cl, err := up.StartCluster(ctx, up.ClusterOptions{Listen: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	c, err := client.New("http://"+cl.GatewayAddr, cl.APIKey)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	r, err := bench.Run(ctx, c, b.N, 32, "job.echo", "bench")
	if err != nil {
		b.Fatal(err)
	}
	if r.NotDone != 0 {
		b.Fatalf("%d of %d jobs did not complete", r.NotDone, b.N)
	}
	b.ReportMetric(float64(r.Percentile(50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.Percentile(99).Microseconds()), "p99-µs")
}
