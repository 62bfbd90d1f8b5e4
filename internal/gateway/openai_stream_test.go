package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// TestStreamPieces checks which pieces of a job's output a streamed
// completion sends, and what of the recorded result it adds at the end:
// pieces of one attempt in order; after a missed piece, the rest from the
// result; a newer attempt replaces an older one that sent nothing; and a
// retry after text was sent whose result differs ends with an error.
func TestStreamPieces(t *testing.T) {
	piece := func(attempt uint32, seq uint64, text string) *cortexv1.JobOutput {
		return &cortexv1.JobOutput{JobId: "j", Attempt: attempt, Seq: seq, Text: text}
	}
	for name, tc := range map[string]struct {
		pieces []*cortexv1.JobOutput
		result string
		want   []string // content deltas
		err    string   // the error code that ends the stream, if any
	}{
		"in order":                       {[]*cortexv1.JobOutput{piece(1, 1, "a"), piece(1, 2, "b")}, "ab", []string{"a", "b"}, ""},
		"a missed piece":                 {[]*cortexv1.JobOutput{piece(1, 1, "a"), piece(1, 3, "c"), piece(1, 4, "d")}, "abcd", []string{"a", "bcd"}, ""},
		"no piece":                       {nil, "whole", []string{"whole"}, ""},
		"the first pieces missed":        {[]*cortexv1.JobOutput{piece(1, 2, "b")}, "ab", []string{"ab"}, ""},
		"a retry before any text":        {[]*cortexv1.JobOutput{piece(2, 1, "x"), piece(2, 2, "y")}, "xyz", []string{"x", "y", "z"}, ""},
		"an older attempt's late piece":  {[]*cortexv1.JobOutput{piece(2, 1, "x"), piece(1, 5, "q"), piece(2, 2, "y")}, "xy", []string{"x", "y"}, ""},
		"a retry after text, same start": {[]*cortexv1.JobOutput{piece(1, 1, "he"), piece(2, 1, "he"), piece(2, 2, "llo")}, "hello", []string{"he", "llo"}, ""},
		"a retry after text, differing":  {[]*cortexv1.JobOutput{piece(1, 1, "Partial"), piece(2, 1, "Other")}, "Other answer", []string{"Partial"}, "stream_diverged"},
		"an empty piece":                 {[]*cortexv1.JobOutput{piece(1, 1, ""), piece(1, 2, "a")}, "a", []string{"a"}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			c := &chatCall{ctx: context.Background(), w: rec, id: "j", model: "m", job: &cortexv1.Job{}, sse: &sse{flusher: rec}}
			for _, p := range tc.pieces {
				if err := c.onOutput(p); err != nil {
					t.Fatal(err)
				}
			}
			c.finishStream(tc.result)
			var deltas []string
			var last string
			for line := range strings.SplitSeq(strings.TrimSpace(rec.Body.String()), "\n\n") {
				last = strings.TrimPrefix(line, "data: ")
				var ev struct {
					Choices []struct {
						Delta struct{ Content string } `json:"delta"`
					} `json:"choices"`
				}
				if last != "[DONE]" && json.Unmarshal([]byte(last), &ev) == nil && len(ev.Choices) == 1 && ev.Choices[0].Delta.Content != "" {
					deltas = append(deltas, ev.Choices[0].Delta.Content)
				}
			}
			if !slices.Equal(deltas, tc.want) {
				t.Fatalf("deltas %q, want %q\n%s", deltas, tc.want, rec.Body)
			}
			switch {
			case tc.err == "" && last != "[DONE]":
				t.Fatalf("the stream ends with %s, want [DONE]", last)
			case tc.err != "" && !strings.Contains(last, `"code":"`+tc.err+`"`):
				t.Fatalf("the stream ends with %s, want an error %s", last, tc.err)
			}
		})
	}
}

// A chat request denied for being over a THROTTLE rule's rate is answered
// 429 with Retry-After: the time its bucket takes to hold one more request,
// so that OpenAI's clients wait that long rather than retry into denials.
func TestThrottledChatSaysWhenToRetry(t *testing.T) {
	for reason, want := range map[string]string{
		`rate exceeded (0.05/s, burst 1) for tenant "default" on topic "job.chat.llm": slow down`: "20",
		`rate exceeded (3/s, burst 5) for tenant "default" on topic "job.chat.llm": slow down`:    "1",
		`rate exceeded (mangled) for tenant "default"`:                                            "",
	} {
		j := &cortexv1.Job{State: cortexv1.JobState_JOB_STATE_DENIED, Reason: reason, Safety: &cortexv1.SafetyVerdict{Rule: "throttle-chat"}}
		w := httptest.NewRecorder()
		writeAPIError(w, jobError(j))
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != want {
			t.Errorf("%s: %d, Retry-After %q; want 429, %q", reason, w.Code, w.Header().Get("Retry-After"), want)
		}
	}
}
