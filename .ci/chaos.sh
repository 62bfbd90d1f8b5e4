#!/usr/bin/env bash
# Chaos test: the components run as separate processes against a real
# redis-server (AOF on) and a separate NATS server; each of worker,
# scheduler, gateway, safety kernel, NATS and Redis is killed with SIGKILL
# and restarted in turn while 10,000 echo jobs are submitted. Afterwards
# every accepted job must be in exactly one terminal state; the test prints
# the counts. About 2-3 minutes on a 2-core machine.
#
#   bash .ci/chaos.sh                       # the full run, as CI runs it
#   CHAOS_JOBS=1000 bash .ci/chaos.sh       # smaller
#   CHAOS_KILLS=worker,nats bash .ci/chaos.sh
#
# See test/chaos/doc.go for every knob (CHAOS_SUBMIT, CHAOS_SETTLE,
# CHAOS_LOGDIR).
set -euo pipefail
cd "$(dirname "$0")/.."

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
go test -tags chaos -run TestChaos -v -count=1 -timeout 10m ./test/chaos/ </dev/null || rc=$?
echo "==> chaos test took $((SECONDS - start))s (exit $rc)"
exit $rc
