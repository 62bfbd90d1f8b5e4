package cli

import (
	"fmt"
	"io"
	"os"
	"runtime/pprof"
)

// profileEnv names a file to write a CPU profile of the whole command to
// (go tool pprof reads it): what a daemon spends its CPU on, measured
// where it runs, for the performance work of docs/OPERATIONS.md.
const profileEnv = "CORTEX_CPUPROFILE"

// startProfile starts the CPU profile profileEnv asks for, if any, and
// returns what stops it and writes it out.
func startProfile(stderr io.Writer) func() {
	path := os.Getenv(profileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path) //nolint:gosec // the operator names the file
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "Warning: %s: no CPU profile: %v\n", profileEnv, err)
		if f != nil {
			_ = f.Close()
		}
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "Warning: %s: %v\n", profileEnv, err)
		}
	}
}
