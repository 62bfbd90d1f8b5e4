package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// nullBus accepts every packet and delivers none.
type nullBus struct{}

var _ gateway.Bus = nullBus{}

func (nullBus) Publish(string, *cortexv1.BusPacket) error   { return nil }
func (nullBus) PublishJobEvent(string, *cortexv1.Job) error { return nil }
func (nullBus) PublishJobEventsNow([]*cortexv1.Job) error   { return nil }
func (nullBus) OnReconnect(func())                          {}
func (nullBus) PublishDurables(_ context.Context, ds []bus.Durable) []error {
	return make([]error, len(ds))
}
func (nullBus) Subscribe(context.Context, string, string, int, bus.Handler) (*bus.Subscription, error) {
	return nil, nil
}
func (nullBus) SubscribeJobEvents(context.Context, int, func(context.Context, *bus.EventPacket) error) (*bus.Subscription, error) {
	return nil, nil
}
func (nullBus) Request(context.Context, string, *cortexv1.BusPacket) (*cortexv1.BusPacket, error) {
	return nil, errors.New("no kernel")
}
func (nullBus) Gather(context.Context, string, *cortexv1.BusPacket) ([]*cortexv1.BusPacket, error) {
	return nil, nil
}

// FuzzSubmitJSON posts arbitrary bodies to SubmitJob over HTTP/JSON: the
// gateway must answer every one without a server error, and whatever it
// accepts must be a valid job.
func FuzzSubmitJSON(f *testing.F) {
	for _, seed := range []string{
		`{"topic":"job.echo","prompt":"hi"}`,
		`{"topic":"job.echo","payload":"aGk=","labels":{"a":"b"},"priority":3,"timeout":"1.5s","maxAttempts":2,"idempotencyKey":"k"}`,
		`{"topic":"sys.destroy"}`,
		`{"topic":"job.nope"}`,
		`{"topic":"job.echo","timeout":"-1s"}`,
		`{"topic":"job.echo","priority":-2147483648}`,
		`{"topic":"job.echo","labels":{"":""}}`,
		`{"topic":1}`,
		`{"topic":"job.echo","prompt":"\ud800"}`,
		`{`, `null`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	mr := miniredis.RunT(f)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	f.Cleanup(func() { _ = rdb.Close() })
	st := store.New(rdb, store.Options{})
	router, _ := routing.NewRouter(map[string]string{"job.echo": "echo"})
	g, err := gateway.New(st, nullBus{}, gateway.Options{Insecure: true, MaxPromptBytes: 64, Router: router}, testLog)
	if err != nil {
		f.Fatal(err)
	}
	h := g.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/cortex.v1.GatewayService/SubmitJob", strings.NewReader(string(body)))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if rec.Code != http.StatusOK {
			return
		}
		var res struct {
			JobID string `json:"jobId"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
			t.Fatalf("answer %s: %v", rec.Body, err)
		}
		j, err := st.Get(context.Background(), res.JobID)
		if err != nil {
			t.Fatalf("accepted job %s not recorded: %v", res.JobID, err)
		}
		if !bus.ValidTopic(j.Topic) || j.PromptSize > 64 || len(j.Labels) > 32 || j.Priority < 0 || j.Priority > 9 ||
			j.MaxAttempts < 1 || j.MaxAttempts > 10 || j.Timeout < 0 || !utf8.ValidString(j.Topic) {
			t.Fatalf("accepted an invalid job from %q: %+v", body, j)
		}
	})
}

// FuzzParseKeys feeds arbitrary --api-keys values: no panic, and an
// accepted key always names a valid tenant.
func FuzzParseKeys(f *testing.F) {
	for _, seed := range []string{"s3cr3t-key:acme", "r3ad-only-key:acme:read", "::", "k:", "longenough:acme:write"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		keys, err := gateway.ParseKeys([]string{spec})
		if err != nil {
			return
		}
		for key, p := range keys {
			if len(key) < 8 || !bus.ValidToken(p.Tenant) {
				t.Fatalf("ParseKeys(%q) accepted key %q for tenant %q", spec, key, p.Tenant)
			}
		}
	})
}
