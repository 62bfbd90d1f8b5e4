package worker

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// goroutineID is the id the runtime gives the calling goroutine.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := bytes.Cut(bytes.TrimPrefix(buf, []byte("goroutine ")), []byte(" "))
	return string(id)
}

// A job's runner waits for the next job, which then runs on the same
// goroutine (the stack it grew), and returns once the pull loop has ended.
func TestRunnerWaitsForTheNextJobUntilThePullEnds(t *testing.T) {
	w := &Worker{idle: make(chan func()), pulled: make(chan struct{})}
	before := runtime.NumGoroutine()
	ran := make(chan string)
	job := func() { ran <- goroutineID() }
	w.runJob(job)
	first := <-ran
	select {
	case w.idle <- job:
	case <-time.After(5 * time.Second):
		t.Fatal("no runner waited for a next job within 5s")
	}
	if second := <-ran; second != first {
		t.Errorf("the next job ran on goroutine %s, want its runner's, %s", second, first)
	}
	close(w.pulled)
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 5s after the pull loop ended, %d before the first job: the runner did not return", runtime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
