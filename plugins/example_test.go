package plugins_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cortex-os/core/plugins"
	"github.com/cortex-os/core/plugins/middleware"
)

// A custom worker plugin in a few lines: a Handler for topic job.upper
// that upper-cases its prompt. The worker runtime calls it once per
// attempt and adds panic recovery and metrics; Timeout bounds it here.
// To serve it, register it for its topic in the worker's handlers
// (worker.Options.Handlers, as daemon.PoolHandlers does for the built-in
// pools) and route the topic to the worker's pool (--route
// job.upper=upper).
func Example() {
	upper := plugins.HandlerFunc(func(ctx context.Context, job *plugins.Job) (*plugins.Result, error) {
		if strings.TrimSpace(job.Prompt) == "" {
			return nil, errors.New("empty prompt: send some text to upper-case")
		}
		return &plugins.Result{Output: strings.ToUpper(job.Prompt)}, nil
	})
	h := middleware.Chain(upper, middleware.Recover(nil), middleware.Timeout(5*time.Second))

	res, err := h.Handle(context.Background(), &plugins.Job{ID: "j1", Topic: "job.upper", Prompt: "hello, cortex"})
	fmt.Println(res.Output, err)
	_, err = h.Handle(context.Background(), &plugins.Job{ID: "j2", Topic: "job.upper"})
	fmt.Println(err)
	// Output:
	// HELLO, CORTEX <nil>
	// empty prompt: send some text to upper-case
}
