#!/usr/bin/env bash
# Throwaway MariaDB with the wsproxy plugin loaded from its my.cnf (Option 1).
#
#   engines/mariadb/demo-server.sh start DIR PORT [ORIGINS]
#       initialise DIR/data (first time, Debian's default accounts), write
#       DIR/my.cnf with plugin_load_add = wsproxy, wsproxy_http_port = PORT and
#       wsproxy_bind_address = 127.0.0.1 (and wsproxy_allowed_origins = ORIGINS),
#       start mariadbd on the Unix socket DIR/mysqld.sock and a private port on
#       127.0.0.1 (free, picked at each start; the plugin relays over it), create
#       database `demo` (utf8mb4, as Debian's defaults) and user demo/demo, and
#       print the socket, pid, port and the proxy's state
#   engines/mariadb/demo-server.sh stop DIR
# With WSPROXY_DEMO_CERT and WSPROXY_DEMO_KEY set (PEM files), the proxy serves
# wss:// on PORT (wsproxy_https_port) with that certificate instead.
#
# Needs build/mariadb/wsproxy.so (make mariadb-plugin).  The server runs as
# root, so that it reads the plugin and DIR wherever the checkout lives (the
# plugin serves as safely under Debian's `mysql`: engines/mariadb/README.md,
# "Security").  Output of start, one per line:
#   socket=DIR/mysqld.sock  pid=N  errlog=DIR/mysqld.err  cnf=DIR/my.cnf  dbport=N
#   state=RUNNING
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_DIR=$(cd -- "$HERE/../.." && pwd)/build/mariadb
TIMEOUT=${MARIADB_START_TIMEOUT:-30}   # seconds, for start and for stop

usage() { echo "usage: $0 start DIR PORT [ORIGINS] | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
if [ "$cmd" = stop ] && [ ! -d "$2" ]; then echo "mariadb: not running (no $2)"; exit 0; fi
mkdir -p -- "$2"
DIR=$(cd -- "$2" && pwd)
SOCK=$DIR/mysqld.sock PIDFILE=$DIR/mysqld.pid ERRLOG=$DIR/mysqld.err CNF=$DIR/my.cnf

die() {  # the error log's last lines, then the cause
    [ -s "$ERRLOG" ] && { echo "---- last lines of $ERRLOG ----" >&2; tail -n 20 -- "$ERRLOG" >&2; }
    echo "demo-server.sh: $*" >&2
    exit 1
}

find_prog() {
    local n d
    for n in "$@"; do
        command -v "$n" 2>/dev/null && return 0
        for d in /usr/sbin /usr/bin; do [ -x "$d/$n" ] && { echo "$d/$n"; return 0; }; done
    done
    return 1
}

server_pid() {  # the live mariadbd of this DIR
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(tr -dc '0-9' < "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    case $(cat "/proc/$pid/comm" 2>/dev/null) in mariadbd|mysqld) echo "$pid";; *) return 1;; esac
}

client() { "$CLIENT" --no-defaults --protocol=socket --socket="$SOCK" -uroot --batch -N "$@"; }

do_start() {
    local port=${1:-} origins=${2:-}
    [[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || usage
    [ -f "$PLUGIN_DIR/wsproxy.so" ] || die "$PLUGIN_DIR/wsproxy.so is missing: run make mariadb-plugin"
    [ "$(id -u)" -eq 0 ] || die "run as root: the demo server runs as root"
    MARIADBD=$(find_prog mariadbd mysqld) || die "mariadbd not found (install mariadb-server)"
    INSTALL_DB=$(find_prog mariadb-install-db mysql_install_db) || die "mariadb-install-db not found"
    CLIENT=$(find_prog mariadb mysql) || die "mariadb client not found (install mariadb-client)"
    [ ${#SOCK} -le 107 ] || die "socket path too long: $SOCK"
    if pid=$(server_pid); then die "a server already runs for $DIR (pid $pid); run: $0 stop $DIR"; fi
    rm -f -- "$PIDFILE" "$SOCK"
    # a loopback port nobody else holds now (mariadbd binds it a moment
    # later), away from PORT's neighbours, where run-demo.sh moves the proxy
    DBPORT=$(/usr/bin/python3 -c '
import socket, sys
for _ in range(100):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if abs(p - int(sys.argv[1])) > 2:
        print(p); break' "$port") && [ -n "$DBPORT" ] || die "cannot pick a free port"
    if [ ! -d "$DIR/data/mysql" ]; then
        "$INSTALL_DB" --no-defaults --user=root --datadir="$DIR/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/install-db.log" 2>&1 ||
            { tail -n 20 "$DIR/install-db.log" >&2; die "mariadb-install-db failed"; }
    fi
    {
        echo "[mariadbd]"
        echo "datadir = $DIR/data"
        echo "socket = $SOCK"
        echo "pid-file = $PIDFILE"
        echo "log-error = $ERRLOG"
        echo "user = root"
        echo "port = $DBPORT"
        echo "bind_address = 127.0.0.1"
        echo "innodb-buffer-pool-size = 64M"
        echo "# Debian's own files (read by no one here) would say the same: emoji too"
        echo "character-set-server = utf8mb4"
        echo "collation-server = utf8mb4_general_ci"
        echo "# the plugin relays over 127.0.0.1 with a PROXY header"
        echo "proxy_protocol_networks = 127.0.0.1/32"
        echo "plugin_dir = $PLUGIN_DIR"
        echo "plugin_load_add = wsproxy"
        echo "# the demo prints its password: WebSockets from this machine only"
        echo "wsproxy_bind_address = 127.0.0.1"
        if [ -n "${WSPROXY_DEMO_CERT:-}" ]; then
            echo "wsproxy_https_port = $port"
            echo "wsproxy_ssl_cert = $WSPROXY_DEMO_CERT"
            echo "wsproxy_ssl_key = $WSPROXY_DEMO_KEY"
        else
            echo "wsproxy_http_port = $port"
        fi
        [ -z "$origins" ] || echo "wsproxy_allowed_origins = $origins"
    } > "$CNF"
    setsid "$MARIADBD" --defaults-file="$CNF" </dev/null >>"$ERRLOG" 2>&1 &
    local spawned=$! deadline=$((SECONDS + TIMEOUT))
    until [ -S "$SOCK" ] && client -e 'SELECT 1' >/dev/null 2>&1; do
        kill -0 "$spawned" 2>/dev/null || die "mariadbd exited during startup"
        [ $SECONDS -lt $deadline ] || { kill -TERM "$spawned"; die "mariadbd did not answer within ${TIMEOUT}s"; }
        sleep 0.2
    done
    client >/dev/null <<'SQL' || die "creating the demo database and user failed"
DELETE FROM mysql.global_priv WHERE User = '';
-- Debian's default accounts: root and the service account by unix_socket
CREATE USER IF NOT EXISTS 'mysql'@'localhost'
    IDENTIFIED VIA mysql_native_password USING 'invalid' OR unix_socket;
GRANT ALL PRIVILEGES ON *.* TO 'mysql'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS demo CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'demo'@'%' IDENTIFIED BY 'demo';
CREATE USER IF NOT EXISTS 'demo'@'localhost' IDENTIFIED BY 'demo';
GRANT ALL PRIVILEGES ON demo.* TO 'demo'@'%';
GRANT ALL PRIVILEGES ON demo.* TO 'demo'@'localhost';
SQL
    local state reason
    state=$(client -e "SHOW GLOBAL STATUS LIKE 'wsproxy_state'" | cut -f2)
    reason=$(client -e "SHOW GLOBAL STATUS LIKE 'wsproxy_reason'" | cut -f2)
    echo "socket=$SOCK"
    echo "pid=$(server_pid || echo "$spawned")"
    echo "errlog=$ERRLOG"
    echo "cnf=$CNF"
    echo "dbport=$DBPORT"
    echo "state=$state${reason:+ ($reason)}"
    [ "$state" = RUNNING ] || die "the proxy is not serving: $reason"
}

do_stop() {
    local pid deadline=$((SECONDS + TIMEOUT))
    pid=$(server_pid) || { echo "mariadb: not running"; rm -f -- "$PIDFILE"; return 0; }
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { kill -KILL "$pid"; die "mariadbd $pid did not stop; killed"; }
        sleep 0.1
    done
    echo "mariadb: stopped pid $pid"
}

case $cmd in
    start) [ $# -ge 3 ] || usage; do_start "$3" "${4:-}" ;;
    stop) do_stop ;;
    *) usage ;;
esac
