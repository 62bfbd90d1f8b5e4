package gateway_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/cortex-os/core/internal/gateway"
	"github.com/cortex-os/core/internal/store"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/pb/cortex/v1/cortexv1connect"
)

// deadLetter submits a job as acme and ends it FAILED in the dead-letter
// queue, as the scheduler does when it runs out of attempts.
func (f *fixture) deadLetter(t *testing.T, c interface {
	SubmitJob(context.Context, *cortexv1.SubmitJobRequest) (*cortexv1.SubmitJobResponse, error)
}) string {
	t.Helper()
	res, err := c.SubmitJob(context.Background(), &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	f.move(t, res.GetJobId(), store.Change{To: store.Failed, Attempt: 1, DeadLetter: true, Reason: "boom"})
	return res.GetJobId()
}

// TestDeadLettersAreTheTenantsOwn: a tenant lists, retries and drops its
// own dead letters only; a read-only key lists but may not act; a retry
// revives the job at its next attempt and hands it to the schedulers
// (whose safety gate checks it again); a job that is not a dead letter
// is FailedPrecondition.
func TestDeadLettersAreTheTenantsOwn(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	acme, globex, ro := f.client(t, "key-acme-1234"), f.client(t, "key-globex-1234"), f.client(t, "key-acme-read")
	first := f.deadLetter(t, acme)
	second := f.deadLetter(t, acme)

	list, err := acme.ListDeadLetters(ctx, &cortexv1.ListDeadLettersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range list.GetDeadLetters() {
		got = append(got, d.GetJob().GetJobId())
		if d.GetDeadAt() == nil || d.GetJob().GetState() != cortexv1.JobState_JOB_STATE_FAILED {
			t.Errorf("dead letter %v", d)
		}
	}
	if !slices.Contains(got, first) || !slices.Contains(got, second) || len(got) != 2 {
		t.Errorf("acme's dead letters %v, want %s and %s", got, first, second)
	}
	if other, err := globex.ListDeadLetters(ctx, &cortexv1.ListDeadLettersRequest{}); err != nil || len(other.GetDeadLetters()) != 0 {
		t.Errorf("globex sees %v, %v; want none", other.GetDeadLetters(), err)
	}
	if _, err := globex.RetryDeadLetter(ctx, &cortexv1.RetryDeadLetterRequest{JobId: first}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("globex retrying acme's job: %v, want NotFound", err)
	}
	if _, err := ro.ListDeadLetters(ctx, &cortexv1.ListDeadLettersRequest{}); err != nil {
		t.Errorf("read-only key listing: %v", err)
	}
	for name, call := range map[string]func() error{
		"retry": func() error {
			_, err := ro.RetryDeadLetter(ctx, &cortexv1.RetryDeadLetterRequest{JobId: first})
			return err
		},
		"drop": func() error {
			_, err := ro.DropDeadLetter(ctx, &cortexv1.DropDeadLetterRequest{JobId: first})
			return err
		},
	} {
		if err := call(); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("read-only key %s: %v, want PermissionDenied", name, err)
		}
	}

	handed := len(f.submitted(t))
	res, err := acme.RetryDeadLetter(ctx, &cortexv1.RetryDeadLetterRequest{JobId: first})
	if err != nil {
		t.Fatal(err)
	}
	if j := res.GetJob(); j.GetState() != cortexv1.JobState_JOB_STATE_PENDING || j.GetAttempt() != 2 || j.GetMaxAttempts() < 2 {
		t.Errorf("retried job %v, want PENDING at attempt 2", j)
	}
	if ids := f.submitted(t); len(ids) != handed+1 || ids[len(ids)-1] != first {
		t.Errorf("hand-offs %v, want the retried job handed to the schedulers", ids)
	}
	if _, err := acme.RetryDeadLetter(ctx, &cortexv1.RetryDeadLetterRequest{JobId: first}); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("retrying a job that left the queue: %v, want FailedPrecondition", err)
	}

	dropped, err := acme.DropDeadLetter(ctx, &cortexv1.DropDeadLetterRequest{JobId: second})
	if err != nil {
		t.Fatal(err)
	}
	if r := dropped.GetJob().GetReason(); !strings.HasSuffix(r, "dropped from the dead-letter queue") {
		t.Errorf("the drop answered with reason %q: want the record after the drop", r)
	}
	if j, err := f.st.Get(ctx, second); err != nil || j.State != store.Failed {
		t.Errorf("dropped job %+v, %v; want it still FAILED", j, err)
	} else if strings.Contains(j.Reason, "dlq list") || !strings.HasSuffix(j.Reason, "dropped from the dead-letter queue") {
		t.Errorf("dropped job's reason %q: want it to say it was dropped, not to point to the queue", j.Reason)
	}
	if _, err := acme.DropDeadLetter(ctx, &cortexv1.DropDeadLetterRequest{JobId: second}); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("dropping twice: %v, want FailedPrecondition", err)
	}
	if list, err := acme.ListDeadLetters(ctx, &cortexv1.ListDeadLettersRequest{}); err != nil || len(list.GetDeadLetters()) != 0 {
		t.Errorf("after retry and drop: %v, %v; want none", list.GetDeadLetters(), err)
	}
	if _, err := acme.ListDeadLetters(ctx, &cortexv1.ListDeadLettersRequest{PageToken: "nope"}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad page token: %v, want InvalidArgument", err)
	}
}

// TestGetDeadLetterIsForDeadLettersOnly: GetDeadLetter answers a dead
// letter of the caller's tenant with when it went to the queue, to any of
// the tenant's keys; a job that is not in the queue (never was, dropped,
// retried) is FailedPrecondition, as retry and drop say, and points to
// GetJob's command; another tenant's job is NotFound.
func TestGetDeadLetterIsForDeadLettersOnly(t *testing.T) {
	f := newFixture(t, gateway.Options{Keys: keys})
	ctx := context.Background()
	acme, globex, ro := f.client(t, "key-acme-1234"), f.client(t, "key-globex-1234"), f.client(t, "key-acme-read")
	dead := f.deadLetter(t, acme)
	dropped := f.deadLetter(t, acme)
	retried := f.deadLetter(t, acme)
	pending := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	failed := submit(t, acme, &cortexv1.SubmitJobRequest{Topic: "job.echo", Prompt: "x"})
	f.move(t, failed, store.Change{To: store.Failed, Attempt: 1, Reason: "boom"})
	if _, err := acme.DropDeadLetter(ctx, &cortexv1.DropDeadLetterRequest{JobId: dropped}); err != nil {
		t.Fatal(err)
	}
	if _, err := acme.RetryDeadLetter(ctx, &cortexv1.RetryDeadLetterRequest{JobId: retried}); err != nil {
		t.Fatal(err)
	}

	for name, c := range map[string]cortexv1connect.GatewayServiceClient{"key": acme, "read-only key": ro} {
		res, err := c.GetDeadLetter(ctx, &cortexv1.GetDeadLetterRequest{JobId: dead})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		d := res.GetDeadLetter()
		if d.GetJob().GetJobId() != dead || d.GetJob().GetState() != cortexv1.JobState_JOB_STATE_FAILED || len(d.GetJob().GetAttempts()) != 1 ||
			d.GetDeadAt() == nil || time.Since(d.GetDeadAt().AsTime()) > time.Minute {
			t.Errorf("%s: dead letter %v", name, d)
		}
	}
	for id, state := range map[string]string{pending: "PENDING", failed: "FAILED", dropped: "FAILED", retried: "PENDING"} {
		_, err := acme.GetDeadLetter(ctx, &cortexv1.GetDeadLetterRequest{JobId: id})
		want := "job " + id + " is not in the dead-letter queue (it is " + state + "); see cortexctl jobs get " + id
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition || ce.Message() != want {
			t.Errorf("%s job: %v, want FailedPrecondition %q", state, err, want)
		}
	}
	if _, err := globex.GetDeadLetter(ctx, &cortexv1.GetDeadLetterRequest{JobId: dead}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("globex reading acme's dead letter: %v, want NotFound", err)
	}
	if _, err := acme.GetDeadLetter(ctx, &cortexv1.GetDeadLetterRequest{JobId: "01930000-0000-7000-8000-000000000000"}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown job: %v, want NotFound", err)
	}
	if _, err := acme.GetDeadLetter(ctx, &cortexv1.GetDeadLetterRequest{JobId: "nope"}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad id: %v, want InvalidArgument", err)
	}
}
