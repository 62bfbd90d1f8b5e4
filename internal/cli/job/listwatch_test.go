package job

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// listJob is a job as jobs list shows it, with a real job id and a fixed
// creation time.
func listJob(id, topic string, state cortexv1.JobState, created time.Time) *cortexv1.Job {
	return &cortexv1.Job{JobId: id, Topic: topic, State: state, MaxAttempts: 3, Attempt: 1, CreatedAt: timestamppb.New(created)}
}

// columnStarts returns where the cells of a table line start: at the
// start of the line and after each gap of three or more spaces.
func columnStarts(line string) []int {
	var starts []int
	for i := range len(line) {
		if line[i] != ' ' && (i == 0 || i >= 3 && line[i-3:i] == "   ") {
			starts = append(starts, i)
		}
	}
	return starts
}

// wantAligned fails the test unless every line of the table out starts its
// columns where the header does.
func wantAligned(t *testing.T, out string, rows int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != rows+1 {
		t.Fatalf("%d lines, want a header and %d rows:\n%s", len(lines), rows, out)
	}
	want := columnStarts(lines[0])
	for _, l := range lines[1:] {
		if got := columnStarts(l); !equalInts(got, want) {
			t.Errorf("row columns start at %v, the header's at %v:\n%s", got, want, out)
			return
		}
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The rows jobs list --watch prints for changes line up under the table it
// printed first, even when their states or ages are longer than any in it
// (a DISPATCHED job after a table of COMPLETED ones), and under the bare
// header when no job matched at first.
func TestListWatchRowsLineUpWithTheTable(t *testing.T) {
	now := time.Now()
	first := []*cortexv1.Job{
		listJob("0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1e", "job.echo", completed, now.Add(-3*time.Minute)),
		listJob("0193c2f4-5b6e-7c3a-9d1e-2f4a6b8c0d1f", "job.echo", completed, now.Add(-2*time.Minute)),
	}
	events := []*cortexv1.StreamEventsResponse{
		jobEvent(listJob("0193c2f4-6000-7c3a-9d1e-2f4a6b8c0d20", "job.sleep", cortexv1.JobState_JOB_STATE_DISPATCHED, now)),
		jobEvent(listJob("0193c2f4-6000-7c3a-9d1e-2f4a6b8c0d21", "job.chat.completion", cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL, now.Add(-50*time.Hour))),
		jobEvent(listJob("0193c2f4-6000-7c3a-9d1e-2f4a6b8c0d20", "job.sleep", cortexv1.JobState_JOB_STATE_CANCELLED, now)),
	}
	newList := func(f *cmdutil.Factory) *cobra.Command { return NewCmdList(f, nil) }
	for name, list := range map[string][]*cortexv1.Job{"after a table": first, "after no job": nil} {
		for _, format := range []string{"table", "wide"} {
			t.Run(name+"/"+format, func(t *testing.T) {
				url := serve(t, &fakeGateway{list: list, events: events})
				out, _, err := run(t, url, newList, "--watch", "-o", format)
				if connect.CodeOf(err) != connect.CodeAborted {
					t.Fatalf("jobs list --watch: %v", err)
				}
				wantAligned(t, out, len(list)+len(events))
			})
		}
	}
}
