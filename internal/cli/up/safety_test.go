package up_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

const (
	awaiting = cortexv1.JobState_JOB_STATE_AWAITING_APPROVAL
	running  = cortexv1.JobState_JOB_STATE_RUNNING

	allowD    = cortexv1.Decision_DECISION_ALLOW
	denyD     = cortexv1.Decision_DECISION_DENY
	approvalD = cortexv1.Decision_DECISION_REQUIRE_APPROVAL
)

// writePolicy writes a policy file the way an editor that renames does, so
// a watcher never reads it half written, and returns its path.
func writePolicy(t *testing.T, path, src string) string {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".policy-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.WriteString(src); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
	return path
}

func hashOf(t *testing.T, src string) string {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("test policy does not parse: %v", err)
	}
	return p.Hash()
}

// decisionTap records every packet on sys.safety.decision, as sent, and
// the decisions they carry (one, or a batch's).
type decisionTap struct {
	nc     *nats.Conn
	mu     sync.Mutex
	raw    [][]byte
	events []*cortexv1.SafetyDecisionEvent
}

func newDecisionTap(t *testing.T, url string) *decisionTap {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	d := &decisionTap{nc: nc}
	_, err = nc.Subscribe(bus.SubjectSafetyDecision, func(m *nats.Msg) {
		p, err := bus.Decode(m.Data)
		d.mu.Lock()
		defer d.mu.Unlock()
		d.raw = append(d.raw, slices.Clone(m.Data))
		evs := p.GetSafetyDecisions().GetEvents() // a batch's decisions
		if ev := p.GetSafetyDecision(); ev != nil {
			evs = []*cortexv1.SafetyDecisionEvent{ev}
		}
		if err != nil || len(evs) == 0 {
			t.Errorf("undecodable decision event: %v", err)
			return
		}
		d.events = append(d.events, evs...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return d
}

// of returns the decisions on job id, oldest first.
func (d *decisionTap) of(id string) []*cortexv1.SafetyDecisionEvent {
	d.mu.Lock()
	defer d.mu.Unlock()
	var evs []*cortexv1.SafetyDecisionEvent
	for _, ev := range d.events {
		if ev.GetJobId() == id {
			evs = append(evs, ev)
		}
	}
	return evs
}

// await returns job id's decisions once there are n of them.
func (d *decisionTap) await(t *testing.T, id string, n int) []*cortexv1.SafetyDecisionEvent {
	t.Helper()
	poll(t, fmt.Sprintf("%d decision events on job %s", n, id), func() bool { return len(d.of(id)) >= n })
	evs := d.of(id)
	if len(evs) != n {
		t.Fatalf("job %s: %d decision events, want %d: %v", id, len(evs), n, evs)
	}
	return evs
}

// mentions reports whether any event, as sent, holds b.
func (d *decisionTap) mentions(b string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, raw := range d.raw {
		if bytes.Contains(raw, []byte(b)) {
			return true
		}
	}
	return false
}

// attemptSpy records which attempts of each job were dispatched to a pool.
type attemptSpy struct {
	nc       *nats.Conn
	mu       sync.Mutex
	attempts map[string][]uint32
}

func newAttemptSpy(t *testing.T, url string) *attemptSpy {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s := &attemptSpy{nc: nc, attempts: map[string][]uint32{}}
	_, err = nc.Subscribe("job.>", func(m *nats.Msg) {
		if p, err := bus.Decode(m.Data); err == nil {
			jobs, _ := bus.JobsOf(p)
			s.mu.Lock()
			for _, j := range jobs {
				s.attempts[j.GetJobId()] = append(s.attempts[j.GetJobId()], j.GetAttempt())
			}
			s.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *attemptSpy) of(id string) []uint32 {
	_ = s.nc.Flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.attempts[id])
}

// poll waits for cond, failing the test after 5s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) submit(t *testing.T, req *cortexv1.SubmitJobRequest) string {
	t.Helper()
	res, err := h.client.SubmitJob(context.Background(), req)
	if err != nil {
		t.Fatalf("submit %s: %v", req.GetTopic(), err)
	}
	return res.GetJobId()
}

func (h *harness) get(t *testing.T, id string) *cortexv1.Job {
	t.Helper()
	res, err := h.client.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatalf("get job %s: %v", id, err)
	}
	return res.GetJob()
}

// waitState polls job id until it is in state.
func (h *harness) waitState(t *testing.T, id string, state cortexv1.JobState) *cortexv1.Job {
	t.Helper()
	var j *cortexv1.Job
	poll(t, fmt.Sprintf("job %s %v", id, state), func() bool {
		j = h.get(t, id)
		if job.Terminal(j.GetState()) && j.GetState() != state {
			t.Fatalf("job %s ended %v (%s), want %v", id, j.GetState(), j.GetReason(), state)
		}
		return j.GetState() == state
	})
	return j
}

// waitEnd follows job id to its end.
func (h *harness) waitEnd(t *testing.T, id string) *cortexv1.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := job.WaitForEnd(ctx, h.client, id, nil)
	if err != nil {
		t.Fatalf("wait for job %s: %v", id, err)
	}
	return j
}

// sameVerdict reports whether an event's verdict is the one on the job.
func sameVerdict(ev *cortexv1.SafetyDecisionEvent, j *cortexv1.Job) bool {
	return proto.Equal(ev.GetVerdict(), j.GetSafety())
}

const e2ePolicy = `# Every decision kind, told apart by prompt and labels.
version: 1
name: e2e
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: deny-forbidden
    when: prompt.contains("forbidden-words")
    decision: DENY
    reason: "the prompt asks for forbidden work"
  - name: review-big-spend
    when: '"spend" in labels && labels["spend"] == "big"'
    decision: REQUIRE_APPROVAL
    reason: "big spends need a person"
  # A slow refill, so that the four quick submits below meet an empty
  # bucket however slow the machine.
  - name: throttle-burst
    when: '"mode" in labels && labels["mode"] == "burst"'
    decision: THROTTLE
    rate: {per_second: 0.01, burst: 2}
    reason: "bursts are rate limited"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`

// Every prompt below holds this, so no event may.
const promptMark = "pr0mpt-mark-"

func TestEachDecisionEndToEnd(t *testing.T) {
	path := writePolicy(t, filepath.Join(t.TempDir(), "e2e.yaml"), e2ePolicy)
	h := startHarness(t, up.ClusterOptions{Policy: safety.Files{Policy: path}})
	events := newDecisionTap(t, h.cluster.NATSURL)
	hash := hashOf(t, e2ePolicy)
	ctx := context.Background()
	// wantEvents checks that every decision on the job was published,
	// that the last one is what the job records, and what it says.
	wantEvents := func(j *cortexv1.Job, want ...cortexv1.Decision) []*cortexv1.SafetyDecisionEvent {
		t.Helper()
		evs := events.await(t, j.GetJobId(), len(want))
		for i, ev := range evs {
			if ev.GetVerdict().GetDecision() != want[i] || ev.GetTenantId() != "default" || ev.GetTopic() != j.GetTopic() ||
				ev.GetAttempt() != 1 || ev.GetKernelId() != h.cluster.Kernel.ID() || ev.GetLatency() == nil || ev.GetDecidedAt() == nil ||
				ev.GetVerdict().GetPolicyVersion() != hash || ev.GetShadow() != nil {
				t.Errorf("job %s decision %d: %v, want %v by kernel %s under %s", j.GetJobId(), i, ev, want[i], h.cluster.Kernel.ID(), hash)
			}
		}
		if last := evs[len(evs)-1]; !sameVerdict(last, j) {
			t.Errorf("job %s records %v, but the last decision published was %v", j.GetJobId(), j.GetSafety(), last.GetVerdict())
		}
		return evs
	}

	// ALLOW: runs.
	ok := h.run(t, "job.echo", promptMark+"allow")
	if ok.GetState() != completed || ok.GetResult() != promptMark+"allow" || ok.GetRule() != "allow-jobs" ||
		ok.GetSafety().GetDecision() != allowD || ok.GetSafety().GetPolicyVersion() != hash || !h.spy.dispatched(ok.GetJobId()) {
		t.Fatalf("allowed job: %v %q, safety %v", ok.GetState(), ok.GetResult(), ok.GetSafety())
	}
	wantEvents(ok.Job, allowD)

	// DENY: recorded with rule and reason, never dispatched.
	no := h.run(t, "job.echo", promptMark+"do the forbidden-words thing")
	if no.GetState() != denied || no.GetRule() != "deny-forbidden" || no.GetSafety().GetDecision() != denyD ||
		no.GetReason() != "the prompt asks for forbidden work" || no.GetSafety().GetReason() != "the prompt asks for forbidden work" {
		t.Fatalf("denied job: %v, reason %q, safety %v", no.GetState(), no.GetReason(), no.GetSafety())
	}
	if h.spy.dispatched(no.GetJobId()) {
		t.Fatal("a denied job was dispatched")
	}
	wantEvents(no.Job, denyD)

	// REQUIRE_APPROVAL: held, not dispatched; approved, it runs after
	// the gate was asked again; rejected, it never runs.
	spend := map[string]string{"spend": "big"}
	held := h.submit(t, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: promptMark + "held", Labels: spend})
	held2 := h.submit(t, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: promptMark + "held2", Labels: spend})
	for _, id := range []string{held, held2} {
		j := h.waitState(t, id, awaiting)
		if j.GetSafety().GetDecision() != approvalD || j.GetSafety().GetRule() != "review-big-spend" ||
			!strings.Contains(j.GetReason(), "cortexctl approve "+id) || j.GetApproval() != nil {
			t.Fatalf("held job: reason %q, safety %v", j.GetReason(), j.GetSafety())
		}
		wantEvents(j, approvalD)
		if h.spy.dispatched(id) {
			t.Fatal("a job held for approval was dispatched")
		}
	}
	if _, err := h.client.ApproveJob(ctx, &cortexv1.ApproveJobRequest{JobId: held, Comment: "fine"}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	j := h.waitEnd(t, held)
	if j.GetState() != completed || !j.GetApproval().GetApproved() || j.GetSafety().GetDecision() != allowD ||
		j.GetSafety().GetRule() != "review-big-spend" || !strings.HasPrefix(j.GetSafety().GetReason(), "approved by a person") || !h.spy.dispatched(held) {
		t.Fatalf("approved job: %v, approval %v, safety %v", j.GetState(), j.GetApproval(), j.GetSafety())
	}
	wantEvents(j, approvalD, allowD)
	if _, err := h.client.RejectJob(ctx, &cortexv1.RejectJobRequest{JobId: held2, Reason: "no"}); err != nil {
		t.Fatalf("reject: %v", err)
	}
	j = h.waitEnd(t, held2)
	if j.GetState() != denied || !strings.HasPrefix(j.GetReason(), "rejected by default") || j.GetApproval().GetApproved() {
		t.Fatalf("rejected job: %v %q", j.GetState(), j.GetReason())
	}
	wantEvents(j, approvalD) // rejecting asks no one
	if h.spy.dispatched(held2) {
		t.Fatal("a rejected job was dispatched")
	}
	// Counted as a denial by the rule that held it.
	if m := scrape(t, h); !strings.Contains(m, `cortex_jobs_denied_total{rule="review-big-spend",topic="job.echo"} 1`+"\n") {
		t.Errorf("/metrics after the rejection lacks cortex_jobs_denied_total{rule=\"review-big-spend\",topic=\"job.echo\"} 1")
	}

	// THROTTLE: the burst runs, the rest is denied.
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		ids []string
	)
	for i := range 4 {
		wg.Go(func() {
			res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: fmt.Sprintf("%sburst-%d", promptMark, i),
				Labels: map[string]string{"mode": "burst"}})
			if err != nil {
				t.Errorf("submit: %v", err)
				return
			}
			mu.Lock()
			ids = append(ids, res.GetJobId())
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	var ran, refused int
	for _, id := range ids {
		j := h.waitEnd(t, id)
		switch {
		case j.GetState() == completed && strings.HasPrefix(j.GetSafety().GetReason(), "within rate") && h.spy.dispatched(id):
			ran++
			wantEvents(j, allowD)
		case j.GetState() == denied && strings.Contains(j.GetReason(), "rate exceeded") && !h.spy.dispatched(id):
			refused++
			wantEvents(j, denyD)
		default:
			t.Errorf("throttled job: %v %q, safety %v", j.GetState(), j.GetReason(), j.GetSafety())
		}
		if j.GetSafety().GetRule() != "throttle-burst" {
			t.Errorf("throttled job decided by %q", j.GetSafety().GetRule())
		}
	}
	if ran != 2 || refused != 2 {
		t.Errorf("burst of 4 at burst 2: %d ran, %d denied; want 2 and 2", ran, refused)
	}

	// No event ever carried a prompt.
	if events.mentions(promptMark) || events.mentions("forbidden-words") {
		t.Fatal("a decision event carries prompt bytes")
	}
}

func TestFailsClosedOnEveryKernelFault(t *testing.T) {
	encode := func(resp *cortexv1.CheckResponse, hb *cortexv1.Heartbeat) []byte {
		p := &cortexv1.BusPacket{ProtocolVersion: bus.ProtocolVersion, Payload: &cortexv1.BusPacket_CheckResponse{CheckResponse: resp}}
		if hb != nil {
			p.Payload = &cortexv1.BusPacket_Heartbeat{Heartbeat: hb}
		}
		data, err := proto.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	allow := encode(&cortexv1.CheckResponse{Decision: allowD, Rule: "fake-allow", Reason: "a fake kernel"}, nil)
	for _, tc := range []struct {
		name   string
		answer []byte // nil: no kernel at all
		slow   bool   // answer only after the deadline
		says   string
	}{
		{name: "no kernel", says: "no safety kernel listens on sys.safety.check"},
		{name: "slow kernel", answer: allow, slow: true, says: "no decision within 300ms"},
		{name: "garbage", answer: []byte("\x00garbage\xff"), says: "malformed"},
		{name: "wrong payload", answer: encode(nil, &cortexv1.Heartbeat{WorkerId: "w"}), says: "something other than a decision"},
		{name: "unknown decision", answer: encode(&cortexv1.CheckResponse{Decision: 42, Rule: "odd"}, nil), says: "unknown decision 42"},
		{name: "unspecified decision", answer: encode(&cortexv1.CheckResponse{Rule: "odd"}, nil), says: "unknown decision 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHarness(t, up.ClusterOptions{NoSafety: true, SafetyTimeout: 300 * time.Millisecond})
			if h.cluster.Kernel != nil {
				t.Fatal("NoSafety started a kernel")
			}
			release := make(chan struct{})
			var released sync.Once
			unblock := func() { released.Do(func() { close(release) }) }
			defer unblock()
			answer := func(data []byte, slow bool) *nats.Subscription {
				sub, err := h.spy.nc.Subscribe(bus.SubjectSafetyCheck, func(m *nats.Msg) {
					if slow {
						<-release // until the client has given up
					}
					_ = m.Respond(data)
				})
				if err != nil {
					t.Fatal(err)
				}
				if err := h.spy.nc.Flush(); err != nil {
					t.Fatal(err)
				}
				return sub
			}
			var faulty *nats.Subscription
			if tc.answer != nil {
				faulty = answer(tc.answer, tc.slow)
			}
			st := h.run(t, "job.echo", "hi")
			if st.GetState() != denied || st.GetRule() != bus.RuleFailClosed || st.GetSafety().GetDecision() != denyD || !strings.Contains(st.GetReason(), tc.says) {
				t.Fatalf("%s: %v rule %q reason %q, want DENIED by fail-closed saying %q", tc.name, st.GetState(), st.GetRule(), st.GetReason(), tc.says)
			}
			if h.spy.dispatched(st.GetJobId()) {
				t.Fatalf("%s: the job was dispatched", tc.name)
			}

			// The same stack runs a job once a kernel answers properly, and
			// the spy sees that dispatch: the denial above was the fault's.
			unblock()
			if faulty != nil {
				_ = faulty.Unsubscribe()
			}
			good := answer(allow, false)
			defer func() { _ = good.Unsubscribe() }()
			ok := h.run(t, "job.echo", "after")
			if ok.GetState() != completed || ok.GetRule() != "fake-allow" || !h.spy.dispatched(ok.GetJobId()) {
				t.Fatalf("with a kernel that allows: %v rule %q reason %q, dispatched %v", ok.GetState(), ok.GetRule(), ok.GetReason(), h.spy.dispatched(ok.GetJobId()))
			}
		})
	}
}

const (
	denySleepPolicy = `version: 1
name: no-sleep
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: deny-sleep
    when: topic == "job.sleep"
    decision: DENY
    reason: "sleeping is over"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`
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

// sleepJob is a job whose first attempt times out, with a second to come.
var sleepJob = &cortexv1.SubmitJobRequest{Topic: "job.sleep", Prompt: "5s", MaxAttempts: new(uint32(2))}

// wantDecisions checks the decisions published on a job: attempt,
// decision, rule and policy of each, in order.
func wantDecisions(t *testing.T, evs []*cortexv1.SafetyDecisionEvent, want ...*cortexv1.SafetyDecisionEvent) {
	t.Helper()
	for i, ev := range evs {
		w := want[i]
		if ev.GetAttempt() != w.GetAttempt() || ev.GetVerdict().GetDecision() != w.GetVerdict().GetDecision() ||
			ev.GetVerdict().GetRule() != w.GetVerdict().GetRule() || ev.GetVerdict().GetPolicyVersion() != w.GetVerdict().GetPolicyVersion() {
			t.Errorf("decision %d: attempt %d %v, want attempt %d %v", i, ev.GetAttempt(), ev.GetVerdict(), w.GetAttempt(), w.GetVerdict())
		}
	}
}

func decided(attempt uint32, d cortexv1.Decision, rule, hash string) *cortexv1.SafetyDecisionEvent {
	return &cortexv1.SafetyDecisionEvent{Attempt: attempt, Verdict: &cortexv1.SafetyVerdict{Decision: d, Rule: rule, PolicyVersion: hash}}
}

// A retry goes through the gate again and meets the policy in force then,
// not the one that let the first attempt run.
func TestRetryIsCheckedAgainstThePolicyInForce(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	spy := newAttemptSpy(t, h.cluster.NATSURL)
	events := newDecisionTap(t, h.cluster.NATSURL)
	k, ctx := h.cluster.Kernel, context.Background()
	strict, err := policy.Parse("no-sleep.yaml", []byte(denySleepPolicy))
	if err != nil {
		t.Fatal(err)
	}
	var id string
	for try := 1; ; try++ {
		k.Use(policy.Default(), safety.OriginBuiltin, string(policy.DefaultYAML()), false)
		req := proto.Clone(sleepJob).(*cortexv1.SubmitJobRequest)
		req.Timeout = durationpb.New(500 * time.Millisecond)
		id = h.submit(t, req)
		poll(t, "attempt 1 running", func() bool {
			j, err := h.cluster.Store.Get(ctx, id)
			return err == nil && (j.State == store.Running || j.State.Terminal() || j.Attempt > 1)
		})
		k.Use(strict, "test", denySleepPolicy, false)
		// Attempt 2 is checked only after attempt 1 left RUNNING: if it
		// still runs now, the new policy is in force for the retry.
		if j, err := h.cluster.Store.Get(ctx, id); err == nil && j.State == store.Running && j.Attempt == 1 {
			break
		}
		// The machine stalled past the attempt's timeout; try again.
		h.waitEnd(t, id)
		if try == 3 {
			t.Fatal("could not change the policy while attempt 1 ran, three times")
		}
		t.Logf("try %d: attempt 1 ended before the policy changed; again", try)
	}
	j := h.waitEnd(t, id)
	if j.GetState() != denied || j.GetAttempt() != 2 || j.GetSafety().GetRule() != "deny-sleep" ||
		j.GetSafety().GetPolicyVersion() != strict.Hash() || j.GetReason() != "sleeping is over" {
		t.Fatalf("retried job: %v attempt %d reason %q safety %v; want attempt 2 DENIED by deny-sleep", j.GetState(), j.GetAttempt(), j.GetReason(), j.GetSafety())
	}
	if got := spy.of(id); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("dispatched attempts %v, want only attempt 1", got)
	}
	wantDecisions(t, events.await(t, id, 2),
		decided(1, allowD, "allow-jobs", policy.Default().Hash()),
		decided(2, denyD, "deny-sleep", strict.Hash()))
}

// The same through the cluster's own paths: a policy file, ApplyPolicy
// over the bus, and an approval that asks the gate again.
func TestApprovedRetryMeetsAnAppliedPolicy(t *testing.T) {
	const review = `version: 1
name: review-retries
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: review-sleep-retries
    when: topic == "job.sleep" && attempt > 1
    decision: REQUIRE_APPROVAL
    reason: "a retried sleep needs a person"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`
	path := writePolicy(t, filepath.Join(t.TempDir(), "review.yaml"), review)
	h := startHarness(t, up.ClusterOptions{Policy: safety.Files{Policy: path}})
	spy := newAttemptSpy(t, h.cluster.NATSURL)
	events := newDecisionTap(t, h.cluster.NATSURL)
	ctx := context.Background()
	req := proto.Clone(sleepJob).(*cortexv1.SubmitJobRequest)
	req.Timeout = durationpb.New(200 * time.Millisecond)
	id := h.submit(t, req)

	j := h.waitState(t, id, awaiting)
	if j.GetAttempt() != 2 || j.GetSafety().GetRule() != "review-sleep-retries" {
		t.Fatalf("held retry: attempt %d safety %v", j.GetAttempt(), j.GetSafety())
	}
	res, err := h.client.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: denySleepPolicy, Name: "no-sleep.yaml"})
	if err != nil || len(res.GetKernels()) != 1 || res.GetKernels()[0].GetActive().GetHash() != hashOf(t, denySleepPolicy) ||
		res.GetKernels()[0].GetKernelId() != h.cluster.Kernel.ID() {
		t.Fatalf("apply = %v, %v", res, err)
	}
	if _, err := h.client.ApproveJob(ctx, &cortexv1.ApproveJobRequest{JobId: id}); err != nil {
		t.Fatalf("approve: %v", err)
	}
	j = h.waitEnd(t, id)
	if j.GetState() != denied || j.GetAttempt() != 2 || j.GetSafety().GetRule() != "deny-sleep" || !j.GetApproval().GetApproved() {
		t.Fatalf("approved retry: %v attempt %d reason %q safety %v; want DENIED by deny-sleep: an approval satisfies nothing but REQUIRE_APPROVAL",
			j.GetState(), j.GetAttempt(), j.GetReason(), j.GetSafety())
	}
	if got := spy.of(id); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("dispatched attempts %v, want only attempt 1", got)
	}
	wantDecisions(t, events.await(t, id, 3),
		decided(1, allowD, "allow-jobs", hashOf(t, review)),
		decided(2, approvalD, "review-sleep-retries", hashOf(t, review)),
		decided(2, denyD, "deny-sleep", hashOf(t, denySleepPolicy)))
}

func TestPolicyFileHotReload(t *testing.T) {
	const v1 = `version: 1
name: v1
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: allow-jobs-v1
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`
	path := writePolicy(t, filepath.Join(t.TempDir(), "policy.yaml"), v1)
	h := startHarness(t, up.ClusterOptions{Policy: safety.Files{Policy: path}})
	status := func() *cortexv1.PolicyStatus {
		t.Helper()
		res, err := h.client.GetPolicy(context.Background(), &cortexv1.GetPolicyRequest{})
		if err != nil {
			t.Fatalf("get policy: %v", err)
		}
		return res.GetStatus()
	}
	if st := status(); st.GetActive().GetHash() != hashOf(t, v1) || st.GetActive().GetOrigin() != "file "+path || st.GetLastError() != "" {
		t.Fatalf("at start: %v, want %s from %s", st, hashOf(t, v1), path)
	}

	// A broken file changes nothing, and says where it is broken.
	writePolicy(t, path, brokenPolicy)
	poll(t, "the broken file reported", func() bool { return status().GetLastError() != "" })
	st := status()
	if st.GetActive().GetHash() != hashOf(t, v1) || !strings.Contains(st.GetLastError(), path+":10") || !strings.Contains(st.GetLastError(), "deny-typo") {
		t.Fatalf("after a broken file: active %s, last error %q; want %s kept and an error at %s:10", st.GetActive().GetHash(), st.GetLastError(), hashOf(t, v1), path)
	}
	if o := h.run(t, "job.echo", "still v1"); o.GetState() != completed || o.GetRule() != "allow-jobs-v1" || o.GetSafety().GetPolicyVersion() != hashOf(t, v1) {
		t.Fatalf("under the kept policy: %v safety %v", o.GetState(), o.GetSafety())
	}

	// A good file takes over, and decisions follow it.
	writePolicy(t, path, denyEchoPolicy)
	poll(t, "the new policy loaded", func() bool { return status().GetActive().GetHash() == hashOf(t, denyEchoPolicy) })
	if st := status(); st.GetLastError() != "" || st.GetActive().GetSource() != denyEchoPolicy {
		t.Fatalf("after a good file: %v", st)
	}
	o := h.run(t, "job.echo", "now denied")
	if o.GetState() != denied || o.GetRule() != "deny-echo" || o.GetSafety().GetPolicyVersion() != hashOf(t, denyEchoPolicy) || h.spy.dispatched(o.GetJobId()) {
		t.Fatalf("under the new policy: %v safety %v", o.GetState(), o.GetSafety())
	}
}

func TestShadowPolicyIsRecordedNotEnforced(t *testing.T) {
	path := writePolicy(t, filepath.Join(t.TempDir(), "shadow.yaml"), denyEchoPolicy)
	h := startHarness(t, up.ClusterOptions{Policy: safety.Files{Shadow: path}})
	events := newDecisionTap(t, h.cluster.NATSURL)
	ctx, shadowHash := context.Background(), hashOf(t, denyEchoPolicy)
	wantShadow := func(what string, v *cortexv1.SafetyVerdict) {
		t.Helper()
		if v.GetDecision() != denyD || v.GetRule() != "deny-echo" || v.GetReason() != "job.echo is retired" || v.GetPolicyVersion() != shadowHash {
			t.Errorf("%s: shadow %v, want DENY by deny-echo of %s", what, v, shadowHash)
		}
	}

	o := h.run(t, "job.echo", "shadowed")
	if o.GetState() != completed || o.GetResult() != "shadowed" || o.GetRule() != "allow-jobs" || !h.spy.dispatched(o.GetJobId()) {
		t.Fatalf("job.echo under a shadow DENY: %v safety %v, want COMPLETED by allow-jobs", o.GetState(), o.GetSafety())
	}
	ev := events.await(t, o.GetJobId(), 1)[0]
	if ev.GetVerdict().GetDecision() != allowD || !sameVerdict(ev, o.Job) {
		t.Errorf("decision event %v, job records %v", ev.GetVerdict(), o.GetSafety())
	}
	wantShadow("decision event", ev.GetShadow())

	// The kernel's answer carries it too.
	conn, err := bus.Connect(h.cluster.NATSURL, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p, err := conn.Request(ctx, bus.SubjectSafetyCheck, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_CheckRequest{CheckRequest: &cortexv1.CheckRequest{
		JobId: "probe", Topic: "job.echo", TenantId: "default", Attempt: 1,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if resp := p.GetCheckResponse(); resp.GetDecision() != allowD {
		t.Errorf("check response %v, want ALLOW", resp)
	} else {
		wantShadow("check response", resp.GetShadow())
	}

	st, err := h.client.GetPolicy(ctx, &cortexv1.GetPolicyRequest{})
	if err != nil || st.GetStatus().GetShadow().GetHash() != shadowHash || st.GetStatus().GetShadow().GetOrigin() != "file "+path ||
		st.GetStatus().GetActive().GetOrigin() != safety.OriginBuiltin {
		t.Fatalf("get policy: %v, %v", st, err)
	}
	ex, err := h.client.ExplainDecision(ctx, &cortexv1.ExplainDecisionRequest{Topic: "job.echo", Prompt: "x"})
	if err != nil || ex.GetDecision().GetDecision() != allowD {
		t.Fatalf("explain: %v, %v", ex, err)
	}
	wantShadow("explanation", ex.GetShadow())
}

func TestBrokenPolicyFileStopsTheStart(t *testing.T) {
	path := writePolicy(t, filepath.Join(t.TempDir(), "broken.yaml"), brokenPolicy)
	c, err := up.StartCluster(context.Background(), up.ClusterOptions{Listen: "127.0.0.1:0", Policy: safety.Files{Policy: path}}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = c.Close()
		t.Fatal("a cluster started on a policy file that does not compile")
	}
	if !strings.Contains(err.Error(), path+":10") || !strings.Contains(err.Error(), "deny-typo") {
		t.Fatalf("start with a broken policy: %v, want the error at %s:10 in rule deny-typo", err, path)
	}
}

// `policy apply` says a kernel started with --policy FILE follows its file
// when the file changes; an edit of another file (here the shadow file
// beside it) is not a change of the policy file and must leave the applied
// policy in force.
func TestAppliedPolicySurvivesAnEditOfTheShadowFile(t *testing.T) {
	dir := t.TempDir()
	files := safety.Files{
		Policy: writePolicy(t, filepath.Join(dir, "policy.yaml"), denySleepPolicy),
		Shadow: writePolicy(t, filepath.Join(dir, "shadow.yaml"), denyEchoPolicy),
	}
	h := startHarness(t, up.ClusterOptions{Policy: files})
	ctx := context.Background()
	status := func() *cortexv1.PolicyStatus {
		t.Helper()
		res, err := h.client.GetPolicy(ctx, &cortexv1.GetPolicyRequest{})
		if err != nil {
			t.Fatalf("get policy: %v", err)
		}
		return res.GetStatus()
	}
	const applied = `version: 1
name: applied
default:
  decision: ALLOW
  reason: "everything runs"
rules: []
`
	if _, err := h.client.ApplyPolicy(ctx, &cortexv1.ApplyPolicyRequest{Source: applied}); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.GetActive().GetHash() != hashOf(t, applied) {
		t.Fatalf("after apply: %v", st.GetActive())
	}
	newShadow := strings.Replace(denyEchoPolicy, "job.echo is retired", "job.echo is retired, really", 1)
	writePolicy(t, files.Shadow, newShadow)
	// One reload pass reads both files, the policy file first: once the
	// new shadow is in, the pass is over.
	poll(t, "the new shadow loaded", func() bool { return status().GetShadow().GetHash() == hashOf(t, newShadow) })
	if st := status(); st.GetActive().GetHash() != hashOf(t, applied) || st.GetActive().GetOrigin() != safety.OriginApplied {
		t.Fatalf("editing the shadow file replaced the applied policy with %s (%s); the policy file did not change",
			st.GetActive().GetHash(), st.GetActive().GetOrigin())
	}
}

// An approval covers the attempt it was given to and the rule that held it:
// a retry held by another rule waits for a person again.
func TestApprovalDoesNotCarryOverToARetry(t *testing.T) {
	const pol = `version: 1
name: two-approvals
default:
  decision: DENY
  reason: "no"
rules:
  - name: second-look-on-retry
    when: topic == "job.sleep" && attempt > 1
    decision: REQUIRE_APPROVAL
    reason: "a retry needs a fresh look"
  - name: approve-sleep
    when: topic == "job.sleep"
    decision: REQUIRE_APPROVAL
    reason: "sleep needs a person"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "ok"
`
	path := writePolicy(t, filepath.Join(t.TempDir(), "p.yaml"), pol)
	h := startHarness(t, up.ClusterOptions{Policy: safety.Files{Policy: path}})
	spy := newAttemptSpy(t, h.cluster.NATSURL)
	req := proto.Clone(sleepJob).(*cortexv1.SubmitJobRequest)
	req.Timeout = durationpb.New(200 * time.Millisecond)
	id := h.submit(t, req)
	h.waitState(t, id, awaiting)
	if _, err := h.client.ApproveJob(context.Background(), &cortexv1.ApproveJobRequest{JobId: id}); err != nil {
		t.Fatal(err)
	}
	// Attempt 1 runs, times out, and attempt 2 is held by the other rule.
	var j *cortexv1.Job
	poll(t, "attempt 2 held for approval", func() bool {
		res, err := h.client.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
		j = res.GetJob()
		return err == nil && j.GetAttempt() == 2 && j.GetState() == awaiting
	})
	if j.GetSafety().GetRule() != "second-look-on-retry" {
		t.Errorf("attempt 2 held by %q, want second-look-on-retry", j.GetSafety().GetRule())
	}
	if got := spy.of(id); !slices.Equal(got, []uint32{1}) {
		t.Errorf("dispatched attempts %v, want only the approved attempt 1", got)
	}
}

// A kernel that cannot load the policy an operator applied does not start:
// enforcing the built-in policy instead would let through what the applied
// one denies.
func TestKernelWithABrokenAppliedPolicyDoesNotStart(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{})
	ctx := context.Background()
	if err := h.cluster.Store.SavePolicy(ctx, false, "future.yaml", "version: 2\n"); err != nil {
		t.Fatal(err)
	}
	k, conn, err := daemon.StartSafety(ctx, bus.Endpoint{URL: h.cluster.NATSURL}, h.cluster.Store, safety.Files{}, nil, nil, slog.New(slog.DiscardHandler))
	if err == nil {
		conn.Close()
		t.Fatalf("a kernel started on %v", k.Status().GetActive())
	}
	if !strings.Contains(err.Error(), "does not load") || !strings.Contains(err.Error(), "policy apply") {
		t.Fatalf("error %q, want one that says the applied policy does not load and what to do", err)
	}
}
