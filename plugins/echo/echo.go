// Package echo is the simplest plugin: it returns the prompt unchanged. It is
// the job behind the "job.echo" topic and the reference for writing plugins.
package echo

import (
	"context"

	"github.com/cortex-os/core/plugins"
)

// Topic is the topic echo serves.
const Topic = "job.echo"

// Handler returns the input (prompt or payload) as the result.
var Handler plugins.Handler = plugins.HandlerFunc(func(_ context.Context, job *plugins.Job) (*plugins.Result, error) {
	if job.Payload != nil {
		return &plugins.Result{Output: string(job.Payload)}, nil
	}
	return &plugins.Result{Output: job.Prompt}, nil
})
