package top

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

func TestTrackerRatesBacklogLatency(t *testing.T) {
	tr := newTracker(t0)
	// 10 jobs a second for 10 seconds, each finishing 100ms after it arrived.
	for s := range 10 {
		for i := range 10 {
			at := t0.Add(time.Duration(s)*time.Second + time.Duration(i)*50*time.Millisecond)
			id := string(rune('a'+s)) + string(rune('a'+i))
			tr.observeJob(&cortexv1.Job{JobId: id, Topic: "job.echo", State: cortexv1.JobState_JOB_STATE_PENDING, CreatedAt: timestamppb.New(at)}, 0, at)
			if i < 8 { // two a second stay queued
				done := at.Add(100 * time.Millisecond)
				tr.observeJob(&cortexv1.Job{JobId: id, Topic: "job.echo", Pool: "echo", State: cortexv1.JobState_JOB_STATE_COMPLETED,
					CreatedAt: timestamppb.New(at), UpdatedAt: timestamppb.New(done)}, 0, done)
			}
		}
	}
	st := tr.snapshot(t0.Add(10 * time.Second))
	if st.InPerSec != 10 || st.OutPerSec != 8 {
		t.Errorf("rates in %v out %v, want 10 and 8", st.InPerSec, st.OutPerSec)
	}
	if st.Backlog != 20 || st.Queue["job.echo"] != 20 {
		t.Errorf("backlog %d queue %v, want 20", st.Backlog, st.Queue)
	}
	if st.P99["echo"] != 100*time.Millisecond {
		t.Errorf("p99 %v", st.P99)
	}
	if len(st.Jobs) != 100 || len(st.InSpark) != sparkSeconds || st.InSpark[sparkSeconds-1] != 10 {
		t.Errorf("jobs %d spark %v", len(st.Jobs), st.InSpark)
	}
	// A minute on, nothing arrived: the rates fall to zero.
	if st := tr.snapshot(t0.Add(time.Minute)); st.InPerSec != 0 || len(st.P99) != 0 {
		t.Errorf("a minute later: in %v p99 %v", st.InPerSec, st.P99)
	}
}

func TestTrackerCapsLists(t *testing.T) {
	tr := newTracker(t0)
	for i := range 5000 {
		tr.observeDecision(decision("j", cortexv1.Decision_DECISION_ALLOW, "r", "t"), 1)
		tr.observeJob(&cortexv1.Job{JobId: string(rune(i)), State: cortexv1.JobState_JOB_STATE_RUNNING}, 0, t0)
	}
	if len(tr.decisions) > 2*recentCap || len(tr.jobs) > 2*recentCap {
		t.Errorf("kept %d decisions, %d jobs", len(tr.decisions), len(tr.jobs))
	}
	st := tr.snapshot(t0)
	if len(st.Decisions) != recentCap || st.Dropped != 5000 {
		t.Errorf("snapshot: %d decisions, %d dropped", len(st.Decisions), st.Dropped)
	}
	if st := tr.snapshot(t0.Add(liveTTL + time.Second)); len(tr.live) != 0 {
		t.Errorf("live jobs not forgotten after %v: %d (backlog %d)", liveTTL, len(tr.live), st.Backlog)
	}
}

func TestPercentile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(100-i) * time.Millisecond
	}
	if got := percentile(ds, 0.99); got != 99*time.Millisecond {
		t.Errorf("p99 = %v", got)
	}
	if got := percentile([]time.Duration{5}, 0.99); got != 5 {
		t.Errorf("p99 of one = %v", got)
	}
}
