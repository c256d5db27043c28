# Shell helpers shared by the bench scripts (bench-peers.sh, bench-cluster.sh,
# bench-web.sh); sourced, not run. Results live in "$work" as
# "$work/SERVER.CASE.RUN.json" (one flood --json object per run).

# A load test comes from one address, loopback, which chatd's per-address
# limits (--max-per-ip, --max-connects) exempt by default (--limit-loopback
# counts it). An older binary (bench-ab.sh may run one) counted it: exempt
# it there, if it has the flag.
limit_exempt() { # chatd binary; prints the flags, one a line
    local help
    help=$("$1" --help 2>/dev/null)
    if ! grep -q -- '--limit-loopback' <<<"$help" && grep -q -- '--limit-exempt' <<<"$help"; then
        printf '%s\n' --limit-exempt 127.0.0.0/8
    fi
}

# Median over the runs of a jq expression (empty if no run produced it).
med() {
    local server=$1 case=$2 expr=$3 f
    for f in "$work/$server.$case".*.json; do
        [[ -s $f ]] && jq -r "($expr) // empty" "$f" 2>/dev/null
    done | sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'
}

# Footnotes live in a file: cells are computed in subshells. The same text
# gets the same number.
note() {
    local n
    touch "$work/notes"
    n=$(grep -nxF -- "$1" "$work/notes" | head -1 | cut -d: -f1)
    if [[ -z $n ]]; then
        echo "$1" >>"$work/notes"
        n=$(wc -l <"$work/notes")
    fi
    echo "[$n]"
}

# Formats a value: rate (per s), us (-> ms), us3 (us), kib (bytes -> KiB),
# mib (KiB -> MiB), s, ms, pct, int, int2 (2 decimals), yesno.
fmt() {
    local kind=$1 v=$2
    [[ -z $v ]] && return
    case $kind in
        rate) awk -v v="$v" 'BEGIN {if (v >= 1e6) printf "%.2f M", v/1e6; else printf "%.0f k", v/1e3}' ;;
        us) awk -v v="$v" 'BEGIN {printf "%.2f ms", v/1e3}' ;;
        us3) awk -v v="$v" 'BEGIN {printf "%.3f µs", v}' ;;
        kib) awk -v v="$v" 'BEGIN {printf "%.2f KiB", v/1024}' ;;
        mib) awk -v v="$v" 'BEGIN {printf "%.1f MiB", v/1024}' ;;
        s) awk -v v="$v" 'BEGIN {printf "%.2f s", v}' ;;
        ms) awk -v v="$v" 'BEGIN {printf "%.1f ms", v}' ;;
        pct) awk -v v="$v" 'BEGIN {printf "%.0f %%", v*100}' ;;
        int) printf "%s" "$v" ;;
        int2) awk -v v="$v" 'BEGIN {printf "%.2f", v}' ;;
        yesno) awk -v v="$v" 'BEGIN {print (v >= 1 ? "yes" : "no")}' ;;
    esac
}

# Why the runs of SERVER CASE failed verification (empty when none did):
# a throughput is never shown without the loss that came with it.
failures() {
    local server=$1 case=$2
    cat "$work/$server.$case".*.json 2>/dev/null | jq -rs '[.[] | select(.ok | not)] |
        if length == 0 then empty else
        "\(length) of the runs failed verification, e.g. missing \(.[0].missing) of \(.[0].expected_deliveries), " +
        "out of order \(.[0].out_of_order), duplicates \(.[0].duplicates), closed by server \(.[0].closed_by_server), " +
        "connect failed \(.[0].connect_failed)" +
        (if .[0].stalled then ", stalled (nothing delivered for the flood timeout)" else "" end) end'
}

# The table helpers below read globals the script sets: servers (chatd
# first), peers (the others), cases, and append to the array `table`.

# One cell: the formatted median, or why there is none; flags runs that
# failed verification.
cell() {
    local server=$1 case=$2 expr=$3 kind=$4 v bad total
    if [[ -f $work/$server.$case.skip ]]; then
        note "$server, $case: cannot run: $(cat "$work/$server.$case.skip")"
        return
    fi
    total=$(find "$work" -name "$server.$case.*.json" | wc -l)
    if [[ $total -eq 0 ]]; then
        local err
        err=$(cat "$work/$server.$case".*.err 2>/dev/null | grep -v '^$' | tail -1)
        note "$server, $case: no run completed: ${err:-no output}"
        return
    fi
    v=$(med "$server" "$case" "$expr")
    printf "%s" "$(fmt "$kind" "$v")"
    bad=$(cat "$work/$server.$case".*.json | jq -s '[.[] | select(.ok | not)] | length')
    if [[ $bad -gt 0 ]]; then
        local why
        why=$(cat "$work/$server.$case".*.json | jq -rs '[.[] | select(.ok | not)] | .[0] |
            "missing \(.missing), out of order \(.out_of_order), duplicates \(.duplicates), " +
            "closed by server \(.closed_by_server), connect failed \(.connect_failed)" +
            (if .stalled then ", stalled (nothing delivered for the flood timeout)" else "" end)')
        printf " (!)%s" "$(note "$server, $case: $bad of $total runs failed verification, e.g. $why")"
    fi
}

# chatd's value divided by a peer's.
ratio() {
    local case=$1 expr=$2 peer=$3 a b
    [[ -f $work/$peer.$case.skip || -f $work/chatd.$case.skip ]] && return
    a=$(med chatd "$case" "$expr")
    b=$(med "$peer" "$case" "$expr")
    [[ -z $a || -z $b ]] && return
    awk -v a="$a" -v b="$b" 'BEGIN {if (b != 0) printf "%.2f", a/b}'
}

# row CASE_LABEL CASE METRIC_LABEL JQ KIND [noratio]
row() {
    local clabel=$1 case=$2 mlabel=$3 expr=$4 kind=$5 noratio=${6:-} s line
    [[ " $cases " == *" $case "* ]] || return 0
    line="| $clabel | $mlabel |"
    for s in $servers; do line+=" $(cell "$s" "$case" "$expr" "$kind") |"; done
    for s in "${peers[@]}"; do
        if [[ -n $noratio || " $servers " != *" chatd "* ]]; then
            line+=" |"
        else
            line+=" $(ratio "$case" "$expr" "$s") |"
        fi
    done
    table+=("$line")
}

# The slow-reader case's throughput relative to the same run without it.
slow_ratio() {
    local server=$1 a b
    a=$(med "$server" slow '.deliveries_per_s')
    b=$(med "$server" slowbase '.deliveries_per_s')
    [[ -z $a || -z $b ]] && return
    awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.3f", a/b}'
}

# The row "others' throughput with a slow reader vs without it".
slow_vs_base_row() {
    local line s stalled
    if [[ " $cases " == *" slow "* && " $cases " == *" slowbase "* ]]; then
        line="| | others' throughput vs without (↑) |"
        for s in $servers; do
            stalled=$(med "$s" slow 'if .stalled then 1 else 0 end')
            if [[ ${stalled:-0} == 1 ]]; then
                # Throughput until the last delivery would flatter a server that
                # froze everyone: say so instead.
                line+=" froze: $(fmt pct "$(med "$s" slow '.deliveries / .expected_deliveries')") of lines delivered |"
            else
                line+=" $(fmt pct "$(slow_ratio "$s")") |"
            fi
        done
        for s in "${peers[@]}"; do line+=" |"; done
        table+=("$line")
    fi
}

target() { targets+=("- $1: $2"); }
verdict() { awk -v v="${1:-}" -v t="$2" 'BEGIN {if (v == "") print "not measured"; else if (v >= t) print "met (" v ")"; else print "NOT met (" v ")"}'; }

# A free TCP port on 127.0.0.1 (the kernel's pick; racy only against
# other programs binding at the same instant).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# utime+stime of a pid, in clock ticks (getconf CLK_TCK per second).
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Waits (10 s at most) for "PREFIX HOST:PORT" in FILE while PID lives;
# prints PORT.
port_from_file() {
    local file=$1 prefix=$2 pid=$3 i line
    for i in $(seq 200); do
        line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            echo "${line##*:}"
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    return 1
}

# Starts a private redis-server on a free port (no persistence); sets
# redis_pid and redis_port. The caller kills redis_pid.
start_redis() {
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no >"$work/redis.log" 2>&1 &
    redis_pid=$!
    local i
    for i in $(seq 100); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis-server did not start: $(tail -1 "$work/redis.log")" >&2
    return 1
}

# A scratch directory in $work, and the server of the moment ($spid)
# stopped however the script ends.
bench_workdir() {
    work=$(mktemp -d)
    spid=
    trap '[[ -n $spid ]] && kill "$spid" 2>/dev/null; rm -rf "$work"' EXIT
}

# One flood run against a server of its own:
#   measure OUT LABEL PORT_PREFIX FLOOD_ARGS SERVER_COMMAND...
# starts the server (stdout in $work/srv.out), waits for its
# "PORT_PREFIX HOST:PORT" line, runs $flood --json --pid with FLOOD_ARGS
# (one string, split on spaces) against that port, stops the server, and
# keeps OUT only if flood wrote its JSON there; one line on stderr either way.
measure() {
    local out=$1 label=$2 prefix=$3 args=$4 port
    shift 4
    # Emptied here, not by the redirection below, which happens in the
    # background: port_from_file could read the last run's port meanwhile.
    : >"$work/srv.out"
    "$@" </dev/null >"$work/srv.out" 2>"$work/srv.err" &
    spid=$!
    port=$(port_from_file "$work/srv.out" "$prefix" "$spid") || port=0
    # shellcheck disable=SC2086 # the case's flags are meant to split
    timeout 300 "$flood" --port "$port" --pid "$spid" --json $args >"$out" 2>"$work/flood.err" || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    spid=
    if [[ -s $out ]]; then
        jq -r --arg s "$label" '"\($s): ok=\(.ok) \(.deliveries_per_s // 0|floor) deliveries/s p99 \(.latency_us.p99 // "-") us cpu/delivery \(.server.cpu_us_per_delivery // "-") us rss/conn \(.server.rss_per_conn_bytes // "-") B"' "$out" >&2
    else
        rm -f "$out"
        echo "$label: failed: $(tail -1 "$work/flood.err")" >&2
    fi
}
