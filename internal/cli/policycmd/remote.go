package policycmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/spf13/cobra"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/job"
	"github.com/cortex-os/core/internal/cli/output"
	"github.com/cortex-os/core/internal/safety/policy"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// ExplainOptions are `policy explain`'s inputs.
type ExplainOptions struct {
	Factory    *cmdutil.Factory
	Topic      string
	Prompt     string
	PromptFile string
	Labels     []string
	Priority   int32
	Attempt    uint32
	File       string
	Output     output.Format
}

// NewCmdExplain returns `policy explain`.
func NewCmdExplain(f *cmdutil.Factory, runF func(context.Context, *ExplainOptions) error) *cobra.Command {
	o := &ExplainOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "explain --topic TOPIC [--prompt TEXT] [--label k=v]...",
		Short: "Say which rule decides a job, and why",
		Long: `Walk the running cluster's policy, rule by rule, for a job like the one
described: which rules match, which one decides and its reason, and what the
shadow policy would decide. Nothing is submitted or run. With --file, explain
against a policy file on this machine instead of the cluster.`,
		Example: `  cortexctl policy explain --topic sys.destroy
  cortexctl policy explain --topic job.echo --prompt "my key is ..." --label team=ml
  cortexctl policy explain --topic job.echo --prompt hi --file new-policy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return explainRun(cmd.Context(), o)
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&o.Topic, "topic", "t", "", "the job's topic (required)")
	fs.StringVarP(&o.Prompt, "prompt", "p", "", "the job's prompt text")
	fs.StringVar(&o.PromptFile, "prompt-file", "", "read the prompt from a file (- for standard input)")
	fs.StringSliceVarP(&o.Labels, "label", "l", nil, "key=value label, repeatable")
	fs.Int32Var(&o.Priority, "priority", 0, "the job's priority")
	fs.Uint32Var(&o.Attempt, "attempt", 1, "the attempt number")
	fs.StringVarP(&o.File, "file", "f", "", "explain against this policy file instead of the cluster")
	output.AddFormatFlag(cmd, &o.Output)
	cmd.MarkFlagsMutuallyExclusive("prompt", "prompt-file")
	_ = cmd.MarkFlagRequired("topic")
	return cmd
}

func explainRun(ctx context.Context, o *ExplainOptions) error {
	// The job explained is one a submit would take.
	if !bus.ValidTopic(o.Topic) {
		return &cmdutil.UsageError{Err: fmt.Errorf("--topic %q is not valid: use 2-8 dot-separated tokens of a-z, 0-9, - and _, e.g. job.echo", o.Topic)}
	}
	if o.Priority < 0 || o.Priority > bus.MaxPriority {
		return &cmdutil.UsageError{Err: fmt.Errorf("--priority %d is out of range: use 0-%d", o.Priority, bus.MaxPriority)}
	}
	labels, err := job.ParseLabels(o.Labels)
	if err != nil {
		return &cmdutil.UsageError{Err: err}
	}
	prompt := o.Prompt
	if o.PromptFile != "" {
		data, err := readFile(o.Factory, o.PromptFile)
		if err != nil {
			return err
		}
		prompt = string(data)
	}
	var res *cortexv1.ExplainDecisionResponse
	if o.File != "" {
		p, err := policy.Load(o.File)
		if err != nil {
			return &cmdutil.UsageError{Err: err}
		}
		ex := p.Explain(policy.Input{JobID: "explain", Topic: o.Topic, Tenant: "default", Labels: labels, Priority: o.Priority,
			Attempt: max(o.Attempt, 1), PromptSize: uint64(len(prompt)), Prompt: prompt, Now: time.Now()})
		res = &cortexv1.ExplainDecisionResponse{Explanation: ex.String(), Decision: &cortexv1.SafetyVerdict{
			Decision: wireDecision(ex.Decision.Decision), Rule: ex.Decision.Rule, Reason: ex.Decision.Reason, PolicyVersion: ex.Decision.PolicyHash,
		}}
	} else {
		c, _, err := o.Factory.Client()
		if err != nil {
			return err
		}
		res, err = c.ExplainDecision(ctx, &cortexv1.ExplainDecisionRequest{
			Topic: o.Topic, Prompt: prompt, Labels: labels, Priority: o.Priority, Attempt: o.Attempt,
		})
		if err != nil {
			return err
		}
	}
	p := output.New(o.Factory.Out, o.Output)
	if p.Machine() {
		return p.Print(res)
	}
	w := o.Factory.Out
	fmt.Fprintf(w, "Decision: %s by rule %s: %s\n", p.Colorize(decisionName(res.GetDecision())), res.GetDecision().GetRule(), res.GetDecision().GetReason())
	fmt.Fprintf(w, "\n%s\n", strings.TrimRight(res.GetExplanation(), "\n"))
	if sh := res.GetShadow(); sh != nil {
		fmt.Fprintf(w, "\nShadow policy: %s by rule %s: %s\n", decisionName(sh), sh.GetRule(), sh.GetReason())
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(res.GetShadowExplanation(), "\n"))
	}
	return nil
}

func decisionName(v *cortexv1.SafetyVerdict) string {
	return strings.TrimPrefix(v.GetDecision().String(), "DECISION_")
}

func wireDecision(k policy.Kind) cortexv1.Decision {
	switch k {
	case policy.Allow:
		return cortexv1.Decision_DECISION_ALLOW
	case policy.RequireApproval:
		return cortexv1.Decision_DECISION_REQUIRE_APPROVAL
	}
	return cortexv1.Decision_DECISION_DENY
}

// readFile reads path, or standard input for "-".
func readFile(f *cmdutil.Factory, path string) ([]byte, error) {
	if path == "-" {
		return readStdin(f.In)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &cmdutil.UsageError{Err: err}
	}
	return data, nil
}

// ApplyOptions are `policy apply`'s inputs.
type ApplyOptions struct {
	Factory     *cmdutil.Factory
	File        string
	Shadow      bool
	ClearShadow bool
	Output      output.Format
}

// NewCmdApply returns `policy apply`.
func NewCmdApply(f *cmdutil.Factory, runF func(context.Context, *ApplyOptions) error) *cobra.Command {
	o := &ApplyOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "apply FILE",
		Short: "Put a policy in force across the running cluster",
		Long: `Check a policy file and put it in force on every running safety kernel; it is
kept in Redis, so kernels that start later load it too (a kernel started with
--policy FILE keeps following its file when the file changes). An invalid
policy is refused with file:line errors and changes nothing. With --shadow the
policy becomes the shadow policy: evaluated beside the enforced one, recorded
and counted, never enforced. Needs an admin key.`,
		Example: `  cortexctl policy check policy.yaml && cortexctl policy apply policy.yaml
  cortexctl policy apply --shadow next-policy.yaml
  cortexctl policy apply --clear-shadow`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case o.ClearShadow && len(args) > 0:
				return &cmdutil.UsageError{Err: errors.New("--clear-shadow removes the shadow policy: give no FILE")}
			case !o.ClearShadow && len(args) != 1:
				return &cmdutil.UsageError{Err: errors.New("give one policy FILE (or --clear-shadow)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.File = args[0]
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return applyRun(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Shadow, "shadow", false, "apply as the shadow policy (recorded, never enforced)")
	cmd.Flags().BoolVar(&o.ClearShadow, "clear-shadow", false, "remove the shadow policy")
	cmd.MarkFlagsMutuallyExclusive("shadow", "clear-shadow")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func applyRun(ctx context.Context, o *ApplyOptions) error {
	req := &cortexv1.ApplyPolicyRequest{Shadow: o.Shadow, ClearShadow: o.ClearShadow}
	if o.File != "" {
		data, err := readFile(o.Factory, o.File)
		if err != nil {
			return err
		}
		// Checked here first, so errors name the file as the user knows it;
		// its lint warnings (as policy check gives them) go to stderr.
		p, err := policy.Parse(o.File, data)
		if err != nil {
			return &cmdutil.UsageError{Err: err}
		}
		for _, w := range p.Lint() {
			fmt.Fprintln(o.Factory.ErrOut, w)
		}
		req.Source, req.Name = string(data), filepath.Base(o.File)
	}
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.ApplyPolicy(ctx, req)
	if err != nil {
		return err
	}
	p := output.New(o.Factory.Out, o.Output)
	if p.Machine() {
		return p.Print(res)
	}
	what := "policy " + res.GetHash()
	switch {
	case o.ClearShadow:
		what = "removal of the shadow policy"
	case o.Shadow:
		what = "shadow policy " + res.GetHash()
	}
	if len(res.GetKernels()) == 0 {
		fmt.Fprintf(o.Factory.Out, "stored the %s; no safety kernel answered, so it takes effect when one starts\n", what)
		return nil
	}
	fmt.Fprintf(o.Factory.Out, "applied the %s on %d safety kernel(s):\n", what, len(res.GetKernels()))
	for _, k := range res.GetKernels() {
		fmt.Fprintf(o.Factory.Out, "  %s  enforcing %s %s", k.GetKernelId(), k.GetActive().GetName(), k.GetActive().GetHash())
		if sh := k.GetShadow(); sh != nil {
			fmt.Fprintf(o.Factory.Out, ", shadow %s %s", sh.GetName(), sh.GetHash())
		}
		fmt.Fprintln(o.Factory.Out)
	}
	return nil
}

// ShowOptions are `policy show`'s inputs.
type ShowOptions struct {
	Factory *cmdutil.Factory
	Source  bool
	Output  output.Format
}

// NewCmdShow returns `policy show`.
func NewCmdShow(f *cmdutil.Factory, runF func(context.Context, *ShowOptions) error) *cobra.Command {
	o := &ShowOptions{Factory: f}
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the policy the cluster enforces",
		Long: `Show the policy a running safety kernel enforces (name, hash, where it came
from, when it was loaded), its shadow policy, and the last reload that failed.
--source prints the policy file itself.`,
		Example: `  cortexctl policy show
  cortexctl policy show --source > current-policy.yaml
  cortexctl policy show -o json | jq -r .active.hash`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return showRun(cmd.Context(), o)
		},
	}
	cmd.Flags().BoolVar(&o.Source, "source", false, "print the enforced policy's file")
	output.AddFormatFlag(cmd, &o.Output)
	return cmd
}

func showRun(ctx context.Context, o *ShowOptions) error {
	c, _, err := o.Factory.Client()
	if err != nil {
		return err
	}
	res, err := c.GetPolicy(ctx, &cortexv1.GetPolicyRequest{})
	if err != nil {
		return err
	}
	st := res.GetStatus()
	p := output.New(o.Factory.Out, o.Output)
	switch {
	case p.Machine():
		return p.Print(st)
	case o.Source && st.GetActive().GetSource() == "":
		// Refused as the API refuses what a key's scope does not allow.
		return connect.NewError(connect.CodePermissionDenied, "the policy text is shown to admin keys only (key:tenant:admin)")
	case o.Source:
		_, err := fmt.Fprint(o.Factory.Out, st.GetActive().GetSource())
		return err
	}
	w := o.Factory.Out
	info := func(label string, pi *cortexv1.PolicyInfo) {
		fmt.Fprintf(w, "%-8s %s %s (%s, loaded %s)\n", label, pi.GetName(), pi.GetHash(), pi.GetOrigin(),
			pi.GetLoadedAt().AsTime().Local().Format(time.RFC3339))
	}
	info("Policy:", st.GetActive())
	if st.GetShadow() != nil {
		info("Shadow:", st.GetShadow())
		fmt.Fprintf(w, "%-8s the shadow decided otherwise on %d of the %d checks it saw\n", "", st.GetShadowDisagreements(), st.GetShadowChecks())
	} else {
		fmt.Fprintf(w, "%-8s none\n", "Shadow:")
	}
	checks := "checks"
	if st.GetChecks() == 1 {
		checks = "check"
	}
	fmt.Fprintf(w, "%-8s %s (%d %s since it started)\n", "Kernel:", st.GetKernelId(), st.GetChecks(), checks)
	if ks := res.GetKernels(); len(ks) > 1 {
		fmt.Fprintf(w, "%d kernels answered:\n", len(ks))
		differ := false
		for _, k := range ks {
			fmt.Fprintf(w, "  %s  %s %s (%s)\n", k.GetKernelId(), k.GetActive().GetName(), k.GetActive().GetHash(), k.GetActive().GetOrigin())
			differ = differ || k.GetActive().GetHash() != st.GetActive().GetHash()
		}
		if differ {
			fmt.Fprintln(w, "Warning: the kernels enforce different policies; 'cortexctl policy apply FILE' puts one in force everywhere.")
		}
	}
	if e := st.GetLastError(); e != "" {
		fmt.Fprintf(w, "Last reload failed (the policy above stayed in force):\n  %s\n", strings.ReplaceAll(e, "\n", "\n  "))
	}
	return nil
}
