#!/usr/bin/env bash
# The process-level tests, which kill servers with SIGKILL while jobs are
# submitted and then check that every accepted job is in exactly one
# terminal state (they print the counts):
#
# chaos (the default): the components run as separate processes against a
# real redis-server (AOF on) and a separate NATS server; each of worker,
# scheduler, gateway, safety kernel, NATS and Redis is killed and restarted
# in turn while 10,000 jobs are submitted (job.echo, every 20th a 2s
# job.sleep). It also fails when under 90% of the jobs are accepted, when a
# job ran without an ALLOW safety verdict, when a kill or restart does not
# work, or when a component exits without being killed. About 1 minute on a
# 2-core machine (measured 51-64s, building included).
#
# multinode: a 3-node NATS cluster (streams with 3 replicas) and a 3-master
# Redis Cluster (AOF on); the NATS node leading the job stream and a Redis
# master are killed and brought back. About 1 minute.
#
#   bash .ci/chaos.sh                       # the chaos run, as CI runs it
#   bash .ci/chaos.sh multinode             # the multinode run, as CI runs it
#   CHAOS_JOBS=1000 bash .ci/chaos.sh       # smaller
#   CHAOS_KILLS=worker,nats bash .ci/chaos.sh
#
# See test/chaos/doc.go and test/multinode/doc.go for every knob.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=${1:-chaos}
case $suite in
chaos) run=TestChaos ;;
multinode) run=TestMultiNode ;;
*)
	echo "usage: $0 [chaos|multinode]" >&2
	exit 2
	;;
esac

export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

if ! command -v redis-server >/dev/null; then
	echo "==> apt-get install redis-server"
	sudo=""
	if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
	$sudo apt-get update -qq >/dev/null
	$sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
echo "==> $(redis-server --version)"
echo "==> $(go version)"

start=$SECONDS
rc=0
go test -tags "$suite" -run "$run" -v -count=1 -timeout 10m "./test/$suite/" </dev/null || rc=$?
echo "==> $suite test took $((SECONDS - start))s (exit $rc)"
exit $rc
