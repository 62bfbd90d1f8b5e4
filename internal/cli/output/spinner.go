package output

import (
	"io"
	"strings"
	"sync"
	"time"
)

// spinnerFrames are drawn in turn, one per tick.
var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// clearLine returns the cursor to the start of the line and erases it.
const clearLine = "\r\x1b[K"

// Spinner shows progress on stderr: a spinning frame, a message and the
// time since it started ("⠋ waiting for job 0193… RUNNING 3.2s"), redrawn
// about ten times a second. On a writer that is not a terminal (or when
// TERM=dumb) it writes nothing at all, so piped stderr stays clean. Its
// methods are safe to call from several goroutines; a nil *Spinner does
// nothing.
type Spinner struct {
	w     io.Writer
	start time.Time
	now   func() time.Time
	width int // terminal columns; 0 if unknown

	mu    sync.Mutex
	msg   string
	frame int

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// StartSpinner starts a spinner on w showing msg (plain text: it is
// shortened to fit the terminal) and returns it; call Stop before writing
// anything else to w.
func StartSpinner(w io.Writer, msg string) *Spinner {
	return startSpinner(w, msg, IsTerminal(w) && !dumbTerminal(), 100*time.Millisecond, time.Now)
}

func startSpinner(w io.Writer, msg string, on bool, every time.Duration, now func() time.Time) *Spinner {
	s := &Spinner{w: w, msg: msg, now: now, start: now()}
	if !on {
		return s
	}
	s.width = termWidth(w)
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	s.mu.Lock()
	s.draw()
	s.mu.Unlock()
	go s.run(every)
	return s
}

func (s *Spinner) run(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			s.frame = (s.frame + 1) % len(spinnerFrames)
			s.draw()
			s.mu.Unlock()
		}
	}
}

// active reports whether the spinner draws; s.stop is set only then.
func (s *Spinner) active() bool { return s != nil && s.stop != nil }

// Update replaces the message and redraws at once.
func (s *Spinner) Update(msg string) {
	if !s.active() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return // stopped: the line is cleared and stays so
	default:
	}
	s.msg = msg
	s.draw()
}

// Write prints p (whole lines) on the spinner's writer above the spinner:
// it clears the spinner's line, writes p and draws the spinner again
// below it. A spinner that does not draw, or has stopped, writes p as it
// is; a nil one writes nothing. It makes the Spinner an io.Writer for the
// notes of whoever runs under it ("stream interrupted ...").
func (s *Spinner) Write(p []byte) (int, error) {
	if s == nil {
		return len(p), nil
	}
	if !s.active() {
		return s.w.Write(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
		return s.w.Write(p)
	default:
	}
	if _, err := io.WriteString(s.w, clearLine); err != nil {
		return 0, err
	}
	n, err := s.w.Write(p)
	if err == nil {
		s.draw()
	}
	return n, err
}

// Stop ends the spinner and clears its line; when it returns, the
// spinner's goroutine has ended and nothing more is written. Calling it
// again does nothing.
func (s *Spinner) Stop() {
	if !s.active() {
		return
	}
	s.stopOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.mu.Lock()
		defer s.mu.Unlock()
		_, _ = io.WriteString(s.w, clearLine)
	})
}

// draw writes the current line; s.mu is held.
func (s *Spinner) draw() {
	_, _ = io.WriteString(s.w, clearLine+spinnerLine(spinnerFrames[s.frame], s.msg, s.now().Sub(s.start), s.width))
}

// spinnerLine is one frame: "⠋ msg 3.2s", with msg shortened so the line
// fits in width columns (when width is known) and does not wrap, since a
// wrapped line cannot be cleared.
func spinnerLine(frame, msg string, elapsed time.Duration, width int) string {
	msg = strings.Join(strings.Fields(msg), " ")
	tail := " " + Elapsed(elapsed)
	if width > 0 {
		room := width - 1 - len([]rune(frame)) - 1 - len(tail)
		msg = Truncate(msg, max(room, 0))
	}
	if msg == "" {
		return frame + tail
	}
	return frame + " " + msg + tail
}
