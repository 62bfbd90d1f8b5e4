package llm_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/llm"
	"github.com/cortex-os/core/plugins/llm/llmtest"
)

// cfg is the usual configuration: model tiny, the right key.
var cfg = llm.Config{APIKey: key, Model: "tiny"}

// pieces records what a handler streams.
type pieces struct {
	mu     sync.Mutex
	writes []string
}

func (p *pieces) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.writes = append(p.writes, string(b))
	return len(b), nil
}

func (p *pieces) all() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.writes...)
}

const key = "sk-test-0123456789abcdef"

func newHandler(t *testing.T, fake *llmtest.Server, cfg llm.Config) *llm.Handler {
	t.Helper()
	cfg.BaseURL = fake.URL
	h, err := llm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func newFake(t *testing.T) *llmtest.Server {
	t.Helper()
	fake := llmtest.NewServer(llmtest.Options{Key: key})
	t.Cleanup(fake.Close)
	return fake
}

func TestStreamsTheAnswerAndReportsUsage(t *testing.T) {
	fake := newFake(t)
	h := newHandler(t, fake, cfg)
	var got pieces
	res, err := h.Handle(context.Background(), &plugins.Job{Prompt: "hello world", Stream: &got})
	if err != nil {
		t.Fatal(err)
	}
	if res.Output != "You said: hello world" {
		t.Errorf("output %q", res.Output)
	}
	if w := got.all(); strings.Join(w, "") != res.Output || len(w) != 4 {
		t.Errorf("streamed %q, want the output in 4 words", w)
	}
	if u := res.Usage; u == nil || *u != (plugins.Usage{PromptTokens: 2, CompletionTokens: 4, TotalTokens: 6}) {
		t.Errorf("usage %+v, want 2+4=6", u)
	}
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d calls, want 1", len(reqs))
	}
	b := reqs[0].Body
	if reqs[0].Authorization != "Bearer "+key || b["model"] != "tiny" || b["stream"] != true ||
		b["stream_options"].(map[string]any)["include_usage"] != true {
		t.Errorf("request: auth %q body %v", reqs[0].Authorization, b)
	}
	msgs := b["messages"].([]any)
	if len(msgs) != 1 || msgs[0].(map[string]any)["role"] != "user" || msgs[0].(map[string]any)["content"] != "hello world" {
		t.Errorf("messages %v, want the prompt as one user message", msgs)
	}
}

func TestAnUpstreamThatDoesNotStreamIsRead(t *testing.T) {
	fake := newFake(t)
	fake.Fail(llmtest.Fault{Whole: true})
	h := newHandler(t, fake, cfg)
	var got pieces
	res, err := h.Handle(context.Background(), &plugins.Job{Prompt: "one two three", Stream: &got})
	if err != nil {
		t.Fatal(err)
	}
	if res.Output != "You said: one two three" || strings.Join(got.all(), "") != res.Output {
		t.Errorf("output %q, streamed %q", res.Output, got.all())
	}
	if u := res.Usage; u == nil || u.PromptTokens != 3 || u.CompletionTokens != 5 || u.TotalTokens != 8 {
		t.Errorf("usage %+v", u)
	}
}

func TestAJobWithoutAStreamRuns(t *testing.T) {
	fake := newFake(t)
	res, err := newHandler(t, fake, cfg).Handle(context.Background(), &plugins.Job{Prompt: "hi"})
	if err != nil || res.Output != "You said: hi" {
		t.Fatalf("got %v, %v", res, err)
	}
}

func TestChatRequestsArePassedOn(t *testing.T) {
	const chat = `{"model":"client-model","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi there"}],"temperature":0.2,"max_tokens":50,"stream":false}`
	cases := map[string]struct {
		model     string
		job       plugins.Job
		wantModel string
	}{
		"the worker's model wins":     {model: "tiny", job: plugins.Job{Prompt: chat}, wantModel: "tiny"},
		"without one, the request's":  {model: "", job: plugins.Job{Prompt: chat}, wantModel: "client-model"},
		"as a binary payload":         {model: "tiny", job: plugins.Job{Payload: []byte(chat)}, wantModel: "tiny"},
		"labelled, with blanks first": {model: "tiny", job: plugins.Job{Prompt: "\n  " + chat, Labels: map[string]string{llm.ContentTypeLabel: "application/json"}}, wantModel: "tiny"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			h := newHandler(t, fake, llm.Config{APIKey: key, Model: c.model})
			res, err := h.Handle(context.Background(), &c.job)
			if err != nil {
				t.Fatal(err)
			}
			if res.Output != "You said: hi there" {
				t.Errorf("output %q", res.Output)
			}
			b := fake.Requests()[0].Body
			if b["model"] != c.wantModel || b["temperature"] != 0.2 || b["max_tokens"] != 50.0 || b["stream"] != true || len(b["messages"].([]any)) != 2 {
				t.Errorf("sent %v", b)
			}
		})
	}
}

func TestInputThatIsNotAChatRequestIsAPrompt(t *testing.T) {
	for _, prompt := range []string{`{"question": "what is 2+2?"}`, `{not json`, `[{"role":"user"}]`} {
		fake := newFake(t)
		res, err := newHandler(t, fake, cfg).Handle(context.Background(), &plugins.Job{Prompt: prompt})
		if err != nil {
			t.Fatalf("%s: %v", prompt, err)
		}
		if res.Output != "You said: "+prompt {
			t.Errorf("%s: output %q, want the input sent as a prompt", prompt, res.Output)
		}
	}
}

func TestBadJobsFailPermanentlyWithoutACall(t *testing.T) {
	cases := map[string]struct {
		cfgModel string
		job      plugins.Job
		want     string
	}{
		"labelled JSON that is not a chat request": {"tiny", plugins.Job{Prompt: "hello", Labels: map[string]string{llm.ContentTypeLabel: "application/json"}}, "not a chat request"},
		"messages is not an array":                 {"tiny", plugins.Job{Prompt: `{"messages": "hi"}`}, `"messages" is not a non-empty array`},
		"no messages":                              {"tiny", plugins.Job{Prompt: `{"messages": []}`}, `"messages" is not a non-empty array`},
		"a message without a role":                 {"tiny", plugins.Job{Prompt: `{"messages": [{"content": "hi"}]}`}, `has no "role"`},
		"several answers":                          {"tiny", plugins.Job{Prompt: `{"messages": [{"role":"user","content":"hi"}], "n": 3}`}, "a job produces one"},
		"no model anywhere":                        {"", plugins.Job{Prompt: "hello"}, "no model to run"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			h, err := llm.New(llm.Config{BaseURL: fake.URL, Model: c.cfgModel, APIKey: key})
			if err != nil {
				t.Fatal(err)
			}
			_, err = h.Handle(context.Background(), &c.job)
			if err == nil || !plugins.IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v (permanent %v), want a permanent one saying %q", err, plugins.IsPermanent(err), c.want)
			}
			if n := len(fake.Requests()); n != 0 {
				t.Errorf("%d calls for a job that cannot run", n)
			}
		})
	}
}

func TestUpstreamErrorsSayWhetherToRetry(t *testing.T) {
	cases := map[string]struct {
		fault     llmtest.Fault
		permanent bool
		want      []string
	}{
		"server error": {llmtest.Fault{Status: 500}, false, []string{"upstream error (500 Internal Server Error): fake failure 500"}},
		"unavailable":  {llmtest.Fault{Status: 503, Body: `{"error": "model is loading"}`}, false, []string{"(503 Service Unavailable): model is loading"}},
		"rate limited": {llmtest.Fault{Status: 429, RetryAfter: "2"}, false, []string{"upstream rate limited (429): retry after 2s"}},
		"rate limited until a date": {llmtest.Fault{Status: 429, RetryAfter: time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)},
			false, []string{"upstream rate limited (429): retry after 1m", "fake failure 429"}}, // 1m29s or 1m30s: the date has whole seconds
		"bad request":   {llmtest.Fault{Status: 400, Body: `{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}`}, true, []string{"upstream refused the request (400 Bad Request): max_tokens is too large"}},
		"forbidden":     {llmtest.Fault{Status: 403}, true, []string{"(403 Forbidden)", "check the worker's API key"}},
		"no model":      {llmtest.Fault{Status: 404, Body: `{"error":"model \"tiny\" not found, try pulling it first"}`}, true, []string{"(404 Not Found): model \"tiny\" not found", "/v1/chat/completions"}},
		"unprocessable": {llmtest.Fault{Status: 422, Body: `{"detail":[{"msg":"field required"}]}`}, true, []string{"(422 Unprocessable Entity)", "field required"}},
		"plain text":    {llmtest.Fault{Status: 502, Body: "<html>\n<b>Bad gateway</b>\n</html>"}, false, []string{"(502 Bad Gateway): <html> <b>Bad gateway</b> </html>"}},
		"cut short":     {llmtest.Fault{CutAfter: 2}, false, []string{"the stream ended before the answer was complete"}},
		"malformed":     {llmtest.Fault{Malformed: true}, false, []string{"malformed stream event", `"{\"choices\": [oops"`}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fake := newFake(t)
			fake.Fail(c.fault)
			_, err := newHandler(t, fake, cfg).Handle(context.Background(), &plugins.Job{Prompt: "hello there you"})
			if err == nil {
				t.Fatal("no error")
			}
			if plugins.IsPermanent(err) != c.permanent {
				t.Errorf("permanent = %v, want %v: %v", plugins.IsPermanent(err), c.permanent, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestRateLimitCarriesRetryAfter(t *testing.T) {
	fake := newFake(t)
	fake.Fail(llmtest.Fault{Status: 429, RetryAfter: "7"})
	_, err := newHandler(t, fake, cfg).Handle(context.Background(), &plugins.Job{Prompt: "x"})
	var se *llm.StatusError
	if !errors.As(err, &se) || se.StatusCode != 429 || se.RetryAfter != 7*time.Second {
		t.Fatalf("error %#v, want a StatusError 429 asking for 7s", err)
	}
}

func TestTheKeyNeverShowsInErrors(t *testing.T) {
	const wrong = "sk-wrong-key-that-must-stay-secret"
	fake := newFake(t) // wants key, gets wrong, and quotes what it got
	_, err := newHandler(t, fake, llm.Config{APIKey: wrong, Model: "tiny"}).Handle(context.Background(), &plugins.Job{Prompt: "hi"})
	if err == nil || !plugins.IsPermanent(err) {
		t.Fatalf("error %v, want a permanent 401", err)
	}
	if strings.Contains(err.Error(), wrong) || !strings.Contains(err.Error(), "Incorrect API key provided: [redacted]") {
		t.Errorf("error %q shows the key, or not the upstream's words", err)
	}
	// Mid-stream errors and malformed events are scrubbed too.
	fake2 := newFake(t)
	fake2.Fail(llmtest.Fault{Status: 500, Body: `{"error":"internal error for key ` + key + `"}`})
	_, err = newHandler(t, fake2, cfg).Handle(context.Background(), &plugins.Job{Prompt: "hi"})
	if err == nil || strings.Contains(err.Error(), key) {
		t.Errorf("error %v shows the key", err)
	}
}

func TestAnUnreachableUpstreamIsRetried(t *testing.T) {
	fake := llmtest.NewServer(llmtest.Options{})
	h := newHandler(t, fake, cfg)
	fake.Close()
	_, err := h.Handle(context.Background(), &plugins.Job{Prompt: "hi"})
	if err == nil || plugins.IsPermanent(err) || !strings.Contains(err.Error(), "upstream "+fake.URL+"/chat/completions") {
		t.Fatalf("error %v, want a retryable one naming the endpoint", err)
	}
}

func TestTheJobsContextEndsTheCall(t *testing.T) {
	fake := newFake(t)
	fake.Hold()
	fake.Step() // one word, then the stream waits
	h := newHandler(t, fake, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	stream := &cancelAfterFirst{cancel: cancel}
	_, err := h.Handle(ctx, &plugins.Job{Prompt: "hello world", Stream: stream})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want the job's cancellation", err)
	}
	if stream.got != "You " {
		t.Errorf("streamed %q before the cancel, want the first word", stream.got)
	}
}

// cancelAfterFirst cancels the job once the first piece has come.
type cancelAfterFirst struct {
	cancel context.CancelFunc
	got    string
}

func (c *cancelAfterFirst) Write(b []byte) (int, error) {
	c.got += string(b)
	c.cancel()
	return len(b), nil
}

func TestASilentUpstreamIsCutOff(t *testing.T) {
	fake := newFake(t)
	fake.Hold()
	_, err := newHandler(t, fake, llm.Config{APIKey: key, Model: "tiny", StallTimeout: 20 * time.Millisecond}).Handle(context.Background(), &plugins.Job{Prompt: "hello world"})
	if err == nil || plugins.IsPermanent(err) || !strings.Contains(err.Error(), "sent nothing for 20ms") {
		t.Fatalf("error %v, want a retryable stall", err)
	}
}

func TestAnAnswerOverTheLimitFailsPermanently(t *testing.T) {
	fake := newFake(t)
	_, err := newHandler(t, fake, llm.Config{APIKey: key, Model: "tiny", MaxOutputBytes: 12}).Handle(context.Background(), &plugins.Job{Prompt: "a long enough prompt"})
	if err == nil || !plugins.IsPermanent(err) || !strings.Contains(err.Error(), "longer than this worker accepts (12 bytes)") {
		t.Fatalf("error %v", err)
	}
}

func TestNewChecksTheConfig(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"", "want http(s)://host"},
		{"127.0.0.1:11434/v1", "want http(s)://host"},
		{"ftp://host/v1", "want http(s)://host"},
		{"http://host/v1?x=1", "want http(s)://host"},
		{"http://user:pw@host/v1", "carries credentials"},
		{"http://user:pw@[bad/v1", "…@[bad/v1"},
	} {
		_, err := llm.New(llm.Config{BaseURL: c.url})
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "pw") {
			t.Errorf("New(%q): %v, want an error saying %q without the password", c.url, err, c.want)
		}
	}
	h, err := llm.New(llm.Config{BaseURL: "http://127.0.0.1:11434/v1/"})
	if err != nil || h.Endpoint() != "http://127.0.0.1:11434/v1/chat/completions" {
		t.Errorf("endpoint %q, %v", h.Endpoint(), err)
	}
}
