package gateway_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
)

// The front door's answers to what it does not serve: OpenAI's clients
// read only errors in OpenAI's format, so a path or method it does not
// serve must be one too, not Go's plain-text 404 or 405.

// served is how the errors list the routes served.
const served = "POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model}"

// frontDoor is the handler of a gateway with keys and a chat route, over
// a store and no bus: enough for answers that submit nothing.
func frontDoor(t *testing.T) http.Handler {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	g, err := gateway.New(store.New(rdb, store.Options{}), nullBus{}, gateway.Options{Keys: keys, Router: chatRouter(t)}, testLog)
	if err != nil {
		t.Fatal(err)
	}
	return g.Handler()
}

// ask sends a request with key (none if empty) to h and returns the
// answer, its body decoded as an OpenAI error, and the body as sent.
func ask(t *testing.T, h http.Handler, method, target, key string) (*httptest.ResponseRecorder, openAIError, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body := rec.Body.String()
	var e openAIError
	if method != http.MethodHead {
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("%s %s: %d %q is not an OpenAI error: %v", method, target, rec.Code, body, err)
		}
	}
	return rec, e, body
}

// checkError fails unless the answer is an OpenAI error with status,
// code, no param and a message holding each of says, that echoes no key.
func checkError(t *testing.T, res *httptest.ResponseRecorder, e openAIError, body string, status int, code string, says ...string) {
	t.Helper()
	if res.Code != status || res.Header().Get("Content-Type") != "application/json" ||
		e.Error.Type != "invalid_request_error" || e.Error.Param != nil || e.Error.Code == nil || *e.Error.Code != code {
		t.Fatalf("%d (%s) %s, want %d application/json invalid_request_error %s", res.Code, res.Header().Get("Content-Type"), body, status, code)
	}
	for _, s := range says {
		if !strings.Contains(e.Error.Message, s) {
			t.Errorf("message %q does not say %q", e.Error.Message, s)
		}
	}
	for _, key := range callers {
		if key != "" && strings.Contains(body, key) {
			t.Errorf("the answer echoes the key %s: %s", key, body)
		}
	}
}

// callers are the keys an unserved request is refused with alike.
var callers = map[string]string{"no key": "", "a valid key": "key-acme-1234", "an unknown key": "key-nobody-1234"}

func TestOpenAIUnknownPathIsAnOpenAI404(t *testing.T) {
	h := frontDoor(t)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v1/embeddings"},
		{http.MethodPost, "/v1/responses"},
		{http.MethodGet, "/v1/"},
		{http.MethodGet, "/v1"},
		{http.MethodGet, "/v1/models/a/b"},
		{http.MethodPost, "/v1/chat/completions/extra"},
	} {
		for who, key := range callers {
			t.Run(tc.method+" "+tc.path+" with "+who, func(t *testing.T) {
				res, e, body := ask(t, h, tc.method, tc.path, key)
				checkError(t, res, e, body, http.StatusNotFound, "unknown_url", tc.method+" "+tc.path+" is not served", served)
			})
		}
	}
}

func TestOpenAIUnknownPathEchoesNoQuery(t *testing.T) {
	res, e, body := ask(t, frontDoor(t), http.MethodPost, "/v1/embeddings?api_key=sk-secret-1234", "")
	checkError(t, res, e, body, http.StatusNotFound, "unknown_url", "/v1/embeddings")
	if strings.Contains(body, "sk-secret") {
		t.Fatalf("the answer echoes the query: %s", body)
	}
}

func TestOpenAIWrongMethodIsAnOpenAI405(t *testing.T) {
	h := frontDoor(t)
	for _, tc := range []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/chat/completions", "POST"},
		{http.MethodPut, "/v1/chat/completions", "POST"},
		{http.MethodPost, "/v1/models", "GET, HEAD"},
		{http.MethodDelete, "/v1/models/llama3.2", "GET, HEAD"},
	} {
		for who, key := range callers {
			t.Run(tc.method+" "+tc.path+" with "+who, func(t *testing.T) {
				res, e, body := ask(t, h, tc.method, tc.path, key)
				checkError(t, res, e, body, http.StatusMethodNotAllowed, "method_not_allowed", tc.method+" "+tc.path+" is not allowed", served)
				if got := res.Header().Get("Allow"); got != tc.allow {
					t.Fatalf("Allow %q, want %q", got, tc.allow)
				}
			})
		}
	}
}

func TestOpenAIServedRoutesStillNeedAKey(t *testing.T) {
	h := frontDoor(t)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, "/v1/chat/completions"},
		{http.MethodGet, "/v1/models"},
		{http.MethodGet, "/v1/models/llama3.2"},
	} {
		res, e, body := ask(t, h, tc.method, tc.path, "key-nobody-1234")
		checkError(t, res, e, body, http.StatusUnauthorized, "invalid_api_key")
	}
	if res, _, _ := ask(t, h, http.MethodHead, "/v1/models", "key-acme-read"); res.Code != http.StatusOK {
		t.Fatalf("HEAD /v1/models: %d, want 200", res.Code)
	}
	res, e, body := ask(t, h, http.MethodGet, "/v1/models/llama3.2", "key-acme-read")
	if res.Code != http.StatusNotFound || e.Error.Code == nil || *e.Error.Code != "model_not_found" {
		t.Fatalf("GET /v1/models/llama3.2: %d %s, want 404 model_not_found", res.Code, body)
	}
}

func TestShownPathQuotesOddPaths(t *testing.T) {
	res, e, body := ask(t, frontDoor(t), http.MethodGet, "/v1/a%0Ab%22"+strings.Repeat("x", 200), "")
	checkError(t, res, e, body, http.StatusNotFound, "unknown_url", `GET "/v1/a\nb\"xxx`)
	if strings.Contains(e.Error.Message, strings.Repeat("x", 101)) || strings.Contains(e.Error.Message, "\n") {
		t.Fatalf("the path is not cut and quoted: %q", e.Error.Message)
	}
}
