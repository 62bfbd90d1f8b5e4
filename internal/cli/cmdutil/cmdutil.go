// Package cmdutil holds what every cortexctl command shares: the Factory
// (streams and the gateway client), the typed errors that the root command
// maps to exit codes, and the signal-aware daemon runner. It wires nothing
// itself.
package cmdutil

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/client"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// Exit codes, documented in `cortexctl --help`.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitJobNotDone  = 3
	ExitAuth        = 4
	ExitInterrupted = 130
)

// Factory gives commands their streams and, lazily, a gateway client.
type Factory struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// Server and APIKey are the global --server and --api-key flags.
	Server string
	APIKey string
}

// Client resolves the gateway (flag > environment > context > default) and
// returns a client for it.
func (f *Factory) Client() (cortexv1connect.GatewayServiceClient, string, error) {
	t, err := client.Resolve(f.Server, f.APIKey)
	if err != nil {
		return nil, "", err
	}
	var c cortexv1connect.GatewayServiceClient
	if t.KeyFromContext {
		c, err = client.NewFollowingContext(t)
	} else {
		c, err = client.New(t.Server, t.APIKey)
	}
	if err != nil {
		return nil, "", &UsageError{Err: err}
	}
	return c, t.Server, nil
}

// UsageError is a mistake in the command line (exit 2). Hint adds the
// pointer to --help, for mistakes the message alone does not explain.
type UsageError struct {
	Err  error
	Hint bool
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// JobNotDoneError reports a job that ended without completing (exit 3).
type JobNotDoneError struct {
	JobID  string
	State  string
	Rule   string
	Reason string
}

func (e *JobNotDoneError) Error() string {
	msg := fmt.Sprintf("job %s ended %s", e.JobID, e.State)
	if e.Rule != "" {
		msg += " by rule " + e.Rule
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// NoArgs is cobra.NoArgs with an error that says what was wrong (cobra's
// calls a stray argument an unknown command).
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &UsageError{Err: fmt.Errorf("%s takes no arguments, got %q (flags start with --; see --help)", cmd.CommandPath(), args[0])}
	}
	return nil
}
