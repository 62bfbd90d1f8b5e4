package job

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// dlqGateway answers ListDeadLetters from a queue of dead letters, in
// pages of at most maxDLQPage as the gateway does (a page size above it is
// refused, as the gateway refuses it), and records the page sizes asked.
type dlqGateway struct {
	cortexv1connect.UnimplementedGatewayServiceHandler
	dead  []*cortexv1.DeadLetter
	sizes []uint32
}

func (g *dlqGateway) ListDeadLetters(_ context.Context, req *cortexv1.ListDeadLettersRequest) (*cortexv1.ListDeadLettersResponse, error) {
	size := int(req.GetPageSize())
	if size > maxDLQPage {
		return nil, connect.NewError(connect.CodeInvalidArgument, "page_size above 500")
	}
	g.sizes = append(g.sizes, req.GetPageSize())
	if size == 0 {
		size = 50
	}
	from := 0
	if tok := req.GetPageToken(); tok != "" {
		from, _ = strconv.Atoi(tok)
	}
	to := min(from+size, len(g.dead))
	res := &cortexv1.ListDeadLettersResponse{DeadLetters: g.dead[from:to]}
	if to < len(g.dead) {
		res.NextPageToken = strconv.Itoa(to)
	}
	return res, nil
}

// deadLetters is a queue of n dead letters, dead-0 to dead-<n-1>.
func deadLetters(n int) []*cortexv1.DeadLetter {
	out := make([]*cortexv1.DeadLetter, n)
	for i := range out {
		out[i] = &cortexv1.DeadLetter{Job: &cortexv1.Job{JobId: fmt.Sprintf("dead-%d", i), Topic: "job.sleep", State: failed, Attempt: 1, MaxAttempts: 1}}
	}
	return out
}

func TestDLQListLimitZeroListsEveryDeadLetter(t *testing.T) {
	newList := func(f *cmdutil.Factory) *cobra.Command { return newCmdDLQList(f) }
	g := &dlqGateway{dead: deadLetters(1203)}
	url := serve(t, g)

	out, errOut, err := run(t, url, newList, "--limit", "0")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "job.sleep"); n != 1203 || errOut != "" {
		t.Fatalf("--limit 0 listed %d of 1203 dead letters; stderr %q", n, errOut)
	}
	if fmt.Sprint(g.sizes) != "[500 500 500]" {
		t.Errorf("--limit 0 asked for pages of %v, want [500 500 500]", g.sizes)
	}

	// A limit above a page pages too, and stops at the limit.
	g.sizes = nil
	out, errOut, err = run(t, url, newList, "--limit", "700", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	// Under "items", as every list of the CLI.
	if n := strings.Count(out, `"jobId"`); n != 700 || !strings.Contains(out, `"items": [`) || !strings.Contains(out, `"nextPageToken": "700"`) || fmt.Sprint(g.sizes) != "[500 200]" {
		t.Errorf("--limit 700: %d dead letters, pages %v, stderr %q", n, g.sizes, errOut)
	}

	// A page that is not the last says how to go on.
	_, errOut, err = run(t, url, newList, "--limit", "1")
	if err != nil || errOut != "more: cortexctl dlq list --page 1 (or --limit 0 for all)\n" {
		t.Errorf("--limit 1: stderr %q, err %v", errOut, err)
	}

	var usage *cmdutil.UsageError
	if _, _, err := run(t, url, newList, "--limit", "-1"); !errors.As(err, &usage) || !strings.Contains(err.Error(), "--limit -1: give 0 (all) or more") {
		t.Errorf("--limit -1: %v, want a usage error naming the flag", err)
	}
}

func TestDLQDropHelpSaysWhatDroppingDoes(t *testing.T) {
	cmd := NewCmdDLQ(&cmdutil.Factory{})
	for _, sub := range cmd.Commands() {
		if sub.Long == "" {
			t.Errorf("dlq %s --help has no paragraph", sub.Name())
		}
	}
	drop, _, err := cmd.Find([]string{"drop"})
	if err != nil {
		t.Fatal(err)
	}
	for _, says := range []string{"final state", "attempt history", "dropped from the dead-letter queue", "dlq retry", "exits 1", "exits 4", "several ids"} {
		if !strings.Contains(strings.Join(strings.Fields(drop.Long), " "), says) {
			t.Errorf("dlq drop --help does not say %q:\n%s", says, drop.Long)
		}
	}
}
