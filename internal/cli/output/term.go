package output

import (
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// A TTY is a writer that says itself whether it is a terminal. Wrappers
// of os.Stdout and fakes in tests implement it to make the terminal paths
// (colour, spinner) reachable; other writers that are not an *os.File are
// never terminals.
type TTY interface {
	io.Writer
	IsTerminal() bool
}

// IsTerminal reports whether w is a terminal: a TTY that says so, or an
// *os.File open on a terminal.
func IsTerminal(w io.Writer) bool {
	switch t := w.(type) {
	case TTY:
		return t.IsTerminal()
	case *os.File:
		return term.IsTerminal(int(t.Fd()))
	}
	return false
}

// termWidth is w's width in columns, or 0 when unknown.
func termWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil {
			return cols
		}
	}
	return 0
}

// dumbTerminal reports TERM=dumb: no colours, no cursor movement.
func dumbTerminal() bool { return os.Getenv("TERM") == "dumb" }

// ColorEnabled reports whether w gets ANSI colours: w is a terminal,
// NO_COLOR is unset or empty (https://no-color.org) and TERM is not
// "dumb".
func ColorEnabled(w io.Writer) bool {
	return IsTerminal(w) && os.Getenv("NO_COLOR") == "" && !dumbTerminal()
}

// ANSI SGR sequences.
const (
	reset   = "\x1b[0m"
	red     = "\x1b[31m"
	boldRed = "\x1b[1;31m"
	green   = "\x1b[32m"
	yellow  = "\x1b[33m"
	cyan    = "\x1b[36m"
	grey    = "\x1b[90m"
)

// stateColor is the colour of a job state, named with or without its
// JOB_STATE_ prefix: green done, red failed, bold red denied by policy,
// grey cancelled, cyan running, yellow waiting.
func stateColor(state string) string {
	switch strings.TrimPrefix(strings.ToUpper(state), "JOB_STATE_") {
	case "COMPLETED":
		return green
	case "FAILED", "TIMEOUT":
		return red
	case "DENIED":
		return boldRed
	case "CANCELLED", "CANCELED":
		return grey
	case "RUNNING", "DISPATCHED":
		return cyan
	case "PENDING", "SCHEDULED", "WAITING_APPROVAL":
		return yellow
	}
	return ""
}

// ColorizeState returns state in its colour when on is true; unknown
// states and on == false return it unchanged.
func ColorizeState(state string, on bool) string {
	c := stateColor(state)
	if !on || c == "" {
		return state
	}
	return c + state + reset
}

// Colorize returns a job state in its colour when p.Color is on.
func (p *Printer) Colorize(state string) string { return ColorizeState(state, p.Color) }
