// Package chaos holds the process-level chaos test of CortexOS: the
// components run as separate processes against a real redis-server (AOF on)
// and a separate NATS server, and are killed with SIGKILL and restarted one
// at a time while jobs are in flight. The jobs are job.echo, and every 20th
// a job.sleep of 2s, so that some are running when a worker dies.
//
// The test fails unless:
//   - at least 90% of the submitted jobs were accepted (answered with a job
//     id), and none of the accepted ones is lost: each is in exactly one
//     terminal state, a COMPLETED one with its output, and no idempotency
//     key got two job ids;
//   - every job that ran (COMPLETED, or with a worker recorded) has an
//     ALLOW safety verdict for the attempt that ran (fail-closed);
//   - every kill and restart worked, and no component exited without
//     being killed (each such exit is named, with the tail of its log).
//
// The test is behind the build tag chaos, so a plain `go test ./...` does not
// run it:
//
//	go test -tags chaos -run TestChaos -v -timeout 10m ./test/chaos/
//
// or .ci/chaos.sh, which installs redis-server first. It needs redis-server
// on PATH and builds cortexctl and nats-server itself. Environment:
//
//	CHAOS_JOBS     jobs to submit (default 10000)
//	CHAOS_KILLS    what to kill -9 and restart, in turn (default
//	               "worker,scheduler,gateway,safety,nats,redis"; "none" for a
//	               run without kills)
//	CHAOS_SUBMIT   how long submitting takes (default 40s)
//	CHAOS_SETTLE   how long to wait afterwards for every job to end (default 90s)
//	CHAOS_LOGDIR   keep the processes' logs there instead of a temporary folder
package chaos
