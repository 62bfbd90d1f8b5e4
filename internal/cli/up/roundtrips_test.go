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

// tripsPerJob is the most Redis round trips one echo job takes from submit
// to recorded result, as docs/STORE.md lists them: create, the kernel's
// read of the prompt, DISPATCHED, start, and the result with COMPLETED.
// The store pipelines what several components ask at once, so jobs that
// overlap share round trips; batchedTripsPerJob is the most a job of a
// stream of batched submits may take. The jobs of one batch stay together
// on their way (one safety request, one placement, one read of their
// inputs), so a small batch run alone takes at most pacedTripsPerJob each.
const (
	tripsPerJob        = 5
	batchedTripsPerJob = 4
	pacedTripsPerJob   = 2
)

func TestRedisRoundTripsPerJob(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		batch int
		paced bool
		most  int
	}{
		{"one at a time", 50, 0, false, tripsPerJob},
		{"batched", 2000, 200, false, batchedTripsPerJob},
		{"batches of 10, each done before the next", 200, 10, true, pacedTripsPerJob},
	} {
		t.Run(tc.name, func(t *testing.T) { roundTrips(t, tc.n, tc.batch, tc.paced, tc.most) })
	}
}

// roundTrips runs n echo jobs, submitted one by one or in batches (paced:
// each batch once the one before has completed), and fails if they took
// more than most Redis round trips each.
func roundTrips(t *testing.T, n, batch int, paced bool, most int) {
	backends(t, up.ClusterOptions{}, func(t *testing.T, h *harness) {
		// The first job loads the scripts (EVALSHA, then EVAL): not counted.
		h.run(t, "job.echo", "warm up")
		var done atomic.Int64
		nc, err := nats.Connect(h.cluster.NATSURL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_, err = nc.Subscribe(bus.SubjectJobEvent, func(m *nats.Msg) {
			if p, err := bus.Decode(m.Data); err == nil {
				for _, j := range bus.EventJobs(p) {
					if j.GetState() == completed {
						done.Add(1)
					}
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		// Generous: a loaded CI machine under -race is slow, and this test
		// counts round trips, not time.
		deadline := time.Now().Add(3 * time.Minute)
		completed := func(want int) {
			for ; done.Load() < int64(want); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d jobs completed within 3 minutes", done.Load(), want)
				}
			}
		}
		before := h.cluster.Store.RoundTrips()
		if paced {
			for sent := 0; sent < n; sent += batch {
				submit(t, h, batch, batch)
				completed(sent + batch)
			}
		} else {
			submit(t, h, n, batch)
		}
		completed(n)
		trips := h.cluster.Store.RoundTrips() - before
		t.Logf("%d round trips for %d jobs: %.2f per job", trips, n, float64(trips)/float64(n))
		if trips > uint64(n*most) {
			t.Fatalf("%d round trips for %d jobs (%.2f per job), want at most %d per job: update docs/STORE.md and the bound if this is on purpose",
				trips, n, float64(trips)/float64(n), most)
		}
	})
}

// submit submits n echo jobs one by one (batch 0) or in batches.
func submit(t *testing.T, h *harness, n, batch int) {
	t.Helper()
	ctx := context.Background()
	if batch == 0 {
		for i := range n {
			if _, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"}); err != nil {
				t.Fatalf("submit %d: %v", i, err)
			}
		}
		return
	}
	for sent := 0; sent < n; sent += batch {
		req := &cortexv1.SubmitJobsRequest{}
		for range min(batch, n-sent) {
			req.Jobs = append(req.Jobs, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
		}
		res, err := h.client.SubmitJobs(ctx, req)
		if err != nil {
			t.Fatalf("submit batch at %d: %v", sent, err)
		}
		for _, r := range res.GetResults() {
			if r.GetJobId() == "" {
				t.Fatalf("a job of the batch at %d was refused: %s", sent, r.GetError())
			}
		}
	}
}
