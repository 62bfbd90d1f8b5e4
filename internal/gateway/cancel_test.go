package gateway_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// TestCancelInEveryState: every unfinished state cancels (a job that may
// be on a worker also gets a stop on sys.job.cancel) and leaves nothing for
// the reconciler; a cancelled job cancels again as a no-op; a finished one
// is FailedPrecondition and keeps its state.
func TestCancelInEveryState(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		state  store.State
		moves  []store.State
		ok     bool
		worker bool // a stop goes to the workers
	}{
		{store.Pending, nil, true, false},
		{store.AwaitingApproval, []store.State{store.AwaitingApproval}, true, false},
		{store.Dispatched, []store.State{store.Dispatched}, true, true},
		{store.Running, []store.State{store.Dispatched, store.Running}, true, true},
		{store.Cancelled, []store.State{store.Cancelled}, true, false},
		{store.Completed, []store.State{store.Dispatched, store.Running, store.Completed}, false, false},
		{store.Failed, []store.State{store.Dispatched, store.Failed}, false, false},
		{store.Timeout, []store.State{store.Dispatched, store.Timeout}, false, false},
		{store.Denied, []store.State{store.Denied}, false, false},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			f := newFixture(t, gateway.Options{Keys: keys})
			c := f.client(t, "key-acme-1234")
			id := submit(t, c, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
			for _, to := range tc.moves {
				if to == store.Running {
					if _, _, err := f.st.Start(ctx, id, 1, "echo-1", false, time.Minute, time.Now()); err != nil {
						t.Fatal(err)
					}
					continue
				}
				f.move(t, id, store.Change{To: to})
			}
			res, err := c.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: id})
			if !tc.ok {
				if connect.CodeOf(err) != connect.CodeFailedPrecondition {
					t.Fatalf("cancel %s: %v, want FailedPrecondition", tc.state, err)
				}
				if j, _ := f.st.Get(ctx, id); j.State != tc.state {
					t.Fatalf("a refused cancel moved the job to %s", j.State)
				}
				return
			}
			if err != nil || res.GetJob().GetState() != cortexv1.JobState_JOB_STATE_CANCELLED {
				t.Fatalf("cancel %s: %v, %v; want CANCELLED", tc.state, res.GetJob().GetState(), err)
			}
			if tc.worker {
				eventually(t, "workers asked to stop", func() bool { return len(f.tap.on(bus.SubjectJobCancel)) == 1 })
			} else if n := len(f.tap.on(bus.SubjectJobCancel)); n != 0 {
				t.Errorf("a job on no worker: %d stops sent", n)
			}
			due, err := f.st.Due(ctx, time.Now().Add(24*time.Hour), 1000)
			if err != nil {
				t.Fatal(err)
			}
			for _, j := range due {
				if j.ID == id {
					t.Errorf("the cancelled job still has a deadline for the reconciler")
				}
			}
		})
	}
}

// TestDrainWorkerNeedsAnAdminKey: only an admin key may drain a worker,
// and a worker id that cannot be one is refused before anything is sent.
func TestDrainWorkerNeedsAnAdminKey(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: map[string]gateway.Principal{
		"key-acme-1234":  {Tenant: "acme"},
		"key-admin-1234": {Tenant: "acme", Admin: true},
	}})
	ctx := context.Background()
	_, err := f.client(t, "key-acme-1234").DrainWorker(ctx, &cortexv1.DrainWorkerRequest{WorkerId: "echo-1"})
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("a tenant key draining: %v, want PermissionDenied", err)
	}
	_, err = f.client(t, "key-admin-1234").DrainWorker(ctx, &cortexv1.DrainWorkerRequest{WorkerId: "Not A Worker"})
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("a bad worker id: %v, want InvalidArgument", err)
	}
	if n := len(f.tap.on(bus.SubjectWorkerDrain)); n != 0 {
		t.Errorf("%d drain requests sent", n)
	}
}
