#!/usr/bin/env bash
# Does room history slow the fan-out? chatd with --history 100 next to
# --history 0, in the same run, alternating, on the flood cases of
# bench-peers.sh: fan-out N=100/S=10, fan-out N=1000/S=1, open loop 2000
# lines/s. Prints a Markdown table of medians (RUNS per cell, default 3).
#
# Usage: scripts/bench-history.sh [RUNS]      (needs jq; about 1 minute)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
tgt=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
spid=
cleanup() {
    [[ -n $spid ]] && kill "$spid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "building chatd and flood (release)..." >&2
(cd "$root" && cargo build --release --quiet --bin chatd --bin flood)

case_args() {
    case $1 in
        fanout100) echo "-n 100 -s 10 -m 2000 -b 64" ;;
        fanout1000) echo "-n 1000 -s 1 -m 1000 -b 64" ;;
        open2000) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
    esac
}

cases="fanout100 fanout1000 open2000"
settings="0 100"
start=$(date +%s)
for run in $(seq "$runs"); do
    for case in $cases; do
        for h in $settings; do
            # Every client comes from loopback, which the per-address
            # limits exempt by default.
            "$tgt/chatd" --host 127.0.0.1 --port 0 --no-http -q --history "$h" \
                </dev/null >"$work/srv.out" 2>"$work/srv.err" &
            spid=$!
            port=
            for _ in $(seq 100); do
                port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$work/srv.out")
                [[ -n $port ]] && break
                sleep 0.05
            done
            f="$work/$h.$case.$run.json"
            # shellcheck disable=SC2046 # the case's flags are meant to split
            timeout 300 "$tgt/flood" --port "$port" --pid "$spid" --json --timeout 5 \
                $(case_args "$case") >"$f" 2>"$work/$h.$case.$run.err" || true
            kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
            jq -r --arg s "--history $h $case run $run" \
                '"\($s): ok=\(.ok) \(.deliveries_per_s|floor) deliveries/s p50 \(.latency_us.p50) us"' \
                "$f" >&2 || { rm -f "$f"; echo "--history $h $case run $run: failed: $(tail -1 "$work/$h.$case.$run.err")" >&2; }
        done
    done
done

med() {
    for f in "$work/$1.$2".*.json; do
        if [[ -s $f ]]; then jq -r "($3) // empty" "$f"; fi
    done | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'
}
row() {
    local label=$1 case=$2 expr=$3 fmt=$4 line a b
    line="| $label |"
    for h in $settings; do
        v=$(med "$h" "$case" "$expr")
        line+=" $(awk -v v="$v" -v f="$fmt" 'BEGIN {
            if (v == "") print "-";
            else if (f == "rate") printf(v >= 1e6 ? "%.2f M" : "%.0f k", v >= 1e6 ? v/1e6 : v/1e3);
            else if (f == "us") printf("%.2f ms", v/1000);
            else printf("%.3f µs", v) }') |"
    done
    a=$(med 100 "$case" "$expr"); b=$(med 0 "$case" "$expr")
    line+=" $(awk -v a="$a" -v b="$b" 'BEGIN {if (a != "" && b > 0) printf "%.2f", a/b; else print "-"}') |"
    echo "$line"
}
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), medians of $runs runs, alternating; $(nproc) CPUs; whole run: $(($(date +%s) - start)) s."
echo
echo "| case | --history 0 | --history 100 | 100 ÷ 0 |"
echo "|---|---|---|---|"
cpu='.server.cpu_us_per_delivery'
row "fan-out N=100 S=10, deliveries/s (↑)" fanout100 '.deliveries_per_s' rate
row "fan-out N=100 S=10, server CPU per delivery (↓)" fanout100 "$cpu" cpu
row "fan-out N=1000 S=1, deliveries/s (↑)" fanout1000 '.deliveries_per_s' rate
row "fan-out N=1000 S=1, server CPU per delivery (↓)" fanout1000 "$cpu" cpu
row "open loop 2000 lines/s N=100, p50 latency (↓)" open2000 '.latency_us.p50' us
row "open loop 2000 lines/s N=100, p99 latency (↓)" open2000 '.latency_us.p99' us
row "open loop 2000 lines/s N=100, server CPU per delivery (↓)" open2000 "$cpu" cpu
