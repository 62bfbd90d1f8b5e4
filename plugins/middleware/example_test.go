package middleware_test

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/middleware"
)

// Recover turns a plugin's panic into a failed attempt; Timeout cuts a
// plugin that runs too long, with an error the worker records TIMEOUT.
func ExampleChain() {
	buggy := plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
		if job.Prompt == "slow" {
			<-ctx.Done()
			return nil, context.Cause(ctx)
		}
		panic("unexpected prompt " + strconv.Quote(job.Prompt)) // a bug
	})
	h := middleware.Chain(buggy, middleware.Recover(nil), middleware.Timeout(50*time.Millisecond))
	for _, prompt := range []string{"boom", "slow"} {
		_, err := h.Handle(context.Background(), &plugins.Job{ID: "j-" + prompt, Topic: "job.buggy", Prompt: prompt})
		fmt.Println(err)
	}
	// Output:
	// the handler panicked: unexpected prompt "boom"
	// the handler ran past its limit of 50ms
}
