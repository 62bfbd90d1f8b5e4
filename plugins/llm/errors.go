package llm

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cortex-os/core/plugins"
)

// maxErrorText bounds the upstream's words quoted in an error.
const maxErrorText = 300

// StatusError is an answer of the upstream other than 2xx. Handle returns
// it wrapped by plugins.Permanent when another attempt cannot help.
type StatusError struct {
	// StatusCode is the HTTP status the upstream answered with.
	StatusCode int
	// RetryAfter is what the upstream's Retry-After header asked for (0
	// when it sent none).
	RetryAfter time.Duration
	// Message is the upstream's own explanation, truncated, with the API
	// key removed.
	Message string
	// Hint says what to check, for some statuses.
	Hint string
}

func (e *StatusError) Error() string {
	var b strings.Builder
	switch {
	case e.StatusCode == http.StatusTooManyRequests:
		b.WriteString("upstream rate limited (429)")
		if e.RetryAfter > 0 {
			fmt.Fprintf(&b, ": retry after %s", e.RetryAfter)
		}
	case Retryable(e.StatusCode):
		fmt.Fprintf(&b, "upstream error (%d %s)", e.StatusCode, http.StatusText(e.StatusCode))
	default:
		fmt.Fprintf(&b, "upstream refused the request (%d %s)", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Hint != "" {
		b.WriteString(" (" + e.Hint + ")")
	}
	return b.String()
}

// Retryable reports whether an upstream answer with this status may go
// better another time: rate limits, timeouts and server errors.
func Retryable(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status == http.StatusConflict || status >= 500
}

// statusError reads the upstream's explanation of a failed call.
func (h *Handler) statusError(resp *http.Response, now time.Time) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	e := &StatusError{StatusCode: resp.StatusCode, Message: scrub(upstreamMessage(body), h.cfg.APIKey)}
	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"), now)
	case http.StatusUnauthorized, http.StatusForbidden:
		e.Hint = "check the worker's API key"
	case http.StatusNotFound:
		e.Hint = fmt.Sprintf("check the base URL (it usually ends in /v1; calls go to %s) and that the model is served there", h.endpoint)
	}
	if Retryable(resp.StatusCode) {
		return e
	}
	return plugins.Permanent(e)
}

// upstreamMessage is what an error body says: OpenAI's {"error":
// {"message": ...}}, Ollama's {"error": "..."}, or the body itself.
func upstreamMessage(body []byte) string {
	var v struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	if json.Unmarshal(body, &v) == nil {
		switch {
		case v.Error != nil:
			return errorText(v.Error)
		case v.Message != "":
			return v.Message
		case v.Detail != nil:
			return errorText(v.Detail)
		}
	}
	return string(body)
}

// errorText is the message of an "error" value: a string, or an object
// with a "message".
func errorText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &o) == nil && o.Message != "" {
		return o.Message
	}
	return string(raw)
}

// scrub makes upstream text fit for an error: the key removed, on one
// line, without control characters, truncated.
func scrub(s, key string) string {
	if key != "" {
		s = strings.ReplaceAll(s, key, "[redacted]")
	}
	s = strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))), " ")
	if len(s) > maxErrorText {
		cut := maxErrorText
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now).Round(time.Second)
	}
	return 0
}
