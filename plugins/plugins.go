// Package plugins is the public extension API of CortexOS workers. A plugin
// is a Handler registered for a job topic; the worker runtime calls it once
// per attempt with the job's prompt and records what it returns. Like
// net/http's Handler, it is small on purpose: a Handler sees one job, never
// the bus or the store.
package plugins

import "context"

// Job is one attempt of a job, as a handler sees it.
type Job struct {
	// ID is the job id the gateway returned at submit.
	ID string
	// Topic is the job's topic, e.g. "job.echo".
	Topic string
	// Tenant owns the job.
	Tenant string
	// Attempt counts from 1.
	Attempt uint32
	// Prompt is the job's input text.
	Prompt string
	// Payload is the job's input when it was submitted as bytes rather
	// than text; Prompt is empty then.
	Payload []byte
	// Labels are the submitter's key/value labels.
	Labels map[string]string
}

// Result is what a handler produced.
type Result struct {
	// Output is stored as the job's result.
	Output string
}

// Handler runs jobs. Handle must return when ctx ends: ctx is cancelled
// when the job is cancelled, when its timeout passes (the attempt is then
// recorded TIMEOUT) and when the worker shuts down. An error marks the
// attempt FAILED with the error's text as the reason; the job is retried
// while it has attempts left.
type Handler interface {
	Handle(ctx context.Context, job *Job) (*Result, error)
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, job *Job) (*Result, error)

// Handle calls f(ctx, job).
func (f HandlerFunc) Handle(ctx context.Context, job *Job) (*Result, error) { return f(ctx, job) }
