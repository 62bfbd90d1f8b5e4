package safety_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/bus/bustest"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// checkAll runs every check of rs at once on c and returns the answers in
// the order of rs.
func checkAll(t *testing.T, c *safety.Client, rs []*cortexv1.CheckRequest) []*cortexv1.CheckResponse {
	t.Helper()
	out := make([]*cortexv1.CheckResponse, len(rs))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, r := range rs {
		wg.Go(func() {
			<-start
			resp, err := c.Check(context.Background(), r)
			if err != nil {
				t.Errorf("Check returned an error (it must fail closed instead): %v", err)
			}
			out[i] = resp
		})
	}
	close(start)
	wg.Wait()
	return out
}

// requestTap counts the requests on sys.safety.check, and those that were
// batches, without answering any.
type requestTap struct{ requests, batches, checks atomic.Int64 }

func tapRequests(t *testing.T, url string) *requestTap {
	t.Helper()
	tap := &requestTap{}
	watch(t, url, bus.SubjectSafetyCheck, func(p *cortexv1.BusPacket) {
		tap.requests.Add(1)
		tap.checks.Add(1)
		if b := p.GetCheckBatch(); b != nil {
			tap.batches.Add(1)
			tap.checks.Add(int64(len(b.GetChecks()) - 1))
		}
	})
	return tap
}

// watch passes every packet on subject to fn, from now on, failing the
// test on one that does not decode.
func watch(t *testing.T, url, subject string, fn func(p *cortexv1.BusPacket)) {
	t.Helper()
	nc := connect(t, url, "watcher").NATS()
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Errorf("undecodable packet on %s: %v", subject, err)
			return
		}
		fn(p)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// mixedChecks are n checks of different tenants and topics, which the
// default policy decides by different rules.
func mixedChecks(n int) []*cortexv1.CheckRequest {
	topics := []string{"job.echo", "sys.destroy", "sys.other", "job.code.run", "job.echo"}
	rs := make([]*cortexv1.CheckRequest, n)
	for i := range rs {
		rs[i] = &cortexv1.CheckRequest{JobId: fmt.Sprintf("j%d", i), Topic: topics[i%len(topics)], TenantId: fmt.Sprintf("tenant-%d", i%3), Attempt: uint32(i + 1)}
		if i%len(topics) == 4 {
			// A prompt with a credential, read from the store.
			rs[i].JobId, rs[i].PromptSize = credJobID, uint64(len(credPrompt()))
		}
	}
	return rs
}

// clientRig starts a bus, a kernel that reads the default prompts from
// in, a tap on the kernel's requests and a client.
func clientRig(t *testing.T) (k *safety.Kernel, in *fakeInputs, tap *requestTap, c *safety.Client) {
	t.Helper()
	url := bustest.StartServer(t)
	in = newInputs(defaultPrompts())
	k = startKernel(t, url, in, nil)
	tap = tapRequests(t, url)
	return k, in, tap, safety.NewClient(connect(t, url, "client"), 5*time.Second)
}

func TestClientBatchesConcurrentChecks(t *testing.T) {
	k, in, tap, c := clientRig(t)
	rs := mixedChecks(200)
	got := checkAll(t, c, rs)
	rules := map[string]bool{}
	for i, r := range rs {
		want := mustCheck(t, k, r)
		if !proto.Equal(got[i], want) {
			t.Errorf("check %d (%s on %s): got %v, want %v", i, r.GetJobId(), r.GetTopic(), got[i], want)
		}
		rules[got[i].GetRule()] = true
	}
	if len(rules) < 4 {
		t.Errorf("the checks were decided by rules %v; want at least 4 different ones", rules)
	}
	poll(t, "the tap saw every check", func() bool { return tap.checks.Load() == int64(len(rs)) })
	if n := tap.requests.Load(); n >= int64(len(rs)) || tap.batches.Load() == 0 {
		t.Errorf("%d checks travelled in %d requests (%d of them batches); want fewer requests than checks", len(rs), n, tap.batches.Load())
	}
	if in.batches.Load() == 0 {
		t.Error("the kernel never read the prompts of a batch in one go")
	}
}

// CheckAll sends checks handed in together in one request, even to an
// idle client, and answers each as the kernel decides it.
func TestClientCheckAllSendsThemTogether(t *testing.T) {
	k, _, tap, c := clientRig(t)
	rs := mixedChecks(10)
	traces := make([]string, len(rs))
	for i := range traces {
		traces[i] = fmt.Sprintf("trace-%d", i)
	}
	got := c.CheckAll(context.Background(), rs, traces)
	if len(got) != len(rs) {
		t.Fatalf("%d answers to %d checks", len(got), len(rs))
	}
	for i, r := range rs {
		if want := mustCheck(t, k, r); !proto.Equal(got[i], want) {
			t.Errorf("check %d (%s on %s): got %v, want %v", i, r.GetJobId(), r.GetTopic(), got[i], want)
		}
	}
	poll(t, "the tap saw every check", func() bool { return tap.checks.Load() == int64(len(rs)) })
	if n, b := tap.requests.Load(), tap.batches.Load(); n != 1 || b != 1 {
		t.Errorf("%d checks handed in together travelled in %d requests (%d batches), want one batch", len(rs), n, b)
	}
}

// heldKernel is a fake kernel that holds lone checks of jobs named held-*
// until release is closed, answers other lone checks ALLOW, and answers
// batches with batch.
type heldKernel struct {
	release chan struct{}
	open    func() // closes release, once
	held    atomic.Int64
	batches atomic.Int64
}

func startHeldKernel(t *testing.T, url string, batch func(checks []*cortexv1.CheckRequest) *cortexv1.BusPacket) *heldKernel {
	t.Helper()
	k := &heldKernel{release: make(chan struct{})}
	k.open = sync.OnceFunc(func() { close(k.release) })
	t.Cleanup(k.open)
	allowed := encoded(t, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: allow, Rule: "r"}}})
	fakeKernel(t, url, func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Errorf("fake kernel: %v", err)
			return
		}
		switch {
		case strings.HasPrefix(p.GetCheckRequest().GetJobId(), "held-"):
			k.held.Add(1)
			go func() {
				<-k.release
				_ = m.Respond(allowed)
			}()
		case p.GetCheckRequest() != nil:
			_ = m.Respond(allowed)
		default:
			k.batches.Add(1)
			_ = m.Respond(encoded(t, batch(p.GetCheckBatch().GetChecks())))
		}
	})
	return k
}

// queueBehind fills every request slot of c with a held check, starts rs
// and waits until they are all queued (so they go as batches), then lets
// the held checks be answered. It returns the answers to rs.
func queueBehind(t *testing.T, c *safety.Client, k *heldKernel, rs []*cortexv1.CheckRequest) []*cortexv1.CheckResponse {
	t.Helper()
	var wg sync.WaitGroup
	for i := range 4 {
		// One at a time, so that each goes alone.
		wg.Go(func() { clientCheck(t, c, req(fmt.Sprintf("held-%d", i), "job.echo", 0)) })
		poll(t, "a held check at the kernel", func() bool { return k.held.Load() == int64(i+1) })
	}
	var got []*cortexv1.CheckResponse
	done := make(chan struct{})
	go func() {
		defer close(done)
		got = checkAll(t, c, rs)
	}()
	poll(t, "every check queued", func() bool { return safety.QueuedChecks(c) == len(rs) })
	k.open()
	<-done
	wg.Wait()
	if k.batches.Load() == 0 {
		t.Fatal("no batch reached the kernel")
	}
	return got
}

func batchAnswer(results []*cortexv1.CheckResponse) *cortexv1.BusPacket {
	return &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckBatchResponse{CheckBatchResponse: &cortexv1.CheckBatchResponse{Results: results}}}
}

func TestClientBatchFailsClosed(t *testing.T) {
	allowAll := func(checks []*cortexv1.CheckRequest) []*cortexv1.CheckResponse {
		out := make([]*cortexv1.CheckResponse, len(checks))
		for i := range out {
			out[i] = &cortexv1.CheckResponse{Decision: allow, Rule: "allow-" + checks[i].GetJobId()}
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		batch  func(checks []*cortexv1.CheckRequest) *cortexv1.BusPacket
		denied func(r *cortexv1.CheckRequest) string // the reason a check is denied for, "" if allowed
	}{
		{"one decision too few", func(checks []*cortexv1.CheckRequest) *cortexv1.BusPacket {
			return batchAnswer(allowAll(checks)[1:])
		}, func(*cortexv1.CheckRequest) string { return "decisions" }},
		{"one decision too many", func(checks []*cortexv1.CheckRequest) *cortexv1.BusPacket {
			return batchAnswer(append(allowAll(checks), &cortexv1.CheckResponse{Decision: allow}))
		}, func(*cortexv1.CheckRequest) string { return "decisions" }},
		{"a lone decision for a batch", func([]*cortexv1.CheckRequest) *cortexv1.BusPacket {
			return &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: &cortexv1.CheckResponse{Decision: allow}}}
		}, func(*cortexv1.CheckRequest) string { return "other than a batch of decisions" }},
		{"an unknown decision", func(checks []*cortexv1.CheckRequest) *cortexv1.BusPacket {
			results := allowAll(checks)
			for i, r := range checks {
				if r.GetJobId() == "odd" {
					results[i].Decision = 42
				}
			}
			return batchAnswer(results)
		}, func(r *cortexv1.CheckRequest) string {
			if r.GetJobId() == "odd" {
				return "unknown decision 42"
			}
			return ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := bustest.StartServer(t)
			k := startHeldKernel(t, url, tc.batch)
			c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
			rs := []*cortexv1.CheckRequest{req("a", "job.echo", 0), req("odd", "job.echo", 0), req("b", "job.echo", 0)}
			got := queueBehind(t, c, k, rs)
			for i, r := range rs {
				switch why := tc.denied(r); {
				case why == "" && (got[i].GetDecision() != allow || got[i].GetRule() != "allow-"+r.GetJobId()):
					t.Errorf("check %s: %v, want its own ALLOW", r.GetJobId(), got[i])
				case why != "" && (got[i].GetDecision() != deny || got[i].GetRule() != bus.RuleFailClosed || !strings.Contains(got[i].GetReason(), why)):
					t.Errorf("check %s: %v, want DENY by %s with a reason containing %q", r.GetJobId(), got[i], bus.RuleFailClosed, why)
				}
			}
		})
	}
}

// With no kernel on the bus every check of a busy client fails closed.
func TestClientBatchNoKernel(t *testing.T) {
	url := bustest.StartServer(t)
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	for i, got := range checkAll(t, c, mixedChecks(100)) {
		// Denied for want of a kernel, or by the breaker, which names that
		// as its last failure.
		if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed ||
			!strings.Contains(got.GetReason(), "no safety kernel listens on sys.safety.check") {
			t.Errorf("check %d: %v, want DENY by %s saying no kernel runs", i, got, bus.RuleFailClosed)
		}
	}
}

// The breaker counts requests: a batch that fails is one failure, and
// once open it denies the checks of whole batches without asking.
func TestClientBreakerCountsBatches(t *testing.T) {
	url := bustest.StartServer(t)
	k := startHeldKernel(t, url, func([]*cortexv1.CheckRequest) *cortexv1.BusPacket {
		return batchAnswer(nil) // never the right count
	})
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	rs := mixedChecks(20)
	got := queueBehind(t, c, k, rs)
	for i := range rs {
		if got[i].GetDecision() != deny || got[i].GetRule() != bus.RuleFailClosed {
			t.Fatalf("check %d: %v, want a fail-closed DENY", i, got[i])
		}
	}
	// 4 held requests succeeded; the 20 checks went in at most 4 batches,
	// fewer than the 5 failures that open the breaker.
	if n := k.batches.Load(); n > 4 {
		t.Fatalf("%d batches for 20 checks queued behind 4 slots", n)
	}
	if got := clientCheck(t, c, req("after", "job.echo", 0)); got.GetDecision() != allow {
		t.Errorf("a lone check after %d failed batches: %v, want ALLOW (the breaker counts requests, not checks)", k.batches.Load(), got)
	}
}

// The decisions of a batch are published together, each once.
func TestBatchDecisionEvents(t *testing.T) {
	url := bustest.StartServer(t)
	startKernel(t, url, newInputs(defaultPrompts()), nil)
	var mu sync.Mutex
	seen := map[uint32]int{} // by attempt, which is unique to each check
	var packets, batches atomic.Int64
	watch(t, url, bus.SubjectSafetyDecision, func(p *cortexv1.BusPacket) {
		evs := p.GetSafetyDecisions().GetEvents()
		if ev := p.GetSafetyDecision(); ev != nil {
			evs = []*cortexv1.SafetyDecisionEvent{ev}
		} else {
			batches.Add(1)
		}
		packets.Add(1)
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range evs {
			seen[ev.GetAttempt()]++
		}
	})
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	rs := mixedChecks(200)
	got := checkAll(t, c, rs)
	poll(t, "a decision event for every check", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == len(rs)
	})
	mu.Lock()
	defer mu.Unlock()
	for i, r := range rs {
		if n := seen[r.GetAttempt()]; n != 1 {
			t.Errorf("check %d (%v): %d decision events, want 1", i, got[i].GetDecision(), n)
		}
	}
	if batches.Load() == 0 || packets.Load() >= int64(len(rs)) {
		t.Errorf("%d decisions came in %d packets, %d of them SafetyDecisions; want batches", len(rs), packets.Load(), batches.Load())
	}
}

// A batch whose decisions are too long for one bus packet is answered with
// shortened reasons, every decision intact.
func TestBatchReplyFitsInAPacket(t *testing.T) {
	long := strings.Repeat("a long reason, ", 200)
	src := fmt.Sprintf("version: 1\nname: verbose\ndefault:\n  decision: DENY\n  reason: %q\nrules:\n  - name: allow-jobs\n    when: topic.startsWith(\"job.\")\n    decision: ALLOW\n    reason: %q\n", long, long)
	p, err := policy.Parse("verbose.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	url := bustest.StartServer(t)
	k := startKernel(t, url, nil, nil)
	k.Use(p, "test", src, false)
	k.Use(p, "test", src, true)
	rs := mixedChecks(256)
	for _, r := range rs {
		r.PromptSize = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply, err := connect(t, url, "client").Request(ctx, bus.SubjectSafetyCheck, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckBatch{CheckBatch: &cortexv1.CheckBatch{Checks: rs}}})
	if err != nil {
		t.Fatalf("a batch of %d checks with %d-byte reasons: %v", len(rs), len(long), err)
	}
	results := reply.GetCheckBatchResponse().GetResults()
	if len(results) != len(rs) {
		t.Fatalf("%d results for %d checks", len(results), len(rs))
	}
	for i, r := range rs {
		want := mustCheck(t, k, r)
		got := results[i]
		if got.GetDecision() != want.GetDecision() || got.GetRule() != want.GetRule() || got.GetShadow().GetRule() != want.GetShadow().GetRule() ||
			!strings.HasSuffix(got.GetReason(), "…") || !strings.HasPrefix(want.GetReason(), strings.TrimSuffix(got.GetReason(), "…")) {
			t.Fatalf("check %d: %v, want %v with its reason shortened", i, got, want)
		}
	}
}

// poll waits until cond holds, failing the test after 10s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// The client's own fail-closed denials (no kernel answered, or the breaker
// was open) are published as decisions, so that they show where decisions
// are watched; the event names no kernel.
func TestClientPublishesItsFailClosedDenials(t *testing.T) {
	url := bustest.StartServer(t)
	watcher := connect(t, url, "watcher")
	sub, err := watcher.NATS().SubscribeSync(bus.SubjectSafetyDecision)
	if err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	checks := mixedChecks(40)
	checkAll(t, c, checks)
	seen := map[uint32]*cortexv1.SafetyDecisionEvent{} // by attempt: unique among the checks
	for len(seen) < len(checks) {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("%d of %d denials published: %v", len(seen), len(checks), err)
		}
		p, err := bus.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		evs := p.GetSafetyDecisions().GetEvents()
		if ev := p.GetSafetyDecision(); ev != nil {
			evs = append(evs, ev)
		}
		for _, ev := range evs {
			seen[ev.GetAttempt()] = ev
		}
	}
	for _, r := range checks {
		ev := seen[r.GetAttempt()]
		if ev == nil || ev.GetJobId() != r.GetJobId() || ev.GetVerdict().GetDecision() != deny || ev.GetVerdict().GetRule() != bus.RuleFailClosed ||
			ev.GetTenantId() != r.GetTenantId() || ev.GetTopic() != r.GetTopic() || !strings.HasPrefix(ev.GetKernelId(), "none (fail-closed by client") {
			t.Errorf("check %s: event %v, want a fail-closed DENY of its tenant and topic, by no kernel", r.GetJobId(), ev)
		}
	}
}

// A client says its checks reach no kernel once its breaker opened, and
// that they do before.
func TestClientAnsweringFollowsTheBreaker(t *testing.T) {
	url := bustest.StartServer(t)
	c := safety.NewClient(connect(t, url, "client"), 5*time.Second)
	if !c.Answering() {
		t.Fatal("a new client says its checks reach no kernel")
	}
	for i := range 5 {
		if _, err := c.Check(context.Background(), &cortexv1.CheckRequest{JobId: fmt.Sprintf("j%d", i), Topic: "job.echo", TenantId: "t"}); err != nil {
			t.Fatal(err)
		}
	}
	if c.Answering() {
		t.Fatal("after 5 failed requests in a row the client still says its checks reach a kernel")
	}
}
