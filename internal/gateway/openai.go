package gateway

// The OpenAI-compatible front door: POST /v1/chat/completions (whole or
// streamed as server-sent events), GET /v1/models and GET
// /v1/models/{model}, on the gateway's HTTP listener, so that an OpenAI
// client pointed at http://<gateway>/v1 with a CortexOS API key works
// unchanged. Any other path under /v1, or a route asked by another
// method, is answered in OpenAI's error format too (404, 405).
//
// A completion is a job like any other: it is submitted on ChatTopic
// through SubmitJob (the same checks, record and hand-off), passes the
// safety gate, runs on a chat-llm worker and is recorded; the answer
// carries its id in X-Cortex-Job-Id. The request body, as sent, is the
// job's payload; the worker's result is the assistant's text and its
// token usage is the job's.
//
// A client that hangs up before its completion is answered (a chat UI
// whose tab is closed) has the job cancelled: nobody is left to read the
// answer, and the model's tokens cost money.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/registry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// ChatTopic is the topic of the jobs the front door submits.
const ChatTopic = "job.chat.llm"

// Headers of a front door answer that name the job it became.
const (
	HeaderJobID   = "X-Cortex-Job-Id"
	HeaderTraceID = "X-Cortex-Trace-Id"
)

// ModelCapability prefixes the capabilities by which a chat-llm worker
// names a model it serves ("model:llama3.2"), listed by GET /v1/models.
const ModelCapability = "model:"

// workerWait bounds how long a completion waits for the registry to hear
// from a chat-llm worker before it is refused: right after the gateway
// starts, the workers' first heartbeats may still be on their way.
const workerWait = time.Second

// openAIRoute is one route of the front door.
type openAIRoute struct {
	// method is the one method served; a GET route answers HEAD too.
	method string
	// path is a ServeMux path pattern.
	path  string
	serve func(*Gateway, http.ResponseWriter, *http.Request)
}

// openAIRoutes are the routes the front door serves, in the order its
// errors list them.
var openAIRoutes = []openAIRoute{
	{http.MethodPost, "/v1/chat/completions", (*Gateway).chatCompletions},
	{http.MethodGet, "/v1/models", (*Gateway).listModels},
	{http.MethodGet, "/v1/models/{model}", (*Gateway).getModel},
}

// mountOpenAI mounts the front door's routes on mux and answers the rest
// of /v1 in OpenAI's error format, which OpenAI's clients can read (Go's
// plain-text 404 and 405 they cannot): a route asked by another method is
// 405 with Allow, any other path 404 naming the routes served. Those two
// answers need no key, as OpenAI's do not: they tell only what is
// documented, and echo the method and path, never a header or the query.
func (g *Gateway) mountOpenAI(mux *http.ServeMux) {
	for _, rt := range openAIRoutes {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) { rt.serve(g, w, r) })
		mux.HandleFunc(rt.path, rt.wrongMethod)
	}
	mux.HandleFunc("/v1/", unknownOpenAIPath)
	mux.HandleFunc("/v1", unknownOpenAIPath)
}

// wrongMethod answers a request to the route by a method it does not
// serve: 405, with the methods it does in Allow.
func (rt openAIRoute) wrongMethod(w http.ResponseWriter, r *http.Request) {
	allow := rt.method
	if rt.method == http.MethodGet {
		allow += ", " + http.MethodHead
	}
	w.Header().Set("Allow", allow)
	writeAPIError(w, &apiError{status: http.StatusMethodNotAllowed, typ: "invalid_request_error", code: "method_not_allowed",
		message: fmt.Sprintf("%s %s is not allowed: send %s (this gateway serves %s)", r.Method, shownPath(r.URL.Path), rt.method, servedRoutes())})
}

// unknownOpenAIPath answers a path under /v1 that the front door does not
// serve (/v1/embeddings, /v1/responses …): 404, naming those it does.
func unknownOpenAIPath(w http.ResponseWriter, r *http.Request) {
	writeAPIError(w, &apiError{status: http.StatusNotFound, typ: "invalid_request_error", code: "unknown_url",
		message: fmt.Sprintf("%s %s is not served: this gateway serves %s", r.Method, shownPath(r.URL.Path), servedRoutes())})
}

// servedRoutes lists the routes served, for an error message: "POST
// /v1/chat/completions, GET /v1/models and GET /v1/models/{model}".
func servedRoutes() string {
	names := make([]string, len(openAIRoutes))
	for i, rt := range openAIRoutes {
		names[i] = rt.method + " " + rt.path
	}
	last := len(names) - 1
	return strings.Join(names[:last], ", ") + " and " + names[last]
}

// shownPath is a request path as an error message shows it: as sent if it
// is short and plain, else quoted and cut to 100 characters.
func shownPath(p string) string {
	if len(p) <= 100 && !strings.ContainsFunc(p, func(c rune) bool { return c <= ' ' || c == '"' || c > '~' }) {
		return p
	}
	return fmt.Sprintf("%.100q", p)
}

// openAIAuth resolves the caller's key, as the API does, or answers 401.
func (g *Gateway) openAIAuth(w http.ResponseWriter, r *http.Request) (context.Context, bool) {
	p, err := g.principalFor(r.Header.Get("Authorization"))
	if err != nil {
		writeAPIError(w, connectToAPI(err))
		return nil, false
	}
	return context.WithValue(r.Context(), principalKey{}, p), true
}

func (g *Gateway) chatCompletions(w http.ResponseWriter, r *http.Request) {
	ctx, ok := g.openAIAuth(w, r)
	if !ok {
		return
	}
	if err := requireWrite(ctx, "ask for chat completions"); err != nil {
		writeAPIError(w, connectToAPI(err))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(g.maxPrompt)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeAPIError(w, &apiError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error", code: "request_too_large",
				message: fmt.Sprintf("the request is over the %d byte limit; shorten the conversation", g.maxPrompt)})
			return
		}
		writeAPIError(w, invalidRequest("", "could not read the request body: "+err.Error()))
		return
	}
	req, aerr := parseChatRequest(body)
	if aerr != nil {
		writeAPIError(w, aerr)
		return
	}
	if aerr := g.chatPoolReady(ctx); aerr != nil {
		writeAPIError(w, aerr)
		return
	}
	if aerr := g.checkModel(req.Model); aerr != nil {
		writeAPIError(w, aerr)
		return
	}
	if err := requireWrite(ctx, "submit jobs"); err != nil {
		writeAPIError(w, connectToAPI(err))
		return
	}
	done, err := g.admit()
	if err != nil {
		writeAPIError(w, connectToAPI(err))
		return
	}
	// Admitted until the job is handed on, not while it runs.
	handedOn := sync.OnceFunc(done)
	defer handedOn()
	nj, err := g.accept(ctx, &cortexv1.SubmitJobRequest{
		Topic:   ChatTopic,
		Payload: body,
		Labels:  map[string]string{"model": req.Model, "api": "openai"},
	})
	if err != nil {
		writeAPIError(w, connectToAPI(err))
		return
	}
	var pieces <-chan *cortexv1.JobOutput
	if req.Stream {
		// Listen before the job is handed on, so that no piece of a quick
		// answer is written before anyone listens.
		ch, stop, err := g.followOutput(ctx, nj.ID)
		if err != nil {
			writeAPIError(w, connectToAPI(err))
			return
		}
		defer stop()
		pieces = ch
	}
	res, err := g.submitAccepted(ctx, nj)
	handedOn()
	if err != nil {
		writeAPIError(w, connectToAPI(err))
		return
	}
	w.Header().Set(HeaderJobID, res.GetJobId())
	w.Header().Set(HeaderTraceID, res.GetTraceId())
	c := &chatCall{g: g, ctx: ctx, w: w, id: res.GetJobId(), model: req.Model, pieces: pieces}
	if req.Stream {
		c.sse = &sse{includeUsage: req.StreamOptions != nil && req.StreamOptions.IncludeUsage}
		c.sse.flusher, _ = w.(http.Flusher)
	}
	c.run()
}

// chatPoolReady refuses a completion no worker can take: ChatTopic is not
// routed, or the registry has heard from no live worker of its pool.
func (g *Gateway) chatPoolReady(ctx context.Context) *apiError {
	pool, ok := g.router.Pool(ChatTopic)
	if !ok {
		return &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "no_chat_pool",
			message: "no pool serves " + ChatTopic + " on this gateway: route it to the chat-llm pool (--route " + ChatTopic + "=chat-llm, or a routes file) and run a chat-llm worker (cortexctl worker --pool chat-llm)"}
	}
	if g.workers == nil || g.liveWorkers(pool) > 0 {
		return nil
	}
	// The registry may not have heard the workers yet: ask them to beat.
	_ = registry.AskBeats(g.bus)
	tick := time.NewTicker(workerWait / 20)
	defer tick.Stop()
	deadline := time.After(workerWait)
	for g.liveWorkers(pool) == 0 {
		select {
		case <-ctx.Done():
			return &apiError{status: http.StatusServiceUnavailable, typ: "server_error", message: "the client went away"}
		case <-deadline:
			return &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "no_chat_worker",
				message: "no live worker of pool " + pool + " serves " + ChatTopic + ": start one (cortexctl worker --pool " + pool + ") and try again"}
		case <-tick.C:
		}
	}
	return nil
}

// liveWorkers counts the live workers of pool that serve ChatTopic.
func (g *Gateway) liveWorkers(pool string) int {
	n := 0
	for _, w := range g.workers.Snapshot().Workers {
		if w.Pool == pool && w.State == registry.Live && servesChat(w) {
			n++
		}
	}
	return n
}

// servesChat says whether a worker takes ChatTopic: it lists the topic,
// or a pattern (job.chat.*) that covers it.
func servesChat(w registry.Worker) bool {
	return slices.ContainsFunc(w.Topics, func(t string) bool {
		prefix, pattern := strings.CutSuffix(t, "*")
		return t == ChatTopic || pattern && strings.HasPrefix(ChatTopic, prefix)
	})
}

// chatCall is one completion: its job, followed until it ends, and the
// answer written as it goes.
type chatCall struct {
	g     *Gateway
	ctx   context.Context
	w     http.ResponseWriter
	id    string
	model string
	// job is the latest snapshot of the job.
	job *cortexv1.Job
	// sse is set for a streamed completion, and pieces are then the
	// job's pieces of output.
	sse    *sse
	pieces <-chan *cortexv1.JobOutput
	// gone is set when a write to the client failed.
	gone bool
}

// sse is the state of a streamed completion.
type sse struct {
	flusher      http.Flusher
	includeUsage bool
	started      bool
	// attempt is the attempt whose pieces are streamed, next the piece
	// expected next; sent is the text streamed so far.
	attempt uint32
	next    uint64
	sent    strings.Builder
	// off is set once pieces can no longer be streamed in order (one was
	// missed, or a newer attempt started after text was sent): the rest
	// of the answer comes from the recorded result.
	off bool
}

func (c *chatCall) run() {
	err := c.g.watchJob(c.ctx, c.id, c.pieces, c.onOutput, func(j *cortexv1.Job) error {
		c.job = j
		return nil
	})
	switch {
	case c.ctx.Err() != nil || c.gone:
		c.abandon()
		return
	case err != nil:
		c.fail(connectToAPI(err))
		return
	}
	if c.job.GetState() != cortexv1.JobState_JOB_STATE_COMPLETED {
		c.fail(jobError(c.job))
		return
	}
	_, text, err := c.g.store.Output(c.ctx, c.id)
	if err != nil {
		c.fail(connectToAPI(c.g.readErr(c.id, err)))
		return
	}
	if c.sse == nil {
		writeJSON(c.w, http.StatusOK, c.completion(text))
		return
	}
	c.finishStream(text)
}

// abandon cancels the job of a client that hung up before its answer.
func (c *chatCall) abandon() {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), handOffTimeout)
	defer cancel()
	_, err := c.g.CancelJob(ctx, &cortexv1.CancelJobRequest{JobId: c.id, Reason: "the OpenAI-compatible client hung up before its completion was answered"})
	if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
		c.g.log.Warn("cancel an abandoned completion", "job_id", c.id, "err", err)
	}
}

// fail answers an error: with its status before anything was streamed,
// else as an error event that ends the stream (OpenAI's clients raise it).
func (c *chatCall) fail(e *apiError) {
	if c.sse == nil || !c.sse.started {
		writeAPIError(c.w, e)
		return
	}
	_ = c.event(e)
}

func (c *chatCall) created() int64 { return c.job.GetCreatedAt().GetSeconds() }

func (c *chatCall) completion(text string) *completion {
	stop := "stop"
	return &completion{
		ID: "chatcmpl-" + c.id, Object: "chat.completion", Created: c.created(), Model: c.model,
		Choices: []choice{{Message: &message{Role: "assistant", Content: text}, FinishReason: &stop}},
		Usage:   usageOf(c.job),
	}
}

func usageOf(j *cortexv1.Job) *usageInTokens {
	u := j.GetUsage()
	if u == nil {
		return nil
	}
	return &usageInTokens{PromptTokens: u.GetPromptTokens(), CompletionTokens: u.GetCompletionTokens(), TotalTokens: u.GetTotalTokens()}
}

// onOutput streams a piece of the job's output if it continues what was
// sent: the next piece of the attempt being streamed.
func (c *chatCall) onOutput(o *cortexv1.JobOutput) error {
	s := c.sse
	switch {
	case s.off || o.GetAttempt() < s.attempt:
		return nil
	case o.GetAttempt() > s.attempt:
		if s.sent.Len() > 0 {
			// A retry starts over, and what was sent cannot be taken back.
			s.off = true
			return nil
		}
		s.attempt, s.next = o.GetAttempt(), 1
	}
	if o.GetSeq() != s.next {
		s.off = true
		return nil
	}
	s.next++
	return c.delta(o.GetText())
}

// delta streams text, after the opening chunk if it is the first.
func (c *chatCall) delta(text string) error {
	if text == "" {
		return nil
	}
	if err := c.start(); err != nil {
		return err
	}
	c.sse.sent.WriteString(text)
	return c.chunk(&delta{Content: text}, nil, nil)
}

// start sends the stream's headers and its opening chunk (the role) once.
// It waits for the first output, so that a job refused or failed before
// it answered anything gets an error status, not a broken stream.
func (c *chatCall) start() error {
	if c.sse.started {
		return nil
	}
	c.sse.started = true
	h := c.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	c.w.WriteHeader(http.StatusOK)
	return c.chunk(&delta{Role: "assistant"}, nil, nil)
}

// finishStream sends what of the result was not streamed, the closing
// chunk, the usage chunk if asked for, and [DONE].
func (c *chatCall) finishStream(text string) {
	if err := c.start(); err != nil {
		return
	}
	sent := c.sse.sent.String()
	rest, ok := strings.CutPrefix(text, sent)
	if !ok {
		_ = c.event(&apiError{status: http.StatusBadGateway, typ: "server_error", code: "stream_diverged",
			message: fmt.Sprintf("job %s was retried after part of its answer was streamed, and the recorded answer differs; read it with: cortexctl result %s", c.id, c.id)})
		return
	}
	stop := "stop"
	if c.delta(rest) != nil || c.chunk(&delta{}, &stop, nil) != nil {
		return
	}
	if c.sse.includeUsage && c.chunk(nil, nil, cmp.Or(usageOf(c.job), &usageInTokens{})) != nil {
		return
	}
	_ = c.write([]byte("data: [DONE]\n\n"))
}

// chunk sends a chat.completion.chunk: with a choice for a delta, or with
// no choice and the usage.
func (c *chatCall) chunk(d *delta, finish *string, usage *usageInTokens) error {
	ch := &completion{ID: "chatcmpl-" + c.id, Object: "chat.completion.chunk", Created: c.created(), Model: c.model, Choices: []choice{}, Usage: usage}
	if d != nil {
		ch.Choices = []choice{{Delta: d, FinishReason: finish}}
	}
	return c.event(ch)
}

// event sends v as one server-sent event and flushes it.
func (c *chatCall) event(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.write(append(append([]byte("data: "), b...), '\n', '\n'))
}

func (c *chatCall) write(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		c.gone = true
		return err
	}
	if c.sse.flusher != nil {
		c.sse.flusher.Flush()
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"could not encode the answer","type":"server_error","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeAPIError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(e.retryAfter.Seconds())), 10))
	}
	writeJSON(w, e.status, e)
}

// throttledReason starts the reason of a job denied for being over a
// THROTTLE rule's rate (internal/safety/policy words it so).
const throttledReason = "rate exceeded ("

// refillTime is how long the bucket of a THROTTLE rule takes to hold one
// more request, from the rate its reason names ("rate exceeded (0.5/s,
// burst 2) ..."); 0 when the reason does not say.
func refillTime(reason string) time.Duration {
	rate, _, ok := strings.Cut(strings.TrimPrefix(reason, throttledReason), "/s")
	perSecond, err := strconv.ParseFloat(rate, 64)
	if !ok || err != nil || perSecond <= 0 || math.IsInf(perSecond, 0) || math.IsNaN(perSecond) {
		return 0
	}
	return time.Duration(float64(time.Second) / perSecond)
}

// jobError is the answer for a job that ended without completing.
func jobError(j *cortexv1.Job) *apiError {
	reason := cmp.Or(j.GetReason(), "no reason was recorded")
	switch j.GetState() {
	case cortexv1.JobState_JOB_STATE_DENIED:
		rule := j.GetSafety().GetRule()
		if strings.HasPrefix(reason, throttledReason) {
			// Over a THROTTLE rule's rate: OpenAI's clients back off and retry.
			return &apiError{status: http.StatusTooManyRequests, typ: "requests", code: "rate_limit_exceeded",
				message: fmt.Sprintf("rate limited by safety rule %s: %s", rule, reason), retryAfter: refillTime(reason)}
		}
		if rule == "fail-closed" {
			// Nobody decided: the gate is down, not the prompt at fault.
			return &apiError{status: http.StatusServiceUnavailable, typ: "server_error", code: "safety_unavailable",
				message: "the safety gate could not decide, so the request was refused (fail closed): " + reason}
		}
		return &apiError{status: http.StatusBadRequest, typ: "invalid_request_error", code: "content_filter", param: "messages",
			message: fmt.Sprintf("the request was denied by safety rule %s: %s", cmp.Or(rule, "(none)"), reason)}
	case cortexv1.JobState_JOB_STATE_TIMEOUT:
		return &apiError{status: http.StatusGatewayTimeout, typ: "server_error", code: "timeout",
			message: "the model did not answer in time: " + reason}
	case cortexv1.JobState_JOB_STATE_CANCELLED:
		return &apiError{status: http.StatusConflict, typ: "invalid_request_error", code: "cancelled",
			message: "the completion was cancelled: " + reason}
	}
	return &apiError{status: http.StatusBadGateway, typ: "server_error", code: "upstream_error",
		message: "the chat-llm worker failed: " + reason}
}

// connectToAPI turns an error of the API (a Connect error) into the same
// error in OpenAI's format, with the HTTP status of its code.
func connectToAPI(err error) *apiError {
	e := &apiError{status: http.StatusInternalServerError, typ: "server_error", message: errorMessage(err)}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeOutOfRange:
		e.status, e.typ = http.StatusBadRequest, "invalid_request_error"
	case connect.CodeUnauthenticated:
		e.status, e.typ, e.code = http.StatusUnauthorized, "invalid_request_error", "invalid_api_key"
	case connect.CodePermissionDenied:
		e.status, e.typ, e.code = http.StatusForbidden, "invalid_request_error", "permission_denied"
	case connect.CodeNotFound:
		e.status, e.typ = http.StatusNotFound, "invalid_request_error"
	case connect.CodeAlreadyExists, connect.CodeAborted:
		e.status, e.typ = http.StatusConflict, "invalid_request_error"
	case connect.CodeUnavailable:
		e.status = http.StatusServiceUnavailable
	case connect.CodeDeadlineExceeded:
		e.status = http.StatusGatewayTimeout
	}
	return e
}

func (g *Gateway) listModels(w http.ResponseWriter, r *http.Request) {
	if _, ok := g.openAIAuth(w, r); !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": g.models()})
}

func (g *Gateway) getModel(w http.ResponseWriter, r *http.Request) {
	if _, ok := g.openAIAuth(w, r); !ok {
		return
	}
	name := r.PathValue("model")
	for _, m := range g.models() {
		if m.ID == name {
			writeJSON(w, http.StatusOK, m)
			return
		}
	}
	writeAPIError(w, &apiError{status: http.StatusNotFound, typ: "invalid_request_error", param: "model", code: "model_not_found",
		message: fmt.Sprintf("the model %.100q is not served here (GET /v1/models lists those that are)", name)})
}

// checkModel refuses a chat request for a model that no live chat-llm
// worker runs when every one of them runs a model of its own
// (--llm-model): the job would run on another model than the one asked
// for, and the answer would name the one asked for. A worker without a
// model of its own runs the one the request names, so while one is live
// any model goes. The names given to the gateway (--models) are for such
// workers: they count only while one is live.
func (g *Gateway) checkModel(name string) *apiError {
	pool, ok := g.router.Pool(ChatTopic)
	if !ok || g.workers == nil {
		return nil
	}
	var run []string
	for _, w := range g.workers.Snapshot().Workers {
		if w.Pool != pool || w.State != registry.Live || !servesChat(w) {
			continue
		}
		pinned := workerModels(w)
		if len(pinned) == 0 {
			return nil
		}
		run = append(run, pinned...)
	}
	if len(run) == 0 || slices.Contains(run, name) {
		return nil
	}
	slices.Sort(run)
	return &apiError{status: http.StatusNotFound, typ: "invalid_request_error", param: "model", code: "model_not_found",
		message: fmt.Sprintf("the model %.100q is not served here; the chat-llm workers run %s (GET /v1/models lists them)", name, strings.Join(slices.Compact(run), ", "))}
}

// workerModels are the models a worker names in its capabilities
// (model:NAME): the ones it runs, whatever a request names.
func workerModels(w registry.Worker) []string {
	var out []string
	for _, c := range w.Capabilities {
		if m, ok := strings.CutPrefix(c, ModelCapability); ok && m != "" {
			out = append(out, m)
		}
	}
	return out
}

// models lists the models served: those the live chat-llm workers name
// in their capabilities (model:NAME), created when the first of them was
// heard, and those configured (Options.Models), sorted by name.
func (g *Gateway) models() []model {
	created := map[string]int64{}
	if pool, ok := g.router.Pool(ChatTopic); ok && g.workers != nil {
		for _, w := range g.workers.Snapshot().Workers {
			if w.Pool != pool || w.State != registry.Live || !servesChat(w) {
				continue
			}
			for _, name := range workerModels(w) {
				if at, seen := created[name]; !seen || w.FirstSeen.Unix() < at {
					created[name] = w.FirstSeen.Unix()
				}
			}
		}
	}
	for _, name := range g.modelNames {
		if _, seen := created[name]; !seen {
			created[name] = 0
		}
	}
	out := make([]model, 0, len(created))
	for _, name := range slices.Sorted(maps.Keys(created)) {
		out = append(out, model{ID: name, Object: "model", Created: created[name], OwnedBy: "cortexos"})
	}
	return out
}
