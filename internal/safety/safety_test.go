package safety_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/safety"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

var (
	allow = cortexv1.Decision_DECISION_ALLOW
	deny  = cortexv1.Decision_DECISION_DENY
)

func TestBuiltinPolicy(t *testing.T) {
	p := safety.BuiltinPolicy()
	for _, tc := range []struct {
		topic    string
		decision cortexv1.Decision
		rule     string
	}{
		{"job.echo", allow, "allow-jobs"},
		{"job.llm.chat", allow, "allow-jobs"},
		{"sys.destroy", deny, "deny-sys-destroy"},
		{"sys.job.submit", deny, "deny-sys-topics"},
		{"sys.heartbeat.w1", deny, "deny-sys-topics"},
		{"other.thing", deny, "default-deny"},
		{"", deny, "default-deny"},
	} {
		got := p.Evaluate(&cortexv1.CheckRequest{JobId: "j", Topic: tc.topic})
		if got.GetDecision() != tc.decision || got.GetRule() != tc.rule || got.GetReason() == "" || got.GetPolicyVersion() == "" {
			t.Errorf("Evaluate(%q) = %v, want %v by %s with a reason and version", tc.topic, got, tc.decision, tc.rule)
		}
	}
}

func connect(t *testing.T, url, name string) *bus.Conn {
	t.Helper()
	c, err := bus.Connect(url, name, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func check(t *testing.T, c *safety.Client, topic string) *cortexv1.CheckResponse {
	t.Helper()
	resp, err := c.Check(context.Background(), &cortexv1.CheckRequest{JobId: "j1", Topic: topic})
	if err != nil {
		t.Fatalf("Check returned an error (it must fail closed instead): %v", err)
	}
	return resp
}

func TestClientAgainstKernel(t *testing.T) {
	url := bustest.StartServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := safety.NewKernel(safety.BuiltinPolicy(), slog.New(slog.DiscardHandler)).Start(ctx, connect(t, url, "kernel")); err != nil {
		t.Fatal(err)
	}
	c := safety.NewClient(connect(t, url, "client"), time.Second)
	if got := check(t, c, "job.echo"); got.GetDecision() != allow {
		t.Errorf("job.echo: %v, want ALLOW", got)
	}
	if got := check(t, c, "sys.destroy"); got.GetDecision() != deny || got.GetRule() != "deny-sys-destroy" {
		t.Errorf("sys.destroy: %v, want DENY by deny-sys-destroy", got)
	}
}

// fakeKernel answers checks on the bus with whatever answer returns, after
// delay.
func fakeKernel(t *testing.T, url string, delay time.Duration, answer func() []byte) {
	t.Helper()
	nc := connect(t, url, "fake-kernel").NATS()
	_, err := nc.Subscribe(bus.SubjectSafetyCheck, func(m *nats.Msg) {
		time.Sleep(delay)
		_ = m.Respond(answer())
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func encoded(t *testing.T, p *cortexv1.BusPacket) []byte {
	p.ProtocolVersion = bus.ProtocolVersion
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestClientFailsClosed(t *testing.T) {
	allowAnswer := &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: allow, Rule: "r"}}}
	for _, tc := range []struct {
		name   string
		kernel func(t *testing.T, url string)
		reason string
	}{
		{"no kernel", func(*testing.T, string) {}, "no decision"},
		{"slow kernel", func(t *testing.T, url string) {
			fakeKernel(t, url, 300*time.Millisecond, func() []byte { return encoded(t, allowAnswer) })
		}, "no decision within 50ms"},
		{"garbage answer", func(t *testing.T, url string) {
			fakeKernel(t, url, 0, func() []byte { return []byte("not a packet") })
		}, "malformed"},
		{"unknown decision", func(t *testing.T, url string) {
			fakeKernel(t, url, 0, func() []byte {
				return encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: 42}}})
			})
		}, "unknown decision 42"},
		{"unspecified decision", func(t *testing.T, url string) {
			fakeKernel(t, url, 0, func() []byte {
				return encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{}}})
			})
		}, "unknown decision 0"},
		{"wrong payload", func(t *testing.T, url string) {
			fakeKernel(t, url, 0, func() []byte {
				return encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w"}}})
			})
		}, "other than a decision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := bustest.StartServer(t)
			tc.kernel(t, url)
			got := check(t, safety.NewClient(connect(t, url, "client"), 50*time.Millisecond), "job.echo")
			if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || !strings.Contains(got.GetReason(), tc.reason) {
				t.Errorf("got %v, want DENY by %s with a reason containing %q", got, bus.RuleFailClosed, tc.reason)
			}
		})
	}
}
