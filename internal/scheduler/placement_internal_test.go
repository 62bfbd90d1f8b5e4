package scheduler

import (
	"testing"
	"time"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/store"
)

// TestEndedByEvent: an event ends an attempt when the job is final at that
// attempt or a later one, or back to PENDING (or awaiting approval) at a
// later one; an old final event (the job revived from the dead-letter
// queue since) ends nothing.
func TestEndedByEvent(t *testing.T) {
	for _, c := range []struct {
		state   store.State
		at      uint32
		attempt uint32
		want    bool
	}{
		{store.Cancelled, 2, 2, true},
		{store.Failed, 3, 2, true},
		{store.Failed, 1, 2, false},
		{store.Pending, 2, 2, false},
		{store.Pending, 3, 2, true},
		{store.AwaitingApproval, 3, 2, true},
		{store.Dispatched, 2, 2, false},
	} {
		j := bus.EventHead{JobID: "j", State: c.state.Proto(), Attempt: c.at}
		if got := ended(j, c.attempt); got != c.want {
			t.Errorf("%s at attempt %d ends attempt %d: %v, want %v", c.state, c.at, c.attempt, got, c.want)
		}
	}
}

// TestPeerHeadsHoldUntilTheyExpire: the floor a pool's releases keep to is
// the highest head another scheduler holds for it, while that holds; a
// scheduler that went quiet holds nobody back.
func TestPeerHeadsHoldUntilTheyExpire(t *testing.T) {
	now := time.Now()
	pl := newPlacement(nil, time.Minute)
	pl.peers["scheduler-a"] = peerHeads{pools: map[string]int32{"echo": 5, "gpu": 9}, until: now.Add(time.Second)}
	pl.peers["scheduler-b"] = peerHeads{pools: map[string]int32{"echo": 7}, until: now.Add(-time.Millisecond)}
	for pool, want := range map[string]int32{"echo": 5, "gpu": 9, "other": 0} {
		if got := pl.peerTopLocked(pool, now); got != want {
			t.Errorf("floor of %s: %d, want %d", pool, got, want)
		}
	}
	if got := pl.peerTopLocked("gpu", now.Add(time.Second)); got != 0 {
		t.Errorf("floor of gpu once its head expired: %d, want 0", got)
	}
}

// TestIdleReasonNamesDrainingWorkers: a pool whose workers all drain says
// so, in the singular or the plural; one without any says none beats.
func TestIdleReasonNamesDrainingWorkers(t *testing.T) {
	for draining, want := range map[int]string{
		0: "waiting for a live worker in pool echo (none has sent a heartbeat in the last 9s)",
		1: "waiting for a worker in pool echo: its 1 live worker is draining and takes no new jobs",
		3: "waiting for a worker in pool echo: its 3 live workers are draining and take no new jobs",
	} {
		if got := idleReason("echo", draining); got != want {
			t.Errorf("%d draining: %q, want %q", draining, got, want)
		}
	}
}
