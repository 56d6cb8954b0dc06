#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and stop_requested run from traps
# `make run`: wsproxy in front of a MySQL-protocol engine, and the studio page
# (examples/studio/) that talks to it from a browser.
#
#   test/run-demo.sh                  a throwaway MariaDB (database demo, user demo /
#                                     password demo) with wsproxy inside it: the
#                                     plugin (engines/mariadb/), loaded from its my.cnf
#                                     with wsproxy_http_port = 8080 (the seed's Option 1);
#                                     the studio on http://127.0.0.1:8081/
#   TLS=1 test/run-demo.sh            (make run TLS=1) a throwaway CA and a certificate
#                                     for localhost and 127.0.0.1; the studio on
#                                     https://127.0.0.1:8081/, wsproxy on wss://127.0.0.1:8443/
#   SOCKET=/path/engine.sock ...      front that running engine with the standalone
#                                     wsproxy program (as user nobody) instead
#   PORT=9000 / STUDIO_PORT=9001 ...  other ports
#   WSPROXY=build/asan/wsproxy ...    with SOCKET=: run another build of wsproxy
#
# Runs until Ctrl-C, SIGTERM or SIGHUP (the terminal closed), then stops what it
# started (by PID) and removes its temporary directory (engine data, certificates,
# logs), also when its output is gone (make run | tee, then Ctrl-C). Everything
# listens on 127.0.0.1 only; wsproxy accepts WebSockets only from the studio's origin
# and sends a PROXY v2 header to the engine at the start of every connection.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
BIN=${WSPROXY:-$REPO/build/wsproxy}   # WSPROXY=path: run that binary (e.g. build/asan/wsproxy)
TLS=${TLS:-0}
[ "$TLS" = 1 ] || TLS=0
if [ "$TLS" = 1 ]; then PORT=${PORT:-8443}; else PORT=${PORT:-8080}; fi
STUDIO_PORT=${STUDIO_PORT:-8081}
STUDIO_DIR=$REPO/examples/studio
SOCKET=${SOCKET:-}
PY=/usr/bin/python3   # Debian's, for the page server and the /health probe
READY_TIMEOUT=15   # seconds for wsproxy and the page server to accept connections

say() { echo "run-demo: $*"; }
die() { echo "run-demo: $*" >&2; exit 1; }

if [ $# -gt 0 ]; then
    echo "usage: [TLS=1] [PORT=8080] [STUDIO_PORT=8081] [SOCKET=/path/to/engine.sock] $0" >&2
    exit 2
fi
for v in PORT STUDIO_PORT; do
    case ${!v} in
        ''|*[!0-9]*) die "$v must be a number (got '${!v}')" ;;
    esac
    if [ "${!v}" -lt 1 ] || [ "${!v}" -gt 65535 ]; then die "$v must be 1..65535 (got ${!v})"; fi
done
[ "$PORT" != "$STUDIO_PORT" ] || die "PORT and STUDIO_PORT must differ (both $PORT)"
if [ -n "$SOCKET" ] && [ ! -S "$SOCKET" ]; then
    die "SOCKET=$SOCKET is not a Unix socket (is the engine running?)"
fi

# ---- cleanup: everything started here, by PID --------------------------------------
TMP=
WSPID=
WEBPID=
ENGINE_STARTED=0
ENGINE_PID=
cleaned=0
stop_pid() {  # name pid: SIGTERM, wait up to 10 s, then SIGKILL
    local name=$1 pid=$2 _
    # wsproxy ends by itself on the terminal's Ctrl-C (it gets the SIGINT too)
    kill -0 "$pid" 2>/dev/null || { say "$name (pid $pid) had stopped"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run-demo: $name (pid $pid) did not stop within 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    say "stopped $name (pid $pid)"
}
cleanup() {
    [ "$cleaned" -eq 0 ] || return 0
    cleaned=1
    set +e   # every step runs, whatever failed before
    trap '' HUP INT TERM PIPE
    [ -z "$WEBPID" ] || stop_pid "the studio's page server" "$WEBPID"
    [ -z "$WSPID" ] || stop_pid wsproxy "$WSPID"
    [ "$ENGINE_STARTED" -eq 0 ] || engine_stop
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        rm -rf -- "$TMP"
        say "removed $TMP"
    fi
}
trap cleanup EXIT
# Every way a session ends comes here: Ctrl-C, kill, the terminal closing (HUP), the
# reader of a pipe gone (make run | tee, then Ctrl-C: PIPE).  Our output may be gone
# too: then what cleanup says goes to stderr, and a write that fails stops nothing.
stop_requested() {
    trap '' PIPE
    { echo; } 2>/dev/null || exec 1>&2
    say "stopping (SIG$1)" 2>/dev/null || true
    exit 0
}
for sig in HUP INT TERM PIPE; do
    # shellcheck disable=SC2064  # the name, now
    trap "stop_requested $sig" "$sig"
done

# ---- the engine: the one place that starts and stops it -----------------------------
# engine_start sets ENGINE_SOCK (the Unix socket wsproxy relays to), ENGINE_DESC (one
# line for the banner) and DEMO_USER / DEMO_PASSWORD / DEMO_DATABASE (empty: none to
# show); engine_stop stops what engine_start started.  Without SOCKET= the engine is
# MariaDB with the wsproxy plugin loaded from its my.cnf, serving PORT itself
# (ENGINE_PID is then the proxy's process too).
engine_start() {
    if [ -n "$SOCKET" ]; then
        ENGINE_SOCK=$SOCKET
        ENGINE_DESC="existing engine on $SOCKET"
        DEMO_USER='' DEMO_PASSWORD='' DEMO_DATABASE=''
        return 0
    fi
    ENGINE_STARTED=1
    local out
    local err=$TMP/demo-server.err   # its last line is the cause, said again last
    if ! out=$(WSPROXY_DEMO_CERT=${CERT:-} WSPROXY_DEMO_KEY=${KEY:-} \
            bash "$REPO/engines/mariadb/demo-server.sh" start "$TMP/mariadb" "$PORT" "$ORIGIN" \
            2>"$err"); then
        head -n -1 "$err" >&2
        die "MariaDB with the wsproxy plugin did not start: $(tail -n 1 "$err" | sed 's/^demo-server.sh: //')"
    fi
    sed 's/^/run-demo: mariadb: /' <<<"$out"
    ENGINE_SOCK=$(sed -n 's/^socket=//p' <<<"$out")
    ENGINE_PID=$(sed -n 's/^pid=//p' <<<"$out")
    ENGINE_CNF=$(sed -n 's/^cnf=//p' <<<"$out")
    ENGINE_DESC="MariaDB $(mariadb --no-defaults --socket="$ENGINE_SOCK" -uroot -N -B \
        -e 'SELECT VERSION()' 2>/dev/null || echo '?') on $ENGINE_SOCK (pid $ENGINE_PID, error log $TMP/mariadb/mysqld.err)"
    DEMO_USER=demo DEMO_PASSWORD=demo DEMO_DATABASE=demo
}
engine_stop() {
    bash "$REPO/engines/mariadb/demo-server.sh" stop "$TMP/mariadb" | sed 's/^/run-demo: /' || true
}

# ---- prerequisites -------------------------------------------------------------------
# TLS= here chooses ws:// or wss://, not the build: the builds always have TLS (a
# `make run TLS=0` must not turn the plugin into a no-TLS build for the next TLS=1).
bash "$HERE/deps.sh" demo
if [ -n "$SOCKET" ]; then
    if [ -z "${WSPROXY:-}" ]; then
        make -s -C "$REPO" TLS=1 build/wsproxy
        [ -x "$BIN" ] || die "$BIN was not built"
    else
        [ -x "$BIN" ] || die "WSPROXY=$BIN is not an executable"
    fi
else
    [ "$(id -u)" -eq 0 ] || die "the demo's MariaDB runs as root (it reads the plugin and its data wherever the checkout lives): run as root, or use SOCKET="
    make -s -C "$REPO" TLS=1 mariadb-plugin
fi
[ -f "$STUDIO_DIR/index.html" ] || die "$STUDIO_DIR/index.html is missing"

# A port another program holds, said alone and before anything starts.
bind_error() {  # port: why 127.0.0.1:port cannot be bound as the servers bind it (SO_REUSEADDR)
    "$PY" - "$1" 2>&1 <<'PY' || true
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as e:
    sys.exit("bind(127.0.0.1:%s): %s" % (sys.argv[1], e.strerror))
PY
}
for v in PORT STUDIO_PORT; do
    why=$(bind_error "${!v}")
    [ -z "$why" ] || die "$why: another program has that port; choose another, e.g." \
        "make run $v=$(( ${!v} > 64535 ? ${!v} - 1000 : ${!v} + 1000 ))"
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-demo.XXXXXX")
chmod 755 "$TMP"   # the certificates are read by wsproxy as nobody (SOCKET=)

# ---- TLS: a throwaway CA and a certificate for localhost and 127.0.0.1 ----------------
make_certs() {
    local d=$TMP/tls ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$d"
    {
        openssl req -x509 "${ec[@]}" -keyout "$d/ca.key" -out "$d/ca.pem" -days 30 \
            -subj "/CN=wsproxy demo CA (throwaway, $(hostname))" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" &&
        openssl req "${ec[@]}" -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=localhost" &&
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" > "$d/server.ext" &&
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -CAcreateserial -days 30 -extfile "$d/server.ext" -out "$d/server.pem" &&
        cat "$d/server.pem" "$d/ca.pem" > "$d/chain.pem"
    } >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "making the certificates failed"; }
    CA=$d/ca.pem CERT=$d/chain.pem KEY=$d/server.key
    # Chromium's --ignore-certificate-errors-spki-list: base64 SHA-256 of the key
    SPKI=$(openssl x509 -in "$d/server.pem" -pubkey -noout | openssl pkey -pubin -outform DER |
           openssl dgst -sha256 -binary | base64)
}

if [ "$TLS" = 1 ]; then
    make_certs
    WS_SCHEME=wss HTTP_SCHEME=https
else
    WS_SCHEME=ws HTTP_SCHEME=http
fi
ORIGIN=$HTTP_SCHEME://127.0.0.1:$STUDIO_PORT
URL=$WS_SCHEME://127.0.0.1:$PORT/

engine_start

# ---- wsproxy ------------------------------------------------------------------------
# Inside MariaDB (the plugin) unless SOCKET= names an engine: then the standalone
# program, as nobody (it must never lend its own uid to a client, see docs/security.md).
if [ -n "$SOCKET" ]; then
    LOG=$TMP/websocket_proxy.log
    tls_args=()
    [ "$TLS" = 0 ] || tls_args=(--https-port "$PORT" --cert "$CERT" --key "$KEY")
    [ "$TLS" = 1 ] || tls_args=(--http-port "$PORT")
    user_args=()
    [ "$(id -u)" -ne 0 ] || user_args=(--user nobody)
    "$BIN" "${tls_args[@]}" --bind 127.0.0.1 --socket "$ENGINE_SOCK" "${user_args[@]}" \
        --allowed-origin "$ORIGIN" --log-dir "$TMP" --proxy-protocol v2 \
        </dev/null >"$TMP/wsproxy.out" 2>&1 &
    WSPID=$!
else
    LOG=$TMP/mariadb/websocket_proxy.log
fi

failed() {  # the logs' last lines, then what failed: the cause is said last
    local f
    for f in "$TMP/wsproxy.out" "$LOG" "$TMP/studio-http.log" "$TMP/mariadb/mysqld.err"; do
        if [ -s "$f" ]; then echo "---- last lines of $f ----" >&2; tail -n 20 "$f" >&2; fi
    done
    echo "run-demo: $*" >&2
    exit 1
}

wait_port() {  # name pidvar port: until it accepts, while the process lives
    local name=$1 pidvar=$2 port=$3 st deadline=$((SECONDS + READY_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "${!pidvar}" 2>/dev/null; then
            st=0; wait "${!pidvar}" || st=$?
            printf -v "$pidvar" ''
            failed "$name exited during startup (status $st)"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            # Someone else may hold the port: make sure our process still runs.
            sleep 0.2
            kill -0 "${!pidvar}" 2>/dev/null && return 0
            continue
        fi
        sleep 0.1
    done
    failed "$name did not accept connections on 127.0.0.1:$port within ${READY_TIMEOUT}s"
}
if [ -n "$SOCKET" ]; then
    wait_port wsproxy WSPID "$PORT"
else
    wait_port "MariaDB's wsproxy" ENGINE_PID "$PORT"
fi

# ---- the studio's page server (Python's http.server, 127.0.0.1 only) ---------------
"$PY" - "$STUDIO_DIR" "$STUDIO_PORT" "${CERT:-}" "${KEY:-}" \
    >"$TMP/studio-http.log" 2>&1 <<'PY' &
import functools, http.server, ssl, sys
directory, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
PY
WEBPID=$!
wait_port "the studio's page server" WEBPID "$STUDIO_PORT"

# /health: status line and body
health=$("$PY" - "$HTTP_SCHEME://127.0.0.1:$PORT/health" "${CA:-}" <<'PY' 2>&1 || true
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] else None
with urllib.request.urlopen(sys.argv[1], timeout=3, context=ctx) as r:
    print(r.status, r.reason, "-", r.read().decode().strip())
PY
)

# ---- the banner ------------------------------------------------------------------------
# The studio's form is filled from the URL's fragment, which browsers never send
# to the server: the password stays out of the page server's log.
page=$ORIGIN/
if [ -n "$DEMO_USER" ]; then
    prefill="#url=$URL&user=$DEMO_USER&password=$DEMO_PASSWORD&database=$DEMO_DATABASE"
    creds="--user $DEMO_USER --password $DEMO_PASSWORD"
else
    prefill="#url=$URL"
    creds="--user USER --password PASSWORD --database ''"
fi
ca_arg=
[ "$TLS" = 0 ] || ca_arg=" --ca $CA"

echo
if [ -n "$SOCKET" ]; then
    echo "  wsproxy is running (pid $WSPID, as $(ps -o user= -p "$WSPID" 2>/dev/null || echo '?'))"
else
    echo "  wsproxy is running inside MariaDB: the plugin, loaded from $ENGINE_CNF"
fi
echo "    WebSocket URL : $URL  (accepts pages from $ORIGIN only)"
echo "    health        : ${health:-"(no answer to GET /health)"}"
echo "    proxy log     : $LOG"
echo "    engine        : $ENGINE_DESC"
echo
echo "  The studio, a SQL console in the browser (served by pid $WEBPID, log $TMP/studio-http.log):"
echo "    $page$prefill"
if [ "$TLS" = 1 ]; then
    echo
    echo "  The browser must trust the throwaway CA $CA (deleted on Ctrl-C). Either start a"
    echo "  Chromium that trusts this certificate's key, in a profile of its own:"
    echo "    chromium --user-data-dir=\"\$(mktemp -d)\" --ignore-certificate-errors-spki-list=$SPKI '$page$prefill'"
    echo "  or import $CA as an authority (Chromium: Settings > Privacy and security >"
    echo "  Security > Manage certificates > Authorities; Firefox: Settings > Certificates),"
    echo "  and remove it when done."
fi
echo
echo "  Or from a shell (from $REPO):"
echo "    node test/query.js --url $URL$ca_arg $creds \"SELECT VERSION(), USER(), CURRENT_USER()\""
if [ -z "$SOCKET" ]; then
    other=$PORT   # the next port that is free, for the SQL below
    for _ in 1 2 3 4 5 6 7 8; do
        other=$((other == 65535 ? 1024 : other + 1))
        [ "$other" = "$STUDIO_PORT" ] || [ -n "$(bind_error "$other")" ] || break
    done
    echo
    echo "  Move the proxy by SQL (the seed's RESTART PROXY; SHOW STATUS gives the real state):"
    echo "    mariadb --no-defaults --socket=$ENGINE_SOCK -uroot -e \\"
    echo "      \"SET GLOBAL wsproxy_${HTTP_SCHEME}_port = $other; SET GLOBAL wsproxy_restart = ON;" \
         "SHOW GLOBAL STATUS LIKE 'wsproxy%'\""
    echo "    (the studio's origin stays allowed; the URL becomes $WS_SCHEME://127.0.0.1:$other/)"
fi
echo
echo "  Press Ctrl-C to stop (stops$( [ -n "$SOCKET" ] && echo " wsproxy,") the page server$( [ "$ENGINE_STARTED" -eq 1 ] && echo " and MariaDB"), removes $TMP)."
echo

# Wait for Ctrl-C / SIGTERM (the trap exits) or for wsproxy, MariaDB or the page
# server to end.
if [ -n "$SOCKET" ]; then
    st=0
    wait -n "$WSPID" "$WEBPID" || st=$?
    if ! kill -0 "$WSPID" 2>/dev/null; then
        [ $st -eq 0 ] && { say "wsproxy (pid $WSPID) stopped"; WSPID=; exit 0; }
        WSPID=
        failed "wsproxy exited on its own (status $st)"
    fi
    WEBPID=
    failed "the studio's page server exited on its own (status $st)"
fi
while kill -0 "$WEBPID" 2>/dev/null; do
    kill -0 "$ENGINE_PID" 2>/dev/null || failed "MariaDB exited on its own"
    sleep 1 & wait $! || true
done
st=0
wait "$WEBPID" || st=$?
WEBPID=
failed "the studio's page server exited on its own (status $st)"
