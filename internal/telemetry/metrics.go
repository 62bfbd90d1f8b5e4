package telemetry

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is CortexOS's Prometheus registry (its own, not the global one)
// and the metrics the components record in it. Each component records
// what it does itself, so that with several instances Prometheus sums
// them: the gateway counts submits, the scheduler denials, dispatches,
// final failures and reconciler actions, workers completions, kernels
// decisions. A nil *Metrics records nothing.
type Metrics struct {
	reg *prometheus.Registry

	jobsSubmitted    *prometheus.CounterVec
	jobsCompleted    *prometheus.CounterVec
	jobsFailed       *prometheus.CounterVec
	jobsDenied       *prometheus.CounterVec
	jobsCancelled    *prometheus.CounterVec
	submitToDispatch *prometheus.HistogramVec
	submitToResult   *prometheus.HistogramVec
	safetyDecisions  *prometheus.CounterVec
	safetyLatency    prometheus.Histogram
	// decides registers safetyLatency at the first decision: a plain
	// histogram is exported even when empty, and only kernels decide.
	decides           sync.Once
	reconcilerActions *prometheus.CounterVec
	handlerSeconds    *prometheus.HistogramVec
}

// latencyBuckets span 100 µs to 60 s.
var latencyBuckets = prometheus.ExponentialBucketsRange(0.0001, 60, 18)

// NewMetrics returns a registry with every CortexOS metric and the Go
// runtime and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		jobsSubmitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_jobs_submitted_total", Help: "Jobs the gateway accepted, by topic.",
		}, []string{"topic"}),
		jobsCompleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_jobs_completed_total", Help: "Jobs recorded COMPLETED, by topic and pool.",
		}, []string{"topic", "pool"}),
		jobsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_jobs_failed_total", Help: "Jobs that ended FAILED or TIMEOUT with no attempt left, by topic, pool and state.",
		}, []string{"topic", "pool", "state"}),
		jobsDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_jobs_denied_total", Help: "Jobs recorded DENIED, by topic and rule: by the safety gate, or by a person who rejected a job the rule held for approval.",
		}, []string{"topic", "rule"}),
		jobsCancelled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_jobs_cancelled_total", Help: "Jobs recorded CANCELLED (by a client, or because an OpenAI-compatible client hung up), by topic.",
		}, []string{"topic"}),
		submitToDispatch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cortex_job_submit_to_dispatch_seconds", Help: "Time from submit to DISPATCHED, by pool.", Buckets: latencyBuckets,
		}, []string{"pool"}),
		submitToResult: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cortex_job_submit_to_result_seconds", Help: "Time from submit to a recorded result (COMPLETED), by topic and pool.", Buckets: latencyBuckets,
		}, []string{"topic", "pool"}),
		safetyDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_safety_decisions_total", Help: "Safety decisions made by the kernel, by decision and rule.",
		}, []string{"decision", "rule"}),
		safetyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "cortex_safety_decision_seconds", Help: "Time the kernel took for one decision.",
			Buckets: prometheus.ExponentialBucketsRange(0.000001, 0.1, 16),
		}),
		reconcilerActions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cortex_reconciler_actions_total", Help: "What the reconciler did: redrive (a PENDING job handed on again), expire (an attempt whose lease ran out), dead_letter (a job delivered too often).",
		}, []string{"action"}),
		handlerSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cortex_handler_seconds", Help: "Time a worker's plugin took for one attempt, by topic and outcome (ok, error, timeout, cancelled, panic).", Buckets: latencyBuckets,
		}, []string{"topic", "outcome"}),
	}
	m.reg.MustRegister(m.jobsSubmitted, m.jobsCompleted, m.jobsFailed, m.jobsDenied, m.jobsCancelled, m.submitToDispatch, m.submitToResult,
		m.safetyDecisions, m.reconcilerActions, m.handlerSeconds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Register adds a component's own collector (gauges read on scrape).
func (m *Metrics) Register(c prometheus.Collector) {
	if m != nil {
		m.reg.MustRegister(c)
	}
}

// Submitted counts a job the gateway accepted.
func (m *Metrics) Submitted(topic string) {
	if m != nil {
		m.jobsSubmitted.WithLabelValues(topic).Inc()
	}
}

// Completed counts a job recorded COMPLETED created at created.
func (m *Metrics) Completed(topic, pool string, created, now time.Time) {
	if m != nil {
		m.jobsCompleted.WithLabelValues(topic, pool).Inc()
		m.submitToResult.WithLabelValues(topic, pool).Observe(now.Sub(created).Seconds())
	}
}

// Failed counts a job that ended in state (FAILED or TIMEOUT) for good.
func (m *Metrics) Failed(topic, pool, state string) {
	if m != nil {
		m.jobsFailed.WithLabelValues(topic, pool, state).Inc()
	}
}

// ObserveHandler records one plugin call (the worker's handler middleware
// calls it): its topic, outcome and duration.
func (m *Metrics) ObserveHandler(topic, outcome string, took time.Duration) {
	if m != nil {
		m.handlerSeconds.WithLabelValues(topic, outcome).Observe(took.Seconds())
	}
}

// Cancelled counts a job recorded CANCELLED.
func (m *Metrics) Cancelled(topic string) {
	if m != nil {
		m.jobsCancelled.WithLabelValues(topic).Inc()
	}
}

// Denied counts a job recorded DENIED by rule: by the safety gate, or by
// a person who rejected what the rule held for approval.
func (m *Metrics) Denied(topic, rule string) {
	if m != nil {
		m.jobsDenied.WithLabelValues(topic, rule).Inc()
	}
}

// Dispatched observes a job DISPATCHED to pool, created at created.
func (m *Metrics) Dispatched(pool string, created, now time.Time) {
	if m != nil {
		m.submitToDispatch.WithLabelValues(pool).Observe(now.Sub(created).Seconds())
	}
}

// Decided counts a safety decision and how long it took.
func (m *Metrics) Decided(decision, rule string, took time.Duration) {
	if m != nil {
		m.decides.Do(func() { m.reg.MustRegister(m.safetyLatency) })
		m.safetyDecisions.WithLabelValues(decision, rule).Inc()
		m.safetyLatency.Observe(took.Seconds())
	}
}

// Reconciled counts a reconciler action.
func (m *Metrics) Reconciled(action string) {
	if m != nil {
		m.reconcilerActions.WithLabelValues(action).Inc()
	}
}

// Dropped registers a counter of malformed packets a component's bus
// connection dropped, read on scrape. A second component of the same name
// in one process is not counted twice: the first one's counter stays.
func (m *Metrics) Dropped(component string, dropped func() uint64) {
	if m != nil {
		_ = m.reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "cortex_bus_malformed_packets_dropped_total", Help: "Packets dropped because they did not decode or did not belong on their subject.",
			ConstLabels: prometheus.Labels{"component": component},
		}, func() float64 { return float64(dropped()) }))
	}
}

// PoolStat is one pool as a scheduler sees it, for the pool gauges.
type PoolStat struct {
	Pool     string
	Workers  int
	Capacity int
	Queued   int
}

// Pools registers the per-pool gauges (live workers, their capacity, jobs
// waiting in the queue), read from stats on scrape; the first scheduler of
// a process has them.
func (m *Metrics) Pools(stats func() []PoolStat) {
	if m != nil {
		_ = m.reg.Register(&poolCollector{stats: stats})
	}
}

var (
	poolWorkers  = prometheus.NewDesc("cortex_pool_workers", "Live workers of a pool.", []string{"pool"}, nil)
	poolCapacity = prometheus.NewDesc("cortex_pool_capacity", "Jobs the live workers of a pool may run at once.", []string{"pool"}, nil)
	poolQueued   = prometheus.NewDesc("cortex_pool_queue_depth", "Jobs waiting in the scheduler's queue for a pool.", []string{"pool"}, nil)
)

type poolCollector struct{ stats func() []PoolStat }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolWorkers
	ch <- poolCapacity
	ch <- poolQueued
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.stats() {
		ch <- prometheus.MustNewConstMetric(poolWorkers, prometheus.GaugeValue, float64(p.Workers), p.Pool)
		ch <- prometheus.MustNewConstMetric(poolCapacity, prometheus.GaugeValue, float64(p.Capacity), p.Pool)
		ch <- prometheus.MustNewConstMetric(poolQueued, prometheus.GaugeValue, float64(p.Queued), p.Pool)
	}
}
