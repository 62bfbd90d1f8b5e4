package store_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/store"
)

// v7At is a UUIDv7 made at t.
func v7At(t testing.TB, at time.Time) string {
	t.Helper()
	u := uuid.Must(uuid.NewV7())
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(at.UnixMilli()))
	copy(u[:6], ms[2:])
	return u.String()
}

// index reads a tenant's index, oldest first.
func index(t *testing.T, rdb *redis.Client, tenant string) []string {
	t.Helper()
	var entries []string
	for _, key := range store.IndexKeys(tenant) {
		part, err := rdb.ZRange(context.Background(), key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, part...)
	}
	slices.Sort(entries)
	return entries
}

// pages lists q page by page and returns every job's id in order.
func pages(t *testing.T, st *store.Store, q store.Query) []string {
	t.Helper()
	var got []string
	for range 100 {
		jobs, next, err := st.List(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if q.Limit > 0 && len(jobs) > q.Limit {
			t.Fatalf("page of %d jobs, limit %d", len(jobs), q.Limit)
		}
		got = append(got, ids(jobs)...)
		if next == "" {
			return got
		}
		q.After = next
	}
	t.Fatalf("List never ran out of pages: %v", got)
	return nil
}

func TestListNewestFirstAndPages(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		tenant := newTenant(t)
		var created []string
		for range 7 {
			created = append(created, create(t, st, store.NewJob{Tenant: tenant, Input: "p"}, now))
		}
		newestFirst := slices.Clone(created)
		slices.Reverse(newestFirst)

		jobs, next, err := st.List(context.Background(), store.Query{Tenant: tenant})
		if err != nil || next != "" || !slices.Equal(ids(jobs), newestFirst) {
			t.Fatalf("List = %v, next %q, %v; want %v", ids(jobs), next, err, newestFirst)
		}
		if jobs[0].Tenant != tenant || jobs[0].State != store.Pending || jobs[0].PromptSize != 1 {
			t.Errorf("listed record: %+v", jobs[0])
		}
		for _, limit := range []int{1, 2, 3, 7, 8} {
			if got := pages(t, st, store.Query{Tenant: tenant, Limit: limit}); !slices.Equal(got, newestFirst) {
				t.Errorf("pages of %d: %v, want each job once, newest first: %v", limit, got, newestFirst)
			}
		}
		if jobs, next, err := st.List(context.Background(), store.Query{Tenant: newTenant(t)}); err != nil || len(jobs) != 0 || next != "" {
			t.Errorf("another tenant's List = %v, %q, %v; want nothing", ids(jobs), next, err)
		}
	})
}

func TestListFilters(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		tenant := newTenant(t)
		id := map[string]string{}
		for _, j := range []struct {
			name, topic string
			labels      map[string]string
			state       store.State
		}{
			{"echo-pending", "job.echo", map[string]string{"team": "a", "env": "prod"}, store.Pending},
			{"echo-denied", "job.echo", map[string]string{"team": "b"}, store.Denied},
			{"sleep-dispatched", "job.sleep", map[string]string{"team": "a"}, store.Dispatched},
			{"sys-denied", "sys.destroy", nil, store.Denied},
			{"jobx-pending", "jobx.other", map[string]string{"team": "a"}, store.Pending},
		} {
			id[j.name] = create(t, st, store.NewJob{Tenant: tenant, Topic: j.topic, Labels: j.labels}, now)
			if j.state != store.Pending {
				move(t, st, id[j.name], store.Change{To: j.state}, now)
			}
		}
		for _, tc := range []struct {
			name string
			q    store.Query
			want []string
		}{
			{"all", store.Query{}, []string{"jobx-pending", "sys-denied", "sleep-dispatched", "echo-denied", "echo-pending"}},
			{"state", store.Query{States: []store.State{store.Denied}}, []string{"sys-denied", "echo-denied"}},
			{"states", store.Query{States: []store.State{store.Pending, store.Dispatched}}, []string{"jobx-pending", "sleep-dispatched", "echo-pending"}},
			{"state none", store.Query{States: []store.State{store.Completed}}, nil},
			{"topic", store.Query{Topic: "job.echo"}, []string{"echo-denied", "echo-pending"}},
			{"topic prefix", store.Query{Topic: "job.*"}, []string{"sleep-dispatched", "echo-denied", "echo-pending"}},
			{"not a prefix", store.Query{Topic: "job.ec*"}, nil},
			{"label", store.Query{Labels: map[string]string{"team": "a"}}, []string{"jobx-pending", "sleep-dispatched", "echo-pending"}},
			{"labels", store.Query{Labels: map[string]string{"team": "a", "env": "prod"}}, []string{"echo-pending"}},
			{"label absent", store.Query{Labels: map[string]string{"env": ""}}, nil},
			{"all filters", store.Query{Topic: "job.*", States: []store.State{store.Pending}, Labels: map[string]string{"team": "a"}}, []string{"echo-pending"}},
		} {
			var want []string
			for _, name := range tc.want {
				want = append(want, id[name])
			}
			tc.q.Tenant = tenant
			jobs, next, err := st.List(context.Background(), tc.q)
			if err != nil || next != "" || !slices.Equal(ids(jobs), want) {
				t.Errorf("%s: List = %v, next %q, %v; want %v (%v)", tc.name, ids(jobs), next, err, want, tc.want)
			}
			tc.q.Limit = 1
			if got := pages(t, st, tc.q); !slices.Equal(got, want) {
				t.Errorf("%s: pages of 1 = %v, want %v", tc.name, got, want)
			}
		}
	})
}

func TestListSkipsAndRemovesExpiredJobs(t *testing.T) {
	for _, limit := range []int{0, 2} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
				ctx := context.Background()
				tenant := newTenant(t)
				a := create(t, st, store.NewJob{Tenant: tenant}, now)
				b := create(t, st, store.NewJob{Tenant: tenant}, now)
				c := create(t, st, store.NewJob{Tenant: tenant}, now)
				// The record of b expires, as its TTL would make it.
				if err := rdb.Del(ctx, store.JobKey(b)).Err(); err != nil {
					t.Fatal(err)
				}
				jobs, _, err := st.List(ctx, store.Query{Tenant: tenant, Limit: limit})
				if err != nil || !slices.Equal(ids(jobs), []string{c, a}) {
					t.Fatalf("List = %v, %v; want [%s %s]", ids(jobs), err, c, a)
				}
				if got := index(t, rdb, tenant); !slices.Equal(got, []string{a, c}) {
					t.Errorf("index after List = %v, want the expired job %s gone: [%s %s]", got, b, a, c)
				}
			})
		})
	}
}

func TestIndexTrimsEntriesOlderThanRetention(t *testing.T) {
	backends(t, func(t *testing.T, _ *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		st := store.New(rdb, store.Options{Retention: time.Hour})
		tenant := newTenant(t)
		wall := time.Now()
		// Each shard's index is trimmed on its own: keep the jobs in one.
		at := func(ago time.Duration) (string, time.Time) {
			return store.InKeyShard(v7At(t, wall.Add(-ago)), tenant, "one shard"), wall.Add(-ago)
		}

		var old []string
		for _, ago := range []time.Duration{5 * time.Hour, 4 * time.Hour} {
			id, when := at(ago)
			old = append(old, create(t, st, store.NewJob{ID: id, Tenant: tenant}, when))
		}
		if got := index(t, rdb, tenant); !slices.Equal(got, old) {
			t.Fatalf("index = %v, want both old jobs %v", got, old)
		}
		id, when := at(30 * time.Minute)
		recent := create(t, st, store.NewJob{ID: id, Tenant: tenant}, when)
		id, _ = at(0)
		fresh := create(t, st, store.NewJob{ID: id, Tenant: tenant}, wall)

		if got := index(t, rdb, tenant); !slices.Equal(got, []string{recent, fresh}) {
			t.Errorf("index = %v, want the jobs older than the retention trimmed: %v", got, []string{recent, fresh})
		}
		jobs, _, err := st.List(ctx, store.Query{Tenant: tenant})
		if err != nil || !slices.Equal(ids(jobs), []string{fresh, recent}) {
			t.Errorf("List = %v, %v; want [%s %s]", ids(jobs), err, fresh, recent)
		}
		// Trimming is the index's: the old records are the TTL's business.
		for _, id := range old {
			if _, err := st.Get(ctx, id); err != nil {
				t.Errorf("old job %s: %v", id, err)
			}
		}
	})
}

func TestQueryMatches(t *testing.T) {
	j := &store.Job{Topic: "job.echo.fast", State: store.Running, Labels: map[string]string{"k": "v"}}
	for _, tc := range []struct {
		q    store.Query
		want bool
	}{
		{store.Query{}, true},
		{store.Query{Topic: "job.*"}, true},
		{store.Query{Topic: "job.echo.*"}, true},
		{store.Query{Topic: "job.echo"}, false},
		{store.Query{Topic: "*"}, false},
		{store.Query{States: []store.State{store.Running, store.Pending}}, true},
		{store.Query{States: []store.State{store.Pending}}, false},
		{store.Query{Labels: map[string]string{"k": "v"}}, true},
		{store.Query{Labels: map[string]string{"k": "w"}}, false},
	} {
		if got := tc.q.Matches(j); got != tc.want {
			t.Errorf("%+v.Matches(%+v) = %v, want %v", tc.q, j, got, tc.want)
		}
	}
}

func TestCreateJobs(t *testing.T) {
	backends(t, func(t *testing.T, st *store.Store, rdb *redis.Client) {
		ctx := context.Background()
		tenant := newTenant(t)
		dup := store.NewJob{ID: store.InKeyShard(v7At(t, now), tenant, "k"), Tenant: tenant, Topic: "job.echo", Input: "same", IdempotencyKey: "k", Fingerprint: "f1"}
		if _, err := st.CreateJob(ctx, dup, now); err != nil {
			t.Fatal(err)
		}
		// Redis forgets its scripts on a restart: the batch loads it again.
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		jobs := []store.NewJob{
			{ID: v7At(t, now), Tenant: tenant, Topic: "job.echo", Input: "a"},
			{ID: store.InKeyShard(v7At(t, now), tenant, "k"), Tenant: tenant, Topic: "job.echo", Input: "same", IdempotencyKey: "k", Fingerprint: "f1"},
			{ID: store.InKeyShard(v7At(t, now), tenant, "k"), Tenant: tenant, Topic: "job.echo", Input: "other", IdempotencyKey: "k", Fingerprint: "f2"},
			{ID: v7At(t, now), Tenant: tenant, Topic: "job.echo", Input: "b"},
		}
		got := st.CreateJobs(ctx, jobs, now)
		if len(got) != 4 || got[0] != (store.Created{}) || got[3] != (store.Created{}) {
			t.Fatalf("CreateJobs = %+v", got)
		}
		if got[1].Existing != dup.ID || got[1].Err != nil {
			t.Errorf("same key and request: %+v, want the first job %s", got[1], dup.ID)
		}
		if got[2].Existing != dup.ID || !errors.Is(got[2].Err, store.ErrIdempotencyMismatch) {
			t.Errorf("same key, other request: %+v, want ErrIdempotencyMismatch naming %s", got[2], dup.ID)
		}
		for _, i := range []int{0, 3} {
			if j, err := st.Get(ctx, jobs[i].ID); err != nil || j.State != store.Pending {
				t.Errorf("job %d: %+v, %v", i, j, err)
			}
		}
		for _, i := range []int{1, 2} {
			if _, err := st.Get(ctx, jobs[i].ID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("deduplicated job %d was created: %v", i, err)
			}
		}
	})
}
