package scheduler

import (
	"testing"
	"time"
)

// TestBackoffDoublesWithJitterUpToTheCap: retry n waits base·2^(n-1),
// capped, less up to half of it.
func TestBackoffDoublesWithJitterUpToTheCap(t *testing.T) {
	base, most := 100*time.Millisecond, time.Second
	for attempt, full := range map[uint32]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 30: time.Second} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := backoff(attempt, base, most)
			if d < full/2 || d > full {
				t.Fatalf("attempt %d: backoff %s, want within [%s, %s]", attempt, d, full/2, full)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("attempt %d: %d distinct backoffs in 200, want jitter", attempt, len(seen))
		}
	}
}
