#!/usr/bin/env bash
# CPU per job of each component, as issue 6's figures were measured: the
# stack runs as separate processes (nats-server with JetStream on disk, the
# safety, scheduler, worker and gateway daemons, a redis-server with AOF
# everysec), `cortexctl bench` drives it, and the script prints each
# process's CPU time over the run (utime+stime from /proc/<pid>/stat;
# Redis's main thread from INFO cpu; the bench client's own from bash's
# time) divided by the jobs, and its peak resident memory (VmHWM).
#
#   bash tools/bench/cpu-per-job.sh                         # -n 20000 -c 4 --batch 200
#   bash tools/bench/cpu-per-job.sh -n 10000 -c 2 --batch 10 --rate 1000
#   PROFILE=/tmp/prof bash tools/bench/cpu-per-job.sh       # also a CPU profile per daemon, in that directory
#   WORKER_MAX_PARALLEL=1024 bash tools/bench/cpu-per-job.sh # the worker's slots (default: the daemon's 64)
#
# Linux only (it reads /proc); needs redis-server and redis-cli on PATH. It
# builds cortexctl and nats-server, uses free ports on 127.0.0.1 and removes
# everything it started when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

args=("$@")
if ((${#args[@]} == 0)); then args=(-n 20000 -c 4 --batch 200); fi
jobs=10000 # bench's default
for ((i = 0; i < ${#args[@]} - 1; i++)); do
	case ${args[i]} in -n | --jobs) jobs=${args[i + 1]} ;; esac
done

if [ -n "${PROFILE:-}" ]; then mkdir -p "$PROFILE" && PROFILE=$(cd "$PROFILE" && pwd); fi
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -n "${redis_port:-}" ]; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

echo "building cortexctl and nats-server" >&2
go build -o "$work/cortexctl" ./cmd/cortexctl
go build -o "$work/nats-server" github.com/nats-io/nats-server/v2

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly yes --appendfsync everysec \
	--dir "$work" --daemonize yes --logfile "$work/redis.log" >/dev/null
nats_port=$(free_port)
"$work/nats-server" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
declare -A pid=([nats-server]=$!)
for _ in $(seq 50); do
	redis-cli -p "$redis_port" ping >/dev/null 2>&1 && (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
	sleep 0.1
done

gateway_port=$(free_port)
common=(--insecure --nats-url "nats://127.0.0.1:$nats_port" --redis-url "redis://127.0.0.1:$redis_port" --log-level warn)
start() {
	local name=$1
	shift
	CORTEX_CPUPROFILE=${PROFILE:+$PROFILE/cpu-$name.pprof} "$work/cortexctl" "$@" "${common[@]}" >"$work/$name.log" 2>&1 &
	pids+=($!)
	pid[$name]=$!
}
start safety safety --metrics-listen ""
start scheduler scheduler --metrics-listen ""
start worker worker --pool echo --metrics-listen "" ${WORKER_MAX_PARALLEL:+--max-parallel "$WORKER_MAX_PARALLEL"}
start gateway gateway --listen "127.0.0.1:$gateway_port"
for _ in $(seq 100); do
	curl -fsS "http://127.0.0.1:$gateway_port/readyz" >/dev/null 2>&1 && break
	sleep 0.1
done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
redis_cpu() { redis-cli -p "$redis_port" info cpu | tr -d '\r' | awk -F: '/used_cpu_(user|sys)_main_thread/ {s += $2} END {print s}'; }
declare -A before
for name in "${!pid[@]}"; do before[$name]=$(cpu "${pid[$name]}"); done
redis_before=$(redis_cpu)
TIMEFORMAT='%U %S'
{ time "$work/cortexctl" bench --server "http://127.0.0.1:$gateway_port" "${args[@]}" 2>&4; } 4>&2 2>"$work/bench.time"
bench_cpu=$(tail -1 "$work/bench.time")
redis_after=$(redis_cpu)
hz=$(getconf CLK_TCK)
echo
printf '%-12s %10s %12s %14s\n' process "cpu (s)" "µs per job" "peak RSS (MB)"
for name in nats-server safety scheduler worker gateway; do
	ticks=$(($(cpu "${pid[$name]}") - ${before[$name]}))
	rss=$(awk '/^VmHWM:/ {print $2}' "/proc/${pid[$name]}/status")
	awk -v t="$ticks" -v hz="$hz" -v n="$jobs" -v name="$name" -v rss="$rss" 'BEGIN {printf "%-12s %10.2f %12.1f %14.0f\n", name, t / hz, t / hz * 1e6 / n, rss / 1024}'
done
awk -v a="$redis_before" -v b="$redis_after" -v n="$jobs" 'BEGIN {printf "%-12s %10.2f %12.1f\n", "redis-server", b - a, (b - a) * 1e6 / n}'
awk -v c="$bench_cpu" -v n="$jobs" 'BEGIN {split(c, t, " "); s = t[1] + t[2]; printf "%-12s %10.2f %12.1f\n", "bench", s, s * 1e6 / n}'
if [ -n "${PROFILE:-}" ]; then
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
	echo "profiles: $PROFILE/cpu-{safety,scheduler,worker,gateway}.pprof (go tool pprof -top -cum FILE)"
fi
