package safety_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/safety/policy"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

var (
	allow           = cortexv1.Decision_DECISION_ALLOW
	deny            = cortexv1.Decision_DECISION_DENY
	requireApproval = cortexv1.Decision_DECISION_REQUIRE_APPROVAL
)

// fakeInputs serves prompts by job id and counts the prompts read (calls)
// and the batch reads.
type fakeInputs struct {
	mu      sync.Mutex
	prompts map[string]string
	err     error
	calls   atomic.Int64
	batches atomic.Int64
}

var _ safety.Inputs = (*fakeInputs)(nil)

func newInputs(prompts map[string]string) *fakeInputs {
	return &fakeInputs{prompts: prompts}
}

func (f *fakeInputs) Input(_ context.Context, id string) (string, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	p, ok := f.prompts[id]
	if !ok {
		return "", errors.New("no context stored for job " + id)
	}
	return p, nil
}

func (f *fakeInputs) InputBatch(ctx context.Context, ids []string) ([]string, []error) {
	f.batches.Add(1)
	prompts, errs := make([]string, len(ids)), make([]error, len(ids))
	for i, id := range ids {
		prompts[i], errs[i] = f.Input(ctx, id)
	}
	return prompts, errs
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// fakeGitHubToken returns text the credential detector flags: a classic
// GitHub token, built at run time so that no secret scanner flags the
// repository.
func fakeGitHubToken() string {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	r := rand.New(rand.NewPCG(42, 0x5eed))
	b := make([]byte, 36)
	for i := range b {
		b[i] = alnum[r.IntN(len(alnum))]
	}
	return "gh" + "p_" + string(b)
}

// Prompts by job id shared by the tests.
const (
	cleanPrompt    = "Summarise the attached quarterly report in five bullet points for the board."
	keyTalkPrompt  = "How do I rotate my AWS access key, and where should an API key be kept so it never lands in git?"
	credJobID      = "job-cred"
	cleanJobID     = "job-clean"
	keyTalkJobID   = "job-keytalk"
	missingJobID   = "job-missing"
	testdataPolicy = "testdata"
)

func credPrompt() string { return "please push with token " + fakeGitHubToken() + " to the repo" }

func defaultPrompts() map[string]string {
	return map[string]string{cleanJobID: cleanPrompt, keyTalkJobID: keyTalkPrompt, credJobID: credPrompt()}
}

func req(jobID, topic string, promptLen int) *cortexv1.CheckRequest {
	return &cortexv1.CheckRequest{JobId: jobID, Topic: topic, TenantId: "acme", Attempt: 1, PromptSize: uint64(promptLen)}
}

func mustLoad(t testing.TB, name string) *policy.Policy {
	t.Helper()
	p, err := policy.Load(filepath.Join(testdataPolicy, name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustCheck(t testing.TB, k *safety.Kernel, r *cortexv1.CheckRequest) *cortexv1.CheckResponse {
	t.Helper()
	resp, err := k.Check(context.Background(), r)
	if err != nil {
		t.Fatalf("Check(%s, %s): %v", r.GetJobId(), r.GetTopic(), err)
	}
	return resp
}

// defaultCases are decisions of the default policy on the prompts of
// defaultPrompts.
func defaultCases() []struct {
	name     string
	req      *cortexv1.CheckRequest
	decision cortexv1.Decision
	rule     string
} {
	return []struct {
		name     string
		req      *cortexv1.CheckRequest
		decision cortexv1.Decision
		rule     string
	}{
		{"job allowed", req(cleanJobID, "job.echo", len(cleanPrompt)), allow, "allow-jobs"},
		{"sys.destroy", req(cleanJobID, "sys.destroy", len(cleanPrompt)), deny, "deny-sys-destroy"},
		{"other sys topic", req(cleanJobID, "sys.other", len(cleanPrompt)), deny, "deny-sys-topics"},
		{"unknown topic", req(cleanJobID, "other.thing", len(cleanPrompt)), deny, policy.DefaultRuleName},
		{"credential in prompt", req(credJobID, "job.echo", len(credPrompt())), deny, "deny-credentials"},
		{"prompt about keys", req(keyTalkJobID, "job.echo", len(keyTalkPrompt)), allow, "allow-jobs"},
	}
}

func TestCheckDefaultPolicy(t *testing.T) {
	k := safety.NewKernel("k1", newInputs(defaultPrompts()), discard())
	hash := policy.Default().Hash()
	if got := k.Status().GetActive().GetHash(); got != hash {
		t.Fatalf("active policy %s, want the default %s", got, hash)
	}
	for _, tc := range defaultCases() {
		t.Run(tc.name, func(t *testing.T) {
			got := mustCheck(t, k, tc.req)
			if got.GetDecision() != tc.decision || got.GetRule() != tc.rule {
				t.Errorf("got %v by %q, want %v by %q (reason %q)", got.GetDecision(), got.GetRule(), tc.decision, tc.rule, got.GetReason())
			}
			if got.GetReason() == "" || got.GetPolicyVersion() != hash {
				t.Errorf("reason %q, policy_version %q; want a reason and %s", got.GetReason(), got.GetPolicyVersion(), hash)
			}
			if got.GetShadow() != nil {
				t.Errorf("shadow verdict %v without a shadow policy", got.GetShadow())
			}
			if strings.Contains(got.GetReason(), fakeGitHubToken()) {
				t.Errorf("reason quotes the credential: %q", got.GetReason())
			}
		})
	}
}

func TestCheckReadsPromptOnlyWhenNeeded(t *testing.T) {
	noPrompt := mustLoad(t, "no_prompt.yaml")
	if noPrompt.NeedsPrompt() {
		t.Fatal("testdata/no_prompt.yaml reads the prompt")
	}
	for _, tc := range []struct {
		name           string
		active, shadow *policy.Policy
		req            *cortexv1.CheckRequest
		reads          int64
		decision       cortexv1.Decision
	}{
		{"no rule reads the prompt", noPrompt, nil, req(cleanJobID, "job.echo", len(cleanPrompt)), 0, allow},
		{"prompt_size only", noPrompt, nil, req(cleanJobID, "job.echo", 5000), 0, deny},
		{"rule reads the prompt", policy.Default(), nil, req(cleanJobID, "job.echo", len(cleanPrompt)), 1, allow},
		{"shadow rule reads the prompt", noPrompt, policy.Default(), req(cleanJobID, "job.echo", len(cleanPrompt)), 1, allow},
		// A binary payload is scanned too: a stray byte must not hide a key.
		{"binary payload", policy.Default(), nil, &cortexv1.CheckRequest{JobId: credJobID, Topic: "job.echo", PromptSize: 100, BinaryPayload: true}, 1, deny},
		{"empty prompt", policy.Default(), nil, req(credJobID, "job.echo", 0), 0, allow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := newInputs(defaultPrompts())
			k := safety.NewKernel("k1", in, discard())
			k.Use(tc.active, "test", "", false)
			if tc.shadow != nil {
				k.Use(tc.shadow, "test", "", true)
			}
			got := mustCheck(t, k, tc.req)
			if n := in.calls.Load(); n != tc.reads {
				t.Errorf("Inputs read %d times, want %d", n, tc.reads)
			}
			if got.GetDecision() != tc.decision {
				t.Errorf("decision %v by %s (%s), want %v", got.GetDecision(), got.GetRule(), got.GetReason(), tc.decision)
			}
		})
	}
}

func TestCheckInputsErrorFailsClosed(t *testing.T) {
	in := newInputs(defaultPrompts())
	in.err = errors.New("redis: connection refused")
	k := safety.NewKernel("k1", in, discard())
	got := mustCheck(t, k, req(cleanJobID, "job.echo", len(cleanPrompt)))
	if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || !strings.Contains(got.GetReason(), "connection refused") {
		t.Errorf("got %v by %q (%q), want DENY by %s naming the error", got.GetDecision(), got.GetRule(), got.GetReason(), bus.RuleFailClosed)
	}
	if got.GetPolicyVersion() != policy.Default().Hash() {
		t.Errorf("policy_version %q, want %s", got.GetPolicyVersion(), policy.Default().Hash())
	}
	// A job whose prompt is missing from the store fails closed too.
	in.err = nil
	got = mustCheck(t, k, req(missingJobID, "job.echo", 10))
	if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || got.GetReason() == "" {
		t.Errorf("missing prompt: got %v by %q (%q), want DENY by %s", got.GetDecision(), got.GetRule(), got.GetReason(), bus.RuleFailClosed)
	}
}

func TestCheckNilInputsFailsClosed(t *testing.T) {
	k := safety.NewKernel("k1", nil, discard())
	got := mustCheck(t, k, req(cleanJobID, "job.echo", len(cleanPrompt)))
	if got.GetDecision() != deny || got.GetRule() != bus.RuleFailClosed || got.GetReason() == "" {
		t.Errorf("got %v by %q (%q), want DENY by %s with a reason", got.GetDecision(), got.GetRule(), got.GetReason(), bus.RuleFailClosed)
	}
	// Without a prompt-reading rule a kernel needs no store.
	k.Use(mustLoad(t, "no_prompt.yaml"), "test", "", false)
	if got := mustCheck(t, k, req(cleanJobID, "job.echo", len(cleanPrompt))); got.GetDecision() != allow {
		t.Errorf("no prompt-reading rule: got %v by %q (%q), want ALLOW", got.GetDecision(), got.GetRule(), got.GetReason())
	}
}

func TestCheckRequireApproval(t *testing.T) {
	p := mustLoad(t, "approval.yaml")
	k := safety.NewKernel("k1", nil, discard())
	k.Use(p, "test", "", false)
	for _, tc := range []struct {
		name     string
		topic    string
		approved bool
		decision cortexv1.Decision
		rule     string
		reason   string
	}{
		{"needs approval", "job.gpu", false, requireApproval, "review-gpu", "approval"},
		{"approved", "job.gpu", true, allow, "review-gpu", "approved by a person"},
		{"approval does not lift a deny", "sys.gpu", true, deny, "deny-sys", "reserved"},
		{"approval does not lift the default", "other.gpu", true, deny, policy.DefaultRuleName, "no rule"},
		{"approval keeps an allow", "job.echo", true, allow, "allow-jobs", "allowed"},
		{"approval of another rule holds it again", "job.gpu", true, requireApproval, "review-gpu", "approval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := req("j1", tc.topic, 0)
			r.Approved = tc.approved
			r.ApprovedRule = tc.rule
			if tc.name == "approval of another rule holds it again" {
				r.ApprovedRule = "some-other-rule"
			}
			got := mustCheck(t, k, r)
			if got.GetDecision() != tc.decision || got.GetRule() != tc.rule || !strings.Contains(got.GetReason(), tc.reason) || got.GetPolicyVersion() != p.Hash() {
				t.Errorf("got %v by %q (%q, %s), want %v by %q with a reason containing %q and version %s",
					got.GetDecision(), got.GetRule(), got.GetReason(), got.GetPolicyVersion(), tc.decision, tc.rule, tc.reason, p.Hash())
			}
		})
	}
}

func TestShadowPolicy(t *testing.T) {
	shadow := mustLoad(t, "shadow.yaml")
	k := safety.NewKernel("k1", newInputs(defaultPrompts()), discard())
	k.Use(shadow, "test", "shadow.yaml text", true)
	if st := k.Status(); st.GetShadow().GetHash() != shadow.Hash() || st.GetActive().GetHash() != policy.Default().Hash() {
		t.Fatalf("status %v, want default active and %s in the shadow", st, shadow.Hash())
	}
	got := mustCheck(t, k, req(cleanJobID, "job.echo", len(cleanPrompt)))
	if got.GetDecision() != allow || got.GetRule() != "allow-jobs" || got.GetPolicyVersion() != policy.Default().Hash() {
		t.Errorf("enforced %v by %q (%s), want ALLOW by allow-jobs from the active policy", got.GetDecision(), got.GetRule(), got.GetPolicyVersion())
	}
	sh := got.GetShadow()
	if sh.GetDecision() != deny || sh.GetRule() != "deny-echo" || sh.GetReason() == "" || sh.GetPolicyVersion() != shadow.Hash() {
		t.Errorf("shadow verdict %v, want DENY by deny-echo with version %s", sh, shadow.Hash())
	}
	// The shadow is evaluated even where it agrees.
	if got := mustCheck(t, k, req(cleanJobID, "job.other", len(cleanPrompt))); got.GetShadow().GetRule() != "allow-jobs" || got.GetShadow().GetPolicyVersion() != shadow.Hash() {
		t.Errorf("job.other: shadow verdict %v, want ALLOW by allow-jobs from the shadow policy", got.GetShadow())
	}

	if st := k.Status(); st.GetChecks() != 2 || st.GetShadowChecks() != 2 || st.GetShadowDisagreements() != 1 {
		t.Errorf("counters: %d checks, %d shadowed, %d disagreements; want 2, 2, 1", st.GetChecks(), st.GetShadowChecks(), st.GetShadowDisagreements())
	}

	k.Use(nil, "", "", true)
	if st := k.Status(); st.GetShadow() != nil {
		t.Errorf("after removing the shadow, status still shows %v", st.GetShadow())
	}
	if got := mustCheck(t, k, req(cleanJobID, "job.echo", len(cleanPrompt))); got.GetShadow() != nil || got.GetDecision() != allow {
		t.Errorf("after removing the shadow: %v, want ALLOW with no shadow verdict", got)
	}
	if st := k.Status(); st.GetChecks() != 3 || st.GetShadowChecks() != 2 {
		t.Errorf("after removing the shadow: %d checks, %d shadowed; want 3, 2", st.GetChecks(), st.GetShadowChecks())
	}
}

func TestLoadFileBrokenKeepsPolicy(t *testing.T) {
	k := safety.NewKernel("k1", nil, discard())
	good := filepath.Join(testdataPolicy, "approval.yaml")
	if err := k.LoadFile(good, false); err != nil {
		t.Fatal(err)
	}
	before := k.Status().GetActive()
	if before.GetOrigin() != "file "+good || before.GetHash() != mustLoad(t, "approval.yaml").Hash() {
		t.Fatalf("after LoadFile: active %v", before)
	}

	broken := filepath.Join(testdataPolicy, "broken.yaml")
	err := k.LoadFile(broken, false)
	if err == nil {
		t.Fatal("LoadFile(broken.yaml) succeeded")
	}
	for _, want := range []string{broken + ":10:", `rule "deny-typo"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	st := k.Status()
	if st.GetActive().GetHash() != before.GetHash() || st.GetActive().GetLoadedAt().AsTime() != before.GetLoadedAt().AsTime() {
		t.Errorf("active policy changed to %v after a broken file", st.GetActive())
	}
	if st.GetLastError() != err.Error() {
		t.Errorf("last_error %q, want %q", st.GetLastError(), err)
	}
	if got := mustCheck(t, k, req("j1", "job.gpu", 0)); got.GetDecision() != requireApproval {
		t.Errorf("after a broken file the old policy does not decide: %v", got)
	}

	// A broken shadow file leaves the shadow as it was too.
	if err := k.LoadFile(broken, true); err == nil || k.Status().GetShadow() != nil {
		t.Errorf("LoadFile(broken, shadow) = %v, shadow %v; want an error and no shadow", err, k.Status().GetShadow())
	}
	// So does a missing file.
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	if err := k.LoadFile(missing, false); err == nil || !strings.Contains(err.Error(), missing) || k.Status().GetActive().GetHash() != before.GetHash() {
		t.Errorf("LoadFile(missing) = %v, active %v", err, k.Status().GetActive())
	}

	if err := k.LoadFile(filepath.Join(testdataPolicy, "shadow.yaml"), false); err != nil {
		t.Fatal(err)
	}
	if st := k.Status(); st.GetLastError() != "" || st.GetActive().GetName() != "strict" {
		t.Errorf("after a good file: last_error %q, active %v", st.GetLastError(), st.GetActive())
	}
}

// writeFile replaces path's contents, as an editor saving in place does.
func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestStatusLeavesOutTheTextOfALongPolicy(t *testing.T) {
	k := safety.NewKernel("k1", nil, discard())
	k.Use(policy.Default(), "file big.yaml", strings.Repeat("# padding\n", 5000), false)
	src := k.Status().GetActive().GetSource()
	if len(src) > 1024 || !strings.Contains(src, "too long to send") || !strings.Contains(src, "big.yaml") {
		t.Fatalf("status source %.200q, want a short note naming where the policy came from", src)
	}
	k.Use(policy.Default(), "file small.yaml", "version: 1\n", false)
	if got := k.Status().GetActive().GetSource(); got != "version: 1\n" {
		t.Fatalf("short policy text %q, want it whole", got)
	}
}

// A shadow with the THROTTLE rule in force agrees with it: it starts from
// the active policy's bucket, not from a full one; so does the same policy
// loaded again.
func TestShadowThrottleAgreesWithTheActiveRule(t *testing.T) {
	k := safety.NewKernel("k1", newInputs(defaultPrompts()), discard())
	k.Use(mustLoad(t, "throttle.yaml"), "test", "throttle.yaml", false)
	for i := range 3 {
		mustCheck(t, k, req(fmt.Sprint("job-", i), "job.echo", len(cleanPrompt)))
	}
	k.Use(mustLoad(t, "throttle.yaml"), "test", "throttle.yaml", true)
	got := mustCheck(t, k, req("job-shadowed", "job.echo", len(cleanPrompt)))
	if got.GetDecision() != deny || got.GetShadow().GetDecision() != deny {
		t.Errorf("over the rate: %v, shadow %v; want both DENY", got.GetDecision(), got.GetShadow().GetDecision())
	}
	if st := k.Status(); st.GetShadowDisagreements() != 0 {
		t.Errorf("%d disagreements between the shadow and the identical active rule, want 0", st.GetShadowDisagreements())
	}
	k.Use(mustLoad(t, "throttle.yaml"), "test", "throttle.yaml", false)
	if got := mustCheck(t, k, req("job-reloaded", "job.echo", len(cleanPrompt))); got.GetDecision() != deny {
		t.Errorf("after reloading the same policy: %v, want DENY (a reload refills no bucket)", got.GetDecision())
	}
}
