package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

type flakyBus struct {
	*bus.Conn
	fail atomic.Bool
}

func (b *flakyBus) Publish(subject string, p *cortexv1.BusPacket) error {
	if b.fail.Load() && subject == bus.SubjectJobSubmit {
		return errors.New("nats: connection closed")
	}
	return b.Conn.Publish(subject, p)
}

// A job that could not be handed on is FAILED and the client told to try
// again: a retry with the same idempotency key must make a new job.
func TestIdempotentRetryAfterBusFailureMakesANewJob(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	st := store.New(rdb, store.Options{})
	conn, err := bus.Connect(bustest.StartServer(t), "gw", testLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	fb := &flakyBus{Conn: conn}
	r, _ := routing.NewRouter(map[string]string{"job.echo": "echo"})
	g, err := gateway.New(st, fb, gateway.Options{Keys: map[string]gateway.Principal{"key-aaaa-1111": {Tenant: "acme"}}, Router: r}, testLog)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(g.Handler())
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	f := &fixture{url: srv.URL}
	c := f.client(t, "key-aaaa-1111")
	req := &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hi", IdempotencyKey: "order-42"}
	fb.fail.Store(true)
	if _, err = c.SubmitJob(context.Background(), req); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("submit with the bus down: %v, want Unavailable", err)
	}
	fb.fail.Store(false)
	res, err := c.SubmitJob(context.Background(), req)
	if err != nil || res.GetDeduplicated() || res.GetState() != cortexv1.JobState_JOB_STATE_PENDING {
		t.Fatalf("retry as told: %v, %v; want a new PENDING job", res, err)
	}
}
