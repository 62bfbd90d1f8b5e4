package daemon

import (
	"os"
	"runtime/debug"
)

// GCPercent is the garbage collector's target (GOGC) of the daemons, and
// of up on a remote Redis, unless GOGC is set. Their live heap is small
// (connections, queues, the jobs in flight: tens of MB), and the job path
// allocates per message, so collecting when the heap has grown fivefold
// rather than twofold costs little memory and saves CPU: under cortexctl
// bench the stack did 15-20% more jobs a second (docs/OPERATIONS.md,
// "Profiling a component"). up on the embedded Redis keeps Go's default:
// its heap holds every job.
const GCPercent = 400

// TuneGC sets GCPercent unless the environment sets GOGC.
func TuneGC() {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(GCPercent)
	}
}
