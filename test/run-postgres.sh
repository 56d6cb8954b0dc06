#!/usr/bin/env bash
# `make run ENGINE=postgres`: a throwaway PostgreSQL 15 with the wsproxy extension
# (engines/postgres/) preloaded, serving ws://127.0.0.1:PORT/ from inside the server,
# and a Node snippet with Neon's serverless driver that queries it.
#
#   PORT=8080 (the WebSocket port)   PGPORT=5433 (the server's own, on 127.0.0.1)
#
# The server runs as the postgres OS user in a temporary directory (initdb there, its
# socket there); role demo / password demo owns database demo.  Runs until Ctrl-C /
# SIGTERM, then stops the server (by PID) and removes the directory.  As root: it
# installs the extension's control and SQL files (make postgres-install).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
PORT=${PORT:-8080}
PGPORT=${PGPORT:-5433}

say() { echo "run-postgres: $*"; }
die() { echo "run-postgres: $*" >&2; exit 1; }

[ $# -eq 0 ] || { echo "usage: [PORT=8080] [PGPORT=5433] $0" >&2; exit 2; }
for v in PORT PGPORT; do
    case ${!v} in ''|*[!0-9]*) die "$v must be a number (got '${!v}')" ;; esac
done
[ "$PORT" != "$PGPORT" ] || die "PORT and PGPORT must differ (both $PORT)"
[ "$(id -u)" -eq 0 ] || die "run as root: the server runs as postgres, and the extension is installed"
id postgres >/dev/null 2>&1 || die "no postgres OS user (test/deps.sh postgres installs PostgreSQL)"

bash "$HERE/deps.sh" postgres
make -s -C "$REPO" postgres-extension postgres-install >/dev/null
BIN=$(pg_config --bindir)

TMP=
PGPID=
cleaned=0
cleanup() {
    [ "$cleaned" -eq 0 ] || return 0
    cleaned=1
    trap '' INT TERM
    if [ -n "$PGPID" ]; then   # (Ctrl-C reaches it too: the same process group)
        kill -INT "$PGPID" 2>/dev/null || true   # fast shutdown: clients get Close 1001
        for _ in $(seq 1 100); do kill -0 "$PGPID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$PGPID" 2>/dev/null; then kill -KILL "$PGPID" 2>/dev/null || true; fi
        wait "$PGPID" 2>/dev/null || true
        say "stopped PostgreSQL (pid $PGPID)"
    fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then rm -rf -- "$TMP"; say "removed $TMP"; fi
}
trap cleanup EXIT
trap 'echo; say "stopping"; exit 0' INT TERM

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wsproxy-pg.XXXXXX")
chmod 755 "$TMP"
cp "$REPO/build/postgres/wsproxy.so" "$TMP/"
chown -R postgres: "$TMP"
as_pg() { (cd "$TMP" && setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"); }
as_pg "$BIN/initdb" -D "$TMP/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --locale=C >/dev/null
cat >> "$TMP/data/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$TMP'
dynamic_library_path = '$TMP:\$libdir'
shared_preload_libraries = 'wsproxy'
wsproxy.http_port = $PORT
EOF
as_pg "$BIN/postgres" -D "$TMP/data" >"$TMP/server.log" 2>&1 &
PGPID=$!
psql_() { as_pg "$BIN/psql" -XAtq -h "$TMP" -p "$PGPORT" -U postgres "$@"; }
for _ in $(seq 1 100); do
    psql_ -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 "$PGPID" 2>/dev/null || { cat "$TMP/server.log" >&2; die "PostgreSQL did not start"; }
    sleep 0.1
done
psql_ -d postgres -c "CREATE ROLE demo LOGIN PASSWORD 'demo'" -c "CREATE DATABASE demo OWNER demo"
psql_ -d demo -c "CREATE EXTENSION wsproxy"
state=$(psql_ -d demo -c "SELECT state || coalesce(' on port ' || port, '') || coalesce(': ' || nullif(reason, ''), '') FROM wsproxy_status()")
case $state in RUNNING*) ;; *) cat "$TMP/server.log" >&2; die "wsproxy is not serving: $state" ;; esac

cat <<EOF
run-postgres: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') (pid $PGPID, log $TMP/server.log)
run-postgres: wsproxy inside it: ws://127.0.0.1:$PORT/ ($state)
run-postgres: role demo, password demo, database demo; as postgres: psql -h $TMP -p $PGPORT

Query it with Neon's serverless driver (from $HERE, where npm installed it):

  cd $HERE && node -e '
    const { Client, neonConfig } = require("@neondatabase/serverless");
    neonConfig.webSocketConstructor = require("ws");
    neonConfig.wsProxy = () => "127.0.0.1:$PORT/";
    neonConfig.useSecureWebSocket = false;
    neonConfig.pipelineConnect = false;
    (async () => {
      const c = new Client({ host: "127.0.0.1", user: "demo", password: "demo", database: "demo" });
      await c.connect();
      console.log((await c.query("SELECT version(), inet_client_addr()")).rows);
      await c.end();
    })();'

or: node $HERE/pg_query.js --url ws://127.0.0.1:$PORT/ --user demo --password demo --database demo "SELECT 1"

run-postgres: ready; Ctrl-C stops it
EOF
wait "$PGPID" || true
PGPID=
die "PostgreSQL exited: $(tail -n 5 "$TMP/server.log")"
