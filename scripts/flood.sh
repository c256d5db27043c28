#!/usr/bin/env bash
# Load-test a running chat server with flood (builds it in release if needed).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/flood.sh [--host H] [--port P] [CLIENTS [SENDERS [LINES [BYTES]]]] [-- FLOOD_FLAGS...]

Drives a running line chat server (chatd, ncat --chat, ...) with the flood
load tool: CLIENTS connections, the first SENDERS of which send LINES lines
of BYTES bytes each; every connection receives. Prints deliveries/s, lines/s,
latency percentiles and whether every line reached every other client in
order, once. Exits non-zero if anything was missing, reordered or doubled.

  --host H     server host (default 127.0.0.1)
  --port P     server port (default 3000)
  CLIENTS      default 100
  SENDERS      default 10
  LINES        per sender, default 1000
  BYTES        per line, default 64
  -- FLAGS     passed to flood as they are, e.g. --pid PID, --rate 2000,
               --idle 10000, --slow 1, --json (see: flood --help)

Examples:
  cargo build --release
  ./target/release/chatd --port 3000 --limit-exempt 127.0.0.0/8 & chatd=$!
  scripts/flood.sh                          # 100 clients, 10 senders
  scripts/flood.sh 1000 1 2000              # fan-out to 1000 clients
  scripts/flood.sh -- --rate 2000 --pid "$chatd"
  kill "$chatd"
EOF
}

host=127.0.0.1
port=3000
positional=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --host) host=${2:?--host needs a value}; shift 2 ;;
        --host=*) host=${1#*=}; shift ;;
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --port=*) port=${1#*=}; shift ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "flood.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) positional+=("$1"); shift ;;
    esac
done
if [[ ${#positional[@]} -gt 4 ]]; then
    echo "flood.sh: at most 4 numbers: CLIENTS SENDERS LINES BYTES (see --help)" >&2
    exit 2
fi
clients=${positional[0]:-100}
senders=${positional[1]:-10}
lines=${positional[2]:-1000}
bytes=${positional[3]:-64}
for v in "$port" "$clients" "$senders" "$lines" "$bytes"; do
    if ! [[ $v =~ ^[0-9]+$ ]]; then
        echo "flood.sh: '$v' is not a number (see --help)" >&2
        exit 2
    fi
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release/flood"
if command -v cargo >/dev/null; then
    # A no-op in a second when the binary is up to date.
    (cd "$root" && cargo build --release --quiet --bin flood)
elif [[ ! -x $bin ]]; then
    echo "flood.sh: $bin is missing and cargo is not installed" >&2
    exit 2
fi

exec "$bin" --host "$host" --port "$port" \
    --clients "$clients" --senders "$senders" --lines "$lines" --bytes "$bytes" \
    "${extra[@]}"
