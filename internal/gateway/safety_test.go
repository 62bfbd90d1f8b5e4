package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// adminKeys are keys plus an admin key for acme and one for globex.
var adminKeys = func() map[string]gateway.Principal {
	k := maps.Clone(keys)
	k["key-acme-admin"] = gateway.Principal{Tenant: "acme", Admin: true}
	k["key-globex-admin"] = gateway.Principal{Tenant: "globex", Admin: true}
	return k
}()

// keyName is how a key is named in records: its digest's first 8 hex digits.
func keyName(tenant, key string) string {
	d := sha256.Sum256([]byte(key))
	return tenant + " (key " + hex.EncodeToString(d[:4]) + ")"
}

// startKernel runs a real safety kernel on the fixture's NATS, keeping
// applied policies in the fixture's store.
func (f *fixture) startKernel(t *testing.T, id string) *safety.Kernel {
	t.Helper()
	conn, err := bus.Connect(f.other.NATS().ConnectedUrl(), id, testLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k := safety.NewKernel(id, f.st, testLog)
	if err := k.Start(ctx, conn, f.st); err != nil {
		t.Fatal(err)
	}
	return k
}

// hold records a submitted job as held by a REQUIRE_APPROVAL rule, as the
// scheduler does.
func (f *fixture) hold(t *testing.T, id string) {
	t.Helper()
	f.move(t, id, store.Change{To: store.AwaitingApproval, Attempt: 1, Reason: "waiting for a person",
		Safety: &store.Verdict{Decision: "REQUIRE_APPROVAL", Rule: "review", Reason: "needs a person", Policy: "sha256:000000000000"}})
}

func wantCode(t *testing.T, what string, err error, code connect.Code, says ...string) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Errorf("%s: err = %v, want %v", what, err, code)
		return
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: err = %v, want it to say %q", what, err, s)
		}
	}
}

func TestApproveAndRejectHeldJobs(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	ctx := context.Background()
	acme, ro := f.client(t, "key-acme-1234"), f.client(t, "key-acme-read")
	admin, globexAdmin := f.client(t, "key-acme-admin"), f.client(t, "key-globex-admin")

	held := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hold me", Labels: map[string]string{"team": "ml"}})
	held2 := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "hold me too"})
	pending := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "not held"})
	f.hold(t, held)
	f.hold(t, held2)
	if got := f.submitted(t); !slices.Equal(got, []string{held, held2, pending}) {
		t.Fatalf("handed on %v, want the three submits", got)
	}

	approve := func(c cortexv1connect.GatewayServiceClient, id, comment string) (*cortexv1.Job, error) {
		res, err := c.ApproveJob(ctx, &cortexv1.ApproveJobRequest{JobId: id, Comment: comment})
		return res.GetJob(), err
	}
	reject := func(c cortexv1connect.GatewayServiceClient, id, reason string) (*cortexv1.Job, error) {
		res, err := c.RejectJob(ctx, &cortexv1.RejectJobRequest{JobId: id, Reason: reason})
		return res.GetJob(), err
	}
	unchanged := func(what, id string, want store.State) {
		t.Helper()
		j, err := f.st.Get(ctx, id)
		if err != nil || j.State != want || j.Approval != nil {
			t.Fatalf("%s changed the job: %+v, %v; want %s with no approval", what, j, err, want)
		}
	}

	// Only an admin key may answer, and only for its own tenant's jobs.
	for name, c := range map[string]cortexv1connect.GatewayServiceClient{"plain key": acme, "read-only key": ro} {
		_, err := approve(c, held, "")
		wantCode(t, name+" approving", err, connect.CodePermissionDenied, ":admin")
		_, err = reject(c, held, "")
		wantCode(t, name+" rejecting", err, connect.CodePermissionDenied, ":admin")
	}
	_, err := approve(globexAdmin, held, "")
	wantCode(t, "another tenant's admin approving", err, connect.CodeNotFound)
	_, err = reject(globexAdmin, held, "")
	wantCode(t, "another tenant's admin rejecting", err, connect.CodeNotFound)
	unchanged("refused answers", held, store.AwaitingApproval)

	// Only a held job can be answered.
	_, err = approve(admin, pending, "")
	wantCode(t, "approving a PENDING job", err, connect.CodeFailedPrecondition, "PENDING", "AWAITING_APPROVAL")
	_, err = reject(admin, pending, "")
	wantCode(t, "rejecting a PENDING job", err, connect.CodeFailedPrecondition, "PENDING", "AWAITING_APPROVAL")
	unchanged("answers to a pending job", pending, store.Pending)
	_, err = approve(admin, held, strings.Repeat("x", 513))
	wantCode(t, "an oversized comment", err, connect.CodeInvalidArgument)
	unchanged("an oversized comment", held, store.AwaitingApproval)
	if n := len(f.submits(t)); n != 3 {
		t.Fatalf("refused answers handed on %d jobs", n-3)
	}

	// Approve: back to PENDING with the approval recorded, and handed to
	// the scheduler again with approved set.
	by := keyName("acme", "key-acme-admin")
	j, err := approve(admin, held, "looks fine")
	if err != nil {
		t.Fatalf("approve: %v", err)
	}
	if j.GetState() != cortexv1.JobState_JOB_STATE_PENDING || !j.GetApproval().GetApproved() || j.GetApproval().GetBy() != by ||
		j.GetApproval().GetComment() != "looks fine" || j.GetApproval().GetAt() == nil || j.GetAttempt() != 1 {
		t.Fatalf("approved job %v, want PENDING approved by %q", j, by)
	}
	rec, err := f.st.Get(ctx, held)
	if err != nil || rec.State != store.Pending || rec.Approval == nil || !rec.Approval.Approved || rec.Approval.By != by {
		t.Fatalf("stored approved job %+v, %v", rec, err)
	}
	// The approval is a new message: named by the record's new version, so
	// the stream does not drop it as a copy of the first submit.
	subs := f.submits(t)
	if len(subs) != 4 {
		t.Fatalf("%d jobs in the submit stream after the approval, want 4", len(subs))
	}
	req := subs[3].req
	if req.GetJobId() != held || !req.GetApproved() || req.GetAttempt() != 1 || req.GetTenantId() != "acme" ||
		req.GetContextPtr() != store.ContextPtr(held) || req.GetLabels()["team"] != "ml" || req.GetPromptSize() != uint64(len("hold me")) {
		t.Fatalf("approval published %v, want the job's request with approved set", req)
	}
	if want := fmt.Sprintf("%s:%d", held, rec.Version); subs[3].msgID != want || subs[3].msgID == subs[0].msgID {
		t.Fatalf("approval's message id %q, want %q (the first submit's was %q)", subs[3].msgID, want, subs[0].msgID)
	}
	_, err = approve(admin, held, "")
	wantCode(t, "approving twice", err, connect.CodeFailedPrecondition, "PENDING")

	// Reject: DENIED, with who rejected it in the reason; never submitted.
	j, err = reject(admin, held2, "")
	if err != nil {
		t.Fatalf("reject: %v", err)
	}
	if j.GetState() != cortexv1.JobState_JOB_STATE_DENIED || j.GetReason() != "rejected by "+by || j.GetApproval().GetApproved() {
		t.Fatalf("rejected job %v, want DENIED with reason %q", j, "rejected by "+by)
	}
	if rec, err := f.st.Get(ctx, held2); err != nil || rec.State != store.Denied {
		t.Fatalf("stored rejected job %+v, %v", rec, err)
	}
	held3 := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo"})
	f.hold(t, held3)
	if j, err = reject(admin, held3, "too risky"); err != nil || !strings.HasPrefix(j.GetReason(), "rejected by "+by) || !strings.Contains(j.GetReason(), "too risky") {
		t.Fatalf("reject with a reason: %v, %v", j, err)
	}
	eventually(t, "rejection event", func() bool {
		for _, p := range f.tap.on(bus.SubjectJobEvent) {
			for _, ev := range bus.EventJobs(p) {
				if ev.GetJobId() == held3 && ev.GetState() == cortexv1.JobState_JOB_STATE_DENIED {
					return true
				}
			}
		}
		return false
	})
	subs = f.submits(t)
	for _, h := range subs {
		if id := h.req.GetJobId(); (id == held2 || id == held3) && h.req.GetApproved() {
			t.Fatalf("a rejected job was handed to the scheduler: %v", h.req)
		}
	}
	if n := len(subs); n != 5 {
		t.Fatalf("%d submits published, want 5 (four submits and one approval)", n)
	}
}

const (
	denyEchoPolicy = `version: 1
name: no-echo
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: deny-echo
    when: topic == "job.echo"
    decision: DENY
    reason: "job.echo is retired"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`
	allowAllPolicy = `version: 1
name: open
default:
  decision: ALLOW
  reason: "everything runs"
rules: []
`
	// brokenPolicy misspells topic on line 10 of rule deny-typo.
	brokenPolicy = `version: 1
name: broken
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: deny-typo
    decision: DENY
    reason: "never loads"
    when: topc == "job.echo"
`
)

func hashOf(t *testing.T, src string) string {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("test policy does not parse: %v", err)
	}
	return p.Hash()
}

func TestApplyPolicy(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	ctx := context.Background()
	acme, admin := f.client(t, "key-acme-1234"), f.client(t, "key-acme-admin")
	stored := func(shadow bool) string {
		t.Helper()
		_, src, err := f.st.LoadPolicy(ctx, shadow)
		if err != nil {
			t.Fatal(err)
		}
		return src
	}

	_, err := acme.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: allowAllPolicy})
	wantCode(t, "a plain key applying", err, connect.CodePermissionDenied, ":admin")
	_, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: brokenPolicy, Name: "bad.yaml"})
	wantCode(t, "an invalid policy", err, connect.CodeInvalidArgument, "bad.yaml:10", "deny-typo")
	_, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: denyEchoPolicy, ClearShadow: true})
	wantCode(t, "clear_shadow with a source", err, connect.CodeInvalidArgument)
	if s, sh := stored(false), stored(true); s != "" || sh != "" {
		t.Fatalf("refused applies stored %q / %q", s, sh)
	}
	if n := len(f.tap.on(bus.SubjectPolicyApply)); n != 0 {
		t.Fatalf("refused applies asked kernels %d times", n)
	}

	// With no kernel running the policy is stored for kernels that start
	// later, and no kernel answers.
	res, err := admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: allowAllPolicy})
	if err != nil || res.GetHash() != hashOf(t, allowAllPolicy) || len(res.GetKernels()) != 0 {
		t.Fatalf("apply with no kernel = %v, %v; want hash %s and no kernels", res, err, hashOf(t, allowAllPolicy))
	}
	if stored(false) != allowAllPolicy {
		t.Fatal("the applied policy was not stored")
	}
	// An empty or oversized source is refused and leaves the stored one.
	_, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{})
	wantCode(t, "an empty policy", err, connect.CodeInvalidArgument)
	_, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: allowAllPolicy + "#" + strings.Repeat("x", 1<<20)})
	wantCode(t, "an oversized policy", err, connect.CodeInvalidArgument)
	if stored(false) != allowAllPolicy {
		t.Fatal("a refused apply changed the stored policy")
	}

	// A running kernel loads the new policy and says so.
	k := f.startKernel(t, "safety-test-1")
	want := hashOf(t, denyEchoPolicy)
	res, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: denyEchoPolicy, Name: "no-echo.yaml"})
	if err != nil || res.GetHash() != want || len(res.GetKernels()) != 1 {
		t.Fatalf("apply = %v, %v; want hash %s from one kernel", res, err, want)
	}
	if st := res.GetKernels()[0]; st.GetKernelId() != k.ID() || st.GetActive().GetHash() != want ||
		st.GetActive().GetOrigin() != safety.OriginApplied || st.GetActive().GetSource() != denyEchoPolicy || st.GetLastError() != "" {
		t.Fatalf("kernel reports %v, want %s in force", st, want)
	}
	if got := k.Status().GetActive().GetHash(); got != want || stored(false) != denyEchoPolicy {
		t.Fatalf("kernel enforces %s, want %s", got, want)
	}
	got, err := acme.GetPolicy(ctx, &cortexv1.GetPolicyRequest{})
	if err != nil || got.GetStatus().GetKernelId() != k.ID() || got.GetStatus().GetActive().GetHash() != want || got.GetStatus().GetShadow() != nil {
		t.Fatalf("GetPolicy = %v, %v; want %s in force and no shadow", got, err, want)
	}

	// A shadow policy, then removing it.
	res, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: allowAllPolicy, Shadow: true})
	if err != nil || len(res.GetKernels()) != 1 || res.GetKernels()[0].GetShadow().GetHash() != hashOf(t, allowAllPolicy) ||
		res.GetKernels()[0].GetActive().GetHash() != want || stored(true) != allowAllPolicy {
		t.Fatalf("apply shadow = %v, %v", res, err)
	}
	res, err = admin.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{ClearShadow: true})
	if err != nil || len(res.GetKernels()) != 1 || res.GetKernels()[0].GetShadow() != nil || stored(true) != "" || k.Status().GetShadow() != nil {
		t.Fatalf("clear shadow = %v, %v; stored %q", res, err, stored(true))
	}
	if got := k.Status().GetActive().GetHash(); got != want {
		t.Fatalf("clearing the shadow changed the active policy to %s", got)
	}
}

func TestPolicyCallsWithoutKernel(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	// The fixture's tap listens on every subject; without it nobody does.
	f.other.Close()
	c := f.client(t, "key-acme-1234")
	_, err := c.GetPolicy(context.Background(), &cortexv1.GetPolicyRequest{})
	wantCode(t, "GetPolicy with no kernel", err, connect.CodeUnavailable, "is one running")
	_, err = c.ExplainDecision(context.Background(), &cortexv1.ExplainDecisionRequest{Topic: "job.echo"})
	wantCode(t, "ExplainDecision with no kernel", err, connect.CodeUnavailable, "is one running")
}

func TestExplainDecision(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	ctx := context.Background()
	k := f.startKernel(t, "safety-test-1")
	shadow, err := policy.Parse("shadow.yaml", []byte(denyEchoPolicy))
	if err != nil {
		t.Fatal(err)
	}
	k.Use(shadow, "test", denyEchoPolicy, true)
	c := f.client(t, "key-acme-read") // explaining needs no write access

	res, err := c.ExplainDecision(ctx, &cortexv1.ExplainDecisionRequest{Topic: "job.echo", Prompt: "hello", Labels: map[string]string{"team": "ml"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := res.GetDecision(); d.GetDecision() != cortexv1.Decision_DECISION_ALLOW || d.GetRule() != "allow-jobs" || d.GetReason() == "" ||
		d.GetPolicyVersion() != policy.Default().Hash() {
		t.Errorf("explain job.echo decided %v, want ALLOW by allow-jobs of the default policy", d)
	}
	if !strings.Contains(res.GetExplanation(), "allow-jobs") || !strings.Contains(res.GetExplanation(), "decision: ALLOW") {
		t.Errorf("explanation does not walk to allow-jobs:\n%s", res.GetExplanation())
	}
	if s := res.GetShadow(); s.GetDecision() != cortexv1.Decision_DECISION_DENY || s.GetRule() != "deny-echo" ||
		!strings.Contains(res.GetShadowExplanation(), "deny-echo") {
		t.Errorf("shadow %v (%q), want DENY by deny-echo", s, res.GetShadowExplanation())
	}

	cred := "please use ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + " for the repo"
	if !policy.HasCredentials(cred) {
		t.Fatal("the test's credential is not one")
	}
	res, err = c.ExplainDecision(ctx, &cortexv1.ExplainDecisionRequest{Topic: "job.echo", Prompt: cred})
	if err != nil || res.GetDecision().GetDecision() != cortexv1.Decision_DECISION_DENY || res.GetDecision().GetRule() != "deny-credentials" {
		t.Errorf("explain with a credential = %v, %v; want DENY by deny-credentials", res, err)
	} else if strings.Contains(res.GetExplanation(), "ghp_a1B2") || strings.Contains(res.GetDecision().GetReason(), "ghp_a1B2") {
		t.Errorf("the explanation quotes the credential:\n%s", res.GetExplanation())
	}

	for name, req := range map[string]*cortexv1.ExplainDecisionRequest{
		"empty topic":    {},
		"bad topic":      {Topic: "Job Echo"},
		"oversized":      {Topic: "job.echo", Prompt: strings.Repeat("x", 48<<10+1)},
		"bad label":      {Topic: "job.echo", Labels: map[string]string{"": "v"}},
		"wildcard topic": {Topic: "job.>"},
	} {
		_, err := c.ExplainDecision(ctx, req)
		wantCode(t, "explain with "+name, err, connect.CodeInvalidArgument)
	}
	// Explaining decides nothing: no decision event.
	if err := f.other.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(f.tap.on(bus.SubjectSafetyDecision)); n != 0 {
		t.Fatalf("explaining published %d decision events", n)
	}
}

// decisionReader collects one StreamDecisions stream's events.
type decisionReader struct {
	name string
	ch   chan *cortexv1.SafetyDecisionEvent
	err  chan error    // the error that ended the stream
	done chan struct{} // closed when the reader has stopped
}

func readDecisions(t *testing.T, ctx context.Context, name string, c cortexv1connect.GatewayServiceClient, req *cortexv1.StreamDecisionsRequest) *decisionReader {
	t.Helper()
	s, err := c.StreamDecisions(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r := &decisionReader{name: name, ch: make(chan *cortexv1.SafetyDecisionEvent, 256), err: make(chan error, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer func() { _ = s.Close() }()
		for {
			msg, err := s.Receive()
			if err != nil {
				r.err <- err
				return
			}
			select {
			case r.ch <- msg.GetEvent():
			case <-ctx.Done():
				return
			}
		}
	}()
	return r
}

// until returns the ids of the events received before the one with id
// end, leaving out sync markers.
func (r *decisionReader) until(t *testing.T, end string) []string {
	t.Helper()
	var ids []string
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-r.ch:
			switch id := ev.GetJobId(); {
			case id == end:
				return ids
			case !strings.HasPrefix(id, "sync-") && !strings.HasPrefix(id, "end-"):
				ids = append(ids, id)
			}
		case err := <-r.err:
			t.Fatalf("%s stream ended: %v", r.name, err)
		case <-timeout:
			t.Fatalf("%s stream: no %s within 5s (got %v)", r.name, end, ids)
		}
	}
}

func TestStreamDecisions(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	acme, globex, admin := f.client(t, "key-acme-1234"), f.client(t, "key-globex-1234"), f.client(t, "key-acme-admin")

	// Bad filters are refused.
	for name, req := range map[string]*cortexv1.StreamDecisionsRequest{
		"topic":       {Topic: "not a topic"},
		"decision":    {Decisions: []cortexv1.Decision{42}},
		"unspecified": {Decisions: []cortexv1.Decision{cortexv1.Decision_DECISION_UNSPECIFIED}},
	} {
		s, err := acme.StreamDecisions(ctx, req)
		if err == nil {
			_, err = s.Receive()
			_ = s.Close()
		}
		wantCode(t, "a bad "+name+" filter", err, connect.CodeInvalidArgument)
	}

	readers := []*decisionReader{
		readDecisions(t, ctx, "acme", acme, &cortexv1.StreamDecisionsRequest{}),
		readDecisions(t, ctx, "globex", globex, &cortexv1.StreamDecisionsRequest{}),
		readDecisions(t, ctx, "admin", admin, &cortexv1.StreamDecisionsRequest{}),
		readDecisions(t, ctx, "admin denials", admin, &cortexv1.StreamDecisionsRequest{Decisions: []cortexv1.Decision{cortexv1.Decision_DECISION_DENY}}),
		readDecisions(t, ctx, "admin job.llm.*", admin, &cortexv1.StreamDecisionsRequest{Topic: "job.llm.*"}),
		readDecisions(t, ctx, "acme job.llm.echo holds and denials", acme, &cortexv1.StreamDecisionsRequest{
			Topic: "job.llm.echo", Decisions: []cortexv1.Decision{cortexv1.Decision_DECISION_REQUIRE_APPROVAL, cortexv1.Decision_DECISION_DENY}}),
	}
	// Markers (DENY on job.llm.echo) pass every filter above: the acme one
	// reaches every stream but globex's, the globex one reaches globex's.
	publish := func(id, tenant, topic string, d cortexv1.Decision) {
		t.Helper()
		err := f.other.Publish(bus.SubjectSafetyDecision, &cortexv1.BusPacket{TraceId: id, Payload: &cortexv1.BusPacket_SafetyDecision{
			SafetyDecision: &cortexv1.SafetyDecisionEvent{JobId: id, TenantId: tenant, Topic: topic, Attempt: 1, KernelId: "k1",
				Verdict: &cortexv1.SafetyVerdict{Decision: d, Rule: "r", Reason: "because", PolicyVersion: "sha256:000000000000"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	deny := cortexv1.Decision_DECISION_DENY
	marker := func(prefix string, n int) (acmeID, globexID string) {
		acmeID, globexID = fmt.Sprintf("%s-acme-%d", prefix, n), fmt.Sprintf("%s-globex-%d", prefix, n)
		publish(globexID, "globex", "job.llm.echo", deny)
		publish(acmeID, "acme", "job.llm.echo", deny)
		return acmeID, globexID
	}
	// The streams open asynchronously: send markers until each has one.
	seen := make([]bool, len(readers))
	for n := 0; slices.Contains(seen, false); n++ {
		if n > 500 {
			t.Fatalf("streams did not open: %v", seen)
		}
		marker("sync", n)
		for i, r := range readers {
		drain:
			for {
				select {
				case <-r.ch:
					seen[i] = true
				case err := <-r.err:
					t.Fatalf("%s stream ended: %v", r.name, err)
				default:
					break drain
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}

	allow, approval := cortexv1.Decision_DECISION_ALLOW, cortexv1.Decision_DECISION_REQUIRE_APPROVAL
	publish("a1", "acme", "job.echo", allow)
	publish("a2", "acme", "job.llm.chat", deny)
	publish("g1", "globex", "job.echo", deny)
	publish("a3", "acme", "job.echo", approval)
	publish("g2", "globex", "job.llm.chat", allow)
	// The decisions of a batch of checks come in one packet; each reaches
	// its streams once, in order.
	batch := &cortexv1.SafetyDecisions{}
	for _, ev := range []struct {
		id, tenant, topic string
		d                 cortexv1.Decision
	}{{"a5", "acme", "job.llm.echo", deny}, {"g3", "globex", "job.echo", allow}, {"a6", "acme", "job.echo", allow}} {
		batch.Events = append(batch.Events, &cortexv1.SafetyDecisionEvent{JobId: ev.id, TenantId: ev.tenant, Topic: ev.topic, Attempt: 1, KernelId: "k1",
			Verdict: &cortexv1.SafetyVerdict{Decision: ev.d, Rule: "r", Reason: "because", PolicyVersion: "sha256:000000000000"}})
	}
	if err := f.other.Publish(bus.SubjectSafetyDecision, &cortexv1.BusPacket{TraceId: "a5", Payload: &cortexv1.BusPacket_SafetyDecisions{SafetyDecisions: batch}}); err != nil {
		t.Fatal(err)
	}
	publish("a4", "acme", "job.llm.echo", approval)
	endAcme, endGlobex := marker("end", 0)
	for i, want := range [][]string{
		{"a1", "a2", "a3", "a5", "a6", "a4"},
		{"g1", "g2", "g3"},
		{"a1", "a2", "g1", "a3", "g2", "a5", "g3", "a6", "a4"},
		{"a2", "g1", "a5"},
		{"a2", "g2", "a5", "a4"},
		{"a5", "a4"},
	} {
		r := readers[i]
		end := endAcme
		if r.name == "globex" {
			end = endGlobex
		}
		if got := r.until(t, end); !slices.Equal(got, want) {
			t.Errorf("%s stream saw %v, want %v", r.name, got, want)
		}
	}
	cancel()
	for _, r := range readers {
		<-r.done
		select {
		case err := <-r.err:
			if !errors.Is(err, io.EOF) && connect.CodeOf(err) != connect.CodeCanceled {
				t.Errorf("%s stream ended with %v", r.name, err)
			}
		default:
		}
	}
}

// A kernel's reply on sys.safety.policy.apply that carries an error but no
// status must be reported like any refusal, not crash the call.
func TestApplyPolicyWithAReplyWithoutStatus(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: adminKeys})
	sub, err := f.other.Subscribe(context.Background(), bus.SubjectPolicyApply, "", 1, func(_ context.Context, p *cortexv1.BusPacket, reply string) error {
		return f.other.Publish(reply, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_PolicyReply{PolicyReply: &cortexv1.PolicyReply{Error: "cannot load"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Drain()
	if err := f.other.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, err = f.client(t, "key-acme-admin").ApplyPolicy(context.Background(), &cortexv1.ApplyPolicyRequest{Source: allowAllPolicy})
	wantCode(t, "apply answered by a reply without status", err, connect.CodeAborted, "cannot load")
}
