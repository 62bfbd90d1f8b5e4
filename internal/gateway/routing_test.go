package gateway_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

const testRoutes = `version: 1
pools:
  echo:
    topics: [job.echo]
  chat-llm:
    topics: [job.chat.*]
    defaults: {max_attempts: 3, timeout: 2m, priority: 5}
`

func routedFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixture(t, gateway.Options{Keys: keys, Router: chatRouter(t)})
}

// options are a job's priority, timeout and max attempts.
type options struct {
	priority    int32
	timeout     time.Duration
	maxAttempts uint32
}

func jobOptions(t *testing.T, c interface {
	GetJob(context.Context, *cortexv1.GetJobRequest) (*cortexv1.GetJobResponse, error)
}, id string) options {
	t.Helper()
	res, err := c.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	j := res.GetJob()
	o := options{priority: j.GetPriority(), maxAttempts: j.GetMaxAttempts()}
	if j.GetTimeout() != nil {
		o.timeout = j.GetTimeout().AsDuration()
	}
	return o
}

func TestPoolDefaults(t *testing.T) {
	f := routedFixture(t)
	acme := f.client(t, "key-acme-1234")
	p := func(v int32) *int32 { return &v }
	n := func(v uint32) *uint32 { return &v }
	for name, tc := range map[string]struct {
		req  *cortexv1.SubmitJobRequest
		want options
	}{
		"pool defaults": {&cortexv1.SubmitJobRequest{Topic: "job.chat.summarize", Prompt: "x"},
			options{priority: 5, timeout: 2 * time.Minute, maxAttempts: 3}},
		"what was sent wins, zero too": {&cortexv1.SubmitJobRequest{Topic: "job.chat.summarize", Prompt: "x",
			Priority: p(0), Timeout: durationpb.New(time.Second), MaxAttempts: n(1)},
			options{priority: 0, timeout: time.Second, maxAttempts: 1}},
		"one option sent": {&cortexv1.SubmitJobRequest{Topic: "job.chat.x.y", Prompt: "x", Priority: p(9)},
			options{priority: 9, timeout: 2 * time.Minute, maxAttempts: 3}},
		"a pool without defaults": {&cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"},
			options{maxAttempts: 1}},
		"a topic outside job.*": {&cortexv1.SubmitJobRequest{Topic: "sys.destroy", Prompt: "x"},
			options{maxAttempts: 1}},
	} {
		t.Run(name, func(t *testing.T) {
			id := submit(t, acme, tc.req)
			if got := jobOptions(t, acme, id); got != tc.want {
				t.Errorf("job options %+v, want %+v", got, tc.want)
			}
		})
	}
	// The scheduler gets the job as recorded, defaults included.
	subs := f.submits(t)
	if len(subs) != 5 {
		t.Fatalf("%d jobs handed on, want 5", len(subs))
	}
	var seen bool
	for _, h := range subs {
		req := h.req
		if req.GetTopic() == "job.chat.summarize" && req.GetPriority() == 5 {
			seen = true
			if req.GetMaxAttempts() != 3 || req.GetTimeout().AsDuration() != 2*time.Minute {
				t.Errorf("job request %v: want max attempts 3, timeout 2m", req)
			}
		}
	}
	if !seen {
		t.Error("no job request carried the chat-llm defaults")
	}
}

func TestUnroutableTopicListsPatterns(t *testing.T) {
	f := routedFixture(t)
	_, err := f.client(t, "key-acme-1234").SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.chat", Prompt: "x"})
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "no pool serves topic job.chat; routable topics: job.chat.*, job.echo") {
		t.Fatalf("submit to job.chat: %v, want InvalidArgument listing job.chat.*, job.echo", err)
	}
	if keys := f.mr.Keys(); len(keys) != 0 {
		t.Errorf("a refused submit wrote to Redis: %v", keys)
	}
}

// The idempotency fingerprint is of the request as sent: defaults are not
// part of it, so an unset option and the same value sent are different
// requests, and a retry matches whatever defaults the job got.
func TestIdempotencyIgnoresDefaults(t *testing.T) {
	f := routedFixture(t)
	ctx := context.Background()
	acme := f.client(t, "key-acme-1234")
	req := &cortexv1.SubmitJobRequest{Topic: "job.chat.x", Prompt: "once", IdempotencyKey: "k-1"}
	first := submit(t, acme, req)
	again, err := acme.SubmitJob(ctx, req)
	if err != nil || again.GetJobId() != first || !again.GetDeduplicated() {
		t.Fatalf("resubmit = %v, %v; want job %s, deduplicated", again, err, first)
	}
	three := uint32(3)
	_, err = acme.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.chat.x", Prompt: "once", IdempotencyKey: "k-1", MaxAttempts: &three})
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("same key, max attempts now sent: %v, want AlreadyExists", err)
	}
	// A gateway with other defaults still finds the first job.
	r, err := routing.NewRouter(map[string]string{"job.chat.*": "chat-llm"})
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(f.st, f.conn, gateway.Options{Keys: keys, Router: r}, testLog)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL, "key-acme-1234")
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.SubmitJob(ctx, req)
	if err != nil || res.GetJobId() != first || !res.GetDeduplicated() {
		t.Fatalf("resubmit after the defaults changed = %v, %v; want job %s, deduplicated", res, err, first)
	}
}
