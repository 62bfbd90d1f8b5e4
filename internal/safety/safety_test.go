package safety_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func connect(t testing.TB, url, name string) *bus.Conn {
	t.Helper()
	c, err := bus.Connect(url, name, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// fakeStore holds applied policies as text.
type fakeStore struct {
	mu             sync.Mutex
	active, shadow string
}

var _ safety.PolicyStore = (*fakeStore)(nil)

func (s *fakeStore) LoadPolicy(_ context.Context, shadow bool) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if shadow {
		return "shadow.yaml", s.shadow, nil
	}
	return "active.yaml", s.active, nil
}

func (s *fakeStore) set(active, shadow string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active, s.shadow = active, shadow
}

// startKernel runs a kernel named kernel-1 on the bus at url until the
// test ends.
func startKernel(t testing.TB, url string, in safety.Inputs, st safety.PolicyStore) *safety.Kernel {
	t.Helper()
	k := safety.NewKernel("kernel-1", in, discard())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := k.Start(ctx, connect(t, url, "kernel-1"), st); err != nil {
		t.Fatal(err)
	}
	return k
}

func clientCheck(t testing.TB, c *safety.Client, r *cortexv1.CheckRequest) *cortexv1.CheckResponse {
	t.Helper()
	resp, err := c.Check(context.Background(), r)
	if err != nil {
		t.Fatalf("Check returned an error (it must fail closed instead): %v", err)
	}
	return resp
}

func TestClientAgainstKernel(t *testing.T) {
	url := bustest.StartServer(t)
	k := startKernel(t, url, newInputs(defaultPrompts()), nil)
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	for _, tc := range defaultCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := clientCheck(t, c, tc.req)
			want := mustCheck(t, k, tc.req)
			if !proto.Equal(got, want) {
				t.Errorf("over the bus %v, in process %v", got, want)
			}
			if got.GetDecision() != tc.decision || got.GetRule() != tc.rule || got.GetReason() == "" || got.GetPolicyVersion() != policy.Default().Hash() {
				t.Errorf("got %v, want %v by %q with a reason and the default policy's hash", got, tc.decision, tc.rule)
			}
		})
	}
}

func TestDecisionEvents(t *testing.T) {
	url := bustest.StartServer(t)
	in := newInputs(defaultPrompts())
	k := startKernel(t, url, in, nil)
	k.Use(mustLoad(t, "shadow.yaml"), "test", "", true)
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)

	watcher := connect(t, url, "watcher")
	events := make(chan *nats.Msg, 64)
	sub, err := watcher.NATS().ChanSubscribe(bus.SubjectSafetyDecision, events)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := watcher.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	prompts := [][]byte{[]byte(cleanPrompt), []byte(keyTalkPrompt), []byte(credPrompt()), []byte(fakeGitHubToken())}
	for i, tc := range defaultCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := proto.Clone(tc.req).(*cortexv1.CheckRequest)
			r.Attempt = uint32(i + 2)
			resp := clientCheck(t, c, r)
			var m *nats.Msg
			select {
			case m = <-events:
			case <-time.After(5 * time.Second):
				t.Fatal("no decision event within 5s")
			}
			for _, p := range prompts {
				if bytes.Contains(m.Data, p) {
					t.Errorf("the decision event carries prompt text %.20q...", p)
				}
			}
			p, err := bus.Decode(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			ev := p.GetSafetyDecision()
			if ev == nil {
				t.Fatalf("event packet carries %T, want a SafetyDecisionEvent", p.GetPayload())
			}
			if ev.GetJobId() != r.GetJobId() || ev.GetTenantId() != "acme" || ev.GetTopic() != r.GetTopic() || ev.GetAttempt() != r.GetAttempt() || ev.GetKernelId() != "kernel-1" {
				t.Errorf("event %v does not describe job %s (tenant acme, topic %s, attempt %d) by kernel-1", ev, r.GetJobId(), r.GetTopic(), r.GetAttempt())
			}
			want := &cortexv1.SafetyVerdict{Decision: resp.GetDecision(), Rule: resp.GetRule(), Reason: resp.GetReason(), PolicyVersion: resp.GetPolicyVersion()}
			if !proto.Equal(ev.GetVerdict(), want) || ev.GetVerdict().GetDecision() != tc.decision {
				t.Errorf("event verdict %v, want %v", ev.GetVerdict(), want)
			}
			if !proto.Equal(ev.GetShadow(), resp.GetShadow()) || ev.GetShadow() == nil {
				t.Errorf("event shadow verdict %v, want %v", ev.GetShadow(), resp.GetShadow())
			}
			if ev.GetLatency().AsDuration() <= 0 || ev.GetDecidedAt() == nil {
				t.Errorf("event latency %v, decided_at %v; want a positive latency and a time", ev.GetLatency().AsDuration(), ev.GetDecidedAt())
			}
			if p.GetTraceId() != r.GetJobId() || p.GetSenderId() != "kernel-1" {
				t.Errorf("packet trace_id %q sender %q, want %q and kernel-1", p.GetTraceId(), p.GetSenderId(), r.GetJobId())
			}
		})
	}
	if in.calls.Load() == 0 {
		t.Error("the kernel never read a prompt, so the events test proved nothing about prompts")
	}
}

func TestPolicyQuery(t *testing.T) {
	url := bustest.StartServer(t)
	k := startKernel(t, url, nil, nil)
	k.Use(mustLoad(t, "shadow.yaml"), "test", "", true)
	c := connect(t, url, "cli")
	query := func(q *cortexv1.PolicyQuery) *cortexv1.PolicyReply {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		reply, err := c.Request(ctx, bus.SubjectPolicyQuery, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyQuery{PolicyQuery: q}})
		if err != nil {
			t.Fatal(err)
		}
		r := reply.GetPolicyReply()
		if r == nil {
			t.Fatalf("reply carries %T, want a PolicyReply", reply.GetPayload())
		}
		return r
	}

	r := query(&cortexv1.PolicyQuery{})
	if !proto.Equal(r.GetStatus(), k.Status()) || r.GetStatus().GetKernelId() != "kernel-1" || r.GetStatus().GetActive().GetHash() != policy.Default().Hash() ||
		r.GetStatus().GetActive().GetOrigin() != safety.OriginBuiltin || r.GetStatus().GetShadow().GetName() != "strict" {
		t.Errorf("status %v, want kernel-1's: the builtin default, strict in the shadow", r.GetStatus())
	}
	if r.GetExplanation() != "" || r.GetDecision() != nil || r.GetError() != "" {
		t.Errorf("a plain query explained something: %v", r)
	}

	r = query(&cortexv1.PolicyQuery{Explain: &cortexv1.CheckRequest{JobId: "x", Topic: "sys.destroy"}})
	if r.GetDecision().GetDecision() != deny || r.GetDecision().GetRule() != "deny-sys-destroy" || !strings.Contains(r.GetExplanation(), "=> deny-sys-destroy") {
		t.Errorf("explain sys.destroy: decision %v, explanation\n%s", r.GetDecision(), r.GetExplanation())
	}
	if r.GetShadow().GetRule() != policy.DefaultRuleName || r.GetShadowExplanation() == "" || r.GetStatus().GetKernelId() != "kernel-1" {
		t.Errorf("explain sys.destroy: shadow %v, explanation %q, status %v", r.GetShadow(), r.GetShadowExplanation(), r.GetStatus())
	}

	prompt := credPrompt()
	r = query(&cortexv1.PolicyQuery{Explain: &cortexv1.CheckRequest{JobId: "x", Topic: "job.echo"}, Prompt: prompt})
	if r.GetDecision().GetRule() != "deny-credentials" || !strings.Contains(r.GetExplanation(), "=> deny-credentials") {
		t.Errorf("explain a credential: decision %v, explanation\n%s", r.GetDecision(), r.GetExplanation())
	}
	if strings.Contains(r.GetExplanation(), fakeGitHubToken()) || strings.Contains(r.GetDecision().GetReason(), fakeGitHubToken()) {
		t.Error("the explanation quotes the credential")
	}
}

// apply asks the one kernel on the bus to load the applied policy and
// returns its reply. (Request, not Gather: Gather always waits out its
// context, and a short one flakes on a loaded machine; TestPolicyApplyCluster
// covers Gather.)
func apply(t *testing.T, c *bus.Conn, a *cortexv1.PolicyApply) *cortexv1.PolicyReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := c.Request(ctx, bus.SubjectPolicyApply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyApply{PolicyApply: a}})
	if err != nil {
		t.Fatalf("apply %v: %v", a, err)
	}
	if reply.GetPolicyReply() == nil {
		t.Fatalf("apply %v: reply carries %T, want a PolicyReply", a, reply.GetPayload())
	}
	return reply.GetPolicyReply()
}

func TestPolicyApply(t *testing.T) {
	url := bustest.StartServer(t)
	st := &fakeStore{}
	k := startKernel(t, url, nil, st)
	cli := connect(t, url, "cli")
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	approvalText, strictText := readTestdata(t, "approval.yaml"), readTestdata(t, "shadow.yaml")
	approvalHash, strictHash := mustLoad(t, "approval.yaml").Hash(), mustLoad(t, "shadow.yaml").Hash()

	if r := apply(t, cli, &cortexv1.PolicyApply{}); r.GetError() == "" || r.GetStatus().GetActive().GetHash() != policy.Default().Hash() {
		t.Errorf("apply with nothing stored: %v, want an error and the default in force", r)
	}

	st.set(approvalText, "")
	r := apply(t, cli, &cortexv1.PolicyApply{Hash: approvalHash})
	if r.GetError() != "" || r.GetStatus().GetActive().GetHash() != approvalHash || r.GetStatus().GetActive().GetOrigin() != safety.OriginApplied ||
		r.GetStatus().GetActive().GetSource() != approvalText || r.GetStatus().GetKernelId() != "kernel-1" {
		t.Fatalf("apply: %v, want %s in force, applied", r, approvalHash)
	}
	if got := k.Status().GetActive().GetHash(); got != approvalHash {
		t.Errorf("kernel status %s after apply, want %s", got, approvalHash)
	}
	if got := clientCheck(t, c, req("j1", "job.gpu", 0)); got.GetDecision() != requireApproval || got.GetRule() != "review-gpu" || got.GetPolicyVersion() != approvalHash {
		t.Errorf("after apply job.gpu got %v, want REQUIRE_APPROVAL by review-gpu", got)
	}

	st.set(readTestdata(t, "broken.yaml"), "")
	r = apply(t, cli, &cortexv1.PolicyApply{})
	if !strings.Contains(r.GetError(), "deny-typo") || !strings.Contains(r.GetError(), ":10:") || r.GetStatus().GetActive().GetHash() != approvalHash || r.GetStatus().GetLastError() == "" {
		t.Errorf("apply a broken policy: %v, want an error naming line 10 and the rule, %s still in force", r, approvalHash)
	}
	if got := clientCheck(t, c, req("j1", "job.gpu", 0)); got.GetPolicyVersion() != approvalHash {
		t.Errorf("after a broken apply the decision came from %s, want %s", got.GetPolicyVersion(), approvalHash)
	}

	// A stored policy other than the one the sender expected is loaded and
	// reported.
	st.set(approvalText, strictText)
	if r := apply(t, cli, &cortexv1.PolicyApply{Hash: "sha256:000000000000"}); !strings.Contains(r.GetError(), "another apply") {
		t.Errorf("apply with a stale hash: error %q, want one about another apply", r.GetError())
	}

	r = apply(t, cli, &cortexv1.PolicyApply{Shadow: true, Hash: strictHash})
	if r.GetError() != "" || r.GetStatus().GetShadow().GetHash() != strictHash || r.GetStatus().GetActive().GetHash() != approvalHash || r.GetStatus().GetLastError() != "" {
		t.Errorf("apply shadow: %v, want %s in the shadow and %s active", r, strictHash, approvalHash)
	}
	if got := clientCheck(t, c, req("j1", "job.echo", 0)); got.GetDecision() != allow || got.GetShadow().GetRule() != "deny-echo" {
		t.Errorf("with the shadow applied job.echo got %v, want ALLOW with a shadow DENY by deny-echo", got)
	}

	r = apply(t, cli, &cortexv1.PolicyApply{Clear: true})
	if r.GetError() != "" || r.GetStatus().GetShadow() != nil || k.Status().GetShadow() != nil || r.GetStatus().GetActive().GetHash() != approvalHash {
		t.Errorf("apply clear: %v, want no shadow and %s active", r, approvalHash)
	}
	if got := clientCheck(t, c, req("j1", "job.echo", 0)); got.GetShadow() != nil {
		t.Errorf("after clear job.echo still has a shadow verdict %v", got.GetShadow())
	}
}

// Every kernel loads an applied policy and answers the one apply.
func TestPolicyApplyCluster(t *testing.T) {
	url := bustest.StartServer(t)
	st := &fakeStore{}
	st.set(readTestdata(t, "approval.yaml"), "")
	hash := mustLoad(t, "approval.yaml").Hash()
	kernels := []*safety.Kernel{startKernel(t, url, nil, st), startKernel(t, url, nil, st)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	replies, err := connect(t, url, "cli").Gather(ctx, bus.SubjectPolicyApply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyApply{PolicyApply: &cortexv1.PolicyApply{Hash: hash}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != len(kernels) {
		t.Fatalf("%d replies %v, want one from each of %d kernels", len(replies), replies, len(kernels))
	}
	for _, r := range replies {
		if r.GetPolicyReply().GetError() != "" || r.GetPolicyReply().GetStatus().GetActive().GetHash() != hash {
			t.Errorf("reply %v, want %s in force", r, hash)
		}
	}
	for i, k := range kernels {
		if got := k.Status().GetActive().GetHash(); got != hash {
			t.Errorf("kernel %d enforces %s, want %s", i, got, hash)
		}
	}
}

func TestPolicyApplyWithoutStore(t *testing.T) {
	url := bustest.StartServer(t)
	startKernel(t, url, nil, nil)
	r := apply(t, connect(t, url, "cli"), &cortexv1.PolicyApply{})
	if r.GetError() == "" || r.GetStatus().GetActive().GetHash() != policy.Default().Hash() {
		t.Errorf("apply on a kernel without a store: %v, want an error and the default in force", r)
	}
}

// fakeKernel answers checks on the bus with handle.
func fakeKernel(t *testing.T, url string, handle func(m *nats.Msg)) {
	t.Helper()
	nc := connect(t, url, "fake-kernel").NATS()
	if _, err := nc.Subscribe(bus.SubjectSafetyCheck, handle); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func encoded(t *testing.T, p *cortexv1.BusPacket) []byte {
	t.Helper()
	p.ProtocolVersion = bus.ProtocolVersion
	b, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answering returns a fake kernel's handler that answers every check with
// data.
func answering(data []byte) func(m *nats.Msg) {
	return func(m *nats.Msg) { _ = m.Respond(data) }
}

func TestClientFailsClosed(t *testing.T) {
	allowAnswer := &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: allow, Rule: "r"}}}
	for _, tc := range []struct {
		name    string
		kernel  func(t *testing.T, url string)
		timeout time.Duration
		reason  string
	}{
		{"no kernel", func(*testing.T, string) {}, 5 * time.Second, "no safety kernel listens on sys.safety.check"},
		{"slow kernel", func(t *testing.T, url string) {
			// The answer is held until the test is over, long after the
			// client gave up.
			data, release := encoded(t, allowAnswer), make(chan struct{})
			fakeKernel(t, url, func(m *nats.Msg) {
				<-release
				_ = m.Respond(data)
			})
			t.Cleanup(func() { close(release) })
		}, 50 * time.Millisecond, "no decision within 50ms"},
		{"garbage answer", func(t *testing.T, url string) {
			fakeKernel(t, url, answering([]byte("not a packet")))
		}, 5 * time.Second, "malformed"},
		{"unknown decision", func(t *testing.T, url string) {
			fakeKernel(t, url, answering(encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: 42}}})))
		}, 5 * time.Second, "unknown decision 42"},
		{"unspecified decision", func(t *testing.T, url string) {
			fakeKernel(t, url, answering(encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{}}})))
		}, 5 * time.Second, "unknown decision 0"},
		{"wrong payload", func(t *testing.T, url string) {
			fakeKernel(t, url, answering(encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_Heartbeat{Heartbeat: &cortexv1.Heartbeat{WorkerId: "w"}}})))
		}, 5 * time.Second, "other than a decision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := bustest.StartServer(t)
			tc.kernel(t, url)
			got := clientCheck(t, safety.NewClient(connect(t, url, "client"), tc.timeout), req("j1", "job.echo", 0))
			if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || !strings.Contains(got.GetReason(), tc.reason) {
				t.Errorf("got %v, want DENY by %s with a reason containing %q", got, bus.RuleFailClosed, tc.reason)
			}
		})
	}
}

func TestClientCircuitBreaker(t *testing.T) {
	url := bustest.StartServer(t)
	// The fake kernel never answers; it counts the checks it is sent, and
	// notes the marker that follows them.
	var checks atomic.Int64
	marker := make(chan struct{})
	fakeKernel(t, url, func(m *nats.Msg) {
		if string(m.Data) == "marker" {
			close(marker)
			return
		}
		checks.Add(1)
	})
	conn := connect(t, url, "client")
	c := safety.NewClient(conn, 50*time.Millisecond)
	for i := range 5 {
		got := clientCheck(t, c, req("j1", "job.echo", 0))
		if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || !strings.Contains(got.GetReason(), "no decision within") {
			t.Fatalf("check %d: %v, want DENY by %s for a timeout", i+1, got, bus.RuleFailClosed)
		}
	}
	got := clientCheck(t, c, req("j1", "job.echo", 0))
	if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || !strings.Contains(got.GetReason(), "circuit breaker") {
		t.Fatalf("check 6: %v, want DENY by %s naming the circuit breaker", got, bus.RuleFailClosed)
	}
	// NATS keeps one connection's messages in order: once the marker sent
	// after the sixth check has arrived, any request that check sent has too.
	if err := conn.NATS().Publish(bus.SubjectSafetyCheck, []byte("marker")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-marker:
	case <-time.After(5 * time.Second):
		t.Fatal("the marker did not reach the fake kernel within 5s")
	}
	if n := checks.Load(); n != 5 {
		t.Errorf("the kernel was asked %d times, want 5: the open breaker must not ask", n)
	}
}

func TestClientPassesRequireApproval(t *testing.T) {
	url := bustest.StartServer(t)
	want := &cortexv1.CheckResponse{
		Decision: requireApproval, Rule: "review-gpu", Reason: "GPU jobs need a person's approval", PolicyVersion: "sha256:0123456789ab",
		Shadow: &cortexv1.SafetyVerdict{Decision: deny, Rule: "deny-gpu", Reason: "no GPUs", PolicyVersion: "sha256:ba9876543210"},
	}
	fakeKernel(t, url, answering(encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: want}})))
	got := clientCheck(t, safety.NewClient(connect(t, url, "client"), 5*time.Second), req("j1", "job.gpu", 0))
	if !proto.Equal(got, want) {
		t.Errorf("client returned %v, want the kernel's answer %v unchanged", got, want)
	}
}

// TestClientWaitsForTheKernelAfterANATSRestart: for a while after its bus
// connection came back (NATS restarted), a check that finds no kernel
// listening yet (the kernels reconnect on their own schedule) is asked
// again, and gets the kernel's decision once it is back, rather than a
// fail-closed DENY for racing it. Away from a reconnect, no kernel is a
// DENY at once.
func TestClientWaitsForTheKernelAfterANATSRestart(t *testing.T) {
	first := bustest.Start(t)
	port := first.Addr().(*net.TCPAddr).Port
	url := first.ClientURL()
	conn := connect(t, url, "client")
	c := safety.NewClient(conn, 5*time.Second)
	// After the client's own hook (hooks run in order): once this one
	// fires, the client knows its connection came back.
	back := make(chan struct{}, 1)
	conn.OnReconnect(func() { back <- struct{}{} })
	for i := range 6 {
		if got := clientCheck(t, c, req(fmt.Sprintf("j0-%d", i), "job.echo", 0)); got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed {
			t.Fatalf("no kernel before any restart: %v, want a fail-closed DENY", got)
		}
	}
	if c.Answering() {
		t.Fatal("the circuit breaker is closed after 6 failed checks")
	}

	first.Shutdown()
	bustest.StartWith(t, &server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	select {
	case <-back:
	case <-time.After(10 * time.Second):
		t.Fatal("the client's connection did not come back")
	}
	// The kernel comes back a little after the client.
	allowAnswer := encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: allow, Rule: "r"}}})
	go func() {
		time.Sleep(300 * time.Millisecond)
		fakeKernel(t, url, answering(allowAnswer))
	}()
	if got := clientCheck(t, c, req("j1", "job.echo", 0)); got.GetDecision() != allow {
		t.Fatalf("a check made as the kernel reconnects: %v, want the kernel's ALLOW", got)
	}
}
