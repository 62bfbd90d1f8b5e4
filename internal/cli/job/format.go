package job

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/cli/cmdutil"
	"github.com/cortex-os/core/internal/cli/output"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// StateName is the short name of a state: COMPLETED, DENIED, ...
func StateName(s cortexv1.JobState) string {
	return strings.TrimPrefix(s.String(), "JOB_STATE_")
}

// parseStates reads state names as given to --state (case-insensitive,
// with or without the JOB_STATE_ prefix).
func parseStates(names []string) ([]cortexv1.JobState, error) {
	var states []cortexv1.JobState
	for _, n := range names {
		v, ok := cortexv1.JobState_value["JOB_STATE_"+strings.TrimPrefix(strings.ToUpper(n), "JOB_STATE_")]
		if !ok || v == 0 {
			return nil, fmt.Errorf("state %q: use one of %s", n, strings.Join(stateNames(), ", "))
		}
		states = append(states, cortexv1.JobState(v))
	}
	return states, nil
}

// filter is the --state, --topic and --label selection that list and tail
// share.
type filter struct {
	States []string
	Topic  string
	Labels []string
}

// addFlags adds the filter's flags; states says what --state selects.
func (f *filter) addFlags(cmd *cobra.Command, states string) {
	fs := cmd.Flags()
	fs.StringSliceVar(&f.States, "state", nil, states+" (e.g. running,failed), repeatable")
	fs.StringVar(&f.Topic, "topic", "", "only jobs of this topic, or a prefix such as job.*")
	fs.StringSliceVarP(&f.Labels, "label", "l", nil, "only jobs with this key=value label, repeatable")
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return stateNames(), cobra.ShellCompDirectiveNoFileComp
	})
}

// parse checks the filter's flags.
func (f *filter) parse() ([]cortexv1.JobState, map[string]string, error) {
	states, err := parseStates(f.States)
	if err != nil {
		return nil, nil, &cmdutil.UsageError{Err: fmt.Errorf("--state: %w", err)}
	}
	labels, err := ParseLabels(f.Labels)
	if err != nil {
		return nil, nil, &cmdutil.UsageError{Err: err}
	}
	return states, labels, nil
}

func stateNames() []string {
	var names []string
	for v := int32(1); ; v++ {
		if _, ok := cortexv1.JobState_name[v]; !ok {
			return names
		}
		names = append(names, StateName(cortexv1.JobState(v)))
	}
}

func labelsText(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// jobHeader and jobRow are the columns of a job in a table; wide adds the
// placement and the reason.
func jobHeader(wide bool) []string {
	h := []string{"JOB ID", "TOPIC", "STATE", "AGE"}
	if wide {
		h = append(h, "ATTEMPT", "POOL", "WORKER", "LABELS", "REASON")
	}
	return h
}

func jobRow(p *output.Printer, j *cortexv1.Job, now time.Time) []string {
	row := []string{j.GetJobId(), j.GetTopic(), p.Colorize(StateName(j.GetState())), output.Age(j.GetCreatedAt().AsTime(), now)}
	if p.Wide() {
		row = append(row, fmt.Sprintf("%d/%d", j.GetAttempt(), max(j.GetMaxAttempts(), 1)), dash(j.GetPool()), dash(j.GetWorkerId()),
			dash(labelsText(j.GetLabels())), dash(output.Truncate(reasonText(j), 60)))
	}
	return row
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// reasonText is why a job is where it is, with the safety rule of a denial.
func reasonText(j *cortexv1.Job) string {
	if j.GetState() == cortexv1.JobState_JOB_STATE_DENIED && j.GetSafety().GetRule() != "" {
		return j.GetSafety().GetRule() + ": " + j.GetReason()
	}
	return j.GetReason()
}

// printDetail writes one job as `jobs get` shows it on a terminal; deadAt
// is when a dead letter went to the queue (nil for jobs get).
func printDetail(w io.Writer, p *output.Printer, j *cortexv1.Job, deadAt *timestamppb.Timestamp, now time.Time) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-12s %s\n", k+":", v)
		}
	}
	row("Job", j.GetJobId())
	row("Topic", j.GetTopic())
	row("State", p.Colorize(StateName(j.GetState())))
	row("Reason", j.GetReason())
	row("Tenant", j.GetTenantId())
	row("Attempt", fmt.Sprintf("%d of %d", j.GetAttempt(), max(j.GetMaxAttempts(), 1)))
	row("Priority", fmt.Sprint(j.GetPriority()))
	if j.GetTimeout() != nil {
		row("Timeout", j.GetTimeout().AsDuration().String())
	}
	row("Pool", j.GetPool())
	row("Worker", j.GetWorkerId())
	if s := j.GetSafety(); s != nil {
		v := strings.TrimPrefix(s.GetDecision().String(), "DECISION_") + " by rule " + s.GetRule()
		if s.GetPolicyVersion() != "" {
			v += " (policy " + s.GetPolicyVersion() + ")"
		}
		if s.GetReason() != "" && s.GetReason() != j.GetReason() {
			v += ": " + s.GetReason()
		}
		row("Safety", v)
	}
	if a := j.GetApproval(); a != nil {
		v := "rejected by " + a.GetBy()
		if a.GetApproved() {
			v = "approved by " + a.GetBy()
		}
		if a.GetComment() != "" {
			v += ": " + a.GetComment()
		}
		row("Approval", v+" at "+a.GetAt().AsTime().Local().Format(time.RFC3339))
	}
	row("Labels", labelsText(j.GetLabels()))
	kind := "text"
	if j.GetBinaryPayload() {
		kind = "binary"
	}
	row("Input", fmt.Sprintf("%d bytes (%s)", j.GetPromptSize(), kind))
	if j.GetState() == cortexv1.JobState_JOB_STATE_COMPLETED {
		row("Result", fmt.Sprintf("%d bytes (cortexctl jobs result %s)", j.GetResultSize(), j.GetJobId()))
	}
	if u := j.GetUsage(); u != nil {
		row("Usage", fmt.Sprintf("%d prompt + %d completion tokens", u.GetPromptTokens(), u.GetCompletionTokens()))
	}
	row("Created", when(j.GetCreatedAt(), now))
	row("Dead since", when(deadAt, now))
	if len(j.GetTransitions()) > 0 {
		// The store keeps the last time the job entered each state, so
		// after a retry the list starts at the last attempt's PENDING;
		// the offsets count from the submit, which the list may not show.
		start := j.GetTransitions()[0].GetAt().AsTime()
		if c := j.GetCreatedAt(); c != nil && c.AsTime().Unix() > 0 {
			start = c.AsTime()
		}
		fmt.Fprintln(w, "Transitions (when the job last entered each state, +time since it was created):")
		for _, t := range j.GetTransitions() {
			fmt.Fprintf(w, "  %-18s %s  %s\n", StateName(t.GetState()), t.GetAt().AsTime().Local().Format("15:04:05.000"),
				"+"+t.GetAt().AsTime().Sub(start).Round(100*time.Microsecond).String())
		}
	}
	if len(j.GetAttempts()) > 0 {
		fmt.Fprintln(w, "Attempts:")
		for _, a := range j.GetAttempts() {
			line := fmt.Sprintf("  #%-3d %-10s %s", a.GetAttempt(), StateName(a.GetState()), a.GetEndedAt().AsTime().Local().Format("15:04:05.000"))
			if a.GetWorkerId() != "" {
				line += "  on " + a.GetWorkerId()
			}
			if a.GetReason() != "" {
				line += "  " + a.GetReason()
			}
			fmt.Fprintln(w, line)
		}
	}
}

func when(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil || ts.AsTime().Unix() <= 0 {
		return ""
	}
	t := ts.AsTime()
	return t.Local().Format(time.RFC3339) + " (" + output.Age(t, now) + " ago)"
}

// eventLine is one line of `tail` and `jobs watch` on a terminal.
func eventLine(p *output.Printer, j *cortexv1.Job) string {
	at := j.GetUpdatedAt().AsTime().Local().Format("15:04:05.000")
	line := fmt.Sprintf("%s  %s  %-12s %s", at, j.GetJobId(), j.GetTopic(), p.Colorize(StateName(j.GetState())))
	switch {
	case j.GetState() == cortexv1.JobState_JOB_STATE_DISPATCHED:
		line += "  pool " + j.GetPool()
	case j.GetState() == cortexv1.JobState_JOB_STATE_RUNNING:
		line += fmt.Sprintf("  worker %s attempt %d", j.GetWorkerId(), j.GetAttempt())
	case reasonText(j) != "":
		line += "  " + reasonText(j)
	}
	return line
}
