package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/routing"
	"github.com/cortex-os/core/internal/store"
)

// chatRouter routes job.chat.* to pool chat-llm (testRoutes).
func chatRouter(t *testing.T) *routing.Router {
	t.Helper()
	r, err := routing.Parse("routing.yaml", []byte(testRoutes))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The OpenAI-compatible front door's checks at the edge; completions
// end to end are tested with a whole stack in internal/cli/up.

type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// openAI sends a request to the front door and decodes its error answer.
func (f *fixture) openAI(t *testing.T, method, path, key, body string) (int, openAIError) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e openAIError
	if res.StatusCode != http.StatusOK {
		if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
			t.Fatalf("%s %s: a %d answer that is not an OpenAI error: %v", method, path, res.StatusCode, err)
		}
	}
	return res.StatusCode, e
}

const okChat = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`

func TestChatCompletionsRefusesBadRequests(t *testing.T) {
	f := routedFixture(t)
	for name, tc := range map[string]struct {
		body, param, says string
	}{
		"not JSON":               {`{"model":`, "", "JSON object"},
		"not an object":          {`[1,2]`, "", "JSON object (a chat completion request), not a JSON array"},
		"trailing data":          {okChat + `{}`, "", "JSON object"},
		"no model":               {`{"messages":[{"role":"user","content":"hi"}]}`, "model", "model is required"},
		"model not a string":     {`{"model":7,"messages":[{"role":"user","content":"hi"}]}`, "model", "must be a string"},
		"model too long":         {`{"model":"` + strings.Repeat("m", 257) + `","messages":[{"role":"user","content":"hi"}]}`, "model", "at most 256"},
		"no messages":            {`{"model":"m","messages":[]}`, "messages", "at least one message"},
		"messages not a list":    {`{"model":"m","messages":"hi"}`, "messages", "must be an array"},
		"unknown role":           {`{"model":"m","messages":[{"role":"wizard","content":"hi"}]}`, "messages[0].role", "not a role"},
		"a null message":         {`{"model":"m","messages":[null]}`, "messages[0].role", "messages[0] needs a role"},
		"assistant says nothing": {`{"model":"m","messages":[{"role":"assistant","content":null}]}`, "messages[0].content", "calls no tools"},
		"no content":             {`{"model":"m","messages":[{"role":"user"}]}`, "messages[0].content", "required"},
		"content a number":       {`{"model":"m","messages":[{"role":"user","content":1}]}`, "messages[0].content", "string or an array"},
		"an image part":          {`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, "messages[0].content[0]", "text only"},
		"a part without text":    {`{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}`, "messages[0].content[0]", "text only"},
		"stream not a boolean":   {`{"model":"m","stream":"yes","messages":[{"role":"user","content":"hi"}]}`, "stream", "must be a boolean"},
		"n of two":               {`{"model":"m","n":2,"messages":[{"role":"user","content":"hi"}]}`, "n", "one choice"},
		"stream_options alone":   {`{"model":"m","stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`, "stream_options", "only allowed when stream"},
		"invalid UTF-8":          {"{\"model\":\"m\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "", "UTF-8"},
	} {
		t.Run(name, func(t *testing.T) {
			status, e := f.openAI(t, http.MethodPost, "/v1/chat/completions", "key-acme-1234", tc.body)
			param := ""
			if e.Error.Param != nil {
				param = *e.Error.Param
			}
			if status != http.StatusBadRequest || e.Error.Type != "invalid_request_error" || param != tc.param || !strings.Contains(e.Error.Message, tc.says) {
				t.Fatalf("%d %+v (param %q), want 400 invalid_request_error on %q saying %q", status, e.Error, param, tc.param, tc.says)
			}
		})
	}
	if n := len(f.submitted(t)); n != 0 {
		t.Fatalf("%d bad requests became jobs", n)
	}
}

func TestChatCompletionsAcceptsTheShapesOpenAIClientsSend(t *testing.T) {
	f := routedFixture(t)
	// Without a worker registry the gateway cannot tell whether a worker
	// is live: it submits, and the job waits for one. The test only needs
	// the job submitted, so it hangs up (which cancels the job).
	for _, body := range []string{
		`{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},` +
			`{"role":"assistant","content":null,"tool_calls":[]},{"role":"tool","content":"42","tool_call_id":"c1"}],` +
			`"temperature":0.5,"max_tokens":10,"stop":["x"],"n":1,"user":"u1","stream":true,"stream_options":{"include_usage":true}}`,
		okChat,
	} {
		id := submitAndHangUp(t, f, body)
		if input, err := f.st.Input(t.Context(), id); err != nil || input != body {
			t.Fatalf("job %s input %q (%v), want the body as sent", id, input, err)
		}
	}
}

// submitAndHangUp posts a completion, waits until it is submitted, hangs
// up, and checks that the job was cancelled because of it.
func submitAndHangUp(t *testing.T, f *fixture, body string) string {
	t.Helper()
	before := len(f.submits(t))
	ctx, hangUp := context.WithCancel(t.Context())
	defer hangUp()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer key-acme-1234")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	eventually(t, "the request submitted as a job", func() bool { return len(f.submits(t)) == before+1 })
	hangUp()
	<-done
	h := f.submits(t)[before]
	if h.req.GetTopic() != gateway.ChatTopic || h.req.GetLabels()["model"] != "m" || h.req.GetLabels()["api"] != "openai" {
		t.Fatalf("submitted %v, want a %s job labelled model=m api=openai", h.req, gateway.ChatTopic)
	}
	eventually(t, "the job cancelled when its client hung up", func() bool {
		j, err := f.st.Get(t.Context(), h.req.GetJobId())
		return err == nil && j.State == store.Cancelled && strings.Contains(j.Reason, "hung up")
	})
	return h.req.GetJobId()
}

func TestChatCompletionsAuth(t *testing.T) {
	f := routedFixture(t)
	for name, tc := range map[string]struct {
		key    string
		status int
		code   string
	}{
		"no key":        {"", http.StatusUnauthorized, "invalid_api_key"},
		"unknown key":   {"key-nobody-1234", http.StatusUnauthorized, "invalid_api_key"},
		"read-only key": {"key-acme-read", http.StatusForbidden, "permission_denied"},
	} {
		t.Run(name, func(t *testing.T) {
			status, e := f.openAI(t, http.MethodPost, "/v1/chat/completions", tc.key, okChat)
			if status != tc.status || e.Error.Code == nil || *e.Error.Code != tc.code || e.Error.Message == "" {
				t.Fatalf("%d %+v, want %d %s", status, e.Error, tc.status, tc.code)
			}
		})
	}
	// Listing models needs a key too, a read-only one will do.
	if status, e := f.openAI(t, http.MethodGet, "/v1/models", "", ""); status != http.StatusUnauthorized {
		t.Fatalf("GET /v1/models without a key: %d %+v", status, e)
	}
	if status, _ := f.openAI(t, http.MethodGet, "/v1/models", "key-acme-read", ""); status != http.StatusOK {
		t.Fatalf("GET /v1/models with a read-only key: %d", status)
	}
	if n := len(f.submitted(t)); n != 0 {
		t.Fatalf("%d refused requests became jobs", n)
	}
}

func TestChatCompletionsBodyLimit(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, MaxPromptBytes: 1024, Router: chatRouter(t)})
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", 2048) + `"}]}`
	status, e := f.openAI(t, http.MethodPost, "/v1/chat/completions", "key-acme-1234", body)
	if status != http.StatusRequestEntityTooLarge || e.Error.Code == nil || *e.Error.Code != "request_too_large" || !strings.Contains(e.Error.Message, "1024 byte limit") {
		t.Fatalf("%d %+v, want 413 request_too_large naming the limit", status, e.Error)
	}
}

func TestChatCompletionsWithoutAChatPool(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys}) // routes job.echo only
	status, e := f.openAI(t, http.MethodPost, "/v1/chat/completions", "key-acme-1234", okChat)
	if status != http.StatusServiceUnavailable || e.Error.Code == nil || *e.Error.Code != "no_chat_pool" || !strings.Contains(e.Error.Message, "--route job.chat.llm=chat-llm") {
		t.Fatalf("%d %+v, want 503 no_chat_pool saying how to route it", status, e.Error)
	}
}

func TestModelsListsConfiguredModels(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys, Router: chatRouter(t), Models: []string{"zeta", "alpha"}})
	req, _ := http.NewRequest(http.MethodGet, f.url+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer key-acme-1234")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object string
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	if list.Object != "list" || len(list.Data) != 2 || list.Data[0].ID != "alpha" || list.Data[1].ID != "zeta" || list.Data[0].Object != "model" {
		t.Fatalf("models %+v, want alpha and zeta", list)
	}
	if _, err := gateway.New(f.st, f.conn, gateway.Options{Keys: keys, Router: chatRouter(t), Models: []string{""}}, testLog); err == nil {
		t.Fatal("New took an empty model name")
	}
}

// FuzzChatCompletions posts arbitrary bodies to the front door of a
// gateway that routes no chat pool: every answer must be an OpenAI error,
// 400 for a bad request, and 503 (no pool) only for a request that names
// a model and holds messages. Nothing becomes a job.
func FuzzChatCompletions(f *testing.F) {
	for _, seed := range []string{
		okChat,
		`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`,
		`{"model":"m","messages":[{"role":"assistant","content":null},{"role":"tool","content":"1"}]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`,
		`{"model":"m","n":0,"messages":[{"role":"user","content":"x"}]}`,
		`{"model":"","messages":[]}`, `{"messages":null}`, `{"model":"m","messages":[{}]}`,
		`{`, `null`, `[]`, ``, `"x"`, "{\"model\":\"\xff\"}",
	} {
		f.Add([]byte(seed))
	}
	mr := miniredis.RunT(f)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	f.Cleanup(func() { _ = rdb.Close() })
	router, _ := routing.NewRouter(map[string]string{"job.echo": "echo"})
	g, err := gateway.New(store.New(rdb, store.Options{}), nullBus{}, gateway.Options{Insecure: true, MaxPromptBytes: 4096, Router: router}, testLog)
	if err != nil {
		f.Fatal(err)
	}
	h := g.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/chat/completions", bytes.NewReader(body)))
		var e openAIError
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
			t.Fatalf("status %d for %q: %s is not an OpenAI error (%v)", rec.Code, body, rec.Body, err)
		}
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		case http.StatusServiceUnavailable:
			var req struct {
				Model    string
				Messages []json.RawMessage
			}
			if err := json.Unmarshal(body, &req); err != nil || req.Model == "" || len(req.Messages) == 0 || !utf8.Valid(body) {
				t.Fatalf("passed the checks: %q", body)
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if n := len(mr.Keys()); n != 0 {
			t.Fatalf("%q left %d keys in the store", body, n)
		}
	})
}
