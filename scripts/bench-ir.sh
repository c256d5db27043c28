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
work=$(mktemp -d)
redis_pid=
cleanup() {
    [[ -n $redis_pid ]] && kill "$redis_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

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
        redis-cli -p "$rport" flushall >/dev/null
        extra=(--redis "redis://127.0.0.1:$rport")
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
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
for case in $cases; do
    for round in 1 2; do
        run old "$old" "$case"
        run new "$new" "$case"
    done
done
