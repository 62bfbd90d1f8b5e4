// Package plugins is the public extension API of CortexOS workers. A plugin
// is a Handler registered for a job topic; the worker runtime calls it once
// per attempt with the job's prompt and records what it returns. Like
// net/http's Handler, it is small on purpose: a Handler sees one job, never
// the bus or the store. Package plugins/middleware wraps handlers (panic
// recovery, time limits, metrics) the way net/http middleware wraps an
// http.Handler; plugins/echo is the smallest plugin, plugins/python a real
// one.
//
// This package and its sub-packages are public API: they depend on the
// standard library (and each other) only, never on CortexOS internals.
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

// A Handler runs the jobs of its topic: Handle runs one attempt of job and
// returns what the job produced.
//
// The context: ctx ends when the job is cancelled (its cause says so), when
// the job's timeout passes (the attempt is then recorded TIMEOUT) and when
// the worker shuts down after its grace period (the job goes back to its
// pool for another worker). Handle must return soon after ctx ends; work
// that ignores ctx keeps a worker slot and the job's lease until it
// returns. Pass ctx to everything that blocks (HTTP calls, subprocesses).
//
// Concurrency: a worker runs up to --max-parallel jobs at once, so Handle is
// called from many goroutines at the same time and must be safe for
// concurrent use. The Job belongs to the call; do not keep it (or its
// Stream) after Handle returns.
//
// Results and errors: a nil error records the attempt COMPLETED with the
// Result's Output (a nil Result is an empty output). A non-nil error
// records it FAILED with the error's text as the reason, which the job's
// tenant reads: say what went wrong and what to do about it, and never put
// secrets in it. An error matching context.DeadlineExceeded (errors.Is) is
// recorded TIMEOUT. A panic is recovered by the worker and recorded FAILED
// ("the handler panicked: ..."); it does not take the worker down.
//
// Retries: a FAILED or TIMEOUT attempt is retried, after a backoff and
// through the safety gate again, while the job has attempts left (its
// max_attempts, or its pool's default). An error wrapped by Permanent is
// never retried: use it when another attempt cannot help (bad input, a
// deterministic failure). Because delivery is at least once, an attempt
// may run again after a worker dies mid-job: make Handle safe to repeat,
// or idempotent where it has side effects.
//
// Streaming: output written to job.Stream while Handle runs reaches
// whoever follows the job; only the Result is stored.
type Handler interface {
	Handle(ctx context.Context, job *Job) (*Result, error)
}

// HandlerFunc adapts an ordinary function to a Handler.
type HandlerFunc func(ctx context.Context, job *Job) (*Result, error)

// Handle calls f(ctx, job).
func (f HandlerFunc) Handle(ctx context.Context, job *Job) (*Result, error) { return f(ctx, job) }
