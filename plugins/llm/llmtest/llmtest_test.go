package llmtest_test

import (
	"testing"

	"github.com/cortex-os/core/plugins/llm/llmtest"
)

// The fake answers the last user message, whether its content is a string
// or an array of text parts, as OpenAI's API allows.
func TestReplyReadsTextParts(t *testing.T) {
	for name, content := range map[string]any{
		"string": "hello there",
		"parts":  []any{map[string]any{"type": "text", "text": "hello "}, map[string]any{"type": "text", "text": "there"}},
	} {
		got := llmtest.Reply([]any{
			map[string]any{"role": "system", "content": "be brief"},
			map[string]any{"role": "user", "content": content},
		})
		if got != "You said: hello there" {
			t.Errorf("%s: %q, want the last user message's text", name, got)
		}
	}
}
