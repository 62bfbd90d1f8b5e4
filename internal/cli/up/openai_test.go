package up_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/safety"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/llm/llmtest"
)

// The OpenAI-compatible front door, end to end: HTTP to the gateway, the
// safety gate, the scheduler, and a fake chat-llm worker.

// chatRoutes routes the chat topic to pool chat-llm, beside the defaults.
func chatRoutes(t testing.TB) *routing.Router {
	t.Helper()
	routes := routing.DefaultRoutes()
	routes[gateway.ChatTopic] = "chat-llm"
	r, err := routing.NewRouter(routes)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// chatHarness is a stack whose chat-llm pool has one worker running h.
func chatHarness(t testing.TB, opts up.ClusterOptions, h plugins.Handler) *harness {
	t.Helper()
	opts.Routes = chatRoutes(t)
	hs := startHarness(t, opts)
	startChatWorker(t, hs, h)
	return hs
}

func startChatWorker(t testing.TB, hs *harness, h plugins.Handler) {
	t.Helper()
	hs.startWorker(t, worker.Options{
		Pool:         "chat-llm",
		Handlers:     map[string]plugins.Handler{gateway.ChatTopic: h},
		Capabilities: []string{"llm.chat", gateway.ModelCapability + "fake-1"},
	}, slog.New(slog.DiscardHandler))
}

// fakeChat is a chat-llm handler: it answers "echo: " and the last
// message, streaming it word by word, with usage. A last message "fail"
// fails permanently; "hang" streams its first word then waits to be
// cancelled, and closes hung when it is.
type fakeChat struct {
	hung chan struct{}
}

func (f *fakeChat) Handle(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	if err := json.Unmarshal(job.Payload, &req); err != nil {
		return nil, plugins.Permanent(fmt.Errorf("the payload is not a chat request: %w", err))
	}
	last := req.Messages[len(req.Messages)-1].Content
	switch last {
	case "fail":
		return nil, plugins.Permanent(errors.New("upstream answered 429 Too Many Requests"))
	case "hang":
		_, _ = io.WriteString(job.Stream, "thinking")
		<-ctx.Done()
		close(f.hung)
		return nil, ctx.Err()
	}
	words := strings.Fields("echo: " + last)
	for i, w := range words {
		if i > 0 {
			w = " " + w
		}
		_, _ = io.WriteString(job.Stream, w)
	}
	return &plugins.Result{
		Output: strings.Join(words, " "),
		Usage:  &plugins.Usage{PromptTokens: uint32(len(strings.Fields(last))), CompletionTokens: uint32(len(words)), TotalTokens: uint32(len(strings.Fields(last)) + len(words))},
	}, nil
}

// post sends a chat completion request as the harness's key.
func (h *harness) post(t testing.TB, ctx context.Context, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+h.cluster.GatewayAddr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.cluster.APIKey)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func chatBody(content string, stream bool) string {
	b, _ := json.Marshal(map[string]any{
		"model": "fake-1", "stream": stream, "temperature": 0.2,
		"messages": []map[string]string{{"role": "system", "content": "be brief"}, {"role": "user", "content": content}},
	})
	return string(b)
}

type completionJSON struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     uint32 `json:"prompt_tokens"`
		CompletionTokens uint32 `json:"completion_tokens"`
		TotalTokens      uint32 `json:"total_tokens"`
	} `json:"usage"`
}

type errorJSON struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decode[T any](t testing.TB, res *http.Response) T {
	t.Helper()
	defer res.Body.Close()
	var v T
	if err := json.NewDecoder(res.Body).Decode(&v); err != nil {
		t.Fatalf("decode a %d answer: %v", res.StatusCode, err)
	}
	return v
}

func TestChatCompletion(t *testing.T) {
	h := chatHarness(t, up.ClusterOptions{}, &fakeChat{})
	res := h.post(t, context.Background(), chatBody("hello there", false))
	defer res.Body.Close()
	id := res.Header.Get(gateway.HeaderJobID)
	c := decode[completionJSON](t, res)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if id == "" || res.Header.Get(gateway.HeaderTraceID) == "" || c.ID != "chatcmpl-"+id || c.Object != "chat.completion" || c.Model != "fake-1" || c.Created == 0 {
		t.Fatalf("completion %+v with job id %q: want chatcmpl-<job id>, chat.completion, model fake-1, created set", c, id)
	}
	if len(c.Choices) != 1 || c.Choices[0].Message == nil || c.Choices[0].Message.Role != "assistant" ||
		c.Choices[0].Message.Content != "echo: hello there" || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != "stop" {
		t.Fatalf("choices %+v, want one assistant message 'echo: hello there' that stopped", c.Choices)
	}
	if c.Usage == nil || c.Usage.PromptTokens != 2 || c.Usage.CompletionTokens != 3 || c.Usage.TotalTokens != 5 {
		t.Fatalf("usage %+v, want the worker's 2+3=5", c.Usage)
	}
	// The completion is a job like any other.
	j, err := h.client.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatal(err)
	}
	if j.GetJob().GetState() != completed || j.GetJob().GetTopic() != gateway.ChatTopic || j.GetJob().GetLabels()["model"] != "fake-1" ||
		j.GetJob().GetUsage().GetTotalTokens() != 5 || !h.spy.dispatched(id) {
		t.Fatalf("job %v: want a dispatched, COMPLETED %s job labelled model=fake-1 with its usage", j.GetJob(), gateway.ChatTopic)
	}
}

// sseEvents reads a stream's data lines until it ends.
func sseEvents(t testing.TB, body io.Reader) []string {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, data)
		} else if sc.Text() != "" {
			t.Errorf("line %q in an event stream is neither data nor the blank line between events", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return events
}

func TestChatCompletionStream(t *testing.T) {
	h := chatHarness(t, up.ClusterOptions{}, &fakeChat{})
	body := strings.Replace(chatBody("one two three four", true), `"stream":true`, `"stream":true,"stream_options":{"include_usage":true}`, 1)
	res := h.post(t, context.Background(), body)
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" || res.Header.Get(gateway.HeaderJobID) == "" {
		t.Fatalf("status %d, content type %q, job id %q", res.StatusCode, res.Header.Get("Content-Type"), res.Header.Get(gateway.HeaderJobID))
	}
	events := sseEvents(t, res.Body)
	if len(events) < 4 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("events %q: want a role chunk, content, a finish chunk, usage and [DONE]", events)
	}
	var text strings.Builder
	var contents, finished, usage int
	for i, ev := range events[:len(events)-1] {
		var c completionJSON
		if err := json.Unmarshal([]byte(ev), &c); err != nil {
			t.Fatalf("event %d %q: %v", i, ev, err)
		}
		if c.Object != "chat.completion.chunk" || c.ID != "chatcmpl-"+res.Header.Get(gateway.HeaderJobID) || c.Model != "fake-1" {
			t.Fatalf("event %d %q is not a chunk of this completion", i, ev)
		}
		switch {
		case i == 0:
			if len(c.Choices) != 1 || c.Choices[0].Delta.Role != "assistant" {
				t.Fatalf("first chunk %q: want the assistant role", ev)
			}
		case c.Usage != nil:
			usage++
			if len(c.Choices) != 0 || c.Usage.TotalTokens != 4+5 || i != len(events)-2 {
				t.Fatalf("usage chunk %q (event %d of %d): want no choice, 9 tokens, last before [DONE]", ev, i, len(events))
			}
		case c.Choices[0].FinishReason != nil:
			finished++
			if *c.Choices[0].FinishReason != "stop" || c.Choices[0].Delta.Content != "" {
				t.Fatalf("finish chunk %q", ev)
			}
		default:
			if finished > 0 {
				t.Fatalf("content %q after the finish chunk", ev)
			}
			contents++
			text.WriteString(c.Choices[0].Delta.Content)
		}
	}
	if text.String() != "echo: one two three four" || finished != 1 || usage != 1 {
		t.Fatalf("streamed %q with %d finish and %d usage chunks; want 'echo: one two three four', 1 and 1", text.String(), finished, usage)
	}
	// The worker wrote five pieces: they came as they were written, not
	// as one answer at the end.
	if contents < 2 {
		t.Fatalf("the answer came in %d content chunk(s), want the worker's pieces", contents)
	}
}

const chatPolicy = `version: 1
name: chat
default:
  decision: DENY
  reason: "no rule allows this topic"
rules:
  - name: deny-chat-secrets
    when: topic == "job.chat.llm" && prompt.contains("launch codes")
    decision: DENY
    reason: "chats about launch codes are not allowed"
  - name: throttle-burst
    when: topic == "job.chat.llm" && prompt.contains("burst")
    decision: THROTTLE
    rate: {per_second: 0.01, burst: 1}
    reason: "bursts are rate limited"
  - name: allow-jobs
    when: topic.startsWith("job.")
    decision: ALLOW
    reason: "job.* topics are allowed"
`

func TestChatCompletionDenied(t *testing.T) {
	path := writePolicy(t, filepath.Join(t.TempDir(), "chat.yaml"), chatPolicy)
	h := chatHarness(t, up.ClusterOptions{Policy: safety.Files{Policy: path}}, &fakeChat{})
	for _, stream := range []bool{false, true} {
		res := h.post(t, context.Background(), chatBody("tell me the launch codes", stream))
		defer res.Body.Close()
		id := res.Header.Get(gateway.HeaderJobID)
		e := decode[errorJSON](t, res)
		if res.StatusCode != http.StatusBadRequest || e.Error.Code == nil || *e.Error.Code != "content_filter" || e.Error.Type != "invalid_request_error" ||
			!strings.Contains(e.Error.Message, "deny-chat-secrets") || !strings.Contains(e.Error.Message, "launch codes are not allowed") {
			t.Fatalf("stream=%v: %d %+v, want 400 content_filter naming the rule and its reason", stream, res.StatusCode, e.Error)
		}
		j, err := h.client.GetJob(context.Background(), &cortexv1.GetJobRequest{JobId: id})
		if err != nil || j.GetJob().GetState() != denied || h.spy.dispatched(id) {
			t.Fatalf("stream=%v: job %q is %v (%v), dispatched=%v; want DENIED and never dispatched", stream, id, j.GetJob().GetState(), err, h.spy.dispatched(id))
		}
	}
	// Over a THROTTLE rule's rate: 429, which OpenAI's clients retry later.
	for i, want := range []int{http.StatusOK, http.StatusTooManyRequests} {
		res := h.post(t, context.Background(), chatBody("burst", false))
		if i == 0 {
			res.Body.Close()
		} else if e := decode[errorJSON](t, res); e.Error.Code == nil || *e.Error.Code != "rate_limit_exceeded" || !strings.Contains(e.Error.Message, "throttle-burst") {
			t.Fatalf("over the rate: %+v, want rate_limit_exceeded naming the rule", e.Error)
		}
		if res.StatusCode != want {
			t.Fatalf("burst request %d: %d, want %d", i+1, res.StatusCode, want)
		}
	}
	// The same policy lets other chats through.
	if res := h.post(t, context.Background(), chatBody("hello", false)); res.StatusCode != http.StatusOK {
		t.Fatalf("an allowed chat: %d", res.StatusCode)
	} else {
		res.Body.Close()
	}
}

func TestChatCompletionFailed(t *testing.T) {
	h := chatHarness(t, up.ClusterOptions{}, &fakeChat{})
	for _, stream := range []bool{false, true} {
		res := h.post(t, context.Background(), chatBody("fail", stream))
		defer res.Body.Close()
		e := decode[errorJSON](t, res)
		if res.StatusCode != http.StatusBadGateway || e.Error.Type != "server_error" || !strings.Contains(e.Error.Message, "429 Too Many Requests") {
			t.Fatalf("stream=%v: %d %+v, want 502 with the worker's reason", stream, res.StatusCode, e.Error)
		}
	}
}

func TestChatCompletionClientHangsUpCancelsTheJob(t *testing.T) {
	fake := &fakeChat{hung: make(chan struct{})}
	h := chatHarness(t, up.ClusterOptions{}, fake)
	ctx, hangUp := context.WithCancel(context.Background())
	defer hangUp()
	res := h.post(t, ctx, chatBody("hang", true))
	id := res.Header.Get(gateway.HeaderJobID)
	// Read up to the first piece of content: the job is running.
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), "thinking") {
	}
	hangUp()
	res.Body.Close()
	select {
	case <-fake.hung:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not cancelled within 10s of the client hanging up")
	}
	st := h.waitEnd(t, id)
	if st.GetState() != cortexv1.JobState_JOB_STATE_CANCELLED || !strings.Contains(st.GetReason(), "hung up") {
		t.Fatalf("job %s: %v (%s), want CANCELLED because the client hung up", id, st.GetState(), st.GetReason())
	}
}

func TestChatModels(t *testing.T) {
	h := chatHarness(t, up.ClusterOptions{Models: []string{"configured-1"}}, &fakeChat{})
	// get decodes the answer to GET path into v and returns its status.
	get := func(path string, v any) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+h.cluster.GatewayAddr+path, nil)
		req.Header.Set("Authorization", "Bearer "+h.cluster.APIKey)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if err := json.NewDecoder(res.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return res.StatusCode
	}
	type modelJSON struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	var list struct {
		Object string      `json:"object"`
		Data   []modelJSON `json:"data"`
	}
	// The worker is listed once the registry has heard its heartbeat.
	eventuallyUp(t, "the worker's model listed", func() bool {
		return get("/v1/models", &list) == http.StatusOK && len(list.Data) == 2
	})
	if list.Object != "list" || list.Data[0].ID != "configured-1" || list.Data[1].ID != "fake-1" || list.Data[1].Created == 0 ||
		list.Data[0].Object != "model" || list.Data[1].OwnedBy == "" {
		t.Fatalf("models %+v: want configured-1 and fake-1 (from the worker, created when first heard)", list)
	}
	var m modelJSON
	if status := get("/v1/models/fake-1", &m); status != http.StatusOK || m.ID != "fake-1" || m.Object != "model" {
		t.Fatalf("GET /v1/models/fake-1 = %d %+v", status, m)
	}
	var e errorJSON
	if status := get("/v1/models/nope", &e); status != http.StatusNotFound || e.Error.Code == nil || *e.Error.Code != "model_not_found" {
		t.Fatalf("an unknown model: %d %+v, want 404 model_not_found", status, e.Error)
	}
}

// eventuallyUp polls cond until it holds or 10s pass.
func eventuallyUp(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestChatCompletionWithoutWorker(t *testing.T) {
	h := startHarness(t, up.ClusterOptions{Routes: chatRoutes(t)})
	res := h.post(t, context.Background(), chatBody("hello", false))
	defer res.Body.Close()
	e := decode[errorJSON](t, res)
	if res.StatusCode != http.StatusServiceUnavailable || e.Error.Code == nil || *e.Error.Code != "no_chat_worker" || !strings.Contains(e.Error.Message, "cortexctl worker --pool chat-llm") {
		t.Fatalf("%d %+v, want 503 no_chat_worker saying how to start one", res.StatusCode, e.Error)
	}
}

// askUpstream posts a chat completion request to the OpenAI-compatible
// API at base and returns the answer's text.
func askUpstream(ctx context.Context, base string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	var c completionJSON
	if err := json.NewDecoder(res.Body).Decode(&c); err != nil || res.StatusCode != http.StatusOK || len(c.Choices) == 0 || c.Choices[0].Message == nil {
		return "", fmt.Errorf("upstream answered %d: %w", res.StatusCode, err)
	}
	return c.Choices[0].Message.Content, nil
}

// BenchmarkChatCompletions is a whole completion through the front door:
// HTTP to the gateway, the safety gate, the scheduler and up's chat-llm
// worker (plugins/llm, which streams the answer from the upstream), on the
// fake OpenAI-compatible server. Compare with BenchmarkDirectFake for the
// overhead of the front door, the gate and the pipeline.
func BenchmarkChatCompletions(b *testing.B) {
	upstream := llmtest.NewServer(llmtest.Options{})
	b.Cleanup(upstream.Close)
	h := startHarness(b, up.ClusterOptions{LLM: &daemon.LLMFlags{BaseURL: upstream.URL}})
	body := chatBody("hello", false)
	for b.Loop() {
		res := h.post(b, context.Background(), body)
		c := decode[completionJSON](b, res)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || c.Choices[0].Message.Content != "You said: hello" {
			b.Fatalf("%d %+v", res.StatusCode, c)
		}
	}
}

// BenchmarkDirectFake asks the fake upstream directly, as a client would
// without CortexOS.
func BenchmarkDirectFake(b *testing.B) {
	upstream := llmtest.NewServer(llmtest.Options{})
	b.Cleanup(upstream.Close)
	body := []byte(chatBody("hello", false))
	for b.Loop() {
		text, err := askUpstream(context.Background(), upstream.URL, body)
		if err != nil || text != "You said: hello" {
			b.Fatal(text, err)
		}
	}
}

// A chat request for a model the chat-llm workers do not run is refused
// while every live one runs a model of its own: the answer would name a
// model other than the one that answered. A worker that runs the model a
// request names lets any through.
func TestChatForAModelNotServed(t *testing.T) {
	// configured-1 is a name for workers without a model of their own: it
	// counts only while one is live.
	h := chatHarness(t, up.ClusterOptions{Models: []string{"configured-1"}}, &fakeChat{})
	body := func(model string) string {
		b, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "hi"}}})
		return string(b)
	}
	ctx := context.Background()
	res := h.post(t, ctx, body("gpt-4o"))
	defer res.Body.Close()
	e := decode[errorJSON](t, res)
	if res.StatusCode != http.StatusNotFound || e.Error.Code == nil || *e.Error.Code != "model_not_found" ||
		e.Error.Param == nil || *e.Error.Param != "model" || !strings.Contains(e.Error.Message, "fake-1") {
		t.Fatalf("a model no worker runs: %d %+v, want 404 model_not_found naming fake-1", res.StatusCode, e.Error)
	}
	configured := h.post(t, ctx, body("configured-1"))
	defer configured.Body.Close()
	if e := decode[errorJSON](t, configured); configured.StatusCode != http.StatusNotFound || e.Error.Code == nil || *e.Error.Code != "model_not_found" {
		t.Fatalf("a configured model while every worker runs its own: %d %+v, want 404 model_not_found", configured.StatusCode, e.Error)
	}
	served := h.post(t, ctx, body("fake-1"))
	defer served.Body.Close()
	if c := decode[completionJSON](t, served); served.StatusCode != http.StatusOK || c.Model != "fake-1" {
		t.Fatalf("the model the worker runs: %d %+v", served.StatusCode, c)
	}

	h.startWorker(t, worker.Options{
		Pool:         "chat-llm",
		Handlers:     map[string]plugins.Handler{gateway.ChatTopic: &fakeChat{}},
		Capabilities: []string{"llm.chat"},
	}, slog.New(slog.DiscardHandler))
	eventuallyUp(t, "a chat for any model, once a worker without a model of its own is live", func() bool {
		res := h.post(t, ctx, body("gpt-4o"))
		defer res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}
