package echo_test

import (
	"context"
	"testing"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/echo"
)

func TestEchoReturnsPrompt(t *testing.T) {
	for _, prompt := range []string{"", "hello", "multi\nline ✓"} {
		res, err := echo.Handler.Handle(context.Background(), &plugins.Job{Prompt: prompt})
		if err != nil {
			t.Fatalf("Handle(%q): %v", prompt, err)
		}
		if res.Output != prompt {
			t.Errorf("Handle(%q) = %q, want the prompt back", prompt, res.Output)
		}
	}
}
