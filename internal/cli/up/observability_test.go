package up_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/syncbuf"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// scrape reads the gateway's /metrics.
func scrape(t *testing.T, h *harness) string {
	t.Helper()
	res, err := http.Get("http://" + h.cluster.GatewayAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", res.StatusCode, err)
	}
	return string(body)
}

// TestMetricsCountWhatHappened: after completed, denied, failed and
// cancelled jobs,
// /metrics says so under Prometheus names (cortex_ prefix, counters in
// _total, durations in _seconds), with the pools' gauges.
func TestMetricsCountWhatHappened(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	for i := range 3 {
		h.run(t, "job.echo", fmt.Sprint("hello ", i))
	}
	h.run(t, "sys.destroy", "x")
	ctx := context.Background()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.sleep", Prompt: "nope", MaxAttempts: proto.Uint32(1)})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, h, res.GetJobId(), cortexv1.JobState_JOB_STATE_FAILED)
	res, err = h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.sleep", Prompt: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, h, res.GetJobId(), cortexv1.JobState_JOB_STATE_RUNNING)
	if _, err := h.client.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: res.GetJobId()}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`cortex_jobs_submitted_total{topic="job.echo"} 3`,
		`cortex_jobs_submitted_total{topic="sys.destroy"} 1`,
		`cortex_jobs_completed_total{pool="echo",topic="job.echo"} 3`,
		`cortex_jobs_denied_total{rule="deny-sys-destroy",topic="sys.destroy"} 1`,
		`cortex_jobs_failed_total{pool="echo",state="FAILED",topic="job.sleep"} 1`,
		`cortex_jobs_cancelled_total{topic="job.sleep"} 1`,
		`cortex_job_submit_to_dispatch_seconds_count{pool="echo"} 5`,
		`cortex_job_submit_to_result_seconds_count{pool="echo",topic="job.echo"} 3`,
		`cortex_safety_decisions_total{decision="ALLOW",rule="allow-jobs"} 5`,
		`cortex_safety_decisions_total{decision="DENY",rule="deny-sys-destroy"} 1`,
		`cortex_safety_decision_seconds_count 6`,
		`cortex_pool_workers{pool="echo"} 1`,
		`cortex_pool_capacity{pool="echo"} 64`,
		`cortex_pool_queue_depth{pool="echo"} 0`,
		`cortex_bus_malformed_packets_dropped_total{component="worker"} 0`,
	}
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		body = scrape(t, h)
		missing := 0
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, w := range want {
				if !strings.Contains(body, w+"\n") {
					t.Errorf("/metrics lacks %s", w)
				}
			}
			return
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (cortex_\S+) (\S+)$`).FindAllStringSubmatch(body, -1) {
		name, kind := m[1], m[2]
		switch {
		case kind == "counter" && !strings.HasSuffix(name, "_total"):
			t.Errorf("counter %s does not end in _total", name)
		case kind == "histogram" && !strings.HasSuffix(name, "_seconds"):
			t.Errorf("histogram %s does not end in _seconds", name)
		}
	}
}

func waitState(t *testing.T, h *harness, id string, want cortexv1.JobState) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		res, err := h.client.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
		if err == nil && res.GetJob().GetState() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %v, %v; want %s", id, res.GetJob().GetState(), err, want)
		}
	}
}

// TestLogsNeverCarryPromptsOrKeys: with every component logging at debug,
// jobs that complete, fail, time out and are denied (one for the
// credentials in its prompt), and calls with wrong keys, leave lines about
// the jobs but never a prompt or an API key.
func TestLogsNeverCarryPromptsOrKeys(t *testing.T) {
	logs := &syncbuf.Buffer{}
	h := startHarnessLog(t, up.ClusterOptions{}, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	secret := fmt.Sprintf("prompt-secret-%d", time.Now().UnixNano())
	credential := "AKIA" + "IOSFODNN7EXAMPLE"
	wrongKey := "wrong-key-" + secret
	ctx := context.Background()
	h.run(t, "job.echo", secret+" echo")
	h.run(t, "job.echo", "my key is "+credential+" "+secret)
	for _, req := range []*cortexv1.SubmitJobRequest{
		{Topic: "job.sleep", Prompt: secret + " not a duration", MaxAttempts: proto.Uint32(1)},
		{Topic: "job.sleep", Prompt: "5s", Timeout: durationpb.New(100 * time.Millisecond), MaxAttempts: proto.Uint32(1), Labels: map[string]string{"why": "timeout"}},
		{Topic: "sys.destroy", Prompt: secret + " destroy"},
	} {
		if _, err := h.client.SubmitJob(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	bad, err := client.New("http://"+h.cluster.GatewayAddr, wrongKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: secret}); err == nil {
		t.Fatal("a wrong key was accepted")
	}
	// Everything above has had time to be logged.
	h.run(t, "job.echo", "last")
	out := logs.String()
	if !strings.Contains(out, `"job_id"`) {
		t.Fatalf("no log line about a job: the capture does not work (%d bytes)", len(out))
	}
	// Every line about a job says which job, which story and who wrote it.
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if _, ok := rec["job_id"]; !ok {
			continue
		}
		lines++
		if rec["trace_id"] == nil || rec["trace_id"] == "" || rec["component"] == nil {
			t.Errorf("a line about a job without trace_id or component: %s", line)
		}
	}
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "traced"})
	if err != nil || len(res.GetTraceId()) != 32 {
		t.Fatalf("submit: trace id %q, %v; want 32 hex digits", res.GetTraceId(), err)
	}
	waitState(t, h, res.GetJobId(), cortexv1.JobState_JOB_STATE_COMPLETED)
	// The job's story: every component that handled it logged its trace id.
	want := []string{"gateway", "safety", "scheduler", "worker"}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["trace_id"] == res.GetTraceId() && rec["job_id"] == res.GetJobId() {
				seen[fmt.Sprint(rec["component"])] = true
			}
		}
		missing := 0
		for _, c := range want {
			if !seen[c] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job's trace id is logged by %v, want by %v", seen, want)
		}
	}
	t.Logf("%d lines about jobs", lines)
	for what, s := range map[string]string{"a prompt": secret, "a credential from a prompt": credential,
		"the cluster's API key": h.cluster.APIKey, "a wrong API key": wrongKey} {
		if strings.Contains(out, s) {
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, s) {
					t.Errorf("%s reached a log line: %s", what, line)
					break
				}
			}
		}
	}
}

// TestWorkersAreListedAtOnce: the gateway's registry asks the workers to
// beat when it starts, so `up` lists its worker at once, not a heartbeat
// interval (3 s) after the worker's first beat, which the gateway missed.
func TestWorkersAreListedAtOnce(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	deadline := time.Now().Add(time.Second)
	for {
		res, err := h.client.ListWorkers(context.Background(), &cortexv1.ListWorkersRequest{})
		if err == nil && len(res.GetWorkers()) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers %v, %v within 1s of up; want the echo worker", res.GetWorkers(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
