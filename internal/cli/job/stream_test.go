package job

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// fakeGateway answers the calls of the streaming commands with fixed
// data: ListJobs the list, StreamEvents the events then errEndOfStream,
// WatchJob the versions of one job (the last one finished), StreamDecisions
// the decisions then errEndOfStream.
type fakeGateway struct {
	cortexv1connect.UnimplementedGatewayServiceHandler
	list      []*cortexv1.Job
	events    []*cortexv1.StreamEventsResponse
	versions  []*cortexv1.Job
	decisions []*cortexv1.SafetyDecisionEvent
}

// errEndOfStream ends a fake endless stream. The commands reconnect only
// when the gateway is unavailable, so they return this error once they
// have printed every message sent before it.
var errEndOfStream = connect.NewError(connect.CodeAborted, "the test's stream ends here")

func (g *fakeGateway) ListJobs(_ context.Context, req *cortexv1.ListJobsRequest) (*cortexv1.ListJobsResponse, error) {
	n := min(int(req.GetPageSize()), len(g.list))
	res := &cortexv1.ListJobsResponse{Jobs: g.list[:n]}
	if n < len(g.list) {
		res.NextPageToken = "bW9yZQ"
	}
	return res, nil
}

func (g *fakeGateway) StreamEvents(_ context.Context, req *cortexv1.StreamEventsRequest, s cortexv1connect.GatewayServiceStreamEventsServerStream) error {
	for _, ev := range g.events {
		if ev.GetOutput() != nil && !req.GetOutput() {
			continue
		}
		if err := s.Send(ev); err != nil {
			return err
		}
	}
	return errEndOfStream
}

func (g *fakeGateway) WatchJob(_ context.Context, _ *cortexv1.WatchJobRequest, s cortexv1connect.GatewayServiceWatchJobServerStream) error {
	for _, j := range g.versions {
		if err := s.Send(&cortexv1.WatchJobResponse{Job: j}); err != nil {
			return err
		}
	}
	return nil
}

func (g *fakeGateway) StreamDecisions(_ context.Context, _ *cortexv1.StreamDecisionsRequest, s cortexv1connect.GatewayServiceStreamDecisionsServerStream) error {
	for _, ev := range g.decisions {
		if err := s.Send(&cortexv1.StreamDecisionsResponse{Event: ev}); err != nil {
			return err
		}
	}
	return errEndOfStream
}

// serve runs g on a local HTTP server and returns its URL.
func serve(t *testing.T, g cortexv1connect.GatewayServiceHandler) string {
	t.Helper()
	srv := connect.NewServer()
	cortexv1connect.RegisterGatewayServiceHandler(srv, g)
	mux := http.NewServeMux()
	connecthttp.Mount(mux, srv)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs.URL
}

// run executes the command newCmd builds, against the gateway at url, and
// returns its stdout, stderr and error.
func run(t *testing.T, url string, newCmd func(*cmdutil.Factory) *cobra.Command, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	f := &cmdutil.Factory{In: strings.NewReader(""), Out: &out, ErrOut: &errOut, Server: url, APIKey: "test-key"}
	cmd := newCmd(f)
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// streamJob is a job with the nested fields and the awkward text that make
// records of a stream share keys and span lines if printed wrongly.
func streamJob(id string, state cortexv1.JobState, version uint64) *cortexv1.Job {
	return &cortexv1.Job{
		JobId: id, Topic: "job.echo", State: state, TenantId: "default", Version: version,
		Labels:    map[string]string{"team": "ml"},
		Reason:    "line one\nline two: <b> & \"quoted\"",
		Safety:    &cortexv1.SafetyVerdict{Decision: cortexv1.Decision_DECISION_ALLOW, Rule: "allow-jobs", Reason: "job.* topics are allowed"},
		CreatedAt: timestamppb.Now(),
		UpdatedAt: timestamppb.Now(),
	}
}

func jobEvent(j *cortexv1.Job) *cortexv1.StreamEventsResponse {
	return &cortexv1.StreamEventsResponse{Job: j}
}

// yamlDocs reads s as a stream of YAML documents, each a mapping that
// starts with "---", and returns them; anything else fails the test.
func yamlDocs(t *testing.T, s string) []map[string]any {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(s))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("yaml document %d: %v in\n%s", len(docs)+1, err, s)
		}
		if doc == nil {
			t.Fatalf("yaml document %d is empty in\n%s", len(docs)+1, s)
		}
		docs = append(docs, doc)
	}
	if !strings.HasPrefix(s, "---\n") {
		t.Fatalf("the yaml stream does not start with ---:\n%s", s)
	}
	if n := strings.Count("\n"+s, "\n---\n"); n != len(docs) {
		t.Fatalf("%d documents but %d --- lines: not every record starts its own document:\n%s", len(docs), n, s)
	}
	return docs
}

// jsonLines reads s as JSON Lines, one object a line, and returns them;
// anything else fails the test.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	if !strings.HasSuffix(s, "\n") {
		t.Fatalf("the json stream does not end with a newline: %q", s)
	}
	var recs []map[string]any
	for i, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec == nil {
			t.Fatalf("line %d is not one JSON object (%v): %q\nin\n%s", i+1, err, line, s)
		}
		recs = append(recs, rec)
	}
	return recs
}

// records decodes a stream printed in format (json or yaml).
func records(t *testing.T, format, s string) []map[string]any {
	t.Helper()
	if format == "yaml" {
		return yamlDocs(t, s)
	}
	return jsonLines(t, s)
}

// jobAt is a job in a state: a record wantJobs expects.
type jobAt struct {
	id    string
	state cortexv1.JobState
}

// wantJobs checks that recs are the jobs of want, in order.
func wantJobs(t *testing.T, recs []map[string]any, want ...jobAt) {
	t.Helper()
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d: %v", len(recs), len(want), recs)
	}
	for i, w := range want {
		rec := recs[i]
		if rec["jobId"] != w.id || rec["state"] != w.state.String() || rec["topic"] != "job.echo" {
			t.Errorf("record %d = %v, want job %s %s", i+1, rec, w.id, w.state)
		}
		if _, ok := rec["items"]; ok {
			t.Errorf("record %d is a list, not a job: %v", i+1, rec)
		}
		if safety, _ := rec["safety"].(map[string]any); safety["rule"] != "allow-jobs" {
			t.Errorf("record %d: safety = %v", i+1, rec["safety"])
		}
		if rec["reason"] != "line one\nline two: <b> & \"quoted\"" {
			t.Errorf("record %d: reason = %q", i+1, rec["reason"])
		}
	}
}

var (
	pending   = cortexv1.JobState_JOB_STATE_PENDING
	running   = cortexv1.JobState_JOB_STATE_RUNNING
	completed = cortexv1.JobState_JOB_STATE_COMPLETED
	failed    = cortexv1.JobState_JOB_STATE_FAILED
)

func TestTailStreamsOneRecordPerChange(t *testing.T) {
	url := serve(t, &fakeGateway{events: []*cortexv1.StreamEventsResponse{
		jobEvent(streamJob("j1", pending, 1)),
		jobEvent(streamJob("j1", running, 2)),
		{Output: &cortexv1.JobOutput{JobId: "j1", Attempt: 1, Seq: 1, Text: "partial\noutput", Topic: "job.echo"}},
		jobEvent(streamJob("j2", pending, 1)),
		jobEvent(streamJob("j1", completed, 3)),
	}})
	newTail := func(f *cmdutil.Factory) *cobra.Command { return NewCmdTail(f, nil) }
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			out, _, err := run(t, url, newTail, "-o", format)
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("tail: %v, want the end of the fake stream", err)
			}
			wantJobs(t, records(t, format, out), jobAt{"j1", pending}, jobAt{"j1", running}, jobAt{"j2", pending}, jobAt{"j1", completed})

			// --job-output: the pieces are records of the same stream.
			out, _, err = run(t, url, newTail, "-o", format, "--job-output")
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("tail --job-output: %v", err)
			}
			recs := records(t, format, out)
			if len(recs) != 5 || recs[2]["text"] != "partial\noutput" || recs[2]["jobId"] != "j1" || recs[3]["state"] != pending.String() {
				t.Errorf("tail --job-output -o %s records: %v", format, recs)
			}
		})
	}
}

func TestTailDecisionsStreamsOneRecordPerDecision(t *testing.T) {
	verdict := func(d cortexv1.Decision, rule string) *cortexv1.SafetyVerdict {
		return &cortexv1.SafetyVerdict{Decision: d, Rule: rule, Reason: "why", PolicyVersion: "sha256:0123456789ab"}
	}
	url := serve(t, &fakeGateway{decisions: []*cortexv1.SafetyDecisionEvent{
		{JobId: "j1", TenantId: "default", Topic: "job.echo", Attempt: 1, Verdict: verdict(cortexv1.Decision_DECISION_ALLOW, "allow-jobs"),
			Shadow: verdict(cortexv1.Decision_DECISION_DENY, "deny-echo"), Latency: durationpb.New(130000), DecidedAt: timestamppb.Now(), KernelId: "safety-1"},
		{JobId: "j2", TenantId: "default", Topic: "sys.destroy", Attempt: 1, Verdict: verdict(cortexv1.Decision_DECISION_DENY, "deny-sys-destroy"),
			Latency: durationpb.New(90000), DecidedAt: timestamppb.Now(), KernelId: "safety-1"},
	}})
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			out, _, err := run(t, url, func(f *cmdutil.Factory) *cobra.Command { return NewCmdTail(f, nil) }, "--decisions", "-o", format)
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("tail --decisions: %v", err)
			}
			recs := records(t, format, out)
			if len(recs) != 2 {
				t.Fatalf("%d records, want 2:\n%s", len(recs), out)
			}
			for i, want := range []string{"allow-jobs", "deny-sys-destroy"} {
				if v, _ := recs[i]["verdict"].(map[string]any); v["rule"] != want || recs[i]["kernelId"] != "safety-1" {
					t.Errorf("record %d = %v, want verdict by %s", i+1, recs[i], want)
				}
			}
			if _, ok := recs[1]["shadow"]; ok {
				t.Errorf("the second decision has the first one's shadow: %v", recs[1])
			}
		})
	}
}

func TestWatchStreamsOneRecordPerVersion(t *testing.T) {
	url := serve(t, &fakeGateway{versions: []*cortexv1.Job{
		streamJob("j1", pending, 1), streamJob("j1", running, 2), streamJob("j1", completed, 3),
	}})
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			out, _, err := run(t, url, func(f *cmdutil.Factory) *cobra.Command { return NewCmdWatch(f, nil) }, "j1", "-o", format)
			if err != nil {
				t.Fatalf("jobs watch: %v", err)
			}
			wantJobs(t, records(t, format, out), jobAt{"j1", pending}, jobAt{"j1", running}, jobAt{"j1", completed})
		})
	}
	// A job that has ended is a stream of one record, in the same form.
	url = serve(t, &fakeGateway{versions: []*cortexv1.Job{streamJob("j1", failed, 4)}})
	out, _, err := run(t, url, func(f *cmdutil.Factory) *cobra.Command { return NewCmdWatch(f, nil) }, "j1", "-o", "json")
	var nd *cmdutil.JobNotDoneError
	if !errors.As(err, &nd) {
		t.Fatalf("jobs watch of a FAILED job: %v, want exit 3", err)
	}
	wantJobs(t, jsonLines(t, out), jobAt{"j1", failed})
}

// jobs list --watch in json or yaml is a stream of jobs: each job of the
// first page, then each change, is one record; the list's next page
// token, as in a table, is a note on stderr.
func TestListWatchStreamsOneRecordPerJob(t *testing.T) {
	url := serve(t, &fakeGateway{
		list: []*cortexv1.Job{streamJob("j3", running, 2), streamJob("j2", completed, 3), streamJob("j1", completed, 3)},
		events: []*cortexv1.StreamEventsResponse{
			jobEvent(streamJob("j3", completed, 3)),
			jobEvent(streamJob("j4", pending, 1)),
		},
	})
	newList := func(f *cmdutil.Factory) *cobra.Command { return NewCmdList(f, nil) }
	for _, format := range []string{"json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			out, errOut, err := run(t, url, newList, "--watch", "-o", format)
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("jobs list --watch: %v", err)
			}
			wantJobs(t, records(t, format, out), jobAt{"j3", running}, jobAt{"j2", completed}, jobAt{"j1", completed},
				jobAt{"j3", completed}, jobAt{"j4", pending})
			if errOut != "" {
				t.Errorf("stderr: %q", errOut)
			}

			out, errOut, err = run(t, url, newList, "--watch", "--limit", "2", "-o", format)
			if connect.CodeOf(err) != connect.CodeAborted {
				t.Fatalf("jobs list --watch --limit 2: %v", err)
			}
			wantJobs(t, records(t, format, out), jobAt{"j3", running}, jobAt{"j2", completed}, jobAt{"j3", completed}, jobAt{"j4", pending})
			if !strings.Contains(errOut, "more jobs match: add --page bW9yZQ") {
				t.Errorf("no next page note on stderr: %q", errOut)
			}
		})
	}
}

// Without --watch, jobs list prints one value, pretty, as it always has.
func TestListWithoutWatchPrintsOneList(t *testing.T) {
	j := &cortexv1.Job{JobId: "j1", Topic: "job.echo", State: completed, Labels: map[string]string{"team": "ml"}}
	url := serve(t, &fakeGateway{list: []*cortexv1.Job{j, {JobId: "j0", Topic: "job.echo", State: failed}}})
	newList := func(f *cmdutil.Factory) *cobra.Command { return NewCmdList(f, nil) }
	out, _, err := run(t, url, newList, "--limit", "1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "items": [
    {
      "jobId": "j1",
      "topic": "job.echo",
      "state": "JOB_STATE_COMPLETED",
      "tenantId": "",
      "labels": {
        "team": "ml"
      },
      "priority": 0,
      "maxAttempts": 0,
      "attempt": 0,
      "pool": "",
      "workerId": "",
      "reason": "",
      "promptSize": "0",
      "binaryPayload": false,
      "resultSize": "0",
      "transitions": [],
      "version": "0",
      "attempts": [],
      "traceId": ""
    }
  ],
  "nextPageToken": "bW9yZQ"
}
`
	if out != want {
		t.Errorf("jobs list -o json =\n%s\nwant\n%s", out, want)
	}
	out, _, err = run(t, url, newList, "--limit", "1", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	want = `items:
- attempt: 0
  attempts: []
  binaryPayload: false
  jobId: j1
  labels:
    team: ml
  maxAttempts: 0
  pool: ""
  priority: 0
  promptSize: "0"
  reason: ""
  resultSize: "0"
  state: JOB_STATE_COMPLETED
  tenantId: ""
  topic: job.echo
  traceId: ""
  transitions: []
  version: "0"
  workerId: ""
nextPageToken: bW9yZQ
`
	if out != want {
		t.Errorf("jobs list -o yaml =\n%s\nwant\n%s", out, want)
	}
}

// A stream message that says the gateway lost the bus (bus_gap, alone)
// prints a notice on stderr and no record, between the records around it.
func TestTailSaysWhenTheGatewayLostTheBus(t *testing.T) {
	url := serve(t, &fakeGateway{events: []*cortexv1.StreamEventsResponse{
		jobEvent(streamJob("j1", pending, 1)),
		{BusGap: true},
		jobEvent(streamJob("j1", completed, 3)),
	}})
	newTail := func(f *cmdutil.Factory) *cobra.Command { return NewCmdTail(f, nil) }
	for _, format := range []string{"json", ""} {
		args := []string{}
		if format != "" {
			args = append(args, "-o", format)
		}
		out, errOut, err := run(t, url, newTail, args...)
		if connect.CodeOf(err) != connect.CodeAborted {
			t.Fatalf("tail %v: %v, want the end of the fake stream", args, err)
		}
		if !strings.Contains(errOut, "the gateway lost the bus for a while: changes made meanwhile are not shown; cortexctl jobs list shows the current states") {
			t.Errorf("tail %v: no notice of the gap on stderr: %q", args, errOut)
		}
		if format == "json" {
			wantJobs(t, records(t, format, out), jobAt{"j1", pending}, jobAt{"j1", completed})
		} else if n := strings.Count(out, "  j1  "); n != 2 {
			t.Errorf("tail: %d changes printed, want 2:\n%s", n, out)
		}
	}
}
