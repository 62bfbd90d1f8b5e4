package coalesce_test

import (
	"slices"
	"sync"
	"testing"

	"github.com/cortex-os/core/internal/coalesce"
)

// recorder is a send function that holds each batch until released, and
// records the batches and the most sent at once.
type recorder struct {
	mu       sync.Mutex
	batches  [][]int
	inFlight int
	most     int
	release  chan struct{}
	started  chan struct{}
	sent     chan int
}

func newRecorder() *recorder {
	return &recorder{release: make(chan struct{}), started: make(chan struct{}, 1024), sent: make(chan int, 1024)}
}

func (r *recorder) send(batch []int) {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(batch))
	r.inFlight++
	r.most = max(r.most, r.inFlight)
	r.mu.Unlock()
	r.started <- struct{}{}
	<-r.release
	r.mu.Lock()
	r.inFlight--
	r.mu.Unlock()
	for _, v := range batch {
		r.sent <- v
	}
}

func all(n int) func([]int) int { return func(q []int) int { return min(len(q), n) } }

func TestIdleSendsAlone(t *testing.T) {
	r := newRecorder()
	close(r.release)
	b := coalesce.New(4, all(100), r.send)
	for i := range 3 {
		b.Add(i)
		<-r.started
	}
	if !slices.EqualFunc(r.batches, [][]int{{0}, {1}, {2}}, slices.Equal) {
		t.Errorf("batches %v, want each value alone", r.batches)
	}
}

// Values added in one call leave together even when the Batcher is idle,
// split only where take says.
func TestAddManyIdleSendsThemTogether(t *testing.T) {
	r := newRecorder()
	close(r.release)
	b := coalesce.New(4, all(4), r.send)
	b.Add(0, 1, 2, 3, 4, 5)
	for range 6 {
		<-r.sent
	}
	b.Add()
	b.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.EqualFunc(r.batches, [][]int{{0, 1, 2, 3}, {4, 5}}, slices.Equal) {
		t.Errorf("batches %v, want [0 1 2 3] then [4 5]", r.batches)
	}
}

func TestBusyBatchesWhatQueued(t *testing.T) {
	r := newRecorder()
	b := coalesce.New(2, all(3), r.send)
	// Two values take both slots; the next seven queue behind them.
	b.Add(0)
	<-r.started
	b.Add(1)
	<-r.started
	for i := 2; i < 9; i++ {
		b.Add(i)
	}
	if n := b.Queued(); n != 7 {
		t.Errorf("Queued() = %d with both slots busy, want 7", n)
	}
	close(r.release)
	for range 9 {
		<-r.sent
	}
	b.Add(9)
	<-r.sent

	r.mu.Lock()
	defer r.mu.Unlock()
	var sent []int
	for _, batch := range r.batches {
		if len(batch) > 3 {
			t.Errorf("batch %v is larger than take allows", batch)
		}
		sent = append(sent, batch...)
	}
	slices.Sort(sent)
	if !slices.Equal(sent, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Errorf("sent %v, want 0..9 once each", sent)
	}
	if len(r.batches) != 6 || len(r.batches[0]) != 1 || len(r.batches[1]) != 1 || len(r.batches[5]) != 1 {
		t.Errorf("batches %v, want 6: two lone ones, the seven queued in three, the last alone", r.batches)
	}
	if r.most > 2 {
		t.Errorf("%d batches in flight at once, want at most 2", r.most)
	}
}

func TestTakeIsClamped(t *testing.T) {
	for _, take := range []func([]int) int{func([]int) int { return 0 }, func(q []int) int { return len(q) + 5 }} {
		r := newRecorder()
		close(r.release)
		b := coalesce.New(1, take, r.send)
		b.Add(1)
		<-r.started
		if len(r.batches) != 1 || !slices.Equal(r.batches[0], []int{1}) {
			t.Errorf("batches %v, want [[1]]", r.batches)
		}
	}
}

// Wait returns once everything added has been sent.
func TestWaitReturnsWhenAllIsSent(t *testing.T) {
	var mu sync.Mutex
	var sent []int
	release := make(chan struct{})
	b := coalesce.New(1, func(q []int) int { return len(q) }, func(batch []int) {
		<-release
		mu.Lock()
		sent = append(sent, batch...)
		mu.Unlock()
	})
	for i := range 10 {
		b.Add(i)
	}
	close(release)
	b.Wait()
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sent, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("sent %v when Wait returned, want 0-9 in order", sent)
	}
}
