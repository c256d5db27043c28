#!/usr/bin/env bash
# A chatd cluster on one machine, on loopback: redis-server, N chatd
# instances sharing one chat through it, and HAProxy in front with the public
# line and web ports. See docs/cluster.md.
#
#   scripts/cluster.sh up [N]    start (N instances, default 2)
#   scripts/cluster.sh status    what runs, each instance's /healthz
#   scripts/cluster.sh down      stop everything `up` started
#
# Settings, from the environment (`up` records them; `status` and `down` use
# the recorded ones):
#   PORT=3000 HTTP_PORT=8080       public line and web ports (HAProxy)
#   BIND=127.0.0.1                 address HAProxy listens on (0.0.0.0: all)
#   BASE_PORT=3001 BASE_HTTP_PORT=8081
#                                  instance i listens on BASE_PORT+i-1 and
#                                  BASE_HTTP_PORT+i-1, on 127.0.0.1
#   REDIS_PORT=6390                the cluster's own redis-server, 127.0.0.1
#   REDIS_PASSWORD                 if set, redis requires it and chatd uses it
#   CHATD_BIN                      chatd binary (default: release build, built
#                                  with cargo if needed)
#   CHATD_ARGS                     extra flags for every instance
#   REDIS_SERVER=redis-server HAPROXY=haproxy   the programs to run
#   CHATD_CLUSTER_DIR              run dir: pid files, logs, generated
#                                  configs (default
#                                  ${XDG_RUNTIME_DIR:-/tmp}/chatd-cluster)
#
# Exit status: 0 done (status: everything up and healthy), 1 failure
# (status: something down), 2 usage, 3 (status only) nothing running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE="$ROOT/scripts/haproxy.cfg"
if [ -n "${CHATD_CLUSTER_DIR:-}" ]; then
  RUN=$CHATD_CLUSTER_DIR
elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then
  RUN=$XDG_RUNTIME_DIR/chatd-cluster
else
  # /tmp is shared: keep users' clusters apart.
  RUN=/tmp/chatd-cluster-$(id -u)
fi
STATE=$RUN/cluster.env
# How long each component may take to become ready, in tenths of a second.
WAIT_TENTHS=150

say() { printf '%s\n' "$*"; }
warn() { printf 'cluster.sh: %s\n' "$*" >&2; }

usage() {
  cat >&2 <<EOF
usage: scripts/cluster.sh up [N] | down | status
  up [N]   start redis-server, N chatd instances (default 2) and HAProxy
  status   show what is running and each instance's /healthz
  down     stop everything up started
settings come from the environment; see the top of $0
EOF
  exit 2
}

# --- small tools -----------------------------------------------------------

is_port() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

# True when something accepts connections on HOST:PORT.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# HTTP GET over bash's /dev/tcp (no curl needed): prints "CODE BODY" with the
# body's first line, or nothing when nobody answers.
http_get() {
  local host=$1 port=$2 path=$3
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    IFS= read -r -t 3 status <&3 || exit 1
    code=$(printf '%s' "$status" | awk '{print $2}')
    while IFS= read -r -t 3 line <&3; do
      [ "${line%$'\r'}" = "" ] && break
    done
    body=
    IFS= read -r -t 3 body <&3 || true
    printf '%s %s\n' "$code" "${body%$'\r'}"
  ) 2>/dev/null
}

# Sends PING to redis; prints its first reply line (+PONG, or -NOAUTH... when
# it wants a password: alive either way).
redis_ping() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    printf '%s\n' "${reply%$'\r'}"
  ) 2>/dev/null
}

# The pid in pid file $1 if that process is alive and its command line
# contains $2 (so a recycled pid is never mistaken for ours). A zombie (dead,
# not yet reaped: our processes are orphans, and not every init reaps at
# once) is not alive.
live_pid() {
  local file=$1 name=$2 pid line
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  line=$(ps -o stat= -o args= -p "$pid" 2>/dev/null) || return 1
  line=${line#"${line%%[![:space:]]*}"}
  case $line in
    Z*) return 1 ;;
    *"$name"*) printf '%s\n' "$pid" ;;
    *) return 1 ;;
  esac
}

# Stops the process of pid file $1 (checked against name $2): TERM, then KILL
# if it is still there after 5 s. Removes the pid file.
stop_pidfile() {
  local file=$1 name=$2 label=$3 pid i
  if pid=$(live_pid "$file" "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      say "stopped $label (pid $pid, killed: it ignored SIGTERM for 5 s)"
    else
      say "stopped $label (pid $pid)"
    fi
  else
    [ -f "$file" ] && say "$label was not running (stale pid file removed)"
  fi
  rm -f "$file"
}

# spawn LOG PIDFILE CMD ARGS...: starts CMD detached from this terminal,
# output (stdout and stderr) to a fresh LOG, its pid in PIDFILE.
spawn() {
  local log=$1 pidfile=$2
  shift 2
  : >"$log"
  if command -v setsid >/dev/null; then
    setsid "$@" </dev/null >>"$log" 2>&1 &
  else
    nohup "$@" </dev/null >>"$log" 2>&1 &
  fi
  printf '%s\n' "$!" >"$pidfile"
}

tail_log() {
  if [ -s "$1" ]; then
    warn "last lines of $1:"
    tail -n 15 "$1" | sed 's/^/    /' >&2
  fi
}

# --- settings ----------------------------------------------------------------

load_settings() {
  PORT=${PORT:-3000}
  HTTP_PORT=${HTTP_PORT:-8080}
  BIND=${BIND:-127.0.0.1}
  BASE_PORT=${BASE_PORT:-3001}
  BASE_HTTP_PORT=${BASE_HTTP_PORT:-8081}
  REDIS_PORT=${REDIS_PORT:-6390}
  REDIS_SERVER=${REDIS_SERVER:-redis-server}
  HAPROXY=${HAPROXY:-haproxy}
  CHATD_ARGS=${CHATD_ARGS:-}
  CHATD_BIN=${CHATD_BIN:-}
  NODES=2
}

save_settings() {
  {
    for v in NODES PORT HTTP_PORT BIND BASE_PORT BASE_HTTP_PORT REDIS_PORT \
      REDIS_SERVER HAPROXY CHATD_BIN CHATD_ARGS; do
      printf '%s=%q\n' "$v" "${!v}"
    done
  } >"$STATE"
}

# The recorded settings of the cluster in the run dir, if there is one.
load_saved() {
  [ -f "$STATE" ] || return 1
  # shellcheck disable=SC1090 # written by save_settings, in our own 0700 dir
  . "$STATE"
}

# Where to reach the public side from this machine.
lb_host() {
  case $BIND in
    0.0.0.0 | '*' | '' | :: | '[::]') printf '127.0.0.1\n' ;;
    *) printf '%s\n' "$BIND" ;;
  esac
}

node_port() { printf '%s\n' $((BASE_PORT + $1 - 1)); }
node_http_port() { printf '%s\n' $((BASE_HTTP_PORT + $1 - 1)); }

any_running() {
  local i
  live_pid "$RUN/haproxy.pid" haproxy >/dev/null && return 0
  live_pid "$RUN/redis.pid" redis-server >/dev/null && return 0
  for ((i = 1; i <= NODES; i++)); do
    live_pid "$RUN/node$i.pid" chatd >/dev/null && return 0
  done
  return 1
}

# --- up ----------------------------------------------------------------------

# Pid files (and their process names) that this `up` started: on failure they
# are stopped again, so `up` either brings the whole cluster up or leaves
# things as they were.
STARTED=()

fail_up() {
  warn "$*"
  local entry file name label
  if [ ${#STARTED[@]} -gt 0 ]; then
    warn "stopping what this run started (logs stay in $RUN)"
    for entry in "${STARTED[@]}"; do
      IFS='|' read -r file name label <<<"$entry"
      stop_pidfile "$file" "$name" "$label" >&2
    done
  fi
  exit 1
}

check_programs() {
  local missing=()
  command -v "$REDIS_SERVER" >/dev/null || missing+=("$REDIS_SERVER")
  command -v "$HAPROXY" >/dev/null || missing+=("$HAPROXY")
  if [ ${#missing[@]} -gt 0 ]; then
    warn "not installed: ${missing[*]}"
    warn "on Debian or Ubuntu: apt-get install redis-server haproxy (as root or with sudo)"
    warn "(Fedora: dnf install redis haproxy; macOS: brew install redis haproxy)"
    exit 1
  fi
}

find_chatd() {
  if [ -n "$CHATD_BIN" ]; then
    [ -x "$CHATD_BIN" ] || {
      warn "CHATD_BIN=$CHATD_BIN is not an executable file"
      exit 1
    }
    return
  fi
  if command -v cargo >/dev/null; then
    say "building chatd (cargo build --release; quick when it is up to date)"
    cargo build --release --quiet --bin chatd --manifest-path "$ROOT/Cargo.toml" ||
      {
        warn "cargo build failed"
        exit 1
      }
  elif [ ! -x "$ROOT/target/release/chatd" ]; then
    warn "no chatd binary: install Rust (https://rustup.rs) or set CHATD_BIN"
    exit 1
  fi
  CHATD_BIN=$ROOT/target/release/chatd
}

# Waits for a component; $1 label, $2 pid file, $3 name, $4 log, then a
# command that succeeds once it is ready.
wait_ready() {
  local label=$1 pidfile=$2 name=$3 log=$4 i
  shift 4
  for ((i = 0; i < WAIT_TENTHS; i++)); do
    live_pid "$pidfile" "$name" >/dev/null || {
      tail_log "$log"
      fail_up "$label exited during start-up (log: $log)"
    }
    "$@" && return 0
    sleep 0.1
  done
  tail_log "$log"
  fail_up "$label was not ready after $((WAIT_TENTHS / 10)) s (log: $log)"
}

redis_ready() { [ -n "$(redis_ping "$REDIS_PORT")" ]; }
chatd_ready() { grep -q '^ready$' "$1"; }
# The last word chatd logged about its link to Redis is "up".
link_up() {
  [ "$(grep -o 'cluster link \(up\|down\)' "$1" | tail -n 1 || true)" = "cluster link up" ]
}
lb_ready() {
  local r
  r=$(http_get "$(lb_host)" "$HTTP_PORT" /healthz) || true
  [ "${r%% *}" = 200 ]
}

# Refuses to start a component on a port someone else already listens on:
# the component would fail anyway, less clearly.
need_free() {
  local port=$1 what=$2
  if port_open 127.0.0.1 "$port"; then
    fail_up "port $port ($what) is in use; pick another (see the settings at the top of $0)"
  fi
}

start_redis() {
  local pid
  if pid=$(live_pid "$RUN/redis.pid" redis-server); then
    say "redis    already running (pid $pid, 127.0.0.1:$REDIS_PORT)"
    return
  fi
  need_free "$REDIS_PORT" "REDIS_PORT, for redis-server"
  # Settings go in a file, not on the command line, so a password never
  # shows in ps. No persistence: the cluster's state in Redis is rebuilt
  # by the instances whenever they (re)connect.
  (
    umask 077
    {
      printf 'port %s\nbind 127.0.0.1\nprotected-mode yes\n' "$REDIS_PORT"
      printf 'save ""\nappendonly no\ndaemonize no\nlogfile ""\n'
      printf 'dir "%s"\n' "$RUN"
      if [ -n "${REDIS_PASSWORD:-}" ]; then
        printf 'requirepass "%s"\n' "$REDIS_PASSWORD"
      fi
    } >"$RUN/redis.conf"
  )
  spawn "$RUN/redis.log" "$RUN/redis.pid" "$REDIS_SERVER" "$RUN/redis.conf"
  STARTED+=("$RUN/redis.pid|redis-server|redis")
  wait_ready redis "$RUN/redis.pid" redis-server "$RUN/redis.log" redis_ready
  say "redis    started (pid $(cat "$RUN/redis.pid"), 127.0.0.1:$REDIS_PORT)"
}

start_node() {
  local i=$1 lp hp pid log=$RUN/node$1.log
  lp=$(node_port "$i")
  hp=$(node_http_port "$i")
  if pid=$(live_pid "$RUN/node$i.pid" chatd); then
    say "node$i    already running (pid $pid, line 127.0.0.1:$lp, web 127.0.0.1:$hp)"
    return
  fi
  need_free "$lp" "line port of node$i (BASE_PORT+$((i - 1)))"
  need_free "$hp" "web port of node$i (BASE_HTTP_PORT+$((i - 1)))"
  # CHATD_ARGS is split into words on purpose: it holds flags.
  # shellcheck disable=SC2086
  spawn "$log" "$RUN/node$i.pid" "$CHATD_BIN" --host 127.0.0.1 --port "$lp" \
    --http-port "$hp" --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "node$i" \
    --proxy-protocol --trusted-proxy 127.0.0.2 $CHATD_ARGS
  STARTED+=("$RUN/node$i.pid|chatd|node$i")
  wait_ready "node$i" "$RUN/node$i.pid" chatd "$log" chatd_ready "$log"
  say "node$i    started (pid $(cat "$RUN/node$i.pid"), line 127.0.0.1:$lp, web 127.0.0.1:$hp)"
}

# Writes the HAProxy config for this cluster from the template: the public
# address and ports filled in, each backend's server block replaced by one
# line per instance, and a stats socket for `status`.
write_haproxy_cfg() {
  local out=$RUN/haproxy.cfg i line_servers='' web_servers=''
  for ((i = 1; i <= NODES; i++)); do
    line_servers+="    server node$i 127.0.0.1:$(node_port "$i") check port $(node_http_port "$i")"$'\n'
    web_servers+="    server node$i 127.0.0.1:$(node_http_port "$i") check"$'\n'
  done
  {
    printf '# Written by scripts/cluster.sh from scripts/haproxy.cfg; rewritten by each "up".\n'
    LINE_SERVERS=${line_servers%$'\n'} WEB_SERVERS=${web_servers%$'\n'} awk '
      /^backend[ \t]/ { backend = $2 }
      /^[ \t]*# servers[ \t]*$/ {
        print
        if (backend == "chatd_line") print ENVIRON["LINE_SERVERS"]
        else if (backend == "chatd_web") print ENVIRON["WEB_SERVERS"]
        else bad = 1
        skip = 1
        next
      }
      /^[ \t]*# end servers[ \t]*$/ { skip = 0 }
      !skip { print }
      END { exit bad }
    ' "$TEMPLATE" |
      sed -E \
        -e "s/\\$\\{CHATD_LB_BIND(-[^}]*)?\\}/$BIND/g" \
        -e "s/\\$\\{CHATD_LB_PORT(-[^}]*)?\\}/$PORT/g" \
        -e "s/\\$\\{CHATD_LB_HTTP_PORT(-[^}]*)?\\}/$HTTP_PORT/g"
    printf '\n# For "scripts/cluster.sh status".\nglobal\n'
    printf '    stats socket "%s" mode 600 level user\n' "$RUN/haproxy.sock"
  } >"$out" || fail_up "cannot write $out from $TEMPLATE"
  # The template must have kept its markers: one server per instance in
  # each of the two backends.
  local n
  n=$(grep -c '^[[:space:]]*server node' "$out" || true)
  [ "$n" -eq $((2 * NODES)) ] ||
    fail_up "$TEMPLATE lost its '# servers' / '# end servers' markers ($n server lines written, want $((2 * NODES)))"
  local check
  if ! check=$("$HAPROXY" -c -f "$out" 2>&1); then
    printf '%s\n' "$check" | sed 's/^/    /' >&2
    fail_up "haproxy refuses the generated $out"
  fi
}

start_haproxy() {
  local pid
  if pid=$(live_pid "$RUN/haproxy.pid" haproxy); then
    say "haproxy  already running (pid $pid, line $BIND:$PORT, web http://$(lb_host):$HTTP_PORT/)"
    return
  fi
  need_free "$PORT" "PORT, public line port"
  need_free "$HTTP_PORT" "HTTP_PORT, public web port"
  write_haproxy_cfg
  rm -f "$RUN/haproxy.sock"
  # -db: stay in the foreground (so the pid is ours and the log, on stderr,
  # goes to the log file); setsid detaches it from this terminal.
  spawn "$RUN/haproxy.log" "$RUN/haproxy.pid" "$HAPROXY" -db -f "$RUN/haproxy.cfg"
  STARTED+=("$RUN/haproxy.pid|haproxy|haproxy")
  wait_ready haproxy "$RUN/haproxy.pid" haproxy "$RUN/haproxy.log" lb_ready
  say "haproxy  started (pid $(cat "$RUN/haproxy.pid"), line $BIND:$PORT, web http://$(lb_host):$HTTP_PORT/)"
}

cmd_up() {
  local want=${1:-}
  if [ -n "$want" ] && ! [[ $want =~ ^[0-9]+$ && $want -ge 1 && $want -le 64 ]]; then
    warn "N must be a number from 1 to 64, not '$want'"
    usage
  fi
  if ! mkdir -p "$RUN" || ! chmod 700 "$RUN"; then
    warn "cannot use run dir $RUN"
    exit 1
  fi
  load_settings
  # A subshell, so that a stale record does not override the environment.
  if (load_saved && any_running); then
    load_saved
    # Bring the recorded cluster back to full strength; never reshape a
    # running one under its users.
    if [ -n "$want" ] && [ "$want" -ne "$NODES" ]; then
      warn "a cluster of $NODES instances is running (run dir $RUN)"
      warn "stop it first: scripts/cluster.sh down"
      exit 1
    fi
    say "chatd cluster in $RUN is already (partly) running: checking each part"
  else
    NODES=${want:-2}
  fi
  local v
  for v in PORT HTTP_PORT BASE_PORT BASE_HTTP_PORT REDIS_PORT; do
    is_port "${!v}" || {
      warn "$v=${!v} is not a port number"
      exit 2
    }
  done
  if [ $((BASE_PORT + NODES - 1)) -gt 65535 ] || [ $((BASE_HTTP_PORT + NODES - 1)) -gt 65535 ]; then
    warn "BASE_PORT/BASE_HTTP_PORT + $NODES instances go past port 65535"
    exit 2
  fi
  check_programs
  find_chatd
  save_settings

  trap 'fail_up "interrupted"' INT TERM
  start_redis
  local i
  for ((i = 1; i <= NODES; i++)); do
    start_node "$i"
  done
  # Each instance says when it is connected to Redis and subscribed; until
  # then users on different instances would not see each other.
  for ((i = 1; i <= NODES; i++)); do
    wait_ready "node$i (cluster link)" "$RUN/node$i.pid" chatd "$RUN/node$i.log" \
      link_up "$RUN/node$i.log"
  done
  start_haproxy
  trap - INT TERM

  say ""
  say "chatd cluster up: $NODES instances behind HAProxy, Redis on 127.0.0.1:$REDIS_PORT"
  say "  chat:   telnet $(lb_host) $PORT     (or: nc $(lb_host) $PORT)"
  say "  web:    http://$(lb_host):$HTTP_PORT/"
  # `status` and `down` find the cluster by its run dir: when it is not
  # the default one, the hint carries it, so it works when pasted.
  local again=$0
  if [ -n "${CHATD_CLUSTER_DIR:-}" ]; then
    again="CHATD_CLUSTER_DIR=$(printf '%q' "$CHATD_CLUSTER_DIR") $0"
  fi
  say "  status: $again status      stop: $again down"
  say "  logs:   $RUN/*.log"
}

# --- status ------------------------------------------------------------------

# HAProxy's view of its servers, through its stats socket, if a tool that
# speaks to a unix socket is at hand.
haproxy_servers() {
  local sock=$RUN/haproxy.sock out=''
  [ -S "$sock" ] || return 0
  if command -v socat >/dev/null; then
    out=$(printf 'show stat\n' | timeout 3 socat - "UNIX-CONNECT:$sock" 2>/dev/null) || true
  elif command -v nc >/dev/null; then
    out=$(printf 'show stat\n' | timeout 3 nc -U "$sock" 2>/dev/null) || true
  fi
  [ -n "$out" ] || return 0
  # CSV: 1 pxname, 2 svname, 5 scur (current sessions), 18 status.
  printf '%s\n' "$out" | awk -F, '
    $1 ~ /^chatd_/ && $2 != "BACKEND" && $2 != "FRONTEND" {
      s[$1] = s[$1] sprintf("%s%s %s (%s conn)", (s[$1] == "" ? "" : ", "), $2, $18, $5)
    }
    END { for (b in s) printf "         %s: %s\n", b, s[b] }' | sort
}

cmd_status() {
  load_settings
  if ! load_saved || ! any_running; then
    say "no chatd cluster running (run dir $RUN)"
    exit 3
  fi
  local ok=1 pid i lp hp health link
  say "chatd cluster in $RUN: $NODES instances"
  if pid=$(live_pid "$RUN/redis.pid" redis-server); then
    say "redis    up    pid $pid  127.0.0.1:$REDIS_PORT  PING: $(redis_ping "$REDIS_PORT" || echo 'no answer')"
  else
    say "redis    DOWN"
    ok=0
  fi
  for ((i = 1; i <= NODES; i++)); do
    lp=$(node_port "$i")
    hp=$(node_http_port "$i")
    if pid=$(live_pid "$RUN/node$i.pid" chatd); then
      health=$(http_get 127.0.0.1 "$hp" /healthz) || true
      link=$(grep -o 'cluster link \(up\|down\)' "$RUN/node$i.log" 2>/dev/null | tail -n 1) || true
      say "node$i    up    pid $pid  line 127.0.0.1:$lp  web 127.0.0.1:$hp  /healthz: ${health:-no answer}  ${link:-cluster link: not up yet}"
      [ "${health%% *}" = 200 ] || ok=0
      [ "$link" = "cluster link up" ] || ok=0
    else
      say "node$i    DOWN  (log: $RUN/node$i.log)"
      ok=0
    fi
  done
  if pid=$(live_pid "$RUN/haproxy.pid" haproxy); then
    say "haproxy  up    pid $pid  line $BIND:$PORT  web http://$(lb_host):$HTTP_PORT/  /healthz: $(http_get "$(lb_host)" "$HTTP_PORT" /healthz || true)"
    haproxy_servers
  else
    say "haproxy  DOWN"
    ok=0
  fi
  if [ "$ok" != 1 ]; then
    say "something is down: scripts/cluster.sh up starts what is missing (logs: $RUN/*.log)"
    exit 1
  fi
}

# --- down --------------------------------------------------------------------

cmd_down() {
  load_settings
  if ! load_saved; then
    # No record: still clean up pid files a crashed `up` may have left.
    NODES=0
    local f
    for f in "$RUN"/node*.pid; do
      [ -e "$f" ] || continue
      f=${f##*/node}
      f=${f%.pid}
      [[ $f =~ ^[0-9]+$ ]] && [ "$f" -gt "$NODES" ] && NODES=$f
    done
  fi
  if ! any_running; then
    say "no chatd cluster running (run dir $RUN)"
    rm -f "$STATE" "$RUN"/*.pid "$RUN/haproxy.sock"
    return 0
  fi
  # Front to back: no new users while the instances stop.
  stop_pidfile "$RUN/haproxy.pid" haproxy haproxy
  local i
  for ((i = 1; i <= NODES; i++)); do
    stop_pidfile "$RUN/node$i.pid" chatd "node$i"
  done
  stop_pidfile "$RUN/redis.pid" redis-server redis
  rm -f "$STATE" "$RUN/haproxy.sock"
  say "chatd cluster stopped (logs stay in $RUN)"
}

case ${1:-} in
  up)
    [ $# -le 2 ] || usage
    cmd_up "${2:-}"
    ;;
  status)
    [ $# -eq 1 ] || usage
    cmd_status
    ;;
  down)
    [ $# -eq 1 ] || usage
    cmd_down
    ;;
  *) usage ;;
esac
