#!/usr/bin/env bash
# Old build against new, in the same run: alternates the two chatd binaries
# run by run (old, new, old, new, ...), each run on a fresh process, with
# the same flood, for bench-peers.sh's fan-out and open-loop cases and the
# WebSocket fan-out. For a redesign that must not move the numbers.
set -euo pipefail
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/bench-ab.sh OLD_CHATD NEW_CHATD [FLOOD]

OLD_CHATD and NEW_CHATD are two release builds of chatd, e.g. main's built
into a separate directory first:

  git -C . worktree add /tmp/old main   # or: git archive main | tar x -C /tmp/old
  (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old/target cargo build --release)
  cargo build --release
  scripts/bench-ab.sh /tmp/old/target/release/chatd target/release/chatd

FLOOD defaults to target/release/flood. Cases (bench-peers.sh's flags):

  fanout100   100 clients, 10 senders x 2000 lines of 64 B (closed loop)
  fanout1000  1000 clients, 1 sender x 1000 lines of 64 B
  open2000    open loop, 2000 lines/s in total into 100 clients
  ws100       fanout100 over WebSocket (flood --ws on the web port)

Prints one line per run and a markdown table per build: the median run's
figure and, in brackets, the range.
Environment: RUNS (default 5), CASES (default all of the above), NEW_ARGS
(flags for the new build only, e.g. ones the old one does not know).
Loads both cores: run it on a quiet machine.
USAGE
}

case ${1:-} in -h | --help | "") usage; exit 0 ;; esac
old=$1 new=$2
flood=${3:-target/release/flood}
runs=${RUNS:-5}
cases=${CASES:-fanout100 fanout1000 open2000 ws100}
command -v jq >/dev/null || { echo "bench-ab.sh: needs jq" >&2; exit 2; }

bench_workdir

case_args() {
    case $1 in
        fanout100 | ws100) echo "-n 100 -s 10 -m 2000 -b 64" ;;
        fanout1000) echo "-n 1000 -s 1 -m 1000 -b 64" ;;
        open2000) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
        *) echo "bench-ab.sh: unknown case $1" >&2; exit 2 ;;
    esac
}

for case in $cases; do
    for run in $(seq "$runs"); do
        for build in old new; do
            bin=$old
            [[ $build == new ]] && bin=$new
            args=()
            # shellcheck disable=SC2206 # NEW_ARGS holds flags
            [[ $build == new ]] && args=(${NEW_ARGS:-})
            prefix="listening on" extra="--timeout 5 $(case_args "$case")"
            [[ $case == ws100 ]] && prefix="http on" extra="$extra --ws"
            measure "$work/$case.$build.$run.json" "$case $build run $run" "$prefix" "$extra" \
                "$bin" --host 127.0.0.1 --port 0 --http-port 0 -q --max-clients 20000 \
                $(limit_exempt "$bin") "${args[@]}"
        done
    done
done

echo "| case | build | runs ok | deliveries/s | p99 latency | server CPU per delivery |"
echo "|---|---|---|---|---|---|"
for case in $cases; do
    for build in old new; do
        files=("$work/$case.$build".*.json)
        [[ -e ${files[0]} ]] || { echo "| $case | $build | 0 | | | |"; continue; }
        jq -rs --arg c "$case" --arg b "$build" '
            def r(f): map(f) | sort | "\(.[length / 2 | floor]) (\(min)–\(max))";
            "| \($c) | \($b) | \(map(select(.ok)) | length)/\(length) | \(r(.deliveries_per_s / 10000 | floor / 100)) M | \(r(.latency_us.p99 / 1000 | . * 10 | floor / 10)) ms | \(r(.server.cpu_us_per_delivery | . * 1000 | floor / 1000)) µs |"' \
            "${files[@]}"
    done
done
