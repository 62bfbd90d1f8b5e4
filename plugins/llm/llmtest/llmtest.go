// Package llmtest is a fake OpenAI-compatible chat completions server, for
// tests and demos of the chat-llm pool without a model. It answers
// "You said: <the last user message>", word by word as server-sent
// events (or as one JSON body when the request does not ask for a
// stream), reports token usage (a token is a word), and can be told to
// fail, to ignore stream: true, to cut a stream short, to send a
// malformed event, or to hold its streams and let them go word by word. It listens on 127.0.0.1 only and owns nothing else.
package llmtest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Model is the one model the fake lists and serves (any name is accepted).
const Model = "fake-llm"

// Fault is how the fake answers one call instead of as usual.
type Fault struct {
	// Status, when not 0, is the HTTP status of the answer, with Body
	// (an OpenAI error object when empty) and, for 429, RetryAfter as the
	// Retry-After header.
	Status     int
	Body       string
	RetryAfter string
	// Whole answers with one JSON body although a stream was asked for.
	Whole bool
	// CutAfter ends the stream after this many words, without finishing.
	CutAfter int
	// Malformed sends an event that is not JSON after the first word.
	Malformed bool
}

// Request is a call the fake received.
type Request struct {
	// Authorization is the header as sent.
	Authorization string
	// Body is the decoded request body.
	Body map[string]any
}

// Server is a running fake. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL to configure a client with: http://127.0.0.1:PORT/v1.
	URL string

	srv     *httptest.Server
	key     string
	delay   time.Duration
	closing chan struct{}

	mu       sync.Mutex
	faults   []Fault
	requests []Request
	gate     *gate // nil when streams are not held
}

// gate holds streams: each word waits for a step, or for open to close.
type gate struct {
	open  chan struct{}
	steps chan struct{}
}

// Options configure a fake.
type Options struct {
	// Key, when set, is the API key calls must bear; a call without it
	// gets 401 with an error that quotes the key it was given (as some
	// servers do, which is why a client must never show their errors
	// unscrubbed).
	Key string
	// Delay is the pause between the words of a stream (none when 0), to
	// watch a stream by eye.
	Delay time.Duration
	// Listener, when set, is where the fake serves (127.0.0.1:0 otherwise).
	Listener net.Listener
}

// NewServer starts a fake; Close stops it.
func NewServer(opts Options) *Server {
	s := &Server{key: opts.Key, delay: opts.Delay, closing: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.chat)
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []any{map[string]any{"id": Model, "object": "model", "owned_by": "llmtest"}}})
	})
	s.srv = httptest.NewUnstartedServer(mux)
	if opts.Listener != nil {
		_ = s.srv.Listener.Close()
		s.srv.Listener = opts.Listener
	}
	s.srv.Start()
	s.URL = s.srv.URL + "/v1"
	return s
}

// Close releases held streams and stops the fake.
func (s *Server) Close() {
	close(s.closing)
	s.srv.Close()
}

// Fail makes the next calls, one per fault, answer as the faults say.
func (s *Server) Fail(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, faults...)
}

// Hold makes the streams that start from now on wait before each word
// until Step or Release.
func (s *Server) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate == nil {
		s.gate = &gate{open: make(chan struct{}), steps: make(chan struct{}, 64)}
	}
}

// Step lets one held word out (of the one stream waiting, or of the next
// stream that waits).
func (s *Server) Step() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		select {
		case s.gate.steps <- struct{}{}:
		default:
		}
	}
}

// Release lets held streams go on to their end.
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gate != nil {
		close(s.gate.open)
		s.gate = nil
	}
}

// Requests returns the calls received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Reply is what the fake answers to messages: "You said: " and the last
// user message's text.
func Reply(messages []any) string {
	last := ""
	for _, m := range messages {
		if mm, ok := m.(map[string]any); ok && mm["role"] == "user" {
			last = text(mm["content"])
		}
	}
	return "You said: " + last
}

// text is a message's content as text: a string, or the text of an array
// of parts ({"type":"text","text":"..."}), joined.
func text(content any) string {
	switch c := content.(type) {
	case string:
		return c
	case []any:
		var parts []string
		for _, p := range c {
			if pm, ok := p.(map[string]any); ok && pm["type"] == "text" {
				if t, ok := pm["text"].(string); ok {
					parts = append(parts, t)
				}
			}
		}
		return strings.Join(parts, "")
	}
	return ""
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, Request{Authorization: r.Header.Get("Authorization"), Body: body})
	var f Fault
	if len(s.faults) > 0 {
		f, s.faults = s.faults[0], s.faults[1:]
	}
	g := s.gate
	s.mu.Unlock()

	if s.key != "" && r.Header.Get("Authorization") != "Bearer "+s.key {
		given := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		writeError(w, http.StatusUnauthorized, "Incorrect API key provided: "+given)
		return
	}
	if f.Status != 0 {
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		if f.Body != "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.Status)
			_, _ = w.Write([]byte(f.Body))
			return
		}
		writeError(w, f.Status, fmt.Sprintf("fake failure %d", f.Status))
		return
	}
	messages, ok := body["messages"].([]any)
	if !ok || len(messages) == 0 {
		writeError(w, http.StatusBadRequest, "messages: a non-empty array is required")
		return
	}
	words := strings.SplitAfter(Reply(messages), " ")
	prompt := 0
	for _, m := range messages {
		if mm, ok := m.(map[string]any); ok {
			prompt += len(strings.Fields(text(mm["content"])))
		}
	}
	usage := map[string]int{"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
	model, _ := body["model"].(string)
	if stream, _ := body["stream"].(bool); !stream || f.Whole {
		writeJSON(w, http.StatusOK, map[string]any{
			"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
			"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": strings.Join(words, "")}, "finish_reason": "stop"}},
			"usage":   usage,
		})
		return
	}
	opts, _ := body["stream_options"].(map[string]any)
	if withUsage, _ := opts["include_usage"].(bool); !withUsage {
		usage = nil
	}
	s.stream(w, r, model, words, usage, f, g)
}

// stream sends words as chat completion chunks, then usage (when not
// nil) and [DONE].
func (s *Server) stream(w http.ResponseWriter, r *http.Request, model string, words []string, usage map[string]int, f Fault, g *gate) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flush := func() {
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
	}
	event := func(v any) {
		b, _ := json.Marshal(v)
		_, _ = fmt.Fprintf(w, "data: %s\n\n", b)
		flush()
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	_, _ = fmt.Fprint(w, ": fake-llm stream\n\n")
	event(chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	for i, word := range words {
		if f.CutAfter > 0 && i == f.CutAfter {
			return
		}
		if i == 1 && f.Malformed {
			_, _ = fmt.Fprint(w, "data: {\"choices\": [oops\n\n")
			flush()
			return
		}
		if g != nil {
			select {
			case <-g.open:
				g = nil
			case <-g.steps:
			case <-s.closing:
				return
			case <-r.Context().Done():
				return
			}
		}
		if i > 0 && s.delay > 0 {
			select {
			case <-time.After(s.delay):
			case <-r.Context().Done():
				return
			}
		}
		event(chunk(map[string]any{"content": word}, nil))
	}
	event(chunk(map[string]any{}, "stop"))
	if usage != nil {
		event(map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": []any{}, "usage": usage})
	}
	_, _ = fmt.Fprint(w, "data: [DONE]\n\n")
	flush()
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error"}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
