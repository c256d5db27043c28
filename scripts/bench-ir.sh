#!/usr/bin/env bash
# Old build against new in instructions, not seconds: each chatd runs under
# valgrind's callgrind while the same flood case goes through it, and the
# server's instruction count (startup to shutdown) is printed. Instructions
# are close to repeatable whatever else the machine is doing, so this
# shows a move in the server's own work where bench-ab.sh's timings on a
# shared 2-core machine are noise. Batching still depends on timing (more
# lines per writev when the server is slow), so expect a few percent of
# spread, more with Redis in the loop: run it twice.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/bench-ir.sh OLD_CHATD NEW_CHATD [FLOOD]

Cases: single (one chatd) and linked (one chatd with --redis on a private
redis-server); flood -n 100 -s 10 -m 300 -b 64 against each, old and new
alternated. Needs valgrind (and redis-server for `linked`).
Environment: CASES (default "single linked").
USAGE
}
case ${1:-} in -h | --help | "") usage; exit 0 ;; esac
old=$1 new=$2
flood=${3:-target/release/flood}
cases=${CASES:-single linked}
command -v valgrind >/dev/null || { echo "bench-ir.sh: needs valgrind" >&2; exit 2; }
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
bench_workdir
redis_pid=
trap '[[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null; rm -rf "$work"' EXIT

# Waits (at most 60 s) until the log says `$2`.
wait_for() {
    for _ in $(seq 120); do
        grep -q "$2" "$1" && return 0
        sleep 0.5
    done
    echo "bench-ir.sh: never saw '$2' in $1" >&2
    cat "$1" >&2
    exit 1
}

run() { # build label, binary, case
    local label=$1 bin=$2 case=$3 port log extra=()
    port=$(free_port)
    log=$work/$label.$case.log
    if [[ $case == linked ]]; then
        redis-cli -p "$redis_port" flushall >/dev/null
        extra=(--redis "redis://127.0.0.1:$redis_port")
    fi
    valgrind --tool=callgrind --callgrind-out-file="$work/cg" \
        "$bin" --port "$port" --no-http --bans-file "$work/bans" --limit-exempt 127.0.0.0/8 \
        "${extra[@]}" >"$log" 2>&1 &
    local pid=$!
    if [[ $case == linked ]]; then wait_for "$log" "cluster link up"; else wait_for "$log" "listening"; fi
    local result
    # A failed verify is printed, not fatal: the count still says what ran.
    result=$("$flood" -p "$port" -n 100 -s 10 -m 300 -b 64 2>&1 | grep -E '^(delivered|verify)' | tr '\n' ' ') || true
    kill -INT "$pid"
    wait "$pid" || true
    local ir
    ir=$(grep -o 'Collected : [0-9]*' "$log" | grep -o '[0-9]*$')
    printf '%-7s %-4s %12s instructions  %s\n' "$case" "$label" "$ir" "$result"
}

if [[ $cases == *linked* ]]; then
    command -v redis-server >/dev/null || { echo "bench-ir.sh: needs redis-server" >&2; exit 2; }
    start_redis
fi
for case in $cases; do
    for round in 1 2; do
        run old "$old" "$case"
        run new "$new" "$case"
    done
done
