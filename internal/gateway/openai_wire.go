package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"
)

// This file is the wire format of the OpenAI-compatible front door: the
// chat completion request it accepts and checks, and the objects and
// errors it answers with, as OpenAI's API documents them.

// chatRequest is the part of a chat completion request the front door
// reads. The worker gets the whole request as sent, with the fields this
// struct does not name (temperature, max_tokens, stop, ...).
type chatRequest struct {
	Model         string         `json:"model"`
	Messages      []chatMessage  `json:"messages"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
	N             *int           `json:"n"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
	// ToolCalls and FunctionCall (its older form) are what an assistant
	// message without content holds instead.
	ToolCalls    json.RawMessage `json:"tool_calls"`
	FunctionCall json.RawMessage `json:"function_call"`
}

// contentPart is one part of a message whose content is an array.
type contentPart struct {
	Type string  `json:"type"`
	Text *string `json:"text"`
}

// maxModelBytes bounds a model name: it is recorded as the job's model
// label, whose values are at most maxLabelBytes.
const maxModelBytes = maxLabelBytes

// chatRoles are the message roles OpenAI's chat API knows.
var chatRoles = map[string]bool{"system": true, "developer": true, "user": true, "assistant": true, "tool": true}

// parseChatRequest decodes and checks a chat completion request body.
func parseChatRequest(body []byte) (*chatRequest, *apiError) {
	// JSON text is UTF-8; Go's decoder would pass other bytes on in
	// strings, and the body goes to the worker as sent.
	if !utf8.Valid(body) {
		return nil, invalidRequest("", "the body is not valid UTF-8; JSON text must be UTF-8")
	}
	var req chatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, invalidRequest(te.Field, fmt.Sprintf("%s must be %s, not a JSON %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value))
		}
		if errors.As(err, &te) {
			return nil, invalidRequest("", "the body must be a JSON object (a chat completion request), not a JSON "+te.Value)
		}
		return nil, invalidRequest("", "the body must be a JSON object (a chat completion request): "+err.Error())
	}
	switch {
	case req.Model == "":
		return nil, invalidRequest("model", "model is required: name the model to chat with (GET /v1/models lists them)")
	case len(req.Model) > maxModelBytes:
		return nil, invalidRequest("model", fmt.Sprintf("model is %d bytes; model names are at most %d", len(req.Model), maxModelBytes))
	case len(req.Messages) == 0:
		return nil, invalidRequest("messages", "messages must hold at least one message, e.g. [{\"role\":\"user\",\"content\":\"Hello\"}]")
	case req.N != nil && *req.N != 1:
		return nil, invalidRequest("n", fmt.Sprintf("n is %d: this server makes one choice per request (n: 1)", *req.N))
	case req.StreamOptions != nil && !req.Stream:
		return nil, invalidRequest("stream_options", "stream_options is only allowed when stream is true")
	}
	for i, m := range req.Messages {
		if err := checkMessage(i, m); err != nil {
			return nil, err
		}
	}
	return &req, nil
}

func checkMessage(i int, m chatMessage) *apiError {
	if m.Role == "" {
		return invalidRequest(fmt.Sprintf("messages[%d].role", i),
			fmt.Sprintf("messages[%d] needs a role: each message is an object such as {\"role\":\"user\",\"content\":\"Hello\"}", i))
	}
	if !chatRoles[m.Role] {
		return invalidRequest(fmt.Sprintf("messages[%d].role", i),
			fmt.Sprintf("messages[%d].role %.40q is not a role: use system, developer, user, assistant or tool", i, m.Role))
	}
	param := fmt.Sprintf("messages[%d].content", i)
	content := bytes.TrimSpace(m.Content)
	switch {
	case len(content) == 0 || bytes.Equal(content, []byte("null")):
		// An assistant message that only calls tools has no content.
		if m.Role != "assistant" {
			return invalidRequest(param, param+" is required for a "+m.Role+" message")
		}
		if !present(m.ToolCalls) && !present(m.FunctionCall) {
			return invalidRequest(param, param+" is required for an assistant message that calls no tools (tool_calls)")
		}
		return nil
	case content[0] == '"':
		return nil
	case content[0] != '[':
		return invalidRequest(param, param+" must be a string or an array of text parts")
	}
	var parts []contentPart
	if err := json.Unmarshal(content, &parts); err != nil {
		return invalidRequest(param, param+" must be a string or an array of text parts, e.g. [{\"type\":\"text\",\"text\":\"Hello\"}]")
	}
	for k, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return invalidRequest(fmt.Sprintf("%s[%d]", param, k),
				fmt.Sprintf("%s[%d] is not a text part (type %.40q): this server takes text only, as {\"type\":\"text\",\"text\":\"...\"}", param, k, p.Type))
		}
	}
	return nil
}

// present says whether a JSON value was given (not missing or null).
func present(v json.RawMessage) bool {
	switch string(bytes.TrimSpace(v)) {
	case "", "null":
		return false
	}
	return true
}

// jsonKind names a Go kind as the JSON type a client should have sent.
func jsonKind(kind string) string {
	switch kind {
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	case "int", "int64", "uint32", "float64":
		return "a number"
	}
	return "of another type"
}

// apiError is an error answered in OpenAI's format:
// {"error":{"message","type","param","code"}}.
type apiError struct {
	status  int
	message string
	typ     string
	param   string
	code    string
	// retryAfter, when positive, is sent as Retry-After (whole seconds,
	// rounded up): when a request over a rate may be made again.
	retryAfter time.Duration
}

func (e *apiError) MarshalJSON() ([]byte, error) {
	null := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	return json.Marshal(map[string]any{"error": map[string]any{
		"message": e.message, "type": e.typ, "param": null(e.param), "code": null(e.code),
	}})
}

func invalidRequest(param, message string) *apiError {
	return &apiError{status: http.StatusBadRequest, message: message, typ: "invalid_request_error", param: param}
}

// The objects of a chat completion answer.

type completion struct {
	ID      string         `json:"id"`
	Object  string         `json:"object"`
	Created int64          `json:"created"`
	Model   string         `json:"model"`
	Choices []choice       `json:"choices"`
	Usage   *usageInTokens `json:"usage,omitempty"`
}

type choice struct {
	Index        int      `json:"index"`
	Message      *message `json:"message,omitempty"`
	Delta        *delta   `json:"delta,omitempty"`
	FinishReason *string  `json:"finish_reason"`
}

// message is the answer of a whole completion.
type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// delta is what a chunk of a streamed completion adds.
type delta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content,omitempty"`
}

type usageInTokens struct {
	PromptTokens     uint32 `json:"prompt_tokens"`
	CompletionTokens uint32 `json:"completion_tokens"`
	TotalTokens      uint32 `json:"total_tokens"`
}

// model is an entry of GET /v1/models.
type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}
