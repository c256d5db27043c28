#!/usr/bin/env bash
# What TLS costs: the same flood cases against one chatd release build,
# plain (the line port) and TLS (--tls-port, flood --tls), alternated in the
# same run, plus idle TLS connections. See BENCHMARKS.md ("TLS").
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/bench-tls.sh [CHATD] [FLOOD]

CHATD and FLOOD default to target/release/chatd and target/release/flood.
Cases (bench-ab.sh's): fanout100 (100 clients, 10 senders x 2000 lines of
64 B), open2000 (open loop, 2000 lines/s into 100 clients), idle10000
(10 000 idle connections, server RSS per connection). Each runs plain and
over TLS, alternated. The server runs with --max-per-ip 0 --max-connects 0:
every flood connection comes from loopback.
Environment: RUNS (default 5), CASES (default all three),
EXTRA (more chatd flags for both, e.g. the PROXY/limits rows).
USAGE
}

case ${1:-} in -h | --help) usage; exit 0 ;; esac
chatd=${1:-target/release/chatd}
flood=${2:-target/release/flood}
runs=${RUNS:-5}
cases=${CASES:-fanout100 open2000 idle10000}
command -v jq >/dev/null || { echo "bench-tls.sh: needs jq" >&2; exit 2; }

bench_workdir

case_args() {
    case $1 in
        fanout100) echo "-n 100 -s 10 -m 2000 -b 64" ;;
        open2000) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
        idle10000) echo "--idle 10000 --src-addrs 4" ;;
        *) echo "bench-tls.sh: unknown case $1" >&2; exit 2 ;;
    esac
}

for case in $cases; do
    for run in $(seq "$runs"); do
        for mode in plain tls; do
            prefix="listening on" extra="--timeout 10 $(case_args "$case")"
            [[ $mode == tls ]] && prefix="tls on" extra="$extra --tls"
            # shellcheck disable=SC2086 # EXTRA holds flags
            measure "$work/$case.$mode.$run.json" "$case $mode run $run" "$prefix" "$extra" \
                "$chatd" --host 127.0.0.1 --port 0 --http-port 0 --tls-port 0 --https-port 0 \
                --tls-self-signed -q --max-clients 20000 --max-per-ip 0 --max-connects 0 ${EXTRA:-}
        done
    done
done

echo "| case | mode | runs ok | deliveries/s | p99 latency | server CPU per delivery | server RSS per connection |"
echo "|---|---|---|---|---|---|---|"
for case in $cases; do
    for mode in plain tls; do
        files=("$work/$case.$mode".*.json)
        [[ -e ${files[0]} ]] || { echo "| $case | $mode | 0 | | | | |"; continue; }
        jq -rs --arg c "$case" --arg m "$mode" '
            def r(f): map(f) | sort | "\(.[length / 2 | floor]) (\(min)–\(max))";
            if $c == "idle10000" then
              "| \($c) | \($m) | \(map(select(.ok)) | length)/\(length) | | | | \(r(.server.rss_per_conn_bytes / 1024 | . * 100 | floor / 100)) KiB |"
            else
              "| \($c) | \($m) | \(map(select(.ok)) | length)/\(length) | \(r(.deliveries_per_s / 10000 | floor / 100)) M | \(r(.latency_us.p99 / 1000 | . * 10 | floor / 10)) ms | \(r(.server.cpu_us_per_delivery | . * 1000 | floor / 1000)) µs | |"
            end' "${files[@]}"
    done
done
