package sleep_test

import (
	"context"
	"errors"
	"testing"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/sleep"
)

func TestSleep(t *testing.T) {
	res, err := sleep.Handler.Handle(context.Background(), &plugins.Job{Prompt: "1ms"})
	if err != nil || res.Output != "slept 1ms" {
		t.Fatalf("Handle(1ms) = %v, %v", res, err)
	}
	for _, bad := range []string{"", "soon", "-1s", "2h"} {
		if _, err := sleep.Handler.Handle(context.Background(), &plugins.Job{Prompt: bad}); err == nil {
			t.Errorf("Handle(%q) did not fail", bad)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sleep.Handler.Handle(ctx, &plugins.Job{Prompt: "1h"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Handle on a cancelled context = %v, want context.Canceled", err)
	}
}
