// Package plugins is the public extension API of CortexOS workers. A plugin
// is a Handler registered for a job topic; the worker runtime calls it once
// per attempt with the job's prompt and records what it returns. Like
// net/http's Handler, it is small on purpose: a Handler sees one job, never
// the bus or the store.
package plugins

import (
	"context"
	"errors"
	"io"
)

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
	// Stream, when not nil, takes output as the handler produces it:
	// whoever follows the job (cortexctl submit --wait --follow, tail,
	// WatchJob, the OpenAI-compatible front door with stream: true) sees
	// each write while the job runs. It is best effort and not stored: the
	// Result's Output is what is recorded. The worker sets it; it is nil
	// when a handler is called directly, as in tests.
	Stream io.Writer
}

// Result is what a handler produced.
type Result struct {
	// Output is stored as the job's result.
	Output string
	// Usage, when not nil, is recorded on the job: the tokens a model
	// read and wrote for it.
	Usage *Usage
}

// Usage counts a model's tokens.
type Usage struct {
	PromptTokens     uint32
	CompletionTokens uint32
	TotalTokens      uint32
}

// Permanent marks err as one another attempt cannot cure (bad input, a
// deterministic failure): the attempt is recorded FAILED and the job is
// not retried, whatever attempts it has left.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

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
