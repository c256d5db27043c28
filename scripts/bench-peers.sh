#!/usr/bin/env bash
# chatd side by side with the servers people would pick instead: ncat --chat
# and a minimal Node.js relay. Same flood cases against each, medians of
# RUNS runs, one markdown table with chatd's ratio to each peer.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-peers.sh [OUT.md]

Builds chatd and flood (release), then starts each server in turn on
127.0.0.1 (a fresh process for every run, so peak RSS is that run's) and
drives it with flood:

  fanout100   100 clients, 10 senders x 2000 lines of 64 B (closed loop,
              window 32: latency-bound for ncat, see the table's notes)
  fanout1000  1000 clients, 1 sender x 1000 lines of 64 B
  sat100      fanout100 swept over --window WINDOWS; the best median per
              server is its saturating throughput
  sat1000     fanout1000 swept the same way
  open2000    open loop, 2000 lines/s in total into 100 clients (10 senders)
  idle10000   10 000 idle connections, then one broadcast
  idle19000   19 000 idle connections (this machine allows 20 000 descriptors)
  slowbase    20 clients, 5 senders x 10000 lines of 200 B
  slow        the same with 1 client that stops reading

Servers: chatd (this repo), ncat --chat (Debian's ncat; it has a listen
backlog of 10, so flood connects 8 at a time, and it uses select(), so it
aborts past descriptor 1024), node benches/peers/chat.js.

Writes the markdown table to OUT.md, or to stdout. Progress goes to stderr.
Environment: RUNS (default 3), SERVERS (default "chatd ncat node"),
CASES (default: all of the above), FLOOD_TIMEOUT (default 5 s),
WINDOWS (default "32 128 512 2048").
Takes about eight minutes; it loads both cores: run it on a quiet machine.
EOF
}

case ${1:-} in -h | --help) usage; exit 0 ;; esac
out=${1:-}
runs=${RUNS:-3}
servers=${SERVERS:-chatd ncat node}
cases=${CASES:-fanout100 fanout1000 sat100 sat1000 open2000 idle10000 idle19000 slowbase slow}
windows=${WINDOWS:-32 128 512 2048}
flood_timeout=${FLOOD_TIMEOUT:-5}
sendq_kib=1024 # chatd's default --sendq

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"
cd "$root"
echo "building chatd and flood (release)..." >&2
cargo build --release --quiet --bin chatd --bin flood
tgt="${CARGO_TARGET_DIR:-$root/target}/release"
command -v jq >/dev/null || { echo "bench-peers.sh: needs jq" >&2; exit 2; }

work=$(mktemp -d)
spid=
cleanup() {
    [[ -n $spid ]] && kill "$spid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

case_args() {
    case $1 in
        fanout100) echo "-n 100 -s 10 -m 2000 -b 64" ;;
        fanout1000) echo "-n 1000 -s 1 -m 1000 -b 64" ;;
        sat100w*) echo "-n 100 -s 10 -m 2000 -b 64 --window ${1#sat100w}" ;;
        sat1000w*) echo "-n 1000 -s 1 -m 1000 -b 64 --window ${1#sat1000w}" ;;
        open2000) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
        idle10000) echo "--idle 10000" ;;
        idle19000) echo "--idle 19000" ;;
        slowbase) echo "-n 20 -s 5 -m 10000 -b 200" ;;
        slow) echo "-n 20 -s 5 -m 10000 -b 200 --slow 1" ;;
        *) echo "bench-peers.sh: unknown case $1" >&2; exit 2 ;;
    esac
}

case_clients() {
    case $1 in
        fanout1000 | sat1000*) echo 1000 ;;
        idle10000) echo 10000 ;;
        idle19000) echo 19000 ;;
        slowbase | slow) echo 20 ;;
        *) echo 100 ;;
    esac
}

# Why a server cannot run a case (empty: it can).
cannot() {
    local server=$1 case=$2
    case $server in
        ncat)
            command -v ncat >/dev/null || { echo "ncat is not installed"; return; }
            if [[ $(case_clients "$case") -gt 1000 ]]; then
                echo "ncat --chat multiplexes with select(): it aborts at descriptor 1024"
            fi
            ;;
        node) command -v node >/dev/null || echo "node is not installed" ;;
    esac
}

# ncat does not print its port: ask the kernel which one its pid listens on.
port_from_ss() {
    local i p
    for i in $(seq 100); do
        p=$(ss -Hltnp 2>/dev/null | grep "pid=$spid," | awk '{print $4}' | head -1)
        if [[ -n $p ]]; then
            echo "${p##*:}"
            return
        fi
        kill -0 "$spid" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}

start_server() {
    local server=$1 clients=$2
    : >"$work/srv.out"
    case $server in
        chatd)
            "$tgt/chatd" --host 127.0.0.1 --port 0 -q --max-clients 20000 \
                $(limit_exempt "$tgt/chatd") </dev/null >"$work/srv.out" 2>"$work/srv.err" &
            spid=$!
            port=$(port_from_file "$work/srv.out" "listening on" "$spid")
            ;;
        ncat)
            ncat --chat --listen 127.0.0.1 0 --max-conns $((clients + 10)) \
                </dev/null >"$work/srv.out" 2>"$work/srv.err" &
            spid=$!
            port=$(port_from_ss)
            ;;
        node)
            node "$root/benches/peers/chat.js" 0 127.0.0.1 \
                </dev/null >"$work/srv.out" 2>"$work/srv.err" &
            spid=$!
            port=$(port_from_file "$work/srv.out" "listening on" "$spid")
            ;;
    esac
}

stop_server() {
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
}

# ---- run everything ---------------------------------------------------------
# The saturating cases run once per window.
run_cases=()
for c in $cases; do
    case $c in
        sat100 | sat1000) for w in $windows; do run_cases+=("${c}w$w"); done ;;
        *) run_cases+=("$c") ;;
    esac
done

start=$(date +%s)
for server in $servers; do
    for case in "${run_cases[@]}"; do
        why=$(cannot "$server" "$case")
        if [[ -n $why ]]; then
            echo "$why" >"$work/$server.$case.skip"
            echo "$server $case: skipped: $why" >&2
            continue
        fi
        for run in $(seq "$runs"); do
            f="$work/$server.$case.$run"
            if ! start_server "$server" "$(case_clients "$case")"; then
                echo "$server did not start: $(tail -1 "$work/srv.err")" >"$f.err"
                stop_server
                continue
            fi
            extra=()
            [[ $server == ncat ]] && extra=(--connect-batch 8)
            # shellcheck disable=SC2046 # the case's flags are meant to split
            timeout 300 "$tgt/flood" --port "$port" --pid "$spid" --json \
                --timeout "$flood_timeout" $(case_args "$case") "${extra[@]}" \
                >"$f.json" 2>"$f.err" || true
            stop_server
            if [[ -s $f.json ]]; then
                jq -r --arg s "$server $case run $run" \
                    '"\($s): ok=\(.ok) \(.deliveries_per_s|floor) deliveries/s p99 \(.latency_us.p99) us"' \
                    "$f.json" >&2
            else
                rm -f "$f.json"
                echo "$server $case run $run: failed: $(tail -1 "$f.err")" >&2
            fi
        done
    done
done
elapsed=$(($(date +%s) - start))

# ---- the table -------------------------------------------------------------
: >"$work/notes"

peers=()
for s in $servers; do [[ $s != chatd ]] && peers+=("$s"); done
label() {
    case $1 in
        ncat) echo "ncat --chat" ;;
        node) echo "node (benches/peers)" ;;
        *) echo "$1" ;;
    esac
}

latency_bound="Window 32 is a latency test, not a throughput one: a sender may have only 32 lines in flight, so each waits for the round trip. ncat --chat writes each relayed chunk without TCP_NODELAY, so Nagle holds its next small write until the last one is ACKed, and the receiving socket's delayed ACK (up to 40 ms) sets the pace: ncat idles, and its deliveries/s here measure that timer, not its throughput. The saturating rows sweep the window and show the best run of each server."
table=()
header="| case | metric (better) |"
sep="|---|---|"
for s in $servers; do header+=" $(label "$s") |"; sep+="---|"; done
for s in "${peers[@]}"; do header+=" chatd ÷ $s |"; sep+="---|"; done
table+=("$header" "$sep")

cpu='.server.cpu_us_per_delivery'
row "fan-out N=100 S=10 64 B, closed loop window 32: latency-bound $(note "$latency_bound")" fanout100 "deliveries/s (↑)" '.deliveries_per_s' rate
row "" fanout100 "server CPU per delivery (↓)" "$cpu" us3
row "" fanout100 "p99 latency, closed loop (↓)" '.latency_us.p99' us
row "" fanout100 "flood's own CPU, share of one core" '.flood_cpu_s / .duration_s' pct noratio
row "fan-out N=1000 S=1 64 B, closed loop window 32" fanout1000 "deliveries/s (↑)" '.deliveries_per_s' rate
row "" fanout1000 "server CPU per delivery (↓)" "$cpu" us3
row "" fanout1000 "flood's own CPU, share of one core" '.flood_cpu_s / .duration_s' pct noratio
# The best window's median for SERVER: "deliveries_per_s window".
best_window() {
    local server=$1 base=$2 w v best= bestw=
    for w in $windows; do
        v=$(med "$server" "${base}w$w" '.deliveries_per_s')
        [[ -z $v ]] && continue
        if [[ -z $best ]] || awk -v a="$v" -v b="$best" 'BEGIN {exit !(a > b)}'; then
            best=$v bestw=$w
        fi
    done
    [[ -n $best ]] && echo "$best $bestw"
}

# Saturating rows: the best --window per server, its throughput always next
# to what that run lost or mangled.
sat_rows() {
    local label=$1 base=$2 s b w v lost line cpu fl
    [[ " $cases " == *" $base "* ]] || return 0
    line="| $label | deliveries/s at the best --window (↑) |"
    cpu="| | server CPU per delivery there (↓) |"
    fl="| | flood's own CPU there, share of one core |"
    for s in $servers; do
        if [[ -f $work/$s.${base}w${windows%% *}.skip ]]; then
            line+=" $(note "$s, $base: cannot run: $(cat "$work/$s.${base}w${windows%% *}.skip")") |"
            cpu+=" |" fl+=" |"
            continue
        fi
        b=$(best_window "$s" "$base")
        if [[ -z $b ]]; then
            line+=" $(note "$s, $base: no run completed") |"
            cpu+=" |" fl+=" |"
            continue
        fi
        read -r v w <<<"$b"
        lost=$(med "$s" "${base}w$w" '.missing + .out_of_order + .duplicates')
        line+=" $(fmt rate "$v") (window $w"
        if [[ ${lost:-0} != 0 ]]; then
            line+="; $lost lines missing, mangled, reordered or doubled $(note "$s, $base at window $w: $(failures "$s" "${base}w$w")")"
        fi
        line+=") |"
        cpu+=" $(fmt us3 "$(med "$s" "${base}w$w" "$cpu_expr")") |"
        fl+=" $(fmt pct "$(med "$s" "${base}w$w" '.flood_cpu_s / .duration_s')") |"
    done
    for s in "${peers[@]}"; do
        local a p
        a=$(best_window chatd "$base" | cut -d' ' -f1)
        p=$(best_window "$s" "$base" | cut -d' ' -f1)
        line+=" $([[ -n $a && -n $p ]] && awk -v a="$a" -v b="$p" 'BEGIN {if (b > 0) printf "%.2f", a/b}') |"
        cpu+=" |" fl+=" |"
    done
    table+=("$line" "$cpu" "$fl")
}
cpu_expr=$cpu
sat_rows "fan-out N=100 S=10 64 B, saturating" sat100
sat_rows "fan-out N=1000 S=1 64 B, saturating" sat1000
row "open loop 2000 lines/s, N=100" open2000 "p50 latency (↓)" '.latency_us.p50' us
row "" open2000 "p99 latency (↓)" '.latency_us.p99' us
row "" open2000 "p99.9 latency (↓)" '.latency_us.p999' us
row "" open2000 "server CPU per delivery (↓)" "$cpu" us3
row "10 000 idle connections" idle10000 "server RSS per connection (↓)" '.server.rss_per_conn_bytes' kib
row "" idle10000 "connect all (↓)" '.connect_s' s
row "" idle10000 "one broadcast reaches all (↓)" '.idle.broadcast_ms' ms
row "19 000 idle connections" idle19000 "connections held (↑)" '.connected' int
row "" idle19000 "server RSS per connection (↓)" '.server.rss_per_conn_bytes' kib
row "" idle19000 "one broadcast reaches all (↓)" '.idle.broadcast_ms' ms
row "1 slow reader among 20" slowbase "deliveries/s without it (↑)" '.deliveries_per_s' rate
row "" slow "deliveries/s to the 19 others (↑)" '.deliveries_per_s' rate
slow_vs_base_row
row "" slow "server RSS at start (↓)" '.server.rss_before_connect_kib' mib noratio
row "" slow "server peak RSS (↓)" '.server.rss_peak_kib' mib
row "" slow "slow reader cut off by server" '.slow_readers.closed_by_server' yesno noratio
row "" slow "server CPU per delivery (↓)" "$cpu" us3

# ---- targets (issue 4), judged on this run ----------------------------------
targets=()
if [[ " $servers " == *" chatd "* ]]; then
    [[ " $servers " == *" ncat "* && " $cases " == *" fanout100 "* ]] &&
        target "fan-out N=100 deliveries/s ≥ 1.25 × ncat (closed loop window 32, latency-bound for ncat)" "$(verdict "$(ratio fanout100 '.deliveries_per_s' ncat)" 1.25)"
    for base in sat100 sat1000; do
        [[ " $servers " == *" ncat "* && " $cases " == *" $base "* ]] || continue
        a=$(best_window chatd "$base" | cut -d' ' -f1)
        p=$(best_window ncat "$base" | cut -d' ' -f1)
        [[ -n $a && -n $p ]] && target "saturating $base (best window each): chatd ÷ ncat" \
            "$(awk -v a="$a" -v b="$p" 'BEGIN {printf "%.2f", a/b}') (not a target of issue 4; the honest throughput ratio)"
    done
    [[ " $servers " == *" ncat "* && " $cases " == *" fanout1000 "* ]] &&
        target "fan-out N=1000 deliveries/s ≥ ncat" "$(verdict "$(ratio fanout1000 '.deliveries_per_s' ncat)" 1)"
    if [[ " $cases " == *" open2000 "* ]]; then
        for q in p50 p99; do
            worst=
            for s in "${peers[@]}"; do
                r=$(ratio open2000 ".latency_us.$q" "$s")
                [[ -z $r ]] && continue
                worst=$(awk -v a="$r" -v b="${worst:-0}" 'BEGIN {print (a > b ? a : b)}')
            done
            # chatd ÷ peer below 1 for every peer: the largest ratio < 1.
            target "open loop $q latency below every peer's (largest chatd ÷ peer)" \
                "$(awk -v w="$worst" 'BEGIN {if (w == "") print "not measured"; else if (w < 1) print "met (" w ")"; else print "NOT met (" w ")"}')"
        done
    fi
    if [[ " $cases " == *" idle10000 "* ]]; then
        v=$(med chatd idle10000 '.server.rss_per_conn_bytes')
        target "≤ 2 KiB server RSS per idle connection at 10 000" \
            "$(awk -v v="$v" 'BEGIN {if (v == "") print "not measured"; else if (v <= 2048) printf "met (%.2f KiB)", v/1024; else printf "NOT met (%.2f KiB)", v/1024}')"
    fi
    if [[ " $cases " == *" idle19000 "* ]]; then
        v=$(med chatd idle19000 '.connected')
        ok=$(cat "$work"/chatd.idle19000.*.json 2>/dev/null | jq -s '[.[] | select(.ok)] | length')
        target "19 000 connections held, one broadcast reaching all" "held ${v:-0} (median); ${ok:-0} of $runs runs delivered the broadcast to every one"
    fi
    if [[ " $cases " == *" slow "* && " $cases " == *" slowbase "* ]]; then
        target "others ≥ 90 % of their throughput with one slow reader" "$(verdict "$(slow_ratio chatd)" 0.9)"
        s0=$(med chatd slow '.server.rss_before_connect_kib')
        pk=$(med chatd slow '.server.rss_peak_kib')
        target "peak RSS ≤ start + --sendq (1 MiB) + 10 MiB" \
            "$(awk -v s="$s0" -v p="$pk" -v q="$sendq_kib" 'BEGIN {if (s == "" || p == "") print "not measured"; else if (p <= s + q + 10240) printf "met (%.1f MiB ≤ %.1f MiB)", p/1024, (s+q+10240)/1024; else printf "NOT met (%.1f MiB > %.1f MiB)", p/1024, (s+q+10240)/1024}')"
    fi
fi

# ---- output -------------------------------------------------------------------
render() {
    echo "## chatd and its peers, side by side"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), medians of $runs runs per cell, each run on a fresh server process;"
    echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), Linux $(uname -r);"
    echo "$(command -v ncat >/dev/null && ncat --version 2>&1 | head -1 | sed 's/ ( https.*//'), node $(command -v node >/dev/null && node --version);"
    echo "load from flood on the same machine (\`flood --json --pid\`); whole run: ${elapsed} s."
    echo "Ratio columns are chatd's value divided by the peer's: above 1 is better for chatd where"
    echo "more is better (↑), below 1 where less is better (↓). Where flood's own CPU nears 100 %"
    echo "of a core, the tool rather than the server set the pace of that case."
    echo
    printf '%s\n' "${table[@]}"
    if [[ ${#targets[@]} -gt 0 ]]; then
        echo
        echo "Targets for chatd (issue 4):"
        echo
        printf '%s\n' "${targets[@]}"
    fi
    if [[ -s $work/notes ]]; then
        echo
        echo "Notes:"
        echo
        awk '{print NR ". " $0}' "$work/notes"
    fi
    echo
    echo "Flags per case (plus \`--json --pid PID --timeout $flood_timeout\`, and \`--connect-batch 8\` for ncat):"
    echo
    for c in $cases; do
        case $c in
            sat100 | sat1000) echo "- $c: \`flood $(case_args "${c}w${windows%% *}" | sed 's/--window [0-9]*/--window W/')\` for W in $windows" ;;
            *) echo "- $c: \`flood $(case_args "$c")\`" ;;
        esac
    done
}

if [[ -n $out ]]; then
    render >"$out"
    echo "wrote $out" >&2
else
    render
fi
