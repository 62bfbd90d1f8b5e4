// Package llm is the plugin of the chat-llm pool: it runs each job on an
// OpenAI-compatible chat completions endpoint (Ollama, vLLM, llama.cpp's
// server, OpenAI and the many servers that speak the same API), streams
// the answer to the job's followers as it comes, and returns the whole
// answer with the token usage the model reported.
//
// A job's input is either a prompt, sent as one user message, or a whole
// chat request (see Handler). The handler always asks the upstream for a
// stream (stream: true, with usage) and also accepts a server that ignores
// that and answers with one JSON body.
//
// Failures say whether another attempt can help: a rate limit (429), a
// server error (5xx), a network error and a stream cut short are ordinary
// errors, retried while the job has attempts left; a request the upstream
// refuses (400, 401, 403, 404, 422, ...) is marked plugins.Permanent and
// is not retried. The API key is sent only in the Authorization header: it
// never appears in an error, even when the upstream echoes it back. This
// package logs nothing, so neither prompts nor answers reach a log.
package llm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cortex-os/core/plugins"
)

// Topic is the topic the chat-llm pool serves.
const Topic = "job.chat.llm"

// ContentTypeLabel is the job label that declares the input's form: with
// the value "application/json" the input must be a chat request, and a
// job whose input is not one fails at once instead of being sent as text.
const ContentTypeLabel = "content-type"

// Defaults of Config.
const (
	DefaultMaxOutputBytes = 4 << 20
	DefaultStallTimeout   = 2 * time.Minute
)

// Config says which endpoint and model a Handler uses.
type Config struct {
	// BaseURL is the API root that "/chat/completions" is added to, such
	// as http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1
	// (vLLM) or https://api.openai.com/v1.
	BaseURL string
	// Model is the model every job runs on. When empty, a chat request's
	// own "model" is used, and a plain prompt cannot run.
	Model string
	// APIKey, when set, is sent as "Authorization: Bearer <key>". It is
	// never written to an error.
	APIKey string
	// Client makes the calls; nil uses a client without an overall
	// timeout: the job's context bounds each call, and StallTimeout a
	// silent upstream.
	Client *http.Client
	// MaxOutputBytes bounds one answer (DefaultMaxOutputBytes when 0); a
	// longer answer fails the job permanently.
	MaxOutputBytes int
	// StallTimeout fails an attempt (to be retried) when the upstream
	// sends nothing for this long (DefaultStallTimeout when 0).
	StallTimeout time.Duration
}

// Handler runs jobs on the configured endpoint. Its input is:
//
//   - a chat request: a JSON object with a "messages" array, as a client
//     sends to /v1/chat/completions ({"messages": [...], "temperature":
//     0.2, "max_tokens": 200, ...}). Every field is passed on, except that
//     the model is Config.Model when that is set, and streaming with
//     usage is always asked for. Only the first choice is read.
//   - anything else: a prompt, sent as a single user message.
//
// An input that starts with "{" but is not a chat request is a prompt,
// unless the job is labelled content-type=application/json, which makes
// it an error.
type Handler struct {
	cfg      Config
	endpoint string // BaseURL + /chat/completions
	client   *http.Client
}

var _ plugins.Handler = (*Handler)(nil)

// New checks cfg and returns its Handler.
func New(cfg Config) (*Handler, error) {
	u, err := url.Parse(strings.TrimSpace(cfg.BaseURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("base URL %q: want http(s)://host[:port]/path, e.g. http://127.0.0.1:11434/v1", redact(cfg.BaseURL))
	}
	if u.User != nil {
		return nil, fmt.Errorf("base URL %s: carries credentials; give the API key separately", u.Redacted())
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/chat/completions"
	u.RawPath = ""
	if cfg.MaxOutputBytes < 0 || cfg.StallTimeout < 0 {
		return nil, errors.New("MaxOutputBytes and StallTimeout must not be negative")
	}
	cfg.MaxOutputBytes = cmp.Or(cfg.MaxOutputBytes, DefaultMaxOutputBytes)
	cfg.StallTimeout = cmp.Or(cfg.StallTimeout, DefaultStallTimeout)
	return &Handler{cfg: cfg, endpoint: u.String(), client: cmp.Or(cfg.Client, http.DefaultClient)}, nil
}

// redact hides what looks like credentials in a URL that did not parse.
func redact(raw string) string {
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		return "…@" + raw[i+1:]
	}
	return raw
}

// Endpoint is the URL the handler posts to.
func (h *Handler) Endpoint() string { return h.endpoint }

// Handle sends the job to the upstream, writes the answer to job.Stream
// as it comes and returns it whole, with the usage the upstream reported.
func (h *Handler) Handle(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
	body, err := h.requestBody(job)
	if err != nil {
		return nil, plugins.Permanent(err)
	}
	// A silent upstream is cut off after StallTimeout; every byte that
	// comes resets the clock.
	callCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(h.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	req, err := http.NewRequestWithContext(callCtx, http.MethodPost, h.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, plugins.Permanent(fmt.Errorf("build the request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream, application/json")
	if h.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+h.cfg.APIKey)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, h.callError(ctx, callCtx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, h.statusError(resp, time.Now())
	}
	a := &answer{stream: job.Stream, limit: h.cfg.MaxOutputBytes}
	r := &activityReader{r: resp.Body, stall: stall, after: h.cfg.StallTimeout}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "text/event-stream" {
		err = readStream(r, a)
	} else {
		err = readWhole(r, a)
	}
	if err != nil {
		if errors.Is(err, errTooLong) {
			return nil, plugins.Permanent(err)
		}
		return nil, h.callError(ctx, callCtx, err)
	}
	return &plugins.Result{Output: a.text.String(), Usage: a.usage}, nil
}

var errStalled = errors.New("the upstream sent nothing for too long")

// callError explains a failed call or read: the job's own end (its
// context's error, for the worker to record as a cancel or timeout), a
// stalled upstream, or a network error; all but the first are retried.
func (h *Handler) callError(jobCtx, callCtx context.Context, err error) error {
	if jobCtx.Err() != nil {
		return fmt.Errorf("call %s: %w", h.endpoint, context.Cause(jobCtx))
	}
	if errors.Is(context.Cause(callCtx), errStalled) {
		return fmt.Errorf("upstream %s sent nothing for %s: %w (retried)", h.endpoint, h.cfg.StallTimeout, errStalled)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its URL is h.endpoint, said once
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("upstream %s: %w", h.endpoint, errCut)
	}
	return fmt.Errorf("upstream %s: %s", h.endpoint, scrub(err.Error(), h.cfg.APIKey))
}

// requestBody is the chat request sent for job: its own chat request, or
// its prompt as a user message, with the model and streaming set.
func (h *Handler) requestBody(job *plugins.Job) ([]byte, error) {
	input := job.Prompt
	if job.Payload != nil {
		input = string(job.Payload)
	}
	req, err := parseChatRequest(input, job.Labels[ContentTypeLabel] == "application/json")
	if err != nil {
		return nil, err
	}
	if req == nil {
		msgs, err := json.Marshal([]map[string]string{{"role": "user", "content": input}})
		if err != nil {
			return nil, err
		}
		req = map[string]json.RawMessage{"messages": msgs}
	}
	model := h.cfg.Model
	if model == "" {
		if err := json.Unmarshal(req["model"], &model); err != nil || model == "" {
			return nil, errors.New("no model to run: this worker has none configured (--llm-model), so the job must be a chat request that names one in \"model\"")
		}
	}
	req["model"], _ = json.Marshal(model)
	req["stream"] = json.RawMessage(`true`)
	req["stream_options"] = json.RawMessage(`{"include_usage":true}`)
	return json.Marshal(req)
}

// parseChatRequest returns input as a chat request, or nil when it is a
// prompt. A JSON object with a "messages" key is a chat request, and must
// be a valid one; when mustBe, anything else is an error.
func parseChatRequest(input string, mustBe bool) (map[string]json.RawMessage, error) {
	const want = `want a JSON object with a "messages" array of {"role": ..., "content": ...} objects`
	trimmed := strings.TrimSpace(input)
	var req map[string]json.RawMessage
	if !strings.HasPrefix(trimmed, "{") || json.Unmarshal([]byte(trimmed), &req) != nil || req["messages"] == nil {
		if mustBe {
			return nil, fmt.Errorf("the job is labelled %s=application/json but its input is not a chat request: %s", ContentTypeLabel, want)
		}
		return nil, nil
	}
	var msgs []struct {
		Role *string `json:"role"`
	}
	if err := json.Unmarshal(req["messages"], &msgs); err != nil || len(msgs) == 0 {
		return nil, errors.New("the chat request's \"messages\" is not a non-empty array of objects: " + want)
	}
	for i, m := range msgs {
		if m.Role == nil || *m.Role == "" {
			return nil, fmt.Errorf("message %d of the chat request has no \"role\": %s", i, want)
		}
	}
	if raw, ok := req["n"]; ok {
		var n int
		if json.Unmarshal(raw, &n) != nil || n > 1 {
			return nil, fmt.Errorf("the chat request asks for n=%s answers; a job produces one (leave n out)", raw)
		}
	}
	return req, nil
}

// activityReader resets the stall timer whenever bytes come.
type activityReader struct {
	r     io.Reader
	stall *time.Timer
	after time.Duration
}

func (a *activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.stall.Reset(a.after)
	}
	return n, err
}
