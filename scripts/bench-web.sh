#!/usr/bin/env bash
# chatd's web port and cluster mode side by side with the stack they
# replace: a Node `ws` broadcast chat, and socket.io v4 (one instance, and
# two behind HAProxy sharing one Redis through @socket.io/redis-adapter).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-web.sh [OUT.md]
       scripts/bench-web.sh --smoke

Builds chatd and flood (release), installs the Node peers of benches/peers
(npm ci, from package-lock.json), then runs every case against each server,
alternating servers run by run (chatd, ws, sio, chatd, ws, sio, ...), each
run on a fresh server process, on 127.0.0.1 only:

  fanout100    100 clients, 10 senders x 2000 lines of 64 B (closed loop, window 32)
  fanout100w   the same with --window 512 (no server idles waiting for acks)
  fanout1000   1000 clients, 1 sender x 1000 lines of 64 B
  open2000     open loop, 2000 lines/s in total into 100 clients (10 senders)
  open500      the same at 500 lines/s, a rate every server here sustains
  idle10000    10 000 idle WebSocket connections (server RSS per connection)
  slowbase     20 clients, 5 senders x 10000 lines of 200 B
  slow         the same with 1 client that stops reading

Servers: chatd (its web port, /ws), ws (node benches/peers/ws-chat.js),
sio (node benches/peers/sio-chat.js, websocket transport only, in-memory
adapter). flood drives chatd and ws with --ws, sio with --socketio.

Then the cluster cases, each on a fresh Redis and a fresh HAProxy in front
of two instances: chatd x2 (--redis) and sio x2 (REDIS_URL: the Redis
adapter). HAProxy deals connections round-robin (no sticky sessions: the
websocket transport is one upgrade request per session); flood opens them
one at a time (--connect-batch 1), so connection i lands on instance i % 2
and --instances 2 times the cross-instance deliveries on their own:

  clfanout     100 clients, 10 senders x 2000 lines of 64 B (closed loop)
  clopen       open loop, 2000 lines/s in total into 100 clients
  clopen500    the same at 500 lines/s (socket.io x2 sustains it)

--smoke: only a short flood --socketio run against one sio instance and
one flood --ws run against the ws peer (CI); prints what ran and fails if
either failed verification.

Writes the markdown to OUT.md, or to stdout; progress goes to stderr.
CHATD_BASE=PATH adds a server "base": that chatd binary (an older build,
say), run exactly as chatd, alternating with the others run by run, so a
change shows as "chatd ÷ chatd before" in the same run (single-instance
cases too, when SERVERS or the default lists it).

Environment: RUNS (default 3), SERVERS (default "chatd ws sio", plus
"base" with CHATD_BASE),
CASES (default: all single-instance cases; empty to skip), CLUSTER_CASES
(default "clfanout clopen clopen500"; empty to skip), FLOOD_TIMEOUT (default 10 s).
Needs node and npm, redis-server, haproxy, jq, python3. Loads both cores.
EOF
}

case ${1:-} in -h | --help) usage; exit 0 ;; esac
smoke=
[[ ${1:-} == --smoke ]] && { smoke=1; shift; }
out=${1:-}
runs=${RUNS:-3}
base_bin=${CHATD_BASE:-}
if [[ -n $base_bin ]]; then
    [[ -x $base_bin ]] || { echo "bench-web.sh: CHATD_BASE=$base_bin is not an executable" >&2; exit 2; }
    base_bin=$(cd "$(dirname "$base_bin")" && pwd)/$(basename "$base_bin")
fi
servers=${SERVERS:-chatd ${base_bin:+base }ws sio}
cases=${CASES-fanout100 fanout100w fanout1000 open2000 open500 idle10000 slowbase slow}
cluster_cases=${CLUSTER_CASES-clfanout clopen clopen500}
flood_timeout=${FLOOD_TIMEOUT:-10}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"
cd "$root"
# The smoke (CI) needs only Node; the tables need jq, python3 for free ports.
needs=(node npm)
[[ -z $smoke ]] && needs+=(jq python3)
for tool in "${needs[@]}"; do
    command -v "$tool" >/dev/null || { echo "bench-web.sh: needs $tool" >&2; exit 2; }
done
if [[ -n $smoke ]]; then
    # CI has just built the debug binaries for cargo test; a smoke run
    # measures nothing, so it needs no release build.
    cargo build --quiet --bin flood
    tgt="${CARGO_TARGET_DIR:-$root/target}/debug"
else
    echo "building chatd and flood (release)..." >&2
    cargo build --release --quiet --bin chatd --bin flood
    tgt="${CARGO_TARGET_DIR:-$root/target}/release"
fi
peers_dir=$root/benches/peers
if [[ ! -d $peers_dir/node_modules || $peers_dir/package-lock.json -nt $peers_dir/node_modules ]]; then
    echo "installing the Node peers (npm ci in benches/peers)..." >&2
    (cd "$peers_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    touch "$peers_dir/node_modules"
fi
# Single instances must not pick up a cluster's Redis from the caller.
unset REDIS_URL
# 10 000 connections: the servers (started from here) and flood need the
# descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Starts SERVER (chatd, ws, sio) on a free port; with REDIS_URL set, as a
# cluster instance. Prints "pid port" (the web port).
start_one() {
    local server=$1 node_id=${2:-} f pid port
    f=$work/srv.$server.$RANDOM
    case $server in
        chatd | base)
            local bin=$tgt/chatd extra=(-q)
            [[ $server == base ]] && bin=$base_bin
            # Cluster instances log (not -q): the link coming up is in stderr.
            [[ -n ${REDIS_URL:-} ]] && extra=(--redis "$REDIS_URL" --node-id "$node_id")
            "$bin" --host 127.0.0.1 --port 0 --http-port 0 --max-clients 20000 \
                $(limit_exempt "$bin") "${extra[@]}" </dev/null >"$f.out" 2>"$f.err" &
            pid=$!
            port=$(port_from_file "$f.out" "http on" "$pid") || true
            if [[ -n ${REDIS_URL:-} ]]; then
                local i
                for i in $(seq 200); do
                    grep -q "cluster link up" "$f.err" 2>/dev/null && break
                    sleep 0.05
                done
            fi
            ;;
        ws | sio)
            node "$peers_dir/${server}-chat.js" 0 127.0.0.1 </dev/null >"$f.out" 2>"$f.err" &
            pid=$!
            port=$(port_from_file "$f.out" "listening on" "$pid") || true
            ;;
    esac
    pids+=("$pid")
    if [[ -z $port ]]; then
        echo "$server did not start: $(tail -1 "$f.err" 2>/dev/null)" >&2
        echo "$pid"
        return 1
    fi
    echo "$pid $port"
}

# Servers started inside $(...) or <(...) are not our children: wait for
# them to be gone by polling, so the next run has the machine to itself.
stop() {
    local p i
    for p in "$@"; do
        [[ -z $p ]] && continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
        for i in $(seq 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.05
        done
    done
}

transport() { [[ $1 == sio ]] && echo --socketio || echo --ws; }

if [[ -n $smoke ]]; then
    ok=0
    for server in sio ws; do
        pid= port=
        read -r pid port < <(start_one "$server" || true)
        pids+=("$pid")
        [[ -n $port ]] || { echo "smoke: node benches/peers/$server-chat.js did not start"; exit 1; }
        echo "smoke: flood $(transport "$server") -n 10 -s 2 -m 200 against node benches/peers/$server-chat.js (port $port):"
        if "$tgt/flood" "$(transport "$server")" --port "$port" -n 10 -s 2 -m 200 --timeout 10; then
            echo "smoke: $server OK"
        else
            echo "smoke: $server FAILED"
            ok=1
        fi
        stop "$pid"
    done
    exit "$ok"
fi

case_args() {
    case $1 in
        fanout100) echo "-n 100 -s 10 -m 2000 -b 64" ;;
        fanout100w) echo "-n 100 -s 10 -m 2000 -b 64 --window 512" ;;
        fanout1000) echo "-n 1000 -s 1 -m 1000 -b 64" ;;
        open2000) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
        open500) echo "-n 100 -s 10 -m 150 -b 64 --rate 500" ;;
        idle10000) echo "--idle 10000" ;;
        slowbase) echo "-n 20 -s 5 -m 10000 -b 200" ;;
        slow) echo "-n 20 -s 5 -m 10000 -b 200 --slow 1" ;;
        # chatd's cluster gets 5 times the lines so that its run, too, lasts
        # long enough for /proc's 10 ms CPU ticks to measure Redis.
        clfanout) echo "-n 100 -s 10 -m $([[ ${2:-} == chatd || ${2:-} == base ]] && echo 10000 || echo 2000) -b 64" ;;
        clopen) echo "-n 100 -s 10 -m 600 -b 64 --rate 2000" ;;
        clopen500) echo "-n 100 -s 10 -m 150 -b 64 --rate 500" ;;
        *) echo "bench-web.sh: unknown case $1" >&2; exit 2 ;;
    esac
}

# Prints a progress line for one finished run (or why it failed).
progress() {
    local f=$1 what=$2
    if [[ -s $f.json ]]; then
        jq -r --arg s "$what" '"\($s): ok=\(.ok) \(.deliveries_per_s|floor) deliveries/s p99 \(.latency_us.p99) us" +
            (if .latency_cross_us then " cross p99 \(.latency_cross_us.p99) us" else "" end)' "$f.json" >&2
    else
        rm -f "$f.json"
        echo "$what: failed: $(tail -1 "$f.err" 2>/dev/null)" >&2
    fi
}

# ---- single instances ---------------------------------------------------------
start=$(date +%s)
for case in $cases; do
    for run in $(seq "$runs"); do
        for server in $servers; do
            f=$work/$server.$case.$run
            pid= port=
            read -r pid port < <(start_one "$server" || true)
            pids+=("$pid")
            if [[ -z $port ]]; then
                echo "$server did not start" >"$f.err"
                stop "$pid"
                continue
            fi
            # shellcheck disable=SC2046 # the case's flags are meant to split
            timeout 300 "$tgt/flood" "$(transport "$server")" --port "$port" --pid "$pid" --json \
                --timeout "$flood_timeout" $(case_args "$case") >"$f.json" 2>"$f.err" || true
            stop "$pid"
            progress "$f" "$server $case run $run"
        done
    done
done

# ---- clusters -------------------------------------------------------------------
# HAProxy in front of two instances' web ports; sets lb_pid, lb_port.
start_lb() {
    local a=$1 b=$2 cfg=$work/haproxy.cfg
    lb_port=$(free_port)
    cat >"$cfg" <<EOF
global
    maxconn 5000
    stats socket $work/haproxy.sock
defaults
    mode http
    timeout connect 3s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
frontend web
    bind 127.0.0.1:$lb_port
    default_backend instances
backend instances
    balance roundrobin
    server a 127.0.0.1:$a
    server b 127.0.0.1:$b
EOF
    haproxy -f "$cfg" -db >"$work/haproxy.log" 2>&1 &
    lb_pid=$!
    pids+=("$lb_pid")
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$lb_port") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "haproxy did not start: $(tail -1 "$work/haproxy.log")" >&2
    return 1
}

# Redis's own counters: "PUBLISH-calls reads-processed writes-processed",
# to tell how many lines ride on one PUBLISH and how many commands on one
# read (pipelining) — what Redis CPU per line comes down to.
redis_counters() {
    redis-cli -p "$redis_port" INFO all 2>/dev/null | tr -d '\r' | awk -F'[:=,]' '
        $1 == "cmdstat_publish" {p = $3}
        $1 == "total_reads_processed" {r = $2}
        $1 == "total_writes_processed" {w = $2}
        END {print p + 0, r + 0, w + 0}'
}

# Sessions HAProxy sent to each instance ("a b"): proves the spread.
lb_sessions() {
    python3 - "$work/haproxy.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
rows = [l.split(",") for l in data.decode().splitlines() if l and not l.startswith("#")]
print(" ".join(r[7] for r in rows if r[0] == "instances" and r[1] in ("a", "b")))
EOF
}

if [[ -n $cluster_cases ]]; then
    command -v redis-server >/dev/null || { echo "bench-web.sh: cluster cases need redis-server" >&2; exit 2; }
    command -v haproxy >/dev/null || { echo "bench-web.sh: cluster cases need haproxy" >&2; exit 2; }
fi
for case in $cluster_cases; do
    for run in $(seq "$runs"); do
        for server in chatd base sio; do
            [[ " $servers " == *" $server "* ]] || continue
            f=$work/$server.$case.$run
            start_redis
            pids+=("$redis_pid")
            export REDIS_URL="redis://127.0.0.1:$redis_port"
            pa= porta= pb= portb= lb_pid=
            read -r pa porta < <(start_one "$server" a || true)
            read -r pb portb < <(start_one "$server" b || true)
            pids+=("$pa" "$pb")
            if [[ -n $porta && -n $portb ]] && start_lb "$porta" "$portb"; then
                read -r p0 r0 w0 < <(redis_counters)
                # shellcheck disable=SC2046 # the case's flags are meant to split
                timeout 300 "$tgt/flood" "$(transport "$server")" --port "$lb_port" --json \
                    --connect-batch 1 --instances 2 --timeout "$flood_timeout" \
                    --watch "$pa,$pb,$redis_pid,$lb_pid" $(case_args "$case" "$server") \
                    >"$f.json" 2>"$f.err" || true
                spread=$(lb_sessions 2>/dev/null || true)
                read -r p1 r1 w1 < <(redis_counters)
                if [[ -s $f.json ]]; then
                    jq --arg spread "$spread" --argjson p "$((p1 - p0))" --argjson r "$((r1 - r0))" \
                        --argjson w "$((w1 - w0))" \
                        '. + {servers_cpu_s: (.watched[0].cpu_s + .watched[1].cpu_s),
                              redis_cpu_s: .watched[2].cpu_s, haproxy_cpu_s: .watched[3].cpu_s,
                              lb_sessions: ($spread | split(" ") | map(tonumber? // 0)),
                              redis_publish: $p, redis_reads: $r, redis_writes: $w}' \
                        "$f.json" >"$f.x" && mv "$f.x" "$f.json"
                fi
            else
                echo "$server cluster did not start" >"$f.err"
            fi
            unset REDIS_URL
            stop "$pa" "$pb" "$lb_pid" "$redis_pid"
            progress "$f" "$server x2 $case run $run"
        done
    done
done
elapsed=$(($(date +%s) - start))

# ---- the tables ------------------------------------------------------------------
: >"$work/notes"
peers=()
for s in $servers; do [[ $s != chatd ]] && peers+=("$s"); done
label() {
    case $1 in
        chatd) echo "chatd (web port)" ;;
        base) echo "chatd before" ;;
        ws) echo "Node ws" ;;
        sio) echo "socket.io" ;;
    esac
}
header() {
    local h="| case | metric (better) |" sep="|---|---|" s
    for s in $servers; do h+=" $(label "$s")$1 |"; sep+="---|"; done
    for s in "${peers[@]}"; do h+=" chatd ÷ $(label "$s") |"; sep+="---|"; done
    table+=("$h" "$sep")
}

cpu='.server.cpu_us_per_delivery'
flood_share='.flood_cpu_s / .duration_s'
table=()
header ""
row "fan-out N=100 S=10 64 B, window 32" fanout100 "deliveries/s (↑)" '.deliveries_per_s' rate
row "" fanout100 "server CPU per delivery (↓)" "$cpu" us3
row "" fanout100 "p99 latency, closed loop (↓)" '.latency_us.p99' us
row "" fanout100 "flood's own CPU, share of one core" "$flood_share" pct noratio
row "fan-out N=100 S=10 64 B, window 512" fanout100w "deliveries/s (↑)" '.deliveries_per_s' rate
row "" fanout100w "server CPU per delivery (↓)" "$cpu" us3
row "" fanout100w "flood's own CPU, share of one core" "$flood_share" pct noratio
row "fan-out N=1000 S=1 64 B" fanout1000 "deliveries/s (↑)" '.deliveries_per_s' rate
row "" fanout1000 "server CPU per delivery (↓)" "$cpu" us3
row "" fanout1000 "flood's own CPU, share of one core" "$flood_share" pct noratio
row "open loop 2000 lines/s, N=100" open2000 "p50 latency (↓)" '.latency_us.p50' us
row "" open2000 "p99 latency (↓)" '.latency_us.p99' us
row "" open2000 "p99.9 latency (↓)" '.latency_us.p999' us
row "" open2000 "server CPU per delivery (↓)" "$cpu" us3
row "open loop 500 lines/s, N=100" open500 "p50 latency (↓)" '.latency_us.p50' us
row "" open500 "p99 latency (↓)" '.latency_us.p99' us
row "" open500 "p99.9 latency (↓)" '.latency_us.p999' us
row "" open500 "server CPU per delivery (↓)" "$cpu" us3
row "10 000 idle WebSocket connections" idle10000 "server RSS per connection (↓)" '.server.rss_per_conn_bytes' kib
row "" idle10000 "connect all (↓)" '.connect_s' s
row "" idle10000 "one broadcast reaches all (↓)" '.idle.broadcast_ms' ms
row "1 slow reader among 20" slowbase "deliveries/s without it (↑)" '.deliveries_per_s' rate
row "" slow "deliveries/s to the 19 others (↑)" '.deliveries_per_s' rate
slow_vs_base_row
row "" slow "server peak RSS (↓)" '.server.rss_peak_kib' mib
row "" slow "slow reader cut off by server" '.slow_readers.closed_by_server' yesno noratio
single_table=("${table[@]}")

# The cluster table: chatd x2 against sio x2 (and the base build) only.
table=()
servers_all=$servers cases_all=$cases
servers=$(for s in chatd base sio; do [[ " $servers_all " == *" $s "* ]] && echo -n "$s "; done)
peers=()
for s in base sio; do [[ " $servers " == *" $s "* ]] && peers+=("$s"); done
cases=$cluster_cases
header " ×2"
row "fan-out N=100 S=10 64 B through HAProxy" clfanout "deliveries/s (↑)" '.deliveries_per_s' rate
row "" clfanout "CPU of both instances per delivery (↓)" '.servers_cpu_s / .deliveries * 1e6' us3
row "" clfanout "Redis CPU per line sent (↓)" '.redis_cpu_s / .lines_sent * 1e6' us3
row "" clfanout "PUBLISH commands per line sent (↓)" '.redis_publish / .lines_sent' int2
row "" clfanout "commands per Redis read (pipelining)" '.redis_publish / .redis_reads' int2 noratio
row "" clfanout "HAProxy CPU per delivery (↓)" '.haproxy_cpu_s / .deliveries * 1e6' us3
row "" clfanout "cross-instance p99, closed loop (↓)" '.latency_cross_us.p99' us
row "" clfanout "flood's own CPU, share of one core" "$flood_share" pct noratio
row "open loop 2000 lines/s, N=100, through HAProxy" clopen "p50 latency (↓)" '.latency_us.p50' us
row "" clopen "cross-instance p50 (↓)" '.latency_cross_us.p50' us
row "" clopen "cross-instance p99 (↓)" '.latency_cross_us.p99' us
row "" clopen "cross-instance p99.9 (↓)" '.latency_cross_us.p999' us
row "" clopen "Redis CPU per line sent (↓)" '.redis_cpu_s / .lines_sent * 1e6' us3
row "" clopen "PUBLISH commands per line sent (↓)" '.redis_publish / .lines_sent' int2
row "" clopen "commands per Redis read (pipelining)" '.redis_publish / .redis_reads' int2 noratio
row "open loop 500 lines/s, N=100, through HAProxy" clopen500 "p50 latency (↓)" '.latency_us.p50' us
row "" clopen500 "cross-instance p50 (↓)" '.latency_cross_us.p50' us
row "" clopen500 "cross-instance p99 (↓)" '.latency_cross_us.p99' us
row "" clopen500 "cross-instance p99.9 (↓)" '.latency_cross_us.p999' us
row "" clopen500 "Redis CPU per line sent (↓)" '.redis_cpu_s / .lines_sent * 1e6' us3
row "" clopen500 "PUBLISH commands per line sent (↓)" '.redis_publish / .lines_sent' int2
row "" clopen500 "commands per Redis read (pipelining)" '.redis_publish / .redis_reads' int2 noratio
cluster_table=("${table[@]}")
spreads=$(cat "$work"/*.cl*.json 2>/dev/null | jq -rs '[.[] | .lb_sessions | map(tostring) | join("/")] | unique | join(", ")')
servers=$servers_all cases=$cases_all
# The targets are against the peers, never against chatd's own base build.
peers=()
for s in $servers; do [[ $s != chatd && $s != base ]] && peers+=("$s"); done

# ---- targets (issue 17), judged on this run -----------------------------------------
targets=()
at_least() { # case expr peer times
    local r
    r=$(ratio "$1" "$2" "$3")
    verdict "$r" "$4"
}
below() { # case expr: chatd below every peer (largest chatd ÷ peer < 1)
    local worst= s r
    for s in "${peers[@]}"; do
        r=$(ratio "$1" "$2" "$s")
        [[ -z $r ]] && continue
        worst=$(awk -v a="$r" -v b="${worst:-0}" 'BEGIN {print (a > b ? a : b)}')
    done
    awk -v w="$worst" 'BEGIN {if (w == "") print "not measured"; else if (w < 1) print "met (" w ")"; else print "NOT met (" w ")"}'
}
if [[ " $servers " == *" chatd "* ]]; then
    for c in fanout100 fanout100w fanout1000; do
        [[ " $cases " == *" $c "* ]] || continue
        [[ " $servers " == *" ws "* ]] && target "$c deliveries/s ≥ 3 × Node ws" "$(at_least "$c" .deliveries_per_s ws 3)"
        [[ " $servers " == *" sio "* ]] && target "$c deliveries/s ≥ 10 × socket.io" "$(at_least "$c" .deliveries_per_s sio 10)"
    done
    for c in open2000 open500; do
        [[ " $cases " == *" $c "* ]] && target "$c p99 below both (largest chatd ÷ peer)" "$(below "$c" .latency_us.p99)"
    done
    if [[ " $cases " == *" idle10000 "* ]]; then
        v=$(med chatd idle10000 '.server.rss_per_conn_bytes')
        target "≤ 2 KiB server RSS per idle WebSocket connection" \
            "$(awk -v v="$v" 'BEGIN {if (v == "") print "not measured"; else if (v <= 2048) printf "met (%.2f KiB)", v/1024; else printf "NOT met (%.2f KiB)", v/1024}')"
    fi
    if [[ " $servers " == *" sio "* && -n $cluster_cases ]]; then
        saved_peers=("${peers[@]}")
        peers=(sio)
        [[ " $cluster_cases " == *" clfanout "* ]] && {
            target "cluster clfanout: deliveries/s ≥ 5 × socket.io ×2" "$(at_least clfanout .deliveries_per_s sio 5)"
            target "cluster clfanout: less Redis CPU per line (chatd ÷ socket.io)" "$(below clfanout '.redis_cpu_s / .lines_sent')"
        }
        for c in clopen clopen500; do
            [[ " $cluster_cases " == *" $c "* ]] || continue
            target "cluster $c: lower cross-instance p99 (chatd ÷ socket.io)" "$(below "$c" .latency_cross_us.p99)"
            target "cluster $c: less Redis CPU per line (chatd ÷ socket.io)" "$(below "$c" '.redis_cpu_s / .lines_sent')"
        done
        peers=("${saved_peers[@]}")
    fi
fi

# ---- output ---------------------------------------------------------------------------
render() {
    echo "## chatd's web port and cluster mode against Node ws and socket.io"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), medians of $runs runs per cell, servers alternating run by run,"
    echo "each run on a fresh server process; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), Linux $(uname -r);"
    echo "node $(node --version), $(for p in ws socket.io @socket.io/redis-adapter redis; do echo -n "$p $(jq -r .version "$peers_dir/node_modules/$p/package.json"), "; done)$(redis-server --version | awk '{print $1, $3}'), $(haproxy -v | head -1 | awk '{print $1, $3}');"
    echo "load from flood on the same machine (\`flood --json --pid\`); whole run: ${elapsed} s."
    echo "Ratio columns are chatd's value divided by the peer's: above 1 is better for chatd where"
    echo "more is better (↑), below 1 where less is better (↓). Where flood's own CPU nears 100 %"
    echo "of a core, the tool rather than the server set the pace of that case."
    echo
    printf '%s\n' "${single_table[@]}"
    if [[ -n $cluster_cases ]]; then
        echo
        echo "Two instances sharing one Redis behind HAProxy (round-robin; flood connects one at a time,"
        echo "so client i is on instance i % 2; sessions HAProxy sent to each instance, per run: ${spreads:-?})."
        echo "CPU figures are from /proc over the measured part of each run (\`flood --watch\`, connecting excluded);"
    echo "\"per line sent\" divides by lines, not deliveries. PUBLISH and read counts are Redis's own"
    echo "(\`INFO commandstats\`, \`total_reads_processed\`) over the whole run, connecting included."
        echo
        printf '%s\n' "${cluster_table[@]}"
    fi
    if [[ ${#targets[@]} -gt 0 ]]; then
        echo
        echo "Targets for chatd (issue 17):"
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
    echo "Flags per case (plus \`--json --timeout $flood_timeout\`; \`--ws\` for chatd and ws, \`--socketio\` for sio;"
    echo "\`--pid PID\` on single instances; \`--connect-batch 1 --instances 2 --watch A,B,REDIS,HAPROXY\` through HAProxy):"
    echo
    for c in $cases; do echo "- $c: \`flood $(case_args "$c")\`"; done
    for c in $cluster_cases; do
        echo "- $c: \`flood $(case_args "$c" chatd)\` for chatd ×2, \`flood $(case_args "$c" sio)\` for socket.io ×2"
    done
}

if [[ -n $out ]]; then
    render >"$out"
    echo "wrote $out" >&2
else
    render
fi
