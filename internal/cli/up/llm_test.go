package up_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/syncbuf"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/llm"
	"github.com/cortex-os/core/plugins/llm/llmtest"
)

const llmKey = "sk-up-test-4f9c2d7e1b"

// startLLM runs the stack with a chat-llm worker on a fake upstream whose
// key is llmKey; the worker uses key.
func startLLM(t *testing.T, key string) (*harness, *llmtest.Server) {
	t.Helper()
	fake := llmtest.NewServer(llmtest.Options{Key: llmKey})
	t.Cleanup(fake.Close)
	keyFile := filepath.Join(t.TempDir(), "llm-key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The flags' path, as `up --llm-base-url ... --llm-api-key-file ...`.
	return startHarness(t, up.ClusterOptions{LLM: &daemon.LLMFlags{BaseURL: fake.URL, Model: "tiny", KeyFile: keyFile}}), fake
}

// chat submits a job.chat.llm job and follows it to its end, with the
// pieces of output it streamed.
func (h *harness) chat(t *testing.T, prompt string, attempts uint32, onOutput func(*cortexv1.JobOutput) error) *cortexv1.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: llm.Topic, Prompt: prompt, MaxAttempts: &attempts})
	if err != nil {
		t.Fatal(err)
	}
	if onOutput == nil {
		onOutput = func(*cortexv1.JobOutput) error { return nil }
	}
	j, err := job.FollowToEnd(ctx, h.client, res.GetJobId(), nil, onOutput, nil)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestChatJobStreamsWhileItRuns(t *testing.T) {
	h, fake := startLLM(t, llmKey)
	fake.Hold() // the stream waits before each word until stepped or released
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := h.client.SubmitJob(ctx, &cortexv1.SubmitJobRequest{Topic: llm.Topic, Prompt: "hello cortex"})
	if err != nil {
		t.Fatal(err)
	}
	var pieces []string
	stepped := false
	j, err := job.FollowToEnd(ctx, h.client, res.GetJobId(), func(*cortexv1.Job) {
		// The watch follows the output before it sends the first
		// snapshot: let the first word out.
		if !stepped {
			stepped = true
			fake.Step()
		}
	}, func(o *cortexv1.JobOutput) error {
		pieces = append(pieces, o.GetText())
		if len(pieces) == 1 {
			// The job is still running: its first word came before its end.
			got, err := h.client.GetJob(ctx, &cortexv1.GetJobRequest{JobId: o.GetJobId()})
			if err != nil {
				return err
			}
			if s := got.GetJob().GetState(); s != cortexv1.JobState_JOB_STATE_RUNNING {
				t.Errorf("the first piece came with the job %v, want RUNNING", s)
			}
			fake.Release()
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.GetState() != completed {
		t.Fatalf("job ended %v: %s", j.GetState(), j.GetReason())
	}
	if strings.Join(pieces, "") != "You said: hello cortex" || pieces[0] != "You " {
		t.Errorf("pieces %q", pieces)
	}
	r, err := h.client.GetResult(context.Background(), &cortexv1.GetResultRequest{JobId: j.GetJobId()})
	if err != nil || r.GetText() != "You said: hello cortex" {
		t.Errorf("result %q, %v", r.GetText(), err)
	}
	if u := j.GetUsage(); u.GetPromptTokens() != 2 || u.GetCompletionTokens() != 4 || u.GetTotalTokens() != 6 {
		t.Errorf("usage %v, want 2+4=6 recorded on the job", u)
	}
}

func TestChatJobRetriesAnUpstreamError(t *testing.T) {
	h, fake := startLLM(t, llmKey)
	fake.Fail(llmtest.Fault{Status: 500})
	j := h.chat(t, "again", 2, nil)
	if j.GetState() != completed || j.GetAttempt() != 2 {
		t.Fatalf("job ended %v at attempt %d (%s), want COMPLETED at attempt 2", j.GetState(), j.GetAttempt(), j.GetReason())
	}
	if a := j.GetAttempts(); len(a) < 1 || !strings.Contains(a[0].GetReason(), "upstream error (500") {
		t.Errorf("attempts %v, want the first to say the upstream failed", a)
	}
	if n := len(fake.Requests()); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}
}

func TestChatJobRateLimitedSaysWhenToRetry(t *testing.T) {
	h, fake := startLLM(t, llmKey)
	fake.Fail(llmtest.Fault{Status: 429, RetryAfter: "2"})
	j := h.chat(t, "busy?", 1, nil)
	if j.GetState() != cortexv1.JobState_JOB_STATE_FAILED || !strings.Contains(j.GetReason(), "upstream rate limited (429): retry after 2s") {
		t.Fatalf("job ended %v: %q", j.GetState(), j.GetReason())
	}
}

func TestChatJobRefusedIsNotRetried(t *testing.T) {
	const wrong = "sk-wrong-9d8c7b6a5f"
	h, fake := startLLM(t, wrong)
	j := h.chat(t, "let me in", 3, nil)
	if j.GetState() != cortexv1.JobState_JOB_STATE_FAILED || j.GetAttempt() != 1 {
		t.Fatalf("job ended %v at attempt %d, want FAILED at attempt 1 of 3", j.GetState(), j.GetAttempt())
	}
	if !strings.Contains(j.GetReason(), "(401 Unauthorized)") || !strings.Contains(j.GetReason(), "not retried") || strings.Contains(j.GetReason(), wrong) {
		t.Errorf("reason %q: want the 401, that it was not retried, and not the key", j.GetReason())
	}
	if n := len(fake.Requests()); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

// TestChatJobsLogNoPromptKeyOrAnswer: with every component logging at
// debug, a chat job that completes and one the upstream refuses (it quotes
// the wrong key back) leave lines about the jobs, but never the prompt,
// the answer or either key. (The refusal's reason, which is where the key
// would be, is checked on the job by TestChatJobRefusedIsNotRetried.)
func TestChatJobsLogNoPromptKeyOrAnswer(t *testing.T) {
	const wrong = "sk-wrong-logged-3e2d1c"
	logs := &syncbuf.Buffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fake := llmtest.NewServer(llmtest.Options{Key: llmKey})
	t.Cleanup(fake.Close)
	// Two pools for one topic cannot be routed: route by topic instead.
	topics := map[string]string{"job.chat.ok": llmKey, "job.chat.bad": wrong}
	routes, err := routing.NewRouter(map[string]string{"job.chat.ok": "chat-ok", "job.chat.bad": "chat-bad", "job.echo": "echo", "job.sleep": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	h := startHarnessLog(t, up.ClusterOptions{Routes: routes}, log)
	for topic, key := range topics {
		hd, err := llm.New(llm.Config{BaseURL: fake.URL, Model: "tiny", APIKey: key})
		if err != nil {
			t.Fatal(err)
		}
		pool := "chat-" + topic[len("job.chat."):]
		h.startWorker(t, worker.Options{Pool: pool, Handlers: map[string]plugins.Handler{topic: hd}}, log.With("component", "worker"))
	}
	secret := fmt.Sprintf("chat-secret-%d", time.Now().UnixNano())
	if o := h.run(t, "job.chat.ok", secret); o.GetState() != completed || o.GetResult() != "You said: "+secret {
		t.Fatalf("ok job: %v %q", o.GetState(), o.GetResult())
	}
	if o := h.run(t, "job.chat.bad", secret); o.GetState() != cortexv1.JobState_JOB_STATE_FAILED {
		t.Fatalf("refused job: %v", o.GetState())
	}
	out := logs.String()
	if !strings.Contains(out, `"job_id"`) {
		t.Fatalf("no log line about a job: the capture does not work (%d bytes)", len(out))
	}
	for _, s := range []string{secret, llmKey, wrong} {
		if strings.Contains(out, s) {
			t.Errorf("the logs carry %q:\n%s", s, out)
		}
	}
}
