package bench_test

import (
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/bench"
)

// The report says how the jobs that did not complete ended.
func TestReportSaysHowJobsEnded(t *testing.T) {
	r := &bench.Report{Jobs: 10, Completed: 7, NotDone: 3, Others: map[string]int{"DENIED": 2, "FAILED": 1},
		Elapsed: time.Second, Latencies: []time.Duration{time.Millisecond}}
	var out strings.Builder
	r.Print(&out)
	for _, want := range []string{"10 (7 completed, 3 did not complete)", "not done    2 DENIED, 1 FAILED (why: cortexctl jobs list --state STATE -o wide)", "throughput  10 jobs/s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
