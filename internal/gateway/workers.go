package gateway

import (
	"context"
	"slices"
	"strings"

	"connectrpc.com/connect/v2"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cortex-os/core/internal/bus"
	"github.com/cortex-os/core/internal/registry"
	cortexv1 "github.com/cortex-os/core/pb/cortex/v1"
)

// Workers is what the gateway needs from the worker registry: to feed it
// heartbeats from the bus, and to read it.
type Workers interface {
	Start(ctx context.Context, b registry.Subscriber) error
	Snapshot() registry.Snapshot
}

var _ Workers = (*registry.Registry)(nil)

// Workers are cluster-wide infrastructure, shared by every tenant: any
// authenticated key, read-only ones too, may list them. The answers name
// workers, pools, topics and counts, never a job or a tenant.

func (g *Gateway) snapshot() (registry.Snapshot, error) {
	if g.workers == nil {
		return registry.Snapshot{}, connect.NewError(connect.CodeUnimplemented, "this gateway keeps no worker registry")
	}
	return g.workers.Snapshot(), nil
}

// ListWorkers lists the workers heard from, by pool then id.
func (g *Gateway) ListWorkers(_ context.Context, req *cortexv1.ListWorkersRequest) (*cortexv1.ListWorkersResponse, error) {
	if p := req.GetPool(); p != "" && !bus.ValidToken(p) {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "pool %.80q is not valid: pool names are 1-64 characters of a-z, 0-9, - and _", p)
	}
	s, err := g.snapshot()
	if err != nil {
		return nil, err
	}
	res := &cortexv1.ListWorkersResponse{Workers: make([]*cortexv1.WorkerInfo, 0, len(s.Workers))}
	for _, w := range s.Workers {
		if req.GetPool() != "" && w.Pool != req.GetPool() {
			continue
		}
		res.Workers = append(res.Workers, workerInfo(w))
	}
	return res, nil
}

// ListPools sums the workers heard from by pool, and lists too, with no
// workers, the pools that routes lead to and no worker serves: their jobs
// wait for one.
func (g *Gateway) ListPools(context.Context, *cortexv1.ListPoolsRequest) (*cortexv1.ListPoolsResponse, error) {
	s, err := g.snapshot()
	if err != nil {
		return nil, err
	}
	res := &cortexv1.ListPoolsResponse{Pools: make([]*cortexv1.PoolInfo, len(s.Pools))}
	heard := map[string]bool{}
	for i, p := range s.Pools {
		heard[p.Name] = true
		res.Pools[i] = &cortexv1.PoolInfo{
			Pool:            p.Name,
			Workers:         uint32(p.Workers),
			DrainingWorkers: uint32(p.Draining),
			ActiveJobs:      uint32(p.Active),
			Capacity:        uint32(p.Capacity),
			Topics:          p.Topics,
		}
	}
	for _, pool := range g.router.Pools() {
		if !heard[pool] {
			res.Pools = append(res.Pools, &cortexv1.PoolInfo{Pool: pool, Topics: g.routedTo(pool)})
		}
	}
	slices.SortFunc(res.Pools, func(a, b *cortexv1.PoolInfo) int { return strings.Compare(a.GetPool(), b.GetPool()) })
	return res, nil
}

// routedTo lists the topics and patterns routed to pool.
func (g *Gateway) routedTo(pool string) []string {
	var out []string
	for _, t := range g.router.Topics() {
		if p, ok := g.router.Pool(strings.TrimSuffix(t, "*")); ok && p == pool {
			out = append(out, t)
		}
	}
	return out
}

func workerInfo(w registry.Worker) *cortexv1.WorkerInfo {
	state := cortexv1.WorkerState_WORKER_STATE_LIVE
	if w.State == registry.Draining {
		state = cortexv1.WorkerState_WORKER_STATE_DRAINING
	}
	return &cortexv1.WorkerInfo{
		WorkerId:          w.ID,
		Pool:              w.Pool,
		State:             state,
		ActiveJobs:        uint32(w.Active),
		MaxParallelJobs:   uint32(w.MaxParallel),
		CpuLoad:           w.CPULoad,
		Topics:            w.Topics,
		Capabilities:      w.Capabilities,
		Version:           w.Version,
		CompletedJobs:     w.Completed,
		FailedJobs:        w.Failed,
		LastHeartbeat:     timestamppb.New(w.LastBeat),
		HeartbeatInterval: durationpb.New(w.Interval),
		FirstSeen:         timestamppb.New(w.FirstSeen),
		MissedHeartbeats:  uint32(w.Missed),
	}
}

// DrainWorker asks a live worker to drain (admin keys only).
func (g *Gateway) DrainWorker(ctx context.Context, req *cortexv1.DrainWorkerRequest) (*cortexv1.DrainWorkerResponse, error) {
	if err := requireAdmin(ctx, "drain workers"); err != nil {
		return nil, err
	}
	id := req.GetWorkerId()
	if !bus.ValidToken(id) {
		return nil, connect.Errorf(connect.CodeInvalidArgument, "worker id %.80q is not valid: 1-64 characters of a-z, 0-9, - and _", id)
	}
	s, err := g.snapshot()
	if err != nil {
		return nil, err
	}
	for _, w := range s.Workers {
		if w.ID != id {
			continue
		}
		err := g.bus.Publish(bus.SubjectWorkerDrain, &cortexv1.BusPacket{Payload: &cortexv1.BusPacket_WorkerDrain{
			WorkerDrain: &cortexv1.WorkerDrain{WorkerId: id, By: principalFrom(ctx).key},
		}})
		if err != nil {
			g.log.Error("ask worker to drain", "worker_id", id, "err", err)
			return nil, connect.NewError(connect.CodeUnavailable, "the bus is unavailable; the worker was not asked, try again")
		}
		return &cortexv1.DrainWorkerResponse{Worker: workerInfo(w)}, nil
	}
	return nil, connect.Errorf(connect.CodeNotFound, "worker %s is not listed (see cortexctl workers): it never sent a heartbeat, or missed three", id)
}
