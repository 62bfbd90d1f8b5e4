package output

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSpinnerLine(t *testing.T) {
	if got := spinnerLine("⠋", "waiting for job 0193… RUNNING", 3200*time.Millisecond, 0); got != "⠋ waiting for job 0193… RUNNING 3.2s" {
		t.Errorf("line = %q", got)
	}
	if got := spinnerLine("⠋", "a\nb", 0, 0); got != "⠋ a b 0.0s" {
		t.Errorf("a line break was kept: %q", got)
	}
	got := spinnerLine("⠋", strings.Repeat("x", 100), time.Second, 20)
	if n := len([]rune(got)); n > 19 || !strings.Contains(got, "…") || !strings.HasSuffix(got, " 1.0s") {
		t.Errorf("line for 20 columns = %q (%d runes)", got, n)
	}
}

func TestSpinnerSilentWhenNotATerminal(t *testing.T) {
	var b bytes.Buffer
	s := StartSpinner(&b, "waiting")
	s.Update("still waiting")
	s.Stop()
	s.Stop()
	if b.Len() != 0 {
		t.Errorf("spinner wrote %q to a non-terminal", b.String())
	}
	var nilSpinner *Spinner
	nilSpinner.Update("x")
	nilSpinner.Stop()
}

func TestSpinnerSilentOnDumbTerminal(t *testing.T) {
	t.Setenv("TERM", "dumb")
	tty := &ttyBuffer{}
	s := StartSpinner(tty, "waiting")
	s.Stop()
	if tty.String() != "" {
		t.Errorf("spinner drew on TERM=dumb: %q", tty.String())
	}
}

func TestSpinnerOnTerminal(t *testing.T) {
	tty := &ttyBuffer{}
	var mu sync.Mutex
	clock := time.Unix(0, 0)
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(100 * time.Millisecond)
		return clock
	}
	s := startSpinner(tty, "waiting for job 0193", true, time.Millisecond, now)
	if !strings.Contains(tty.String(), "⠋ waiting for job 0193 ") {
		t.Fatalf("first frame not drawn at once: %q", tty.String())
	}
	s.Update("waiting for job 0193 RUNNING")
	if !strings.Contains(tty.String(), "waiting for job 0193 RUNNING") {
		t.Fatalf("Update did not redraw at once: %q", tty.String())
	}
	// Updates from other goroutines race with the ticker (run with -race).
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				s.Update("msg " + string(rune('a'+i)))
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(tty.String(), "⠙") {
		if time.Now().After(deadline) {
			t.Fatalf("the ticker never drew a second frame: %q", tty.String())
		}
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	s.Stop()
	select {
	case <-s.done:
	default:
		t.Fatal("the spinner's goroutine still runs after Stop")
	}
	out := tty.String()
	if !strings.HasSuffix(out, clearLine) {
		t.Errorf("Stop did not clear the line: %q", out[max(0, len(out)-40):])
	}
	s.Update("after stop")
	s.Stop()
	if tty.String() != out {
		t.Error("the spinner wrote after Stop")
	}
}

// A note written through the spinner lands on its own line above the
// spinner, which is drawn again below it; without a terminal the note is
// written as it is, and after Stop too.
func TestSpinnerWriteGoesAboveTheSpinner(t *testing.T) {
	tty := &ttyBuffer{}
	s := startSpinner(tty, "job 0193 RUNNING", true, time.Hour, func() time.Time { return time.Unix(0, 0) })
	if _, err := io.WriteString(s, "stream interrupted; reconnecting\n"); err != nil {
		t.Fatal(err)
	}
	got := tty.String()
	note := strings.Index(got, clearLine+"stream interrupted; reconnecting\n")
	if note < 0 || !strings.Contains(got[note:], "\n"+clearLine+"⠋ job 0193 RUNNING") {
		t.Fatalf("note not written on a cleared line with the spinner drawn again below it: %q", got)
	}
	s.Stop()
	_, _ = io.WriteString(s, "after stop\n")
	if !strings.HasSuffix(tty.String(), clearLine+"after stop\n") {
		t.Errorf("a note after Stop: %q", tty.String())
	}

	var plain strings.Builder
	p := StartSpinner(&plain, "job 0193 RUNNING")
	_, _ = io.WriteString(p, "stream interrupted; reconnecting\n")
	p.Stop()
	if plain.String() != "stream interrupted; reconnecting\n" {
		t.Errorf("without a terminal: %q, want only the note", plain.String())
	}
}
