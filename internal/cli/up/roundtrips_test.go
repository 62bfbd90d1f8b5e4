package up_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/up"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// tripsPerJob is the number of Redis round trips one echo job takes from
// submit to recorded result, as docs/STORE.md lists them: create, the
// kernel's read of the prompt, DISPATCHED, start, and the result with
// COMPLETED.
const tripsPerJob = 5

func TestRedisRoundTripsPerJob(t *testing.T) {
	backends(t, up.ClusterOptions{}, func(t *testing.T, h *harness) {
		// The first job loads the scripts (EVALSHA, then EVAL): not counted.
		h.run(t, "job.echo", "warm up")
		const n = 50
		var done atomic.Int64
		nc, err := nats.Connect(h.cluster.NATSURL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_, err = nc.Subscribe(bus.SubjectJobEvent, func(m *nats.Msg) {
			if p, err := bus.Decode(m.Data); err == nil && p.GetJobEvent().GetJob().GetState() == completed {
				done.Add(1)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		before := h.cluster.Store.RoundTrips()
		t.Logf("before=%d", before)
		for i := range n {
			if _, err := h.client.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"}); err != nil {
				t.Fatalf("submit %d: %v", i, err)
			}
		}
		for deadline := time.Now().Add(20 * time.Second); done.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d jobs completed within 20s", done.Load(), n)
			}
		}
		trips := h.cluster.Store.RoundTrips() - before
		t.Logf("%d round trips for %d jobs: %.2f per job", trips, n, float64(trips)/n)
		if trips != n*tripsPerJob {
			t.Fatalf("%d round trips for %d jobs (%.2f per job), want %d per job: update docs/STORE.md and tripsPerJob if this is on purpose",
				trips, n, float64(trips)/n, tripsPerJob)
		}
	})
}
