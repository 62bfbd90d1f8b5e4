#!/usr/bin/env bash
# A throwaway Redis Cluster of three masters (no replicas) on 127.0.0.1, for
# the store's cluster tests (internal/store/cluster_test.go).
#
#   eval "$(.ci/redis-cluster.sh)"      # start it, or reuse a healthy one
#   go test -count=1 -run 'Cluster|OneSlot' ./internal/store
#   .ci/redis-cluster.sh stop           # shut the nodes down, remove the dir
#
# Modes:
#   start (default)  start the cluster (or reuse it when it is already up and
#                    healthy) and print `export CORTEX_TEST_REDIS_CLUSTER=...`
#   env              print the export line for a cluster that is up and
#                    healthy; fail otherwise
#   status           say whether the cluster is up and healthy (exit 0) or not
#   stop             shut down this script's nodes and remove their directory
#
# Settings (environment):
#   REDIS_CLUSTER_PORTS    the masters' ports, at least three
#                          (default "7001 7002 7003")
#   REDIS_CLUSTER_DIR      where the nodes keep their files
#                          (default ${TMPDIR:-/tmp}/cortex-redis-cluster-<first port>)
#   REDIS_CLUSTER_TIMEOUT  seconds each wait may take (default 30)
#
# Only the export line goes to stdout, so `eval "$(...)"` works; progress
# and errors go to stderr. Every wait is bounded. The script only ever stops
# redis-servers it started itself: a node is this script's when its
# `CONFIG GET dir` is REDIS_CLUSTER_DIR. A port held by anything else is an
# error, not something to kill.
set -euo pipefail

mode=${1:-start}
read -r -a ports <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
timeout_s=${REDIS_CLUSTER_TIMEOUT:-30}
dir=${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/cortex-redis-cluster-${ports[0]:-7001}}
marker=.cortex-redis-cluster # in dir: the dir is this script's to remove

say() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

if ((${#ports[@]} < 3)); then
	die "REDIS_CLUSTER_PORTS needs at least three ports (a cluster needs three masters), got: ${ports[*]:-none}"
fi
for p in "${ports[@]}"; do
	if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 55535)); then
		die "bad port $p (the cluster bus uses port+10000)"
	fi
done
if ! [[ $timeout_s =~ ^[0-9]+$ ]] || ((timeout_s < 1)); then
	die "bad REDIS_CLUSTER_TIMEOUT $timeout_s"
fi
case $dir in
/* | ./* | ../*) ;;
*) dir=./$dir ;;
esac

# cli runs redis-cli against a port, bounded in time.
cli() {
	local p=$1
	shift
	timeout 5 redis-cli -h 127.0.0.1 -p "$p" "$@" 2>/dev/null
}

# info_field prints one field of a node's CLUSTER INFO.
info_field() {
	cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

# real_dir is dir with symlinks resolved ("" when it does not exist).
real_dir() { (cd "$dir" 2>/dev/null && pwd -P) || true; }

# ours reports whether the redis-server on port $1 is one this script started
# in dir.
ours() {
	local want got
	want=$(real_dir)
	[ -n "$want" ] || return 1
	got=$(cli "$1" config get dir | tr -d '\r' | sed -n 2p || true)
	[ "$got" = "$want" ]
}

answers() { [ "$(cli "$1" ping)" = PONG ]; }

# healthy reports whether every node is ours, agrees the cluster is ok and
# knows all the others.
healthy() {
	local p
	for p in "${ports[@]}"; do
		ours "$p" || return 1
		[ "$(info_field "$p" cluster_state)" = ok ] || return 1
		[ "$(info_field "$p" cluster_slots_ok)" = 16384 ] || return 1
		[ "$(info_field "$p" cluster_known_nodes)" = "${#ports[@]}" ] || return 1
	done
}

print_env() {
	local addrs="" p
	for p in "${ports[@]}"; do addrs+="${addrs:+,}127.0.0.1:$p"; done
	printf 'export CORTEX_TEST_REDIS_CLUSTER=%s\n' "$addrs"
}

# running reports whether process $1 is alive: not gone, and not a zombie
# waiting for whoever adopted the daemon to reap it.
running() {
	local state
	state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1 || true)
	if [ -z "$state" ]; then
		# No /proc (or the process is gone): ask kill.
		[ ! -d /proc ] && kill -0 "$1" 2>/dev/null
		return
	fi
	[ "$state" != Z ] && [ "$state" != X ]
}

# stop_nodes shuts down this script's nodes and removes dir.
stop_nodes() {
	local p pid deadline
	for p in "${ports[@]}"; do
		if ! answers "$p"; then
			continue
		fi
		if ! ours "$p"; then
			say "port $p: a redis-server that is not this script's (its dir is not $dir): left alone"
			continue
		fi
		pid=$(cli "$p" info server | tr -d '\r' | sed -n 's/^process_id://p' || true)
		say "stop node 127.0.0.1:$p (pid $pid)"
		cli "$p" shutdown nosave >/dev/null || true
		deadline=$((SECONDS + timeout_s))
		while [ -n "$pid" ] && running "$pid"; do
			if ((SECONDS >= deadline)); then
				say "node 127.0.0.1:$p (pid $pid) did not shut down in ${timeout_s}s: kill it"
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
	done
	if [ -d "$dir" ]; then
		if [ -e "$dir/$marker" ]; then
			rm -rf -- "$dir"
		else
			say "$dir was not made by this script (no $marker in it): not removed"
		fi
	fi
}

install_redis() {
	if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
		return
	fi
	say "apt-get install redis-server"
	local sudo=""
	if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
	timeout 300 $sudo apt-get update -qq >/dev/null
	timeout 300 $sudo env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
	if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
		die "redis-server or redis-cli still missing after apt-get install"
	fi
}

# wait_for runs "$@" until it succeeds, for at most timeout_s seconds.
wait_for() {
	local what=$1 deadline=$((SECONDS + timeout_s))
	shift
	until "$@"; do
		if ((SECONDS >= deadline)); then
			say "timed out after ${timeout_s}s waiting for $what"
			return 1
		fi
		sleep 0.2
	done
}

all_answer() {
	local p
	for p in "${ports[@]}"; do answers "$p" || return 1; done
}

# start_failed reports why start failed, shows the nodes' logs, takes down
# what was started and exits.
start_failed() {
	say "start failed: $*"
	local log
	for log in "$dir"/redis-*.log; do
		[ -e "$log" ] || continue
		say "--- tail of $log"
		tail -n 5 -- "$log" >&2 || true
	done
	stop_nodes
	exit 1
}

start() {
	install_redis
	if healthy; then
		say "cluster on ports ${ports[*]} is already up (dir $dir)"
		print_env
		return
	fi
	# Anything of ours that is up is a cluster half made, or broken: start over.
	stop_nodes
	local p
	for p in "${ports[@]}"; do
		if answers "$p" || (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			die "port $p is in use by another process: pick other ports with REDIS_CLUSTER_PORTS"
		fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null; then
			die "port $((p + 10000)) (the cluster bus of $p) is in use by another process: pick other ports with REDIS_CLUSTER_PORTS"
		fi
	done

	# stop removes a dir with the marker in it: never mark someone else's.
	if [ -d "$dir" ] && [ ! -e "$dir/$marker" ] && [ -n "$(ls -A -- "$dir")" ]; then
		die "$dir exists and is not this script's: set REDIS_CLUSTER_DIR to a new or empty directory"
	fi
	mkdir -p -- "$dir"
	: >"$dir/$marker"
	local real
	real=$(real_dir)
	# From here on, a failure takes down what was started.
	for p in "${ports[@]}"; do
		say "start node 127.0.0.1:$p"
		redis-server --port "$p" --bind 127.0.0.1 \
			--cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
			--dir "$real" --logfile "$real/redis-$p.log" --pidfile "$real/redis-$p.pid" \
			--save '' --appendonly no --daemonize yes </dev/null >&2 ||
			start_failed "redis-server on port $p did not start"
	done
	wait_for "the nodes to answer PING" all_answer || start_failed "the nodes did not come up"

	local addrs=()
	for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
	say "cluster create ${addrs[*]}"
	timeout "$timeout_s" redis-cli --cluster create "${addrs[@]}" \
		--cluster-replicas 0 --cluster-yes </dev/null >&2 ||
		start_failed "redis-cli --cluster create failed"
	wait_for "cluster_state:ok on every node" healthy || start_failed "the cluster did not become healthy"
	say "cluster is up: ${addrs[*]} (dir $real)"
	print_env
}

case $mode in
start) start ;;
env)
	healthy || die "no healthy cluster on ports ${ports[*]}: run $0 start"
	print_env
	;;
status)
	if healthy; then
		say "up and healthy: ports ${ports[*]}, dir $dir"
	else
		say "not up (or not healthy): ports ${ports[*]}, dir $dir"
		exit 1
	fi
	;;
stop) stop_nodes ;;
*) die "usage: $0 [start|env|status|stop]" ;;
esac
