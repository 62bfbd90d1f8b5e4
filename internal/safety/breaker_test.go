package safety

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := breaker{threshold: 3, coolDown: time.Second, now: func() time.Time { return now }}
	for i := range 3 {
		if _, ok := b.allow(); !ok {
			t.Fatalf("closed breaker refused check %d", i)
		}
		if got, want := b.record("timeout "+string(rune('a'+i))), map[bool]change{true: opened, false: kept}[i == 2]; got != want {
			t.Fatalf("failure %d: %v, want %v", i+1, got, want)
		}
	}
	if got := b.lastFailure(); got != "timeout c" {
		t.Fatalf("last failure %q, want the third one's reason", got)
	}
	if wait, ok := b.allow(); ok || wait != time.Second {
		t.Fatalf("after 3 failures: allow = %v, %v; want open for 1s", wait, ok)
	}
	now = now.Add(time.Second)
	if _, ok := b.allow(); !ok {
		t.Fatal("after the cool-down the probe was refused")
	}
	if _, ok := b.allow(); ok {
		t.Fatal("a second check went through while the probe was out")
	}
	if got := b.record("still down"); got != kept {
		t.Fatalf("a failed probe: %v, want the breaker kept open (not opened again)", got)
	}
	if _, ok := b.allow(); ok {
		t.Fatal("a failed probe did not reopen the breaker")
	}
	now = now.Add(time.Second)
	if _, ok := b.allow(); !ok {
		t.Fatal("second probe refused")
	}
	if got := b.record(""); got != closed {
		t.Fatalf("a good probe: %v, want closed", got)
	}
	for i := range 5 {
		if _, ok := b.allow(); !ok {
			t.Fatalf("after a good probe, check %d refused", i)
		}
	}
}
