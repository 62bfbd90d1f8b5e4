// Package sleep is a plugin for trying the job lifecycle by hand: it waits
// for the duration its prompt names ("2s", "1m30s") and then answers
// "slept <duration>". It ends early when the job is cancelled or times out,
// so it shows cancel, timeouts and progress without any real work.
package sleep

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cortex-os/core/plugins"
)

// Topic is the topic sleep serves.
const Topic = "job.sleep"

// MaxDuration bounds a nap.
const MaxDuration = time.Hour

// Handler sleeps for the duration in the prompt.
var Handler plugins.Handler = plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
	d, err := time.ParseDuration(strings.TrimSpace(job.Prompt))
	if err != nil || d < 0 || d > MaxDuration {
		return nil, fmt.Errorf("the prompt is not a duration between 0s and %s, e.g. 2s", MaxDuration)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return &plugins.Result{Output: "slept " + d.String()}, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("woken after less than %s: %w", d, context.Cause(ctx))
	}
})
