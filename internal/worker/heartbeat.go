package worker

import (
	"bytes"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// loadavgPath is where Linux publishes the load averages.
var loadavgPath = "/proc/loadavg"

// cpuLoad is the host's 1-minute load average divided by its CPUs, or 0
// where it cannot be read (not Linux, no /proc).
func cpuLoad() float64 { return parseLoad(loadavgPath, runtime.NumCPU()) }

func parseLoad(path string, cpus int) float64 {
	b, err := os.ReadFile(path)
	if err != nil || cpus < 1 {
		return 0
	}
	first, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte(" "))
	load, err := strconv.ParseFloat(string(first), 64)
	if err != nil || load < 0 {
		return 0
	}
	return load / float64(cpus)
}

// kinds are the default capabilities: the topics without their "job."
// prefix (the plugins' names), sorted and without duplicates.
func kinds(topics []string) []string {
	out := make([]string, 0, len(topics))
	for _, t := range topics {
		out = append(out, strings.TrimPrefix(t, "job."))
	}
	slices.Sort(out)
	return slices.Compact(out)
}
