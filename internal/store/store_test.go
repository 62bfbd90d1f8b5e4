package store_test

import (
	"context"
	"errors"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// backends runs a test against miniredis and, when CORTEX_TEST_REDIS_URL is
// set, against that real Redis too.
func backends(t *testing.T, run func(t *testing.T, st *store.Store, rdb *redis.Client)) {
	t.Helper()
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

var now = time.UnixMicro(1_700_000_000_000_000).UTC()

// newID is a fresh UUIDv7, as the gateway makes them.
func newID(t testing.TB) string {
	t.Helper()
	return uuid.Must(uuid.NewV7()).String()
}

// newTenant is a tenant no other test (or earlier run on a real Redis)
// uses, so each test sees only its own index and idempotency keys.
func newTenant(t testing.TB) string {
	t.Helper()
	return "tenant-" + uuid.NewString()
}

// create records j (with a fresh id and tenant when unset) and returns its
// id.
func create(t *testing.T, st *store.Store, j store.NewJob, at time.Time) string {
	t.Helper()
	if j.ID == "" {
		j.ID = newID(t)
	}
	if j.Tenant == "" {
		j.Tenant = newTenant(t)
	}
	if j.Topic == "" {
		j.Topic = "job.echo"
	}
	if existing, err := st.CreateJob(context.Background(), j, at); err != nil || existing != "" {
		t.Fatalf("CreateJob(%s) = %q, %v", j.ID, existing, err)
	}
	return j.ID
}

// move applies a transition that must succeed.
func move(t *testing.T, st *store.Store, id string, c store.Change, at time.Time) *store.Job {
	t.Helper()
	j, err := st.Transition(context.Background(), id, c, at)
	if err != nil {
		t.Fatalf("move %s to %s: %v", id, c.To, err)
	}
	return j
}

// start marks attempt of a dispatched job RUNNING and must succeed.
func start(t *testing.T, st *store.Store, id string, attempt uint32, at time.Time) (*store.Job, string) {
	t.Helper()
	j, input, err := st.Start(context.Background(), id, attempt, "w-1", false, time.Minute, at)
	if err != nil {
		t.Fatalf("start %s attempt %d: %v", id, attempt, err)
	}
	return j, input
}

func get(t *testing.T, st *store.Store, id string) *store.Job {
	t.Helper()
	j, err := st.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// conflict checks that err is a *ConflictError saying the job stood in
// state at attempt.
func conflict(t *testing.T, what string, err error, state store.State, attempt uint32) {
	t.Helper()
	var ce *store.ConflictError
	if !errors.Is(err, store.ErrConflict) || !errors.As(err, &ce) {
		t.Errorf("%s: err = %v, want a *ConflictError", what, err)
		return
	}
	if ce.State != state || ce.Attempt != attempt {
		t.Errorf("%s: conflict says %s attempt %d, want %s attempt %d", what, ce.State, ce.Attempt, state, attempt)
	}
}

func TestJobLifecycle(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		nj := store.NewJob{
			ID: newID(t), Topic: "job.echo", Tenant: newTenant(t), Input: "hello",
			Labels: map[string]string{"team": "a"}, Priority: 7, Timeout: 90 * time.Second, MaxAttempts: 3,
		}
		create(t, st, nj, now)
		id := nj.ID
		if j := get(t, st, id); !reflect.DeepEqual(j, nj.Record(now)) {
			t.Fatalf("after create:\n got %+v\nwant %+v", j, nj.Record(now))
		}
		if j, out, err := st.Output(ctx, id); err != nil || j.State != store.Pending || out != "" {
			t.Fatalf("Output before completion = %+v, %q, %v", j, out, err)
		}

		allow := &store.Verdict{Decision: "ALLOW", Rule: "allow-jobs", Reason: "ok", Policy: "v3"}
		j := move(t, st, id, store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo", Safety: allow}, now)
		if j.State != store.Dispatched || j.Pool != "echo" || j.Safety != *allow {
			t.Fatalf("after dispatch: %+v", j)
		}
		j, input := start(t, st, id, 1, now)
		if input != "hello" || j.State != store.Running || j.WorkerID != "w-1" {
			t.Fatalf("Start = %+v, %q", j, input)
		}
		later := now.Add(time.Second)
		size := uint64(len("olleh"))
		usage := store.Usage{Prompt: 5, Completion: 7, Total: 12}
		done, err := st.Finish(ctx, id, 1, "w-1", "olleh", usage, later)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Finish(ctx, id, 1, "w-1", "again", store.Usage{}, later); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("finishing a COMPLETED job again: %v, want ErrConflict", err)
		}
		j, out, err := st.Output(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(j, done) {
			t.Errorf("Output's record %+v differs from Transition's %+v", j, done)
		}
		if j.State != store.Completed || j.Pool != "echo" || j.WorkerID != "w-1" || j.ResultSize != size ||
			out != "olleh" || !j.UpdatedAt.Equal(later) || !j.CreatedAt.Equal(now) || j.Labels["team"] != "a" || j.Usage != usage {
			t.Fatalf("after completion: %+v result %q", j, out)
		}
	})
}

// reach takes a fresh job along path (Start for RUNNING) and returns it.
func reach(t *testing.T, st *store.Store, path []store.State) (string, *store.Job) {
	t.Helper()
	id := create(t, st, store.NewJob{Input: "p", MaxAttempts: 2}, now)
	j := get(t, st, id)
	for _, to := range path {
		if to == store.Running {
			j, _ = start(t, st, id, 1, now)
			continue
		}
		j = move(t, st, id, store.Change{To: to, Attempt: 1, Reason: "by test"}, now)
	}
	return id, j
}

var allStates = []store.State{
	store.Pending, store.Scheduled, store.Dispatched, store.Running,
	store.Completed, store.Failed, store.Denied, store.Cancelled, store.Timeout,
}

func TestTerminalStatesAreFinal(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		for _, path := range [][]store.State{
			{store.Dispatched, store.Running, store.Completed},
			{store.Dispatched, store.Failed},
			{store.Denied},
			{store.Cancelled},
			{store.Dispatched, store.Running, store.Timeout},
		} {
			end := path[len(path)-1]
			id, before := reach(t, st, path)
			if !end.Terminal() {
				t.Fatalf("%s is not terminal", end)
			}
			for _, to := range allStates {
				_, err := st.Transition(ctx, id, store.Change{To: to, Reason: "late", WorkerID: "w-9"}, now.Add(time.Hour))
				conflict(t, string(end)+" -> "+string(to), err, end, 1)
			}
			_, err := st.Transition(ctx, id, store.Change{To: store.Pending, Retry: true, Reason: "late"}, now.Add(time.Hour))
			conflict(t, "retry of a "+string(end)+" job", err, end, 1)
			for _, bad := range []store.Change{{To: store.Completed, Retry: true}, {To: store.Pending, Retry: true, WorkerID: "w-9"}} {
				if _, err := st.Transition(ctx, id, bad, now.Add(time.Hour)); err == nil || errors.Is(err, store.ErrConflict) {
					t.Errorf("malformed retry %+v: err = %v, want a refusal before Redis", bad, err)
				}
			}
			_, _, err = st.Start(ctx, id, 1, "w-9", false, time.Minute, now.Add(time.Hour))
			conflict(t, "Start on a "+string(end)+" job", err, end, 1)
			if j := get(t, st, id); !reflect.DeepEqual(j, before) {
				t.Errorf("refused transitions changed a %s job:\n got %+v\nwant %+v", end, j, before)
			}
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
			{[]store.State{store.Pending, store.Denied}, false},
			{[]store.State{store.Failed}, true},
			{[]store.State{store.Cancelled}, true},
			{[]store.State{store.Scheduled, store.Cancelled}, true},
			{[]store.State{store.Dispatched, store.Cancelled}, true},
			{[]store.State{store.Dispatched, store.Running, store.Cancelled}, true},
			{[]store.State{store.Dispatched, store.Timeout}, true},
			{[]store.State{store.Dispatched, store.Running, store.Timeout}, true},
			{[]store.State{store.Dispatched, store.Pending}, true},
			{[]store.State{store.Dispatched, store.Running, store.Pending}, true},
			{[]store.State{store.Running}, false},
			{[]store.State{store.Completed}, false},
			{[]store.State{store.Timeout}, false},
			{[]store.State{store.Scheduled, store.Timeout}, false},
			{[]store.State{store.Dispatched, store.Denied}, false},
			{[]store.State{store.Dispatched, store.Running, store.Dispatched}, false},
		} {
			id := create(t, st, store.NewJob{}, now)
			var err error
			for _, to := range tc.path {
				if _, err = st.Transition(ctx, id, store.Change{To: to}, now); err != nil {
					break
				}
			}
			if (err == nil) != tc.ok {
				t.Errorf("PENDING -> %v: err = %v, want ok=%v", tc.path, err, tc.ok)
			}
		}
	})
}

func TestCancel(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		for _, path := range [][]store.State{
			{},
			{store.Dispatched},
			{store.Dispatched, store.Running},
		} {
			id, before := reach(t, st, path)
			at := now.Add(time.Minute)
			j := move(t, st, id, store.Change{To: store.Cancelled, Reason: "cancelled by alice"}, at)
			if j.State != store.Cancelled || j.Reason != "cancelled by alice" || !j.Entered[store.Cancelled].Equal(at) ||
				j.Version != before.Version+1 {
				t.Errorf("%s -> CANCELLED: %+v", before.State, j)
			}
			for _, to := range allStates {
				_, err := st.Transition(ctx, id, store.Change{To: to, Reason: "late"}, at.Add(time.Minute))
				conflict(t, "CANCELLED -> "+string(to), err, store.Cancelled, 1)
			}
			_, _, err := st.Start(ctx, id, 1, "w-2", false, time.Minute, at)
			conflict(t, "Start on a cancelled job", err, store.Cancelled, 1)
			if got := get(t, st, id); !reflect.DeepEqual(got, j) {
				t.Errorf("a job left CANCELLED:\n got %+v\nwant %+v", got, j)
			}
		}
	})
}

func TestTimeout(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, []store.State{store.Dispatched, store.Running})
		at := now.Add(time.Minute)
		j := move(t, st, id, store.Change{To: store.Timeout, Attempt: 1, WorkerID: "w-1", Reason: "ran past 1m"}, at)
		if j.State != store.Timeout || !j.State.Terminal() || j.Reason != "ran past 1m" || !j.Entered[store.Timeout].Equal(at) {
			t.Errorf("after TIMEOUT: %+v", j)
		}
		if j.Proto().GetState() != cortexv1.JobState_JOB_STATE_TIMEOUT {
			t.Errorf("Proto state %s", j.Proto().GetState())
		}

		pending := create(t, st, store.NewJob{}, now)
		_, err := st.Transition(ctx, pending, store.Change{To: store.Timeout}, at)
		conflict(t, "PENDING -> TIMEOUT", err, store.Pending, 1)
	})
}

func TestAttemptGuard(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, []store.State{store.Dispatched, store.Running})
		retried := move(t, st, id, store.Change{To: store.Pending, Attempt: 1, Retry: true, Reason: "attempt 1 failed"}, now)
		if retried.Attempt != 2 {
			t.Fatalf("after retry: attempt %d, want 2", retried.Attempt)
		}
		// Late news of attempt 1 must not touch attempt 2.
		for _, to := range []store.State{store.Completed, store.Failed, store.Timeout, store.Dispatched, store.Cancelled} {
			_, err := st.Transition(ctx, id, store.Change{To: to, Attempt: 1, WorkerID: "w-1", Reason: "stale"}, now.Add(time.Hour))
			conflict(t, "attempt 1 -> "+string(to), err, store.Pending, 2)
		}
		_, err := st.Transition(ctx, id, store.Change{To: store.Pending, Attempt: 1, Retry: true}, now.Add(time.Hour))
		conflict(t, "second retry of attempt 1", err, store.Pending, 2)
		if j := get(t, st, id); !reflect.DeepEqual(j, retried) {
			t.Fatalf("stale results changed the job:\n got %+v\nwant %+v", j, retried)
		}

		move(t, st, id, store.Change{To: store.Dispatched, Attempt: 2, Pool: "echo"}, now)
		_, _, err = st.Start(ctx, id, 1, "w-1", false, time.Minute, now)
		conflict(t, "Start of attempt 1", err, store.Dispatched, 2)
		if j, _ := start(t, st, id, 2, now); j.Attempt != 2 || j.State != store.Running {
			t.Fatalf("Start of attempt 2: %+v", j)
		}
	})
}

func TestRetryStartsNextAttempt(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		id, running := reach(t, st, []store.State{store.Dispatched, store.Running})
		if running.WorkerID != "w-1" {
			t.Fatalf("running on %q, want w-1", running.WorkerID)
		}
		at := now.Add(time.Minute)
		j := move(t, st, id, store.Change{To: store.Pending, Attempt: 1, Retry: true, Reason: "boom; retrying"}, at)
		if j.State != store.Pending || j.Attempt != 2 || j.WorkerID != "" || j.Reason != "boom; retrying" ||
			!j.Entered[store.Pending].Equal(at) || !j.Entered[store.Running].Equal(now) || j.Version != running.Version+1 {
			t.Fatalf("after retry: %+v", j)
		}
		if r := j.Request(); r.GetAttempt() != 2 || r.GetMaxAttempts() != 2 || r.GetContextPtr() != store.ContextPtr(id) {
			t.Errorf("request for the retry: %v", r)
		}
		if got := get(t, st, id); !reflect.DeepEqual(got, j) {
			t.Errorf("stored record %+v differs from the returned %+v", got, j)
		}
	})
}

func TestEnteredTimesAndVersion(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := create(t, st, store.NewJob{Input: "p"}, now)
		j := get(t, st, id)
		if j.Version != 1 || !j.Entered[store.Pending].Equal(now) || len(j.Entered) != 1 {
			t.Fatalf("after create: version %d entered %v", j.Version, j.Entered)
		}
		at := []time.Time{now, now.Add(time.Second), now.Add(2 * time.Second), now.Add(3 * time.Second)}
		steps := []func() *store.Job{
			func() *store.Job { return move(t, st, id, store.Change{To: store.Dispatched, Attempt: 1}, at[1]) },
			func() *store.Job { j, _ := start(t, st, id, 1, at[2]); return j },
			func() *store.Job { return move(t, st, id, store.Change{To: store.Completed, Attempt: 1}, at[3]) },
		}
		for i, step := range steps {
			prev := j.Version
			j = step()
			if j.Version != prev+1 || !j.UpdatedAt.Equal(at[i+1]) || !j.Entered[j.State].Equal(at[i+1]) || !j.CreatedAt.Equal(now) {
				t.Errorf("step %d to %s: version %d (was %d), updated %v, entered %v", i+1, j.State, j.Version, prev, j.UpdatedAt, j.Entered)
			}
		}
		want := map[store.State]time.Time{store.Pending: at[0], store.Dispatched: at[1], store.Running: at[2], store.Completed: at[3]}
		if !reflect.DeepEqual(j.Entered, want) {
			t.Errorf("entered %v, want %v", j.Entered, want)
		}
		var states []cortexv1.JobState
		for _, tr := range j.Proto().GetTransitions() {
			states = append(states, tr.GetState())
		}
		if want := []cortexv1.JobState{
			cortexv1.JobState_JOB_STATE_PENDING, cortexv1.JobState_JOB_STATE_DISPATCHED,
			cortexv1.JobState_JOB_STATE_RUNNING, cortexv1.JobState_JOB_STATE_COMPLETED,
		}; !reflect.DeepEqual(states, want) {
			t.Errorf("proto transitions %v, want %v", states, want)
		}
		if _, err := st.Transition(ctx, id, store.Change{To: store.Failed}, at[3]); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("COMPLETED -> FAILED: %v", err)
		}
		if got := get(t, st, id); got.Version != j.Version {
			t.Errorf("a refused transition moved the version from %d to %d", j.Version, got.Version)
		}
	})
}

func TestIdempotency(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		tenant := newTenant(t)
		first := store.NewJob{ID: store.InKeyShard(newID(t), tenant, "order-42"), Topic: "job.echo", Tenant: tenant, Input: "hi", IdempotencyKey: "order-42", Fingerprint: "fp-1"}
		create(t, st, first, now)

		for _, tc := range []struct {
			name    string
			tenant  string
			fp      string
			wantID  string
			wantErr error
		}{
			{name: "same request", tenant: tenant, fp: "fp-1", wantID: first.ID},
			{name: "different request", tenant: tenant, fp: "fp-2", wantID: first.ID, wantErr: store.ErrIdempotencyMismatch},
		} {
			again := first
			again.ID, again.Fingerprint = store.InKeyShard(newID(t), tenant, "order-42"), tc.fp
			existing, err := st.CreateJob(ctx, again, now)
			if existing != tc.wantID || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("%s: CreateJob = %q, %v; want %q, %v", tc.name, existing, err, tc.wantID, tc.wantErr)
			}
			if _, err := st.Get(ctx, again.ID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: a second job was created (Get: %v)", tc.name, err)
			}
			if n, err := rdb.Exists(ctx, store.CtxKey(again.ID)).Result(); err != nil || n != 0 {
				t.Errorf("%s: the second input was stored (%d, %v)", tc.name, n, err)
			}
		}
		jobs, _, err := st.List(ctx, store.Query{Tenant: tenant})
		if err != nil || len(jobs) != 1 || jobs[0].ID != first.ID {
			t.Errorf("tenant's jobs after reusing the key: %v, %v; want only %s", ids(jobs), err, first.ID)
		}

		other := first
		other.Tenant = newTenant(t)
		other.ID = store.InKeyShard(newID(t), other.Tenant, "order-42")
		create(t, st, other, now)
		if j := get(t, st, other.ID); j.Tenant != other.Tenant {
			t.Errorf("other tenant's job: %+v", j)
		}
	})
}

// A job with an idempotency key is created by a script, one without by a
// transaction of plain commands: both must leave the same record, input,
// index and deadline entries, with the same lifetimes.
func TestCreateWithAndWithoutAKeyStoreTheSame(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		tenant := newTenant(t)
		labels := map[string]string{"team": "ml"}
		plain := store.NewJob{ID: newID(t), Topic: "job.echo", Tenant: tenant, Input: "hi", Labels: labels, Priority: 3,
			Timeout: time.Minute, MaxAttempts: 2, TraceID: "trace-1"}
		keyed := plain
		keyed.IdempotencyKey, keyed.Fingerprint = "order-7", "fp"
		keyed.ID = store.InKeyShard(newID(t), tenant, keyed.IdempotencyKey)
		res := st.CreateJobs(ctx, []store.NewJob{plain, keyed}, now)
		for i, c := range res {
			if c.Err != nil || c.Existing != "" {
				t.Fatalf("CreateJobs answer %d: %+v", i, c)
			}
		}
		stored := func(id string) (map[string]string, string, bool, float64) {
			fields, err := rdb.HGetAll(ctx, store.JobKey(id)).Result()
			if err != nil {
				t.Fatal(err)
			}
			input, err := rdb.Get(ctx, store.CtxKey(id)).Result()
			if err != nil {
				t.Fatal(err)
			}
			jobTTL, ctxTTL := rdb.PTTL(ctx, store.JobKey(id)).Val(), rdb.PTTL(ctx, store.CtxKey(id)).Val()
			if jobTTL <= 0 || ctxTTL <= 0 {
				t.Errorf("job %s: record lives %v, input %v; want both to expire", id, jobTTL, ctxTTL)
			}
			indexed := false
			for _, k := range store.IndexKeys(tenant) {
				if _, err := rdb.ZScore(ctx, k, id).Result(); err == nil {
					indexed = true
					if rdb.PTTL(ctx, k).Val() <= 0 {
						t.Errorf("index %s does not expire", k)
					}
				}
			}
			deadline, err := rdb.ZScore(ctx, store.LeaseKeyOf(id), id).Result()
			if err != nil {
				t.Errorf("job %s has no deadline: %v", id, err)
			}
			return fields, input, indexed, deadline
		}
		pf, pi, px, pd := stored(plain.ID)
		kf, ki, kx, kd := stored(keyed.ID)
		if !reflect.DeepEqual(pf, kf) || pi != ki || !px || !kx || pd != kd {
			t.Errorf("without a key: %v, input %q, indexed %v, deadline %v\nwith a key:    %v, input %q, indexed %v, deadline %v",
				pf, pi, px, pd, kf, ki, kx, kd)
		}
		if j := get(t, st, plain.ID); j.State != store.Pending || j.Attempt != 1 || j.Labels["team"] != "ml" || j.Priority != 3 {
			t.Errorf("job created without a key: %+v", j)
		}
	})
}

// A create whose commands fail says so, for each job.
func TestCreateReportsAFailedTransaction(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		tenant := newTenant(t)
		j := store.NewJob{ID: newID(t), Topic: "job.echo", Tenant: tenant, Input: "hi"}
		// The tenant's index in the job's shard is a string: ZADD fails.
		for _, k := range store.IndexKeys(tenant) {
			if err := rdb.Set(ctx, k, "not a sorted set", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := st.CreateJob(ctx, j, now); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Errorf("CreateJob on a broken index: %v, want a WRONGTYPE error", err)
		}
		j.ID = newID(t)
		if res := st.CreateJobs(ctx, []store.NewJob{j}, now); res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "WRONGTYPE") {
			t.Errorf("CreateJobs on a broken index: %+v, want a WRONGTYPE error", res[0])
		}
	})
}

func TestStartWithBinaryInput(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		input := string([]byte{0x00, 0xff, 0x01, '\n', 0x80, 'x', 0x00})
		id := create(t, st, store.NewJob{Input: input, Binary: true}, now)
		move(t, st, id, store.Change{To: store.Dispatched}, now)
		j, got := start(t, st, id, 1, now)
		if got != input {
			t.Errorf("Start returned input %q, want %q", got, input)
		}
		if !j.Binary || j.PromptSize != uint64(len(input)) || !j.Request().GetBinaryPayload() || !j.Proto().GetBinaryPayload() {
			t.Errorf("record of a binary job: %+v", j)
		}
	})
}

func TestOutputOnlyWhenCompleted(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		for _, tc := range []struct {
			end  store.State
			want string
		}{
			{store.Running, ""},
			{store.Completed, "the output"},
			{store.Failed, ""},
			{store.Timeout, ""},
			{store.Cancelled, ""},
		} {
			id, _ := reach(t, st, []store.State{store.Dispatched, store.Running})
			switch tc.end {
			case store.Completed:
				if _, err := st.Finish(ctx, id, 1, "w-1", "the output", store.Usage{}, now); err != nil {
					t.Fatal(err)
				}
			case store.Running:
			default:
				move(t, st, id, store.Change{To: tc.end}, now)
			}
			j, out, err := st.Output(ctx, id)
			if err != nil || j.State != tc.end || out != tc.want {
				t.Errorf("Output of a %s job = %v, %q, %v; want %q", tc.end, j, out, err, tc.want)
			}
		}
	})
}

func TestMissingJob(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := newID(t)
		if _, err := st.Get(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get: err = %v, want ErrNotFound", err)
		}
		if _, _, err := st.Output(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Output: err = %v, want ErrNotFound", err)
		}
		if _, err := st.Transition(ctx, id, store.Change{To: store.Running}, now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Transition: err = %v, want ErrNotFound", err)
		}
		if _, _, err := st.Start(ctx, id, 1, "w-1", false, time.Minute, now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Start: err = %v, want ErrNotFound", err)
		}
	})
}

func TestStateProto(t *testing.T) {
	terminal := map[store.State]bool{store.Completed: true, store.Failed: true, store.Denied: true, store.Cancelled: true, store.Timeout: true}
	for _, s := range allStates {
		if got := s.Proto().String(); got != "JOB_STATE_"+string(s) {
			t.Errorf("%s.Proto() = %s", s, got)
		}
		if got := store.StateOf(s.Proto()); got != s {
			t.Errorf("StateOf(%s) = %q", s.Proto(), got)
		}
		if s.Terminal() != terminal[s] {
			t.Errorf("%s.Terminal() = %v", s, s.Terminal())
		}
	}
	for _, p := range []cortexv1.JobState{cortexv1.JobState_JOB_STATE_UNSPECIFIED, cortexv1.JobState(99)} {
		if got := store.StateOf(p); got != "" {
			t.Errorf("StateOf(%d) = %q, want empty", p, got)
		}
	}
}

func TestStartWithoutPromptFailsTheJob(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := create(t, st, store.NewJob{Input: "p"}, now)
		move(t, st, id, store.Change{To: store.Dispatched}, now)
		if err := rdb.Del(ctx, store.CtxKey(id)).Err(); err != nil {
			t.Fatal(err)
		}
		j, _, err := st.Start(ctx, id, 1, "w-1", false, time.Minute, now)
		if !errors.Is(err, store.ErrNoPrompt) {
			t.Fatalf("Start without a prompt: err = %v, want ErrNoPrompt", err)
		}
		if j == nil || j.State != store.Failed || j.Reason == "" {
			t.Fatalf("record returned by Start without a prompt: %+v, want FAILED with a reason", j)
		}
		if got := get(t, st, id); !reflect.DeepEqual(got, j) {
			t.Fatalf("stored %+v, Start returned %+v", got, j)
		}
	})
}

// BenchmarkJobPath runs one job's store traffic: create, dispatch, start,
// result, complete.
func BenchmarkJobPath(b *testing.B) {
	run := func(b *testing.B, rdb *redis.Client) {
		st := store.New(rdb, store.Options{})
		ctx := context.Background()
		tenant := newTenant(b)
		for b.Loop() {
			id := newID(b)
			if _, err := st.CreateJob(ctx, store.NewJob{ID: id, Topic: "job.echo", Tenant: tenant, Input: "p"}, now); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Transition(ctx, id, store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo"}, now); err != nil {
				b.Fatal(err)
			}
			if _, _, err := st.Start(ctx, id, 1, "w", false, time.Minute, now); err != nil {
				b.Fatal(err)
			}
			if _, err := st.Finish(ctx, id, 1, "w", "p", store.Usage{}, now); err != nil {
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

// ids lists the jobs' ids, for messages and comparisons.
func ids(jobs []*store.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

func TestSetPendingReason(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, nil)
		before := get(t, st, id)
		j, err := st.SetPendingReason(ctx, id, 1, "echo", "waiting for a live worker in pool echo", now.Add(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.Pending || j.Reason != "waiting for a live worker in pool echo" || j.Pool != "echo" || j.Version != before.Version+1 {
			t.Fatalf("after SetPendingReason: %+v", j)
		}
		_, err = st.SetPendingReason(ctx, id, 2, "echo", "wrong attempt", now)
		conflict(t, "attempt 2", err, store.Pending, 1)
		// Dispatched, the job no longer waits: the reason goes with the wait.
		if j := move(t, st, id, store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo"}, now); j.Reason != "" {
			t.Fatalf("dispatched job keeps the reason it waited for: %q", j.Reason)
		}
		_, err = st.SetPendingReason(ctx, id, 1, "echo", "too late", now)
		conflict(t, "dispatched job", err, store.Dispatched, 1)
		if got := get(t, st, id); got.Reason != "" {
			t.Fatalf("a refused reason changed the job: %q", got.Reason)
		}
		if _, err := st.SetPendingReason(ctx, "no-such-job", 1, "echo", "x", now); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing job: %v", err)
		}
	})
}

func TestDeadLettersFindsATenantsOlderEntriesBehindOthers(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		mine, other := newTenant(t), newTenant(t)
		deadAt := func(tenant string, at time.Time) string {
			id := create(t, st, store.NewJob{ID: newID(t), Tenant: tenant, Topic: "job.echo", MaxAttempts: 1}, at)
			if _, err := st.Transition(ctx, id, store.Change{To: store.Failed, DeadLetter: true, Reason: "boom"}, at); err != nil {
				t.Fatal(err)
			}
			return id
		}
		var want []string
		for i := range 3 {
			want = append([]string{deadAt(mine, now.Add(time.Duration(i)*time.Second))}, want...)
		}
		// Many newer dead letters of another tenant, more than one round
		// reads from each shard.
		for i := range 16*200 + 50 {
			deadAt(other, now.Add(time.Minute+time.Duration(i)*time.Millisecond))
		}
		got, err := st.DeadLetters(ctx, mine, 10, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range got {
			ids = append(ids, d.Job.ID)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("DeadLetters = %v, want %v (newest first)", ids, want)
		}
		// A move that is not a failure is never a dead letter.
		id := create(t, st, store.NewJob{ID: newID(t), Tenant: mine, Topic: "job.echo"}, now)
		if _, err := st.Transition(ctx, id, store.Change{To: store.Cancelled, DeadLetter: true}, now); err != nil {
			t.Fatal(err)
		}
		if _, dead, err := st.DeadLetterAt(ctx, id); err != nil || dead {
			t.Errorf("a CANCELLED job is a dead letter: %v, %v", dead, err)
		}
	})
}

// TestPeekThenComplete: a worker reads a DISPATCHED job's input without
// recording anything, and records the attempt COMPLETED straight from
// DISPATCHED, with itself as the worker and the time it started, as Start
// and Finish together would have.
func TestPeekThenComplete(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		id := create(t, st, store.NewJob{Input: "hello"}, now)
		if _, err := st.Peek(ctx, id, 1); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Peek of a PENDING job: %v, want a conflict", err)
		}
		move(t, st, id, store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo"}, now)
		before := get(t, st, id)
		in, err := st.Peek(ctx, id, 1)
		if err != nil || in != "hello" {
			t.Fatalf("Peek = %q, %v", in, err)
		}
		if _, err := st.Peek(ctx, id, 2); err == nil {
			t.Fatal("Peek of another attempt succeeded")
		} else {
			conflict(t, "Peek of attempt 2", err, store.Dispatched, 1)
		}
		if got := get(t, st, id); !reflect.DeepEqual(got, before) {
			t.Fatalf("Peek changed the record: %+v, was %+v", got, before)
		}
		if _, err := st.Finish(ctx, id, 1, "w-1", "x", store.Usage{}, now); err == nil {
			t.Fatal("Finish of a job never recorded RUNNING succeeded")
		} else {
			conflict(t, "Finish from DISPATCHED", err, store.Dispatched, 1)
		}
		started, later := now.Add(time.Millisecond), now.Add(2*time.Millisecond)
		j, err := st.Complete(ctx, id, 1, "w-9", started, "olleh", store.Usage{Total: 3}, later)
		if err != nil {
			t.Fatal(err)
		}
		if got := get(t, st, id); !reflect.DeepEqual(got, j) {
			t.Fatalf("stored %+v, Complete returned %+v", got, j)
		}
		if j.State != store.Completed || j.WorkerID != "w-9" || !j.Entered[store.Running].Equal(started) || !j.Entered[store.Completed].Equal(later) ||
			j.Version != before.Version+1 || j.Usage.Total != 3 || len(j.Attempts) != 1 || j.Attempts[0].WorkerID != "w-9" || j.Attempts[0].State != store.Completed {
			t.Fatalf("after Complete: %+v", j)
		}
		if _, out, err := st.Output(ctx, id); err != nil || out != "olleh" {
			t.Fatalf("output %q, %v", out, err)
		}
		if _, err := st.Complete(ctx, id, 1, "w-9", started, "again", store.Usage{}, later); err == nil {
			t.Fatal("a second Complete succeeded")
		} else {
			conflict(t, "Complete of a COMPLETED job", err, store.Completed, 1)
		}
		// A RUNNING job is Finish's, not Complete's.
		id2 := create(t, st, store.NewJob{Input: "p"}, now)
		move(t, st, id2, store.Change{To: store.Dispatched}, now)
		start(t, st, id2, 1, now)
		if _, err := st.Complete(ctx, id2, 1, "w-9", now, "x", store.Usage{}, now); err == nil {
			t.Fatal("Complete of a RUNNING job succeeded")
		} else {
			conflict(t, "Complete of a RUNNING job", err, store.Running, 1)
		}
		// No job; no input.
		if _, err := st.Peek(ctx, newID(t), 1); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Peek of no job: %v, want ErrNotFound", err)
		}
		id3 := create(t, st, store.NewJob{Input: "p"}, now)
		move(t, st, id3, store.Change{To: store.Dispatched}, now)
		if err := rdb.Del(ctx, store.CtxKey(id3)).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Peek(ctx, id3, 1); !errors.Is(err, store.ErrNoPrompt) {
			t.Fatalf("Peek without an input: %v, want ErrNoPrompt", err)
		}
	})
}

// PeekAll answers each job as Peek would, all in one round trip.
func TestPeekAllAnswersEachAsPeek(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		ready := create(t, st, store.NewJob{Input: "hello"}, now)
		move(t, st, ready, store.Change{To: store.Dispatched, Attempt: 1, Pool: "echo"}, now)
		pending := create(t, st, store.NewJob{Input: "p"}, now)
		noInput := create(t, st, store.NewJob{Input: "p"}, now)
		move(t, st, noInput, store.Change{To: store.Dispatched}, now)
		if err := rdb.Del(ctx, store.CtxKey(noInput)).Err(); err != nil {
			t.Fatal(err)
		}
		ids := []string{ready, pending, newID(t), noInput, ready}
		attempts := []uint32{1, 1, 1, 1, 2}
		before := st.RoundTrips()
		got := st.PeekAll(ctx, ids, attempts)
		if trips := st.RoundTrips() - before; trips != 1 {
			t.Errorf("PeekAll of %d jobs took %d round trips, want 1", len(ids), trips)
		}
		if len(got) != len(ids) {
			t.Fatalf("%d answers for %d jobs", len(got), len(ids))
		}
		if got[0].Err != nil || got[0].Input != "hello" {
			t.Errorf("dispatched job: %+v, want its input", got[0])
		}
		conflict(t, "PENDING job", got[1].Err, store.Pending, 1)
		if !errors.Is(got[2].Err, store.ErrNotFound) {
			t.Errorf("no job: %v, want ErrNotFound", got[2].Err)
		}
		if !errors.Is(got[3].Err, store.ErrNoPrompt) {
			t.Errorf("no input: %v, want ErrNoPrompt", got[3].Err)
		}
		conflict(t, "attempt 2", got[4].Err, store.Dispatched, 1)
		for i, id := range ids {
			in, err := st.Peek(ctx, id, attempts[i])
			if in != got[i].Input || (err == nil) != (got[i].Err == nil) {
				t.Errorf("job %d: Peek says %q, %v; PeekAll said %+v", i, in, err, got[i])
			}
		}
	})
}

// After a takeover, the worker that lost the attempt cannot record its
// late result: only the worker now holding the attempt finishes it.
func TestLateResultOfAWorkerTakenOverIsRefused(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, []store.State{store.Dispatched, store.Running}) // on w-1
		if _, _, err := st.Start(ctx, id, 1, "w-2", true, time.Minute, now.Add(time.Minute)); err != nil {
			t.Fatalf("takeover: %v", err)
		}
		_, err := st.Finish(ctx, id, 1, "w-1", "late", store.Usage{}, now.Add(2*time.Minute))
		conflict(t, "w-1's late Finish", err, store.Running, 1)
		if _, out, err := st.Output(ctx, id); err != nil || out != "" {
			t.Fatalf("output after the refused Finish: %q, %v; want none", out, err)
		}
		// Nor its late failure, which would retry or end the attempt.
		_, err = st.Transition(ctx, id, store.Change{To: store.Pending, Attempt: 1, Retry: true, Outcome: store.Failed, Holder: "w-1", Reason: "late"}, now.Add(2*time.Minute))
		conflict(t, "w-1's late failure", err, store.Running, 1)
		_, err = st.Transition(ctx, id, store.Change{To: store.Failed, Attempt: 1, WorkerID: "w-1", Holder: "w-1", Reason: "late"}, now.Add(2*time.Minute))
		conflict(t, "w-1's late final failure", err, store.Running, 1)
		j, err := st.Finish(ctx, id, 1, "w-2", "on time", store.Usage{}, now.Add(3*time.Minute))
		if err != nil || j.State != store.Completed || j.WorkerID != "w-2" {
			t.Fatalf("w-2's Finish: %+v, %v; want COMPLETED on w-2", j, err)
		}
		if _, out, _ := st.Output(ctx, id); out != "on time" {
			t.Errorf("output %q, want w-2's", out)
		}
	})
}

// A worker that hands a running job back as it stops has the worker that
// takes it over say so, once: a later takeover is a lease that ran out.
func TestTakeoverOfAHandedBackJobSaysSo(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, []store.State{store.Dispatched, store.Running}) // on w-1
		if err := st.HandBack(ctx, id, 1, "w-2"); err != nil {
			t.Fatal(err)
		}
		if err := st.HandBack(ctx, id, 1, "w-1"); err != nil {
			t.Fatal(err)
		}
		j, _, err := st.Start(ctx, id, 1, "w-2", true, time.Minute, now.Add(time.Minute))
		if err != nil || j.Reason != "handed back by worker w-1 as it stopped; run again on worker w-2" {
			t.Fatalf("takeover of the handed-back job: %+v, %v", j, err)
		}
		if j, _, err = st.Start(ctx, id, 1, "w-3", true, time.Minute, now.Add(2*time.Minute)); err != nil ||
			j.Reason != "taken over from worker w-2, which stopped answering for it (its lease ran out)" {
			t.Fatalf("a later takeover: %+v, %v", j, err)
		}
	})
}

// A takeover (the bus redelivered a RUNNING attempt) moves the job to the
// new worker and says on the job whom it was taken from; a job that was
// DISPATCHED, not RUNNING, keeps its reason.
func TestTakeoverSaysWhomTheJobWasTakenFrom(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		id, _ := reach(t, st, []store.State{store.Dispatched, store.Running})
		j, input, err := st.Start(ctx, id, 1, "w-2", true, time.Minute, now.Add(time.Minute))
		if err != nil || input != "p" {
			t.Fatalf("takeover: %v, input %q", err, input)
		}
		if j.State != store.Running || j.WorkerID != "w-2" || j.Reason != "taken over from worker w-1, which stopped answering for it (its lease ran out)" {
			t.Errorf("after a takeover: %+v", j)
		}
		if j, _, err = st.Start(ctx, id, 1, "w-2", true, time.Minute, now.Add(2*time.Minute)); err != nil || j.Reason != "run again on worker w-2 after the bus redelivered it" {
			t.Errorf("the same worker again: %+v, %v", j, err)
		}
		first, _ := reach(t, st, []store.State{store.Dispatched})
		if j, _, err = st.Start(ctx, first, 1, "w-3", true, time.Minute, now); err != nil || j.Reason != "by test" {
			t.Errorf("a redelivered DISPATCHED job: %+v, %v, want its reason kept", j, err)
		}
	})
}

// A drop names the attempt whose reason it read: a dead letter at another
// attempt (revived and dead again meanwhile) stays in the queue.
func TestDropDeadLetterIsGuardedByTheAttempt(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, _ *redis.Client) {
		ctx := context.Background()
		id := create(t, st, store.NewJob{ID: newID(t), Tenant: newTenant(t), Topic: "job.echo", MaxAttempts: 1}, now)
		if _, err := st.Transition(ctx, id, store.Change{To: store.Failed, DeadLetter: true, Reason: "boom; " + store.DeadLetterNote}, now); err != nil {
			t.Fatal(err)
		}
		if ok, err := st.DropDeadLetter(ctx, id, 2, "boom; "+store.DeadLetterNote, now); err != nil || ok {
			t.Fatalf("drop at attempt 2 of a dead letter at attempt 1: %v, %v; want refused", ok, err)
		}
		if _, dead, err := st.DeadLetterAt(ctx, id); err != nil || !dead {
			t.Fatalf("after the refused drop: dead %v, %v; want it still listed", dead, err)
		}
		if ok, err := st.DropDeadLetter(ctx, id, 1, "boom; "+store.DeadLetterNote, now); err != nil || !ok {
			t.Fatalf("drop at its attempt: %v, %v", ok, err)
		}
		if j := get(t, st, id); j.Reason != "boom; dropped from the dead-letter queue" {
			t.Errorf("reason %q after the drop", j.Reason)
		}
	})
}
