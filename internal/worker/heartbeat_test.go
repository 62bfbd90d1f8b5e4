package worker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cortex-os/core/internal/buildinfo"
	"github.com/cortex-os/core/internal/worker"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
	"github.com/cortex-os/core/plugins"
)

// nextBeat returns the next heartbeat that passes keep, for at most 5s.
func (r *rig) nextBeat(t *testing.T, what string, keep func(*cortexv1.Heartbeat) bool) *cortexv1.Heartbeat {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case hb := <-r.beats:
			if keep(hb) {
				return hb
			}
		case <-deadline:
			t.Fatalf("no heartbeat %s within 5s", what)
			return nil
		}
	}
}

func TestHeartbeatsSayWhatTheWorkerIsAndDoes(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	r := newRigWith(t, worker.Options{
		ID: "w-1", Pool: "p", MaxParallel: 2, HeartbeatInterval: 20 * time.Millisecond,
		Version: "v9.9.9", Capabilities: []string{"python3"},
		Handlers: map[string]plugins.Handler{
			"job.echo": echo,
			"job.slow": plugins.HandlerFunc(func(context.Context, *plugins.Job) (*plugins.Result, error) {
				close(started)
				<-release
				return &plugins.Result{Output: "done"}, nil
			}),
		},
	})
	hb := r.nextBeat(t, "at start", func(*cortexv1.Heartbeat) bool { return true })
	if hb.GetWorkerId() != "w-1" || hb.GetPool() != "p" || hb.GetMaxParallelJobs() != 2 || hb.GetActiveJobs() != 0 ||
		!slices.Equal(hb.GetTopics(), []string{"job.echo", "job.slow"}) || !slices.Equal(hb.GetCapabilities(), []string{"python3"}) ||
		hb.GetVersion() != "v9.9.9" || hb.GetHeartbeatInterval().AsDuration() != 20*time.Millisecond ||
		hb.GetDraining() || hb.GetCpuLoad() < 0 {
		t.Fatalf("first heartbeat: %v", hb)
	}

	r.send(t, "j-slow", "job.slow", "x")
	<-started
	r.nextBeat(t, "with the running job", func(hb *cortexv1.Heartbeat) bool { return hb.GetActiveJobs() == 1 })
	close(release)
	r.result(t, "j-slow")
	r.nextBeat(t, "counting the completed job", func(hb *cortexv1.Heartbeat) bool {
		return hb.GetActiveJobs() == 0 && hb.GetCompletedJobs() == 1 && !hb.GetDraining()
	})

	r.w.Stop()
	r.nextBeat(t, "saying the worker drains", (*cortexv1.Heartbeat).GetDraining)
	// Nothing follows the draining heartbeat: the connection is closed.
	for {
		select {
		case hb := <-r.beats:
			if !hb.GetDraining() {
				t.Fatalf("heartbeat after the draining one: %v", hb)
			}
		case <-time.After(100 * time.Millisecond):
			return
		}
	}
}

func TestHeartbeatCapabilitiesDefaultToTheTopicsKinds(t *testing.T) {
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", Handlers: map[string]plugins.Handler{
		"job.llm.chat": echo, "job.echo": echo,
	}})
	hb := r.nextBeat(t, "at start", func(*cortexv1.Heartbeat) bool { return true })
	if !slices.Equal(hb.GetCapabilities(), []string{"echo", "llm.chat"}) || hb.GetVersion() == "" ||
		hb.GetHeartbeatInterval().AsDuration() != worker.DefaultHeartbeatInterval {
		t.Fatalf("heartbeat %v", hb)
	}
}

// A worker reports the version its binary was released as (stamped in with
// -ldflags -X, as goreleaser does), the one cortexctl version prints: a
// rolling upgrade shows which worker runs which.
func TestHeartbeatVersionIsTheReleaseVersion(t *testing.T) {
	defer func(v string) { buildinfo.Version = v }(buildinfo.Version)
	buildinfo.Version = "1.4.2"
	r := newRigWith(t, worker.Options{ID: "w-1", Pool: "p", Handlers: map[string]plugins.Handler{"job.echo": echo}})
	hb := r.nextBeat(t, "at start", func(*cortexv1.Heartbeat) bool { return true })
	if hb.GetVersion() != "1.4.2" {
		t.Fatalf("heartbeat version %q, want the stamped release version 1.4.2", hb.GetVersion())
	}
}
