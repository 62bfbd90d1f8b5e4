package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// State is a job's lifecycle state as stored in job:<id>.
type State string

// The job states. COMPLETED, FAILED, DENIED, CANCELLED and TIMEOUT are
// terminal.
const (
	Pending    State = "PENDING"
	Scheduled  State = "SCHEDULED"
	Dispatched State = "DISPATCHED"
	Running    State = "RUNNING"
	Completed  State = "COMPLETED"
	Failed     State = "FAILED"
	Denied     State = "DENIED"
	Cancelled  State = "CANCELLED"
	Timeout    State = "TIMEOUT"
	// AwaitingApproval holds a job until a person approves or rejects it.
	AwaitingApproval State = "AWAITING_APPROVAL"
)

// Terminal reports whether s is a final state.
func (s State) Terminal() bool {
	switch s {
	case Completed, Failed, Denied, Cancelled, Timeout:
		return true
	}
	return false
}

// Proto is the wire form of s.
func (s State) Proto() cortexv1.JobState {
	return cortexv1.JobState(cortexv1.JobState_value["JOB_STATE_"+string(s)])
}

// StateOf is the store form of a wire state ("" for UNSPECIFIED or an
// unknown value).
func StateOf(s cortexv1.JobState) State {
	name, ok := cortexv1.JobState_name[int32(s)]
	if !ok || s == cortexv1.JobState_JOB_STATE_UNSPECIFIED {
		return ""
	}
	return State(name[len("JOB_STATE_"):])
}

// Verdict is a safety decision as recorded on a job.
type Verdict struct {
	// Decision is the decision's name without prefix, e.g. "ALLOW".
	Decision string
	Rule     string
	Reason   string
	Policy   string
}

// Approval is a person's answer to a job held for approval.
type Approval struct {
	Approved bool
	By       string
	Comment  string
	At       time.Time
	// Attempt and Rule say what was approved: that attempt, held by that
	// REQUIRE_APPROVAL rule.
	Attempt uint32
	Rule    string
}

// Job is a job record: everything but its input and output.
type Job struct {
	ID          string
	Topic       string
	Tenant      string
	State       State
	Labels      map[string]string
	Priority    int32
	Timeout     time.Duration
	MaxAttempts uint32
	Attempt     uint32
	Pool        string
	WorkerID    string
	Reason      string
	Safety      Verdict
	PromptSize  uint64
	Binary      bool
	ResultSize  uint64
	CreatedAt   time.Time
	UpdatedAt   time.Time
	// Entered holds when the job last entered each state.
	Entered map[State]time.Time
	// Version grows with every change.
	Version uint64
	// Approval is set once a person answered a REQUIRE_APPROVAL decision.
	Approval *Approval
	// Attempts are the attempts that have ended, oldest first.
	Attempts []AttemptRecord
	// TraceID names the job's story in bus packets and logs.
	TraceID string
	// Usage is what the model a job ran on reported, when it did.
	Usage Usage
}

// Trace is the job's trace id, or its id for a job recorded before trace
// ids were.
func (j *Job) Trace() string {
	if j.TraceID != "" {
		return j.TraceID
	}
	return j.ID
}

// AttemptRecord is how one attempt of a job ended.
type AttemptRecord struct {
	Attempt  uint32
	State    State
	WorkerID string
	Reason   string
	EndedAt  time.Time
}

// Hash fields of job:<id>. Entered times are "t:<STATE>".
const (
	fState       = "state"
	fTopic       = "topic"
	fTenant      = "tenant"
	fLabels      = "labels"
	fPriority    = "priority"
	fTimeout     = "timeout_ms"
	fMaxAttempts = "max_attempts"
	fAttempt     = "attempt"
	fPool        = "pool"
	fWorker      = "worker_id"
	fReason      = "reason"
	fDecision    = "decision"
	fRule        = "rule"
	fSafety      = "safety_reason"
	fPolicy      = "policy"
	fPromptSize  = "prompt_size"
	fBinary      = "binary"
	fResultSize  = "result_size"
	fCreated     = "created_at"
	fUpdated     = "updated_at"
	fVersion     = "version"
	fTrace       = "trace_id"
	fUsage       = "usage"
	fApproved    = "approved"
	fApprovalBy  = "approval_by"
	fApprovalMsg = "approval_comment"
	fApprovalAt  = "approval_at"
	fApprovalAtt = "approval_attempt"
	fApprovalRul = "approval_rule"
	enteredPre   = "t:"
	attemptPre   = "a:"
)

func parseJob(id string, f map[string]string) *Job {
	j := &Job{
		ID:          id,
		Topic:       f[fTopic],
		Tenant:      f[fTenant],
		State:       State(f[fState]),
		Priority:    int32(parseInt(f[fPriority])),
		Timeout:     time.Duration(parseInt(f[fTimeout])) * time.Millisecond,
		MaxAttempts: uint32(parseInt(f[fMaxAttempts])),
		Attempt:     uint32(parseInt(f[fAttempt])),
		Pool:        f[fPool],
		WorkerID:    f[fWorker],
		Reason:      f[fReason],
		Safety:      Verdict{Decision: f[fDecision], Rule: f[fRule], Reason: f[fSafety], Policy: f[fPolicy]},
		PromptSize:  uint64(parseInt(f[fPromptSize])),
		Binary:      f[fBinary] == "1",
		ResultSize:  uint64(parseInt(f[fResultSize])),
		CreatedAt:   parseMicros(f[fCreated]),
		UpdatedAt:   parseMicros(f[fUpdated]),
		Version:     uint64(parseInt(f[fVersion])),
		TraceID:     f[fTrace],
		Usage:       parseUsage(f[fUsage]),
		Entered:     map[State]time.Time{},
	}
	if a, ok := f[fApproved]; ok {
		j.Approval = &Approval{Approved: a == "1", By: f[fApprovalBy], Comment: f[fApprovalMsg], At: parseMicros(f[fApprovalAt]),
			Attempt: uint32(parseInt(f[fApprovalAtt])), Rule: f[fApprovalRul]}
	}
	if l := f[fLabels]; l != "" {
		_ = json.Unmarshal([]byte(l), &j.Labels)
	}
	for k, v := range f {
		switch {
		case strings.HasPrefix(k, enteredPre):
			j.Entered[State(k[len(enteredPre):])] = parseMicros(v)
		case strings.HasPrefix(k, attemptPre):
			// state, worker, ended (µs), reason, tab-separated.
			p := strings.SplitN(v, "\t", 4)
			if len(p) == 4 {
				j.Attempts = append(j.Attempts, AttemptRecord{Attempt: uint32(parseInt(k[len(attemptPre):])),
					State: State(p[0]), WorkerID: p[1], EndedAt: parseMicros(p[2]), Reason: p[3]})
			}
		}
	}
	slices.SortFunc(j.Attempts, func(a, b AttemptRecord) int { return int(a.Attempt) - int(b.Attempt) })
	return j
}

func parseInt(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func parseMicros(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMicro(n).UTC()
}

func micros(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// Proto is the wire form of j.
func (j *Job) Proto() *cortexv1.Job {
	p := &cortexv1.Job{
		JobId:         j.ID,
		Topic:         j.Topic,
		State:         j.State.Proto(),
		TenantId:      j.Tenant,
		Labels:        j.Labels,
		Priority:      j.Priority,
		MaxAttempts:   j.MaxAttempts,
		Attempt:       j.Attempt,
		Pool:          j.Pool,
		WorkerId:      j.WorkerID,
		Reason:        j.Reason,
		PromptSize:    j.PromptSize,
		BinaryPayload: j.Binary,
		ResultSize:    j.ResultSize,
		CreatedAt:     timestamppb.New(j.CreatedAt),
		UpdatedAt:     timestamppb.New(j.UpdatedAt),
		Version:       j.Version,
		TraceId:       j.TraceID,
	}
	if j.Timeout > 0 {
		p.Timeout = durationpb.New(j.Timeout)
	}
	if j.Usage != (Usage{}) {
		p.Usage = &cortexv1.TokenUsage{PromptTokens: j.Usage.Prompt, CompletionTokens: j.Usage.Completion, TotalTokens: j.Usage.Total}
	}
	if a := j.Approval; a != nil {
		p.Approval = &cortexv1.Approval{Approved: a.Approved, By: a.By, Comment: a.Comment, At: timestamppb.New(a.At), Attempt: a.Attempt, Rule: a.Rule}
	}
	if j.Safety.Decision != "" {
		p.Safety = &cortexv1.SafetyVerdict{
			Decision:      cortexv1.Decision(cortexv1.Decision_value["DECISION_"+j.Safety.Decision]),
			Rule:          j.Safety.Rule,
			Reason:        j.Safety.Reason,
			PolicyVersion: j.Safety.Policy,
		}
	}
	for _, a := range j.Attempts {
		p.Attempts = append(p.Attempts, &cortexv1.AttemptRecord{Attempt: a.Attempt, State: a.State.Proto(), WorkerId: a.WorkerID,
			Reason: a.Reason, EndedAt: timestamppb.New(a.EndedAt)})
	}
	for s, at := range j.Entered {
		p.Transitions = append(p.Transitions, &cortexv1.JobTransition{State: s.Proto(), At: timestamppb.New(at)})
	}
	slices.SortFunc(p.Transitions, func(a, b *cortexv1.JobTransition) int {
		if c := a.GetAt().AsTime().Compare(b.GetAt().AsTime()); c != 0 {
			return c
		}
		return int(a.GetState() - b.GetState())
	})
	return p
}

// Request is the bus request for the job's current attempt.
func (j *Job) Request() *cortexv1.JobRequest {
	r := &cortexv1.JobRequest{
		JobId:         j.ID,
		Topic:         j.Topic,
		TenantId:      j.Tenant,
		ContextPtr:    ContextPtr(j.ID),
		Attempt:       j.Attempt,
		Labels:        j.Labels,
		PromptSize:    j.PromptSize,
		Priority:      j.Priority,
		MaxAttempts:   j.MaxAttempts,
		BinaryPayload: j.Binary,
	}
	// An approval holds for the attempt it was given to, and only for the
	// rule that held it.
	if a := j.Approval; a != nil && a.Approved && a.Attempt == j.Attempt && a.Rule != "" {
		r.Approved, r.ApprovedRule = true, a.Rule
	}
	if j.Timeout > 0 {
		r.Timeout = durationpb.New(j.Timeout)
	}
	return r
}

// Record is the record CreateJob makes of j at now.
func (j NewJob) Record(now time.Time) *Job {
	now = time.UnixMicro(now.UnixMicro()).UTC()
	return &Job{
		ID:          j.ID,
		Topic:       j.Topic,
		Tenant:      j.Tenant,
		State:       Pending,
		Labels:      j.Labels,
		Priority:    j.Priority,
		Timeout:     j.Timeout,
		MaxAttempts: j.MaxAttempts,
		Attempt:     1,
		PromptSize:  uint64(len(j.Input)),
		Binary:      j.Binary,
		CreatedAt:   now,
		UpdatedAt:   now,
		Entered:     map[State]time.Time{Pending: now},
		Version:     1,
		TraceID:     j.TraceID,
	}
}

// Usage counts the tokens a model read (Prompt) and wrote (Completion)
// for a job; the zero value means none were reported.
type Usage struct {
	Prompt, Completion, Total uint32
}

// String is the stored form: "prompt,completion,total".
func (u Usage) String() string {
	return fmt.Sprintf("%d,%d,%d", u.Prompt, u.Completion, u.Total)
}

func parseUsage(s string) Usage {
	var u Usage
	if s != "" {
		_, _ = fmt.Sscanf(s, "%d,%d,%d", &u.Prompt, &u.Completion, &u.Total)
	}
	return u
}
