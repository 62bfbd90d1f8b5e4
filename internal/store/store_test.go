package store_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
)

// backends runs a test against miniredis and, when CORTEX_TEST_REDIS_URL is
// set, against that real Redis too.
func backends(t *testing.T, run func(t *testing.T, st *store.Store, rdb *redis.Client)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		run(t, store.New(rdb, store.Options{}), rdb)
	})
	url := os.Getenv("CORTEX_TEST_REDIS_URL")
	if url == "" {
		return
	}
	t.Run("redis", func(t *testing.T) {
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatalf("CORTEX_TEST_REDIS_URL: %v", err)
		}
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { _ = rdb.Close() })
		run(t, store.New(rdb, store.Options{}), rdb)
	})
}

var now = time.UnixMicro(1_700_000_000_000_000)

func newID(t *testing.T) string { return "t-" + t.Name() + "-" + time.Now().Format("150405.000000000") }

func TestJobLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := newID(t)
		if err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Tenant: "acme", Prompt: "hello"}, now); err != nil {
			t.Fatal(err)
		}
		j, res, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.Pending || j.Topic != "job.echo" || j.Tenant != "acme" || j.Attempt != 1 || !j.CreatedAt.Equal(now) {
			t.Fatalf("after create: %+v", j)
		}
		if res != "" {
			t.Fatalf("result before completion = %q", res)
		}
		if err := st.Transition(ctx, id, store.Change{To: store.Dispatched, Pool: "echo"}, now); err != nil {
			t.Fatal(err)
		}
		prompt, err := st.Start(ctx, id, "w-1", now)
		if err != nil {
			t.Fatal(err)
		}
		if prompt != "hello" {
			t.Fatalf("Start returned prompt %q, want hello", prompt)
		}
		if err := st.PutResult(ctx, id, "olleh"); err != nil {
			t.Fatal(err)
		}
		later := now.Add(time.Second)
		if err := st.Transition(ctx, id, store.Change{To: store.Completed, WorkerID: "w-1"}, later); err != nil {
			t.Fatal(err)
		}
		j, res, err = st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.Completed || j.Pool != "echo" || j.WorkerID != "w-1" || res != "olleh" || !j.UpdatedAt.Equal(later) {
			t.Fatalf("after completion: %+v result %q", j, res)
		}
	})
}

func TestTerminalStatesAreFinal(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := newID(t)
		if err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "sys.destroy", Tenant: "acme"}, now); err != nil {
			t.Fatal(err)
		}
		if err := st.Transition(ctx, id, store.Change{To: store.Denied, Rule: "r", Reason: "no"}, now); err != nil {
			t.Fatal(err)
		}
		for _, to := range []store.State{store.Dispatched, store.Running, store.Completed, store.Failed, store.Pending} {
			err := st.Transition(ctx, id, store.Change{To: to, Reason: "late"}, now)
			if !errors.Is(err, store.ErrConflict) {
				t.Errorf("DENIED -> %s: err = %v, want ErrConflict", to, err)
			}
		}
		if _, err := st.Start(ctx, id, "w-1", now); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Start on a denied job: err = %v, want ErrConflict", err)
		}
		j, _, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.Denied || j.Reason != "no" || j.Rule != "r" {
			t.Fatalf("refused transitions changed the job: %+v", j)
		}
	})
}

func TestTransitionTable(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		for _, tc := range []struct {
			path []store.State
			ok   bool
		}{
			{[]store.State{store.Dispatched, store.Running, store.Completed}, true},
			{[]store.State{store.Dispatched, store.Failed}, true},
			{[]store.State{store.Scheduled, store.Dispatched, store.Running, store.Failed}, true},
			{[]store.State{store.Running}, false},
			{[]store.State{store.Completed}, false},
			{[]store.State{store.Dispatched, store.Denied}, false},
			{[]store.State{store.Dispatched, store.Running, store.Dispatched}, false},
		} {
			id := newID(t)
			if err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo"}, now); err != nil {
				t.Fatal(err)
			}
			var err error
			for _, to := range tc.path {
				if err = st.Transition(ctx, id, store.Change{To: to}, now); err != nil {
					break
				}
			}
			if (err == nil) != tc.ok {
				t.Errorf("PENDING -> %v: err = %v, want ok=%v", tc.path, err, tc.ok)
			}
		}
	})
}

func TestMissingJob(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		if _, _, err := st.Get(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get: err = %v, want ErrNotFound", err)
		}
		if err := st.Transition(ctx, "nope", store.Change{To: store.Running}, now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Transition: err = %v, want ErrNotFound", err)
		}
	})
}

func TestStateProto(t *testing.T) {
	for _, s := range []store.State{store.Pending, store.Scheduled, store.Dispatched, store.Running, store.Completed, store.Failed, store.Denied} {
		if got := s.Proto().String(); got != "JOB_STATE_"+string(s) {
			t.Errorf("%s.Proto() = %s", s, got)
		}
	}
}

func TestStartWithoutPromptFailsTheJob(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := newID(t)
		if err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Prompt: "p"}, now); err != nil {
			t.Fatal(err)
		}
		if err := st.Transition(ctx, id, store.Change{To: store.Dispatched}, now); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Del(ctx, "ctx:"+id).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Start(ctx, id, "w-1", now); !errors.Is(err, store.ErrNoPrompt) {
			t.Fatalf("Start without a prompt: err = %v, want ErrNoPrompt", err)
		}
		j, _, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.Failed || j.Reason == "" {
			t.Fatalf("job after Start without a prompt: %+v, want FAILED with a reason", j)
		}
	})
}

// BenchmarkJobPath runs one job's store traffic: create, dispatch, start,
// result, complete.
func BenchmarkJobPath(b *testing.B) {
	run := func(b *testing.B, rdb *redis.Client) {
		st := store.New(rdb, store.Options{})
		ctx := context.Background()
		prefix := "bench-" + time.Now().Format("150405.000000") + "-"
		i := 0
		for b.Loop() {
			i++
			id := prefix + strconv.Itoa(i)
			if err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Prompt: "p"}, now); err != nil {
				b.Fatal(err)
			}
			if err := st.Transition(ctx, id, store.Change{To: store.Dispatched, Pool: "echo"}, now); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Start(ctx, id, "w", now); err != nil {
				b.Fatal(err)
			}
			if err := st.PutResult(ctx, id, "p"); err != nil {
				b.Fatal(err)
			}
			if err := st.Transition(ctx, id, store.Change{To: store.Completed}, now); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("miniredis", func(b *testing.B) {
		mr := miniredis.RunT(b)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		defer rdb.Close()
		run(b, rdb)
	})
	if url := os.Getenv("CORTEX_TEST_REDIS_URL"); url != "" {
		b.Run("redis", func(b *testing.B) {
			opts, err := redis.ParseURL(url)
			if err != nil {
				b.Fatal(err)
			}
			rdb := redis.NewClient(opts)
			defer rdb.Close()
			run(b, rdb)
		})
	}
}
