#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and stop_requested run from traps
# `make run`: wsproxy in front of a MySQL-protocol engine, on ws://127.0.0.1:${PORT:-8080}/.
#
#   test/run-demo.sh                       start a throwaway MariaDB (database demo,
#                                          user demo / password demo) and wsproxy before it
#   SOCKET=/path/engine.sock test/run-demo.sh   front that running engine instead
#   PORT=9000 test/run-demo.sh             listen on another port
#   WSPROXY=build/asan/wsproxy test/run-demo.sh   run another build of wsproxy
#
# Runs until Ctrl-C / SIGTERM, then stops what it started (by PID) and removes its
# temporary directory. wsproxy listens on 127.0.0.1 only and sends a PROXY v2 header
# to the engine at the start of every connection.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
BIN=${WSPROXY:-$REPO/build/wsproxy}   # WSPROXY=path: run that binary (e.g. build/asan/wsproxy)
PORT=${PORT:-8080}
SOCKET=${SOCKET:-}
READY_TIMEOUT=15   # seconds for wsproxy to accept connections

say() { echo "run-demo: $*"; }
die() { echo "run-demo: $*" >&2; exit 1; }

if [ $# -gt 0 ]; then
    echo "usage: [PORT=8080] [SOCKET=/path/to/engine.sock] $0" >&2
    exit 2
fi
case $PORT in
    ''|*[!0-9]*) die "PORT must be a number (got '$PORT')" ;;
esac
if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then die "PORT must be 1..65535 (got $PORT)"; fi
if [ -n "$SOCKET" ] && [ ! -S "$SOCKET" ]; then
    die "SOCKET=$SOCKET is not a Unix socket (is the engine running?)"
fi

# ---- cleanup: everything started here, by PID --------------------------------------
TMP=
WSPID=
MARIADB_STARTED=0
cleaned=0
cleanup() {
    [ "$cleaned" -eq 0 ] || return 0
    cleaned=1
    trap '' INT TERM
    if [ -n "$WSPID" ] && kill -0 "$WSPID" 2>/dev/null; then
        kill -TERM "$WSPID" 2>/dev/null || true
        local _
        for _ in $(seq 1 100); do   # 10 s
            kill -0 "$WSPID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$WSPID" 2>/dev/null; then
            echo "run-demo: wsproxy (pid $WSPID) did not stop within 10 s; sending SIGKILL" >&2
            kill -KILL "$WSPID" 2>/dev/null || true
        fi
        wait "$WSPID" 2>/dev/null || true
        say "stopped wsproxy (pid $WSPID)"
    fi
    if [ "$MARIADB_STARTED" -eq 1 ]; then
        bash "$HERE/mariadb.sh" stop "$TMP" | sed 's/^/run-demo: /' || true
    fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        rm -rf -- "$TMP"
        say "removed $TMP"
    fi
}
trap cleanup EXIT
stop_requested() { echo; say "stopping"; exit 0; }
trap stop_requested INT TERM

# ---- prerequisites -------------------------------------------------------------------
bash "$HERE/deps.sh"
if [ -z "${WSPROXY:-}" ]; then
    make -s -C "$REPO" build/wsproxy
    [ -x "$BIN" ] || die "$BIN was not built"
else
    [ -x "$BIN" ] || die "WSPROXY=$BIN is not an executable"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-demo.XXXXXX")
chmod 755 "$TMP"   # wsproxy runs as nobody (--user): it must reach the engine socket

# ---- engine -------------------------------------------------------------------------
if [ -n "$SOCKET" ]; then
    ENGINE_SOCK=$SOCKET
    ENGINE_DESC="existing engine on $SOCKET"
else
    MARIADB_STARTED=1
    if ! bash "$HERE/mariadb.sh" start "$TMP" | sed 's/^/run-demo: /'; then
        die "MariaDB did not start"
    fi
    ENGINE_SOCK=$TMP/mysqld.sock
    ENGINE_DESC="MariaDB $(mariadb --no-defaults --socket="$ENGINE_SOCK" -uroot -N -B \
        -e 'SELECT VERSION()' 2>/dev/null || echo '?') on $ENGINE_SOCK (error log $TMP/mysqld.err)"
fi

# ---- wsproxy ------------------------------------------------------------------------
LOG=$TMP/websocket_proxy.log
"$BIN" --http-port "$PORT" --bind 127.0.0.1 --socket "$ENGINE_SOCK" \
    --log-dir "$TMP" --proxy-protocol v2 --user nobody </dev/null >"$TMP/wsproxy.out" 2>&1 &
WSPID=$!

wsproxy_failed() {
    echo "run-demo: $*" >&2
    if [ -s "$TMP/wsproxy.out" ]; then
        echo "---- wsproxy stdout/stderr ----" >&2; tail -n 20 "$TMP/wsproxy.out" >&2
    fi
    if [ -s "$LOG" ]; then
        echo "---- last lines of $LOG ----" >&2; tail -n 20 "$LOG" >&2
    fi
    exit 1
}

ready=0
deadline=$((SECONDS + READY_TIMEOUT))
while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$WSPID" 2>/dev/null; then
        st=0; wait "$WSPID" || st=$?
        WSPID=
        wsproxy_failed "wsproxy exited during startup (status $st)"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
[ $ready -eq 1 ] || wsproxy_failed "wsproxy did not accept connections on 127.0.0.1:$PORT within ${READY_TIMEOUT}s"
# Someone else may hold the port: make sure it is our wsproxy that is listening.
sleep 0.2
kill -0 "$WSPID" 2>/dev/null || { st=0; wait "$WSPID" || st=$?; WSPID=; wsproxy_failed "wsproxy exited (status $st)"; }

# /health, read with bash only (no curl needed)
health=$( { exec 3<>"/dev/tcp/127.0.0.1/$PORT" &&
            printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3 &&
            timeout 3 cat <&3; } 2>/dev/null | head -n 1 | tr -d '\r' || true)

URL="ws://127.0.0.1:$PORT/"
cat <<EOF

  wsproxy is running (pid $WSPID)
    WebSocket URL : $URL
    health        : ${health:-"(no answer to GET /health)"}
    proxy log     : $LOG
    engine        : $ENGINE_DESC

  Run a query (from $REPO):
    node test/query.js --url $URL --user demo --password demo "SELECT VERSION(), USER(), CURRENT_USER()"

  Press Ctrl-C to stop (stops wsproxy$( [ "$MARIADB_STARTED" -eq 1 ] && echo " and MariaDB"), removes $TMP).

EOF

# Wait for Ctrl-C / SIGTERM (the trap exits) or for wsproxy to end on its own.
st=0
wait "$WSPID" || st=$?
WSPID=
# status 0: it was stopped by a signal (e.g. the terminal's Ctrl-C reached it too)
[ $st -eq 0 ] && { say "wsproxy stopped"; exit 0; }
wsproxy_failed "wsproxy exited on its own (status $st)"
