package registry_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/registry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func beat(id, pool string, active, maxParallel uint32, interval time.Duration) *cortexv1.BusPacket {
	hb := &cortexv1.Heartbeat{
		WorkerId: id, Pool: pool, ActiveJobs: active, MaxParallelJobs: maxParallel,
		Topics: []string{"job." + pool}, Capabilities: []string{pool}, Version: "v1.2.3",
		CpuLoad: 0.25, CompletedJobs: 7, FailedJobs: 1,
	}
	if interval > 0 {
		hb.HeartbeatInterval = durationpb.New(interval)
	}
	return &cortexv1.BusPacket{SenderId: id, Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: hb}}
}

func observe(t *testing.T, r *registry.Registry, p *cortexv1.BusPacket) {
	t.Helper()
	if err := r.Observe(p); err != nil {
		t.Fatalf("Observe: %v", err)
	}
}

func ids(s registry.Snapshot) []string {
	var out []string
	for _, w := range s.Workers {
		out = append(out, w.ID)
	}
	return out
}

func TestWorkerAppearsOnFirstBeatAndIsUpdated(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	if s := r.Snapshot(); len(s.Workers) != 0 || len(s.Pools) != 0 {
		t.Fatalf("empty registry lists %+v", s)
	}
	first := clock.Now()
	observe(t, r, beat("w-1", "echo", 1, 4, time.Second))
	s := r.Snapshot()
	if len(s.Workers) != 1 {
		t.Fatalf("after one beat: %v", ids(s))
	}
	w := s.Workers[0]
	if w.ID != "w-1" || w.Pool != "echo" || w.State != registry.Live || w.Active != 1 || w.MaxParallel != 4 ||
		w.CPULoad != 0.25 || !slices.Equal(w.Topics, []string{"job.echo"}) || !slices.Equal(w.Capabilities, []string{"echo"}) ||
		w.Version != "v1.2.3" || w.Completed != 7 || w.Failed != 1 || w.Sender != "w-1" || w.Interval != time.Second ||
		!w.FirstSeen.Equal(first) || !w.LastBeat.Equal(first) || w.Missed != 0 {
		t.Fatalf("worker %+v", w)
	}
	clock.Advance(time.Second)
	observe(t, r, beat("w-1", "echo", 3, 4, time.Second))
	w = r.Snapshot().Workers[0]
	if w.Active != 3 || !w.FirstSeen.Equal(first) || !w.LastBeat.Equal(clock.Now()) {
		t.Fatalf("after a second beat: %+v", w)
	}
	if w.Free() != 1 {
		t.Errorf("Free = %d, want 1", w.Free())
	}
}

func TestWorkerExpiresAfterThreeMissedBeats(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	observe(t, r, beat("fast", "echo", 0, 4, time.Second))
	observe(t, r, beat("slow", "echo", 0, 4, 10*time.Second))
	observe(t, r, beat("old", "echo", 0, 4, 0)) // no interval: DefaultInterval

	clock.Advance(2*time.Second + 500*time.Millisecond) // two beats missed
	s := r.Snapshot()
	if got := ids(s); !slices.Equal(got, []string{"fast", "old", "slow"}) {
		t.Fatalf("after two missed beats: %v, want all three", got)
	}
	if s.Workers[0].Missed != 2 {
		t.Errorf("fast missed %d beats, want 2", s.Workers[0].Missed)
	}
	clock.Advance(500 * time.Millisecond) // exactly three intervals: the third beat may be on its way
	if got := ids(r.Snapshot()); !slices.Contains(got, "fast") {
		t.Fatalf("at 3 intervals: %v, want fast still listed", got)
	}
	clock.Advance(time.Millisecond)
	if got := ids(r.Snapshot()); !slices.Equal(got, []string{"old", "slow"}) {
		t.Fatalf("after three missed beats: %v, want fast gone", got)
	}
	clock.Advance(registry.MissedBeats*registry.DefaultInterval - 3*time.Second)
	if got := ids(r.Snapshot()); !slices.Equal(got, []string{"slow"}) {
		t.Fatalf("after 3 × the default interval: %v, want old gone", got)
	}
	clock.Advance(30 * time.Second)
	if s := r.Snapshot(); len(s.Workers) != 0 || len(s.Pools) != 0 {
		t.Fatalf("after 30s: %+v, want nothing", s)
	}
	// A worker that comes back is new again.
	observe(t, r, beat("fast", "echo", 0, 4, time.Second))
	if s := r.Snapshot(); len(s.Workers) != 1 || !s.Workers[0].FirstSeen.Equal(clock.Now()) {
		t.Fatalf("after it came back: %+v", s.Workers)
	}
}

func TestBeatsKeepAWorkerListed(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	for range 10 {
		observe(t, r, beat("w-1", "echo", 0, 4, time.Second))
		clock.Advance(2900 * time.Millisecond)
		if got := ids(r.Snapshot()); len(got) != 1 {
			t.Fatalf("worker gone although it beat 2.9s ago: %v", got)
		}
	}
}

func TestDrainingWorkerShows(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	observe(t, r, beat("w-1", "echo", 2, 4, time.Second))
	observe(t, r, beat("w-2", "echo", 1, 4, time.Second))
	p := beat("w-1", "echo", 2, 4, time.Second)
	p.GetHeartbeat().Draining = true
	observe(t, r, p)
	s := r.Snapshot()
	if s.Workers[0].ID != "w-1" || s.Workers[0].State != registry.Draining || s.Workers[0].Free() != 0 {
		t.Fatalf("w-1 after a draining beat: %+v", s.Workers[0])
	}
	pool, ok := s.Pool("echo")
	if !ok || pool.Workers != 1 || pool.Draining != 1 || pool.Active != 1 || pool.Capacity != 4 || pool.Free() != 3 {
		t.Fatalf("pool %+v, want one live worker of 4 with 1 active and one draining", pool)
	}
	// A draining worker leaves like any other.
	clock.Advance(3*time.Second + time.Millisecond)
	if got := ids(r.Snapshot()); len(got) != 0 {
		t.Fatalf("after 3 missed beats: %v", got)
	}
}

func TestMalformedAndForeignPacketsAreIgnored(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	badID := beat("W 1", "echo", 0, 4, time.Second)
	badPool := beat("w-1", "echo.*", 0, 4, time.Second)
	noPool := beat("w-1", "", 0, 4, time.Second)
	for name, p := range map[string]*cortexv1.BusPacket{
		"no payload":    {},
		"wrong payload": {Payload: &cortexv1.BusPacket_JobCancel{JobCancel: &cortexv1.JobCancel{JobId: "j"}}},
		"empty beat":    {Payload: &cortexv1.BusPacket_Heartbeat{}},
		"bad worker id": badID,
		"wildcard pool": badPool,
		"no pool":       noPool,
		"nil packet":    nil,
	} {
		if err := r.Observe(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := r.Observe(badPool); !errors.Is(err, registry.ErrNotHeartbeat) {
		t.Errorf("bad pool: %v, want ErrNotHeartbeat", err)
	}
	if s := r.Snapshot(); len(s.Workers) != 0 {
		t.Fatalf("ignored packets listed %v", ids(s))
	}
}

func TestHugeHeartbeatIsBounded(t *testing.T) {
	r := registry.New(registry.Options{Now: newClock().Now})
	p := beat("w-1", "echo", 0, 4, time.Hour)
	hb := p.GetHeartbeat()
	for i := range 1000 {
		hb.Capabilities = append(hb.Capabilities, string(rune('a'+i%26))+string(make([]byte, i)))
	}
	hb.CpuLoad = -3
	observe(t, r, p)
	w := r.Snapshot().Workers[0]
	if len(w.Capabilities) > 256 || w.CPULoad != 0 || w.Interval != registry.MaxInterval {
		t.Fatalf("capabilities %d, load %v, interval %s", len(w.Capabilities), w.CPULoad, w.Interval)
	}
	for _, c := range w.Capabilities {
		if len(c) > 200 {
			t.Fatalf("capability of %d bytes kept", len(c))
		}
	}
}

func TestMaxWorkers(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now, MaxWorkers: 2, Log: slog.New(slog.DiscardHandler)})
	observe(t, r, beat("w-1", "echo", 0, 4, time.Second))
	observe(t, r, beat("w-2", "echo", 0, 4, time.Second))
	if err := r.Observe(beat("w-3", "echo", 0, 4, time.Second)); err == nil {
		t.Fatal("a third worker was taken with MaxWorkers 2")
	}
	observe(t, r, beat("w-2", "echo", 1, 4, time.Second)) // known workers still update
	clock.Advance(4 * time.Second)
	observe(t, r, beat("w-3", "echo", 0, 4, time.Second)) // room again once the others expired
	if got := ids(r.Snapshot()); !slices.Equal(got, []string{"w-3"}) {
		t.Fatalf("workers %v", got)
	}
}

func TestPoolsAddUpTheirWorkers(t *testing.T) {
	r := registry.New(registry.Options{Now: newClock().Now})
	a1 := beat("a-1", "alpha", 2, 4, time.Second)
	a1.GetHeartbeat().Topics = []string{"job.x", "job.y"}
	a2 := beat("a-2", "alpha", 3, 8, time.Second)
	a2.GetHeartbeat().Topics = []string{"job.y", "job.z"}
	for _, p := range []*cortexv1.BusPacket{a2, beat("b-1", "beta", 1, 2, time.Second), a1} {
		observe(t, r, p)
	}
	s := r.Snapshot()
	if got := ids(s); !slices.Equal(got, []string{"a-1", "a-2", "b-1"}) {
		t.Fatalf("workers %v, want sorted by pool then id", got)
	}
	if len(s.Pools) != 2 {
		t.Fatalf("pools %+v", s.Pools)
	}
	a, b := s.Pools[0], s.Pools[1]
	if a.Name != "alpha" || a.Workers != 2 || a.Active != 5 || a.Capacity != 12 || a.Free() != 7 ||
		!slices.Equal(a.Topics, []string{"job.x", "job.y", "job.z"}) {
		t.Errorf("alpha %+v", a)
	}
	if b.Name != "beta" || b.Workers != 1 || b.Active != 1 || b.Capacity != 2 || !slices.Equal(b.Topics, []string{"job.beta"}) {
		t.Errorf("beta %+v", b)
	}
	if _, ok := s.Pool("gamma"); ok {
		t.Error("Pool(gamma) found a pool without workers")
	}
	// The snapshot is a copy.
	s.Workers[0].Topics[0] = "changed"
	if r.Snapshot().Workers[0].Topics[0] != "job.x" {
		t.Error("changing a snapshot changed the registry")
	}
}

func TestDispatchedJobsCountUntilTheNextBeat(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	observe(t, r, beat("w-1", "echo", 0, 4, time.Second))
	observe(t, r, beat("w-2", "echo", 0, 4, time.Second))
	clock.Advance(100 * time.Millisecond)
	for range 3 {
		r.NoteDispatched("echo")
	}
	clock.Advance(100 * time.Millisecond)
	r.NoteDispatched("echo")
	r.NoteDispatched("other") // a pool without workers
	s := r.Snapshot()
	pool, _ := s.Pool("echo")
	if pool.Unreported != 4 || s.Workers[0].Unreported != 2 || s.Workers[1].Unreported != 2 || pool.Free() != 4 {
		t.Fatalf("after 4 dispatches: pool %+v, workers %+v", pool, s.Workers)
	}
	// w-1's beat reports what it received; w-2's share is still unknown.
	clock.Advance(100 * time.Millisecond)
	observe(t, r, beat("w-1", "echo", 2, 4, time.Second))
	r.NoteDispatched("echo")
	s = r.Snapshot()
	pool, _ = s.Pool("echo")
	// w-1: 1 dispatch since its beat / 2 workers = 0.5 → 1; w-2: 5 / 2 = 2.5 → 3; pool 3.
	if s.Workers[0].Unreported != 1 || s.Workers[1].Unreported != 3 || pool.Unreported != 3 || pool.Active != 2 {
		t.Fatalf("after w-1 beat: pool %+v, workers %+v", pool, s.Workers)
	}
	clock.Advance(100 * time.Millisecond)
	observe(t, r, beat("w-1", "echo", 2, 4, time.Second))
	observe(t, r, beat("w-2", "echo", 3, 4, time.Second))
	s = r.Snapshot()
	pool, _ = s.Pool("echo")
	if pool.Unreported != 0 || pool.Active != 5 || pool.Free() != 3 {
		t.Fatalf("after both beat: pool %+v", pool)
	}
}

func TestStartFeedsHeartbeatsFromTheBus(t *testing.T) {
	url := bustest.StartServer(t)
	log := slog.New(slog.DiscardHandler)
	conn, err := bus.Connect(url, "registry", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	other, err := bus.Connect(url, "worker", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	r := registry.New(registry.Options{})
	ctx := context.Background()
	if err := r.Start(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Garbage and a packet of the wrong kind are dropped and counted.
	if err := other.NATS().Publish(bus.HeartbeatSubject("x"), []byte("not a packet")); err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(bus.HeartbeatSubject("x"), &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_JobCancel{JobCancel: &cortexv1.JobCancel{JobId: "j"}}}); err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(bus.HeartbeatSubject("w-1"), beat("w-1", "echo", 1, 2, time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := other.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(r.Snapshot().Workers) == 0 || conn.Dropped() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: workers %v, dropped %d", ids(r.Snapshot()), conn.Dropped())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if w := r.Snapshot().Workers[0]; w.ID != "w-1" || w.Sender != "worker" {
		t.Fatalf("worker %+v", w)
	}
}

// Capacity counts the slots of a pool's live workers only (not a draining
// one, not another pool's, not one that missed three beats), and names the
// smallest of them.
func TestCapacityCountsLiveWorkersOfThePool(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	if slots, smallest, live := r.Capacity("echo"); slots != 0 || smallest != 0 || live {
		t.Fatalf("empty registry: %d slots (smallest worker %d), live %v", slots, smallest, live)
	}
	observe(t, r, beat("w-1", "echo", 2, 4, time.Second))
	observe(t, r, beat("w-2", "echo", 0, 8, 2*time.Second))
	observe(t, r, beat("w-3", "gpu", 0, 16, time.Second))
	drain := beat("w-4", "echo", 0, 32, time.Second)
	drain.GetHeartbeat().Draining = true
	observe(t, r, drain)
	if slots, smallest, live := r.Capacity("echo"); slots != 12 || smallest != 4 || !live {
		t.Fatalf("echo: %d slots (smallest worker %d), live %v; want 12 from w-1 and w-2, the smallest 4", slots, smallest, live)
	}
	clock.Advance(3*time.Second + time.Millisecond)
	if slots, smallest, live := r.Capacity("echo"); slots != 8 || smallest != 8 || !live {
		t.Fatalf("echo after w-1 missed three beats: %d slots (smallest worker %d), live %v; want 8", slots, smallest, live)
	}
	if slots, _, live := r.Capacity("gpu"); slots != 0 || live {
		t.Fatalf("gpu after its worker expired: %d slots, live %v", slots, live)
	}
}

// Draining counts a pool's draining workers only (not a live one, not
// another pool's, not one that missed three beats).
func TestDrainingCountsDrainingWorkersOfThePool(t *testing.T) {
	clock := newClock()
	r := registry.New(registry.Options{Now: clock.Now})
	draining := func(id, pool string, interval time.Duration) *cortexv1.BusPacket {
		p := beat(id, pool, 0, 4, interval)
		p.GetHeartbeat().Draining = true
		return p
	}
	observe(t, r, beat("w-live", "echo", 0, 4, 10*time.Second))
	observe(t, r, draining("w-1", "echo", time.Second))
	observe(t, r, draining("w-2", "echo", 10*time.Second))
	observe(t, r, draining("w-3", "gpu", 10*time.Second))
	if n := r.Draining("echo"); n != 2 {
		t.Fatalf("echo: %d draining, want 2 (w-1 and w-2)", n)
	}
	clock.Advance(3*time.Second + time.Millisecond)
	if n := r.Draining("echo"); n != 1 {
		t.Fatalf("echo after w-1 missed three beats: %d draining, want 1", n)
	}
	if n := r.Draining("ghost"); n != 0 {
		t.Fatalf("a pool without workers: %d draining", n)
	}
}
