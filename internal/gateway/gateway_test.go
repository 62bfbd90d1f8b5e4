package gateway_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// recorder is a Publisher that keeps what it was given.
type recorder struct {
	mu      sync.Mutex
	packets map[string][]*cortexv1.BusPacket
	fail    error
}

var _ gateway.Publisher = (*recorder)(nil)

func (r *recorder) Publish(subject string, p *cortexv1.BusPacket) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.packets[subject] = append(r.packets[subject], p)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.packets[bus.SubjectJobSubmit])
}

type fixture struct {
	pub *recorder
	mr  *miniredis.Miniredis
	url string
}

func newFixture(t *testing.T, opts gateway.Options) *fixture {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	pub := &recorder{packets: map[string][]*cortexv1.BusPacket{}}
	g, err := gateway.New(store.New(rdb, store.Options{}), pub, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return &fixture{pub: pub, mr: mr, url: srv.URL}
}

func (f *fixture) client(t *testing.T, key string) cortexv1connect.GatewayServiceClient {
	t.Helper()
	c, err := client.New(f.url, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var keys = map[string]string{"key-acme": "acme", "key-globex": "globex"}

func TestNewRefusesToStartWithoutKeys(t *testing.T) {
	_, err := gateway.New(nil, nil, gateway.Options{}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("New without keys: %v, want a refusal that mentions --insecure", err)
	}
}

func TestSubmitPublishesPointerNotPrompt(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	res, err := f.client(t, "key-acme").SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "secret prompt", Labels: map[string]string{"team": "ml"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetState() != cortexv1.JobState_JOB_STATE_PENDING || res.GetJobId() == "" {
		t.Fatalf("submit answered %v", res)
	}
	req := f.pub.packets[bus.SubjectJobSubmit][0].GetJobRequest()
	if req.GetJobId() != res.GetJobId() || req.GetTenantId() != "acme" || req.GetContextPtr() != "redis://ctx:"+res.GetJobId() ||
		req.GetPromptSize() != uint64(len("secret prompt")) || req.GetLabels()["team"] != "ml" {
		t.Fatalf("published %v", req)
	}
	if got, _ := f.mr.Get("ctx:" + res.GetJobId()); got != "secret prompt" {
		t.Fatalf("ctx key holds %q", got)
	}
	if f.mr.HGet("job:"+res.GetJobId(), "state") != "PENDING" {
		t.Fatal("job not recorded PENDING")
	}
}

func TestAuthentication(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	for _, key := range []string{"", "wrong-key", "key-acme-but-longer"} {
		_, err := f.client(t, key).SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("key %q: err = %v, want Unauthenticated", key, err)
		}
	}
	if n := f.pub.count(); n != 0 {
		t.Errorf("%d packets published for unauthenticated calls", n)
	}
}

func TestTenantSeesOnlyItsJobs(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	res, err := f.client(t, "key-acme").SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client(t, "key-acme").GetJobStatus(ctx, &cortexv1.GetJobStatusRequest{JobId: res.GetJobId()}); err != nil {
		t.Fatalf("owner reading its job: %v", err)
	}
	_, err = f.client(t, "key-globex").GetJobStatus(ctx, &cortexv1.GetJobStatusRequest{JobId: res.GetJobId()})
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("another tenant reading the job: %v, want NotFound", err)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, MaxPromptBytes: 16})
	c := f.client(t, "key-acme")
	manyLabels := map[string]string{}
	for i := range 33 {
		manyLabels[strings.Repeat("k", i+1)] = "v"
	}
	for name, tc := range map[string]struct {
		req  *cortexv1.SubmitJobRequest
		code connect.Code
	}{
		"empty topic":     {&cortexv1.SubmitJobRequest{}, connect.CodeInvalidArgument},
		"bad topic":       {&cortexv1.SubmitJobRequest{Topic: "Job Echo"}, connect.CodeInvalidArgument},
		"wildcard topic":  {&cortexv1.SubmitJobRequest{Topic: "job.>"}, connect.CodeInvalidArgument},
		"prompt too big":  {&cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: strings.Repeat("x", 17)}, connect.CodeResourceExhausted},
		"too many labels": {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: manyLabels}, connect.CodeInvalidArgument},
		"empty label key": {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"": "v"}}, connect.CodeInvalidArgument},
		"huge label":      {&cortexv1.SubmitJobRequest{Topic: "job.echo", Labels: map[string]string{"k": strings.Repeat("v", 257)}}, connect.CodeInvalidArgument},
	} {
		_, err := c.SubmitJob(context.Background(), tc.req)
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: err = %v, want %v", name, err, tc.code)
		}
	}
	if n := f.pub.count(); n != 0 {
		t.Errorf("%d packets published for bad requests", n)
	}
	if keys := f.mr.Keys(); len(keys) != 0 {
		t.Errorf("bad requests wrote to Redis: %v", keys)
	}
	for _, id := range []string{"", "not-a-uuid", strings.Repeat("9", 500)} {
		_, err := c.GetJobStatus(context.Background(), &cortexv1.GetJobStatusRequest{JobId: id})
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("GetJobStatus(%.20q): err = %v, want InvalidArgument", id, err)
		}
	}
	_, err := c.GetJobStatus(context.Background(), &cortexv1.GetJobStatusRequest{JobId: "01a20735-cd75-7d56-a260-013070573c1b"})
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown job: err = %v, want NotFound", err)
	}
}

func TestBusDownFailsTheSubmitVisibly(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	f.pub.fail = errors.New("nats: connection closed")
	_, err := f.client(t, "key-acme").SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("submit with the bus down: %v, want Unavailable", err)
	}
}

func TestInsecureModeUsesDefaultTenant(t *testing.T) {
	f := newFixture(t, gateway.Options{Insecure: true})
	if _, err := f.client(t, "").SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo"}); err != nil {
		t.Fatal(err)
	}
	if got := f.pub.packets[bus.SubjectJobSubmit][0].GetJobRequest().GetTenantId(); got != gateway.InsecureTenant {
		t.Fatalf("tenant %q, want %q", got, gateway.InsecureTenant)
	}
}
