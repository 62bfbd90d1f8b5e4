// Package cli is cortexctl: the root command, the wiring of every command
// group (up/, daemon/, job/, bench/) and the one place where errors become
// exit codes. It is the only package that puts concrete parts together.
package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/buildinfo"
	"github.com/cortex-os/core/internal/cli/bench"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/contextcmd"
	"github.com/cortex-os/core/internal/cli/daemon"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/policycmd"
	"github.com/cortex-os/core/internal/cli/top"
	"github.com/cortex-os/core/internal/cli/up"
	"github.com/cortex-os/core/internal/cli/workercmd"
	"github.com/cortex-os/core/internal/client"
)

const exitCodesHelp = `
Exit status:
  0    success
  1    error, or a job in a state the command cannot act on (cancel a job
       that ended, approve one that is not held, the result of one not done)
  2    usage error (bad flag, argument, request or configuration)
  3    the job ended without completing (DENIED, FAILED, CANCELLED or TIMEOUT)
  4    authentication failed (missing or unknown API key, or a read-only key)
  130  interrupted (Ctrl-C) before the command was done; up and the daemons
       stop cleanly on Ctrl-C or SIGTERM and then exit 0
`

// NewRootCmd builds the command tree on f's streams.
func NewRootCmd(f *cmdutil.Factory) *cobra.Command {
	root := &cobra.Command{
		Use:   "cortexctl",
		Short: "CortexOS: the AI control plane",
		Long: `cortexctl is the whole of CortexOS: it runs the stack (up, or one daemon per
component) and submits and follows jobs. Every job is checked against the
safety policy before it runs, and fails closed.

Clients find the gateway and key from --server/--api-key, then CORTEX_SERVER/
CORTEX_API_KEY, then the current context ('cortexctl context', which
'cortexctl up' writes), then ` + "http://127.0.0.1:7470." + `
` + exitCodesHelp,
		Example: `  cortexctl up                                        # the whole stack, in one process
  cortexctl submit --topic job.echo --prompt hello --wait
  cortexctl jobs list -o wide
  cortexctl tail`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(f.In)
	root.SetOut(f.Out)
	root.SetErr(f.ErrOut)
	root.SetFlagErrorFunc(flagError)
	pf := root.PersistentFlags()
	pf.StringVar(&f.Server, "server", "", "gateway URL (default: $CORTEX_SERVER, the context, or http://127.0.0.1:7470)")
	pf.StringVar(&f.APIKey, "api-key", "", "API key (default: $CORTEX_API_KEY or the context's)")
	root.PersistentPreRunE = refuseEmptyClientFlags

	root.AddGroup(&cobra.Group{ID: "run", Title: "Run CortexOS:"}, &cobra.Group{ID: "jobs", Title: "Jobs:"},
		&cobra.Group{ID: "config", Title: "Configuration:"})
	for _, c := range []*cobra.Command{up.NewCmdUp(), daemon.NewCmdGateway(), daemon.NewCmdScheduler(), daemon.NewCmdSafety(), daemon.NewCmdWorker()} {
		c.GroupID = "run"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{job.NewCmdSubmit(f, nil), job.NewCmdJobs(f), job.NewCmdTail(f, nil),
		job.NewCmdApprove(f, nil), job.NewCmdReject(f, nil), job.NewCmdDLQ(f), bench.NewCmdBench(f)} {
		c.GroupID = "jobs"
		root.AddCommand(c)
	}
	root.AddGroup(&cobra.Group{ID: "cluster", Title: "Cluster:"})
	workers := workercmd.NewCmdWorkers(f, nil)
	workers.AddCommand(workercmd.NewCmdDrain(f))
	for _, c := range []*cobra.Command{workers, workercmd.NewCmdPools(f, nil), top.NewCmdTop(f, nil)} {
		c.GroupID = "cluster"
		root.AddCommand(c)
	}
	pol := policycmd.NewCmdPolicy(f, policycmd.NewCmdExplain(f, nil), policycmd.NewCmdApply(f, nil), policycmd.NewCmdShow(f, nil))
	pol.GroupID = "config"
	ctxCmd := contextcmd.NewCmdContext(f)
	ctxCmd.GroupID = "config"
	root.AddCommand(pol, ctxCmd, newCmdVersion(f))
	addCompletionExamples(root)
	suggestSubcommands(root)
	return root
}

// refuseEmptyClientFlags refuses the global --server or --api-key given as
// "": most often a variable that is not set (--api-key "$KEY"), which
// would otherwise quietly fall back to the environment's or the context's,
// and send another key than meant. (A command's own flag of that name,
// such as context set's, means what that command says.)
func refuseEmptyClientFlags(cmd *cobra.Command, _ []string) error {
	for _, name := range []string{"server", "api-key"} {
		if f := cmd.Root().PersistentFlags().Lookup(name); f.Changed && f.Value.String() == "" {
			return &cmdutil.UsageError{Err: fmt.Errorf("--%s is empty (is the variable you passed set?); leave the flag out to use the default", name)}
		}
	}
	return nil
}

// addCompletionExamples gives cobra's completion command examples.
func addCompletionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(cortexctl completion bash)\n  cortexctl completion zsh > \"${fpath[1]}/_cortexctl\""
		for _, sh := range c.Commands() {
			sh.Example = "  cortexctl completion " + sh.Name() + " > cortexctl." + sh.Name()
		}
	}
}

func newCmdVersion(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version",
		Example: "  cortexctl version",
		Args:    cmdutil.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(f.Out, "cortexctl", buildinfo.Get())
		},
	}
}

// Main runs cortexctl with args and returns the exit status. SIGINT and
// SIGTERM cancel the command's context once; daemons drain and return.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one gets Go's default: exit at once.
	go func() {
		<-ctx.Done()
		stop()
	}()
	defer startProfile(stderr)()
	f := &cmdutil.Factory{In: stdin, Out: stdout, ErrOut: stderr}
	root := NewRootCmd(f)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	code := ExitCode(err)
	if err != nil && code != cmdutil.ExitInterrupted {
		if server, ok := sentNoKey(f, err); ok {
			// The gateway's own words on it are for curl users.
			fmt.Fprintf(stderr, "Error: no API key was sent to %s: pass --api-key, set CORTEX_API_KEY, or 'cortexctl context use' a context of that server (a context's key is only sent to its own server)\n", server)
			return code
		}
		fmt.Fprintln(stderr, "Error:", err)
		switch {
		case wantsHelpHint(err):
			fmt.Fprintln(stderr, "Run 'cortexctl --help' (or COMMAND --help) for usage.")
		case connect.CodeOf(err) == connect.CodeUnavailable && errors.Is(err, syscall.ECONNREFUSED):
			fmt.Fprintln(stderr, "Is the gateway running? Start one with 'cortexctl up', or point --server at one.")
		case errors.As(err, new(x509.UnknownAuthorityError)):
			fmt.Fprintln(stderr, "The gateway's certificate is signed by a CA this machine does not trust: for a private CA, run with SSL_CERT_FILE=ca.pem (its certificate, PEM).")
		}
	}
	return code
}

// sentNoKey reports whether err is the gateway refusing a call that
// carried no API key, and to which server.
func sentNoKey(f *cmdutil.Factory, err error) (server string, ok bool) {
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		return "", false
	}
	t, rerr := client.Resolve(f.Server, f.APIKey)
	return t.Server, rerr == nil && t.APIKey == ""
}

// ExitCode maps an error to the documented exit status.
func ExitCode(err error) int {
	var usage *cmdutil.UsageError
	var notDone *cmdutil.JobNotDoneError
	switch {
	case err == nil:
		return cmdutil.ExitOK
	case errors.As(err, &notDone):
		return cmdutil.ExitJobNotDone
	case errors.As(err, &usage), isCobraUsage(err), connect.CodeOf(err) == connect.CodeInvalidArgument,
		connect.CodeOf(err) == connect.CodeResourceExhausted, connect.CodeOf(err) == connect.CodeAlreadyExists:
		return cmdutil.ExitUsage
	case connect.CodeOf(err) == connect.CodeUnauthenticated, connect.CodeOf(err) == connect.CodePermissionDenied:
		return cmdutil.ExitAuth
	case errors.Is(err, context.Canceled):
		return cmdutil.ExitInterrupted
	}
	return cmdutil.ExitError
}

// wantsHelpHint reports whether err is a command-line mistake that --help
// explains: an unknown command or flag, a wrong number of arguments. Other
// usage errors (a bad file, a request the server refused) say what to do
// themselves.
func wantsHelpHint(err error) bool {
	var usage *cmdutil.UsageError
	return isCobraUsage(err) || errors.As(err, &usage) && usage.Hint
}
