// Package bus owns everything that crosses NATS: the subject names and queue
// groups (the contract written down in docs/BUS_PROTOCOL.md), the BusPacket
// codec, and a small connection wrapper that drops and counts malformed
// packets. It knows nothing about jobs beyond their wire shape and must not
// import any service package.
package bus

import "strings"

// Subjects and queue groups. docs/BUS_PROTOCOL.md is the contract for each.
const (
	// SubjectJobSubmit carries JobRequest from the gateway to the scheduler.
	SubjectJobSubmit = "sys.job.submit"
	// SubjectJobResult carries JobResult from workers to the scheduler.
	SubjectJobResult = "sys.job.result"
	// SubjectSafetyCheck is the safety kernel's request/reply subject:
	// CheckRequest in, CheckResponse out.
	SubjectSafetyCheck = "sys.safety.check"
	// SubjectJobEvent carries JobEvent: every component publishes one after
	// each state change it makes; gateways fan them out to watchers.
	SubjectJobEvent = "sys.job.event"
	// SubjectJobCancel carries JobCancel to every worker.
	SubjectJobCancel = "sys.job.cancel"
	// SubjectSafetyDecision carries SafetyDecisionEvent: every decision a
	// kernel makes, for tail --decisions and the dashboard.
	SubjectSafetyDecision = "sys.safety.decision"
	// SubjectPolicyApply carries PolicyApply to every kernel; each replies
	// with a PolicyReply.
	SubjectPolicyApply = "sys.safety.policy.apply"
	// SubjectPolicyQuery carries PolicyQuery to one kernel (queue group
	// cortex-safety), answered with a PolicyReply.
	SubjectPolicyQuery = "sys.safety.policy.get"
	// SubjectPolicyStatus carries PolicyQuery to every kernel; each answers
	// with a PolicyReply holding its status.
	SubjectPolicyStatus = "sys.safety.policy.status"
	// SubjectBeatRequest carries BeatRequest to every worker: each sends a
	// heartbeat at once. (It is not under sys.heartbeat., where only
	// heartbeats go.)
	SubjectBeatRequest = "sys.worker.beat"
	// SubjectWorkerDrain carries WorkerDrain to every worker; the one it
	// names drains.
	SubjectWorkerDrain = "sys.worker.drain"
	// SubjectQueueHeads carries QueueHeads from every scheduler to the
	// others: the highest priority each holds queued per pool.
	SubjectQueueHeads = "sys.scheduler.queues"
	// SubjectHeartbeatAll matches every worker's heartbeat subject.
	SubjectHeartbeatAll = "sys.heartbeat.*"

	// QueueScheduler load-balances results and advisories across
	// schedulers.
	QueueScheduler = "cortex-scheduler"
	// QueueSafety load-balances checks across safety kernels.
	QueueSafety = "cortex-safety"

	subjectHeartbeatPrefix = "sys.heartbeat."
	subjectJobOutputPrefix = "sys.job.output."
	subjectJobPrefix       = "job."
)

// RuleFailClosed is the rule named in a DENY that no policy made: the
// safety kernel could not give a valid decision in time, so the job is
// denied (fail closed).
const RuleFailClosed = "fail-closed"

// HeartbeatSubject is the subject a worker publishes its Heartbeat on.
func HeartbeatSubject(workerID string) string { return subjectHeartbeatPrefix + workerID }

// JobOutputSubject carries JobOutput: the output of job id while it runs,
// from the worker running it to whoever follows it (core NATS, best
// effort; nothing is published to it unless a handler streams).
func JobOutputSubject(id string) string { return subjectJobOutputPrefix + id }

// JobSubject is the subject a job of the given topic is dispatched on when
// routed to pool: job.<pool>.<kind>, where kind is the topic without its
// "job." prefix (topic "job.echo" in pool "echo" goes to "job.echo.echo").
func JobSubject(pool, topic string) string {
	return subjectJobPrefix + pool + "." + strings.TrimPrefix(topic, subjectJobPrefix)
}

// PoolSubjects matches every job subject of one pool.
func PoolSubjects(pool string) string { return subjectJobPrefix + pool + ".>" }

// MaxPriority is the highest priority of a job (0, the default, is the
// lowest; higher runs first).
const MaxPriority = 9

// MaxWorkerSlots bounds the max parallel jobs of one worker.
const MaxWorkerSlots = 10000

// MaxQueueHeads bounds the pools of one QueueHeads packet.
const MaxQueueHeads = 1024

// ValidToken reports whether s can stand as one token of a subject (a pool
// name or a worker id): 1 to 64 characters of [a-z0-9_-].
func ValidToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// ValidTopic reports whether topic is a well-formed job topic: two to eight
// dot-separated tokens, each valid by ValidToken, e.g. "job.echo" or
// "sys.destroy". Whether the topic may run is the safety kernel's call.
func ValidTopic(topic string) bool {
	if len(topic) > 200 {
		return false
	}
	parts := strings.Split(topic, ".")
	if len(parts) < 2 || len(parts) > 8 {
		return false
	}
	for _, p := range parts {
		if !ValidToken(p) {
			return false
		}
	}
	return true
}
