#!/usr/bin/env bash
# What cluster mode costs: the same flood cases against one chatd alone, one
# chatd with a Redis link, and two chatd instances sharing a chat through
# Redis with the clients split between them. Medians of RUNS runs, CPU of
# every process measured from /proc around each run.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-cluster.sh [OUT.md]

Runs on loopback, with a private redis-server on a free port:
  single    one chatd, no Redis                       (the baseline)
  linked    one chatd with --redis (publishes, nobody else listens)
  split     two chatd instances, clients dealt round-robin over both
for two flood cases each:
  fanout    100 clients, 10 senders x 2000 lines of 64 B (closed loop)
  open      100 clients, 10 senders, 2000 lines/s in total (latency)
and reports deliveries/s, latency, chatd CPU per delivery (all instances),
and Redis CPU per line sent. Needs redis-server and jq.
Environment: RUNS (default 3).
EOF
}
case ${1:-} in -h | --help) usage; exit 0 ;; esac
out=${1:-/dev/stdout}
runs=${RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"
tgt=$root/target/release
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
(cd "$root" && cargo build --release --bin chatd --bin flood >&2)
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

hz=$(getconf CLK_TCK)

start_redis
pids+=("$redis_pid")

start_chatd() { # extra args...; prints "pid port"
    local f=$work/chatd.$RANDOM
    "$tgt/chatd" --host 127.0.0.1 --port 0 --no-http $(limit_exempt "$tgt/chatd") "$@" </dev/null >"$f" 2>"$f.err" &
    local pid=$!
    for _ in $(seq 200); do
        grep -q '^ready' "$f" 2>/dev/null && break
        sleep 0.02
    done
    echo "$pid $(sed -n 's/^listening on .*://p' "$f")"
}

# Waits until every instance sees the others (a /who through each shows
# a user connected to another), so a run never starts on a half-linked cluster.
wait_linked() {
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)); do
        if grep -q "cluster link up" "$work"/chatd.*.err 2>/dev/null &&
            [[ $(grep -l "cluster link up" "$work"/chatd.*.err | wc -l) -ge $1 ]]; then
            return 0
        fi
        sleep 0.05
    done
    echo "cluster did not link up" >&2
    return 1
}

run_case() { # setup case run
    local setup=$1 case=$2 run=$3 a b pa pb pid_a pid_b
    rm -f "$work"/chatd.*
    case $setup in
        single) read -r pid_a pa < <(start_chatd) ;;
        linked) read -r pid_a pa < <(start_chatd --redis "redis://127.0.0.1:$redis_port" --node-id a) ;;
        split)
            read -r pid_a pa < <(start_chatd --redis "redis://127.0.0.1:$redis_port" --node-id a)
            read -r pid_b pb < <(start_chatd --redis "redis://127.0.0.1:$redis_port" --node-id b)
            ;;
    esac
    local servers=("$pid_a")
    [[ -n ${pid_b:-} ]] && servers+=("$pid_b")
    [[ $setup != single ]] && wait_linked "${#servers[@]}"
    local flags=(-n 100 -s 10 --json --timeout 10 --port "$pa")
    [[ $setup == split ]] && flags+=(--also-ports "$pb")
    case $case in
        fanout) flags+=(-m 2000) ;;
        open) flags+=(-m 400 --rate 2000) ;;
    esac
    local before=0 rbefore after=0 rafter p
    for p in "${servers[@]}"; do before=$((before + $(ticks "$p"))); done
    rbefore=$(ticks "$redis_pid")
    "$tgt/flood" "${flags[@]}" >"$work/$setup.$case.$run.json" 2>"$work/$setup.$case.$run.err" || true
    for p in "${servers[@]}"; do after=$((after + $(ticks "$p"))); done
    rafter=$(ticks "$redis_pid")
    for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    local f=$work/$setup.$case.$run.json
    if [[ -s $f ]]; then
        jq --argjson c "$(((after - before)))" --argjson r "$(((rafter - rbefore)))" --argjson hz "$hz" \
            '. + {chatd_cpu_s: ($c / $hz), redis_cpu_s: ($r / $hz)}' "$f" >"$f.x" && mv "$f.x" "$f"
        jq -r --arg s "$setup $case run $run" \
            '"\($s): ok=\(.ok) \(.deliveries_per_s|floor) deliveries/s p50 \(.latency_us.p50) us p99 \(.latency_us.p99) us"' "$f" >&2
    else
        echo "$setup $case run $run: failed: $(tail -1 "$work/$setup.$case.$run.err")" >&2
    fi
}

for setup in single linked split; do
    for case in fanout open; do
        for run in $(seq "$runs"); do run_case "$setup" "$case" "$run"; done
    done
done

num() { awk -v v="$1" -v d="${2:-2}" 'BEGIN { if (v == "") print "—"; else printf "%.*f\n", d, v }'; }

{
    echo "## chatd alone and as a two-instance cluster"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M') UTC, medians of $runs runs; $(nproc) CPUs; $(redis-server --version | awk '{print $1, $2, $3}')."
    echo "Flood: 100 clients, 10 senders, 64 B lines; in \`split\` the clients (and the"
    echo "senders) are dealt round-robin over two instances, so every line reaches half of its"
    echo "receivers through Redis: numbered, kept and published once per batch by Redis, delivered by each instance."
    echo
    echo "| setup | fan-out deliveries/s | chatd CPU per delivery | Redis CPU per line sent | open loop 2000/s p50 | p99 |"
    echo "|---|---|---|---|---|---|"
    for setup in single linked split; do
        d=$(med "$setup" fanout '.deliveries_per_s')
        cpu=$(med "$setup" fanout '.chatd_cpu_s / .deliveries * 1e6')
        rcpu=$(med "$setup" fanout 'if .redis_cpu_s > 0 then .redis_cpu_s / .lines_sent * 1e6 else 0 end')
        p50=$(med "$setup" open '.latency_us.p50 / 1000')
        p99=$(med "$setup" open '.latency_us.p99 / 1000')
        [[ $setup == single ]] && rcpu=
        echo "| $setup | $(num "$(awk -v d="$d" 'BEGIN{if(d!="")print d/1e6}')") M | $(num "$cpu" 3) µs | $([[ -n $rcpu ]] && echo "$(num "$rcpu" 1) µs" || echo —) | $(num "$p50") ms | $(num "$p99") ms |"
    done
    echo
    echo "Reproduce: \`scripts/bench-cluster.sh\` (RUNS=$runs)."
} >"$out"
echo "wrote ${out}" >&2
