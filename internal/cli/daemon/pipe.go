package daemon

import (
	"os/signal"
	"syscall"
)

// SurviveClosedOutput keeps a long-running command alive when its output
// is a pipe whose reader has gone: `cortexctl up | tee up.log`, where
// Ctrl-C stops tee as well. Go would otherwise kill the process with
// SIGPIPE at its next write to standard output or error (the "stopping"
// line, a log record), before it drained its jobs. With SIGPIPE ignored
// such a write fails, and the command goes on stopping cleanly.
func SurviveClosedOutput() { signal.Ignore(syscall.SIGPIPE) }
