package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
)

// InputBatch reads every prompt of the batch in one round trip, each as
// Input does: a job without one (gone, or never created) gets ErrNoPrompt.
func TestInputBatch(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		a := create(t, st, store.NewJob{Input: "first prompt"}, now)
		b := create(t, st, store.NewJob{Input: "second \xff prompt"}, now)
		missing := newID(t)
		ids := []string{b, missing, a, b}

		before := st.RoundTrips()
		prompts, errs := st.InputBatch(ctx, ids)
		if trips := st.RoundTrips() - before; trips != 1 {
			t.Errorf("InputBatch of %d jobs took %d round trips, want 1", len(ids), trips)
		}
		if len(prompts) != len(ids) || len(errs) != len(ids) {
			t.Fatalf("InputBatch returned %d prompts and %d errors for %d jobs", len(prompts), len(errs), len(ids))
		}
		for i, id := range ids {
			want, wantErr := st.Input(ctx, id)
			if prompts[i] != want || (errs[i] == nil) != (wantErr == nil) {
				t.Errorf("job %d: InputBatch gave %q, %v; Input gives %q, %v", i, prompts[i], errs[i], want, wantErr)
			}
		}
		if prompts[0] != "second \xff prompt" || prompts[2] != "first prompt" {
			t.Errorf("prompts %q, want each job's own", prompts)
		}
		if !errors.Is(errs[1], store.ErrNoPrompt) {
			t.Errorf("job without a prompt: err %v, want ErrNoPrompt", errs[1])
		}

		if prompts, errs := st.InputBatch(ctx, nil); len(prompts) != 0 || len(errs) != 0 {
			t.Errorf("InputBatch(nil) = %q, %v; want nothing", prompts, errs)
		}
	})
}
