#!/usr/bin/env bash
# Throwaway MariaDB instance for wsproxy's demo and tests.
#
#   test/mariadb.sh start DIR   initialise DIR/data (first time), start mariadbd on the
#                               Unix socket DIR/mysqld.sock (no TCP), wait until it
#                               answers, create database `demo` and user demo/demo
#   test/mariadb.sh stop DIR    stop the server whose pid is in DIR/mysqld.pid
#
# Layout in DIR: data/ (datadir), mysqld.sock, mysqld.pid, mysqld.err (error log).
# The server runs as root (--user=root), trusts PROXY protocol headers on its Unix
# socket (--proxy-protocol-networks=localhost) and keeps Debian's default root account
# (unix_socket authentication: only the local system user root gets in as root).
# Both commands exit non-zero with the tail of the error log when something fails.
set -euo pipefail

START_TIMEOUT=${MARIADB_START_TIMEOUT:-30}   # seconds
STOP_TIMEOUT=${MARIADB_STOP_TIMEOUT:-30}     # seconds

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
if [ "$cmd" = stop ] && [ ! -d "$2" ]; then
    echo "mariadb: not running (no directory $2)"
    exit 0
fi
mkdir -p -- "$2"
DIR=$(cd -- "$2" && pwd)
DATA=$DIR/data
SOCK=$DIR/mysqld.sock
PIDFILE=$DIR/mysqld.pid
ERRLOG=$DIR/mysqld.err

die() {
    echo "mariadb.sh: $*" >&2
    if [ -s "$ERRLOG" ]; then
        echo "---- last lines of $ERRLOG ----" >&2
        tail -n 25 -- "$ERRLOG" >&2
        echo "----" >&2
    fi
    exit 1
}

find_prog() {  # first of the given names found on PATH or in /usr/sbin, /usr/bin
    local n
    for n in "$@"; do
        if command -v "$n" >/dev/null 2>&1; then command -v "$n"; return 0; fi
        for d in /usr/sbin /usr/bin; do
            if [ -x "$d/$n" ]; then echo "$d/$n"; return 0; fi
        done
    done
    return 1
}

alive() {  # process exists and is not a zombie (an unreaped zombie still answers kill -0)
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [ "$st" != Z ]
}

# pid from the pid file if that process is alive and is a MariaDB server
server_pid() {
    local pid comm
    [ -s "$PIDFILE" ] || return 1
    pid=$(tr -dc '0-9' < "$PIDFILE")
    [ -n "$pid" ] || return 1
    alive "$pid" || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case $comm in
        mariadbd|mysqld) echo "$pid"; return 0 ;;
    esac
    return 1
}

client() {  # run the mariadb client as root over the instance's socket
    "$CLIENT" --no-defaults --protocol=socket --socket="$SOCK" -uroot --batch "$@"
}

do_start() {
    MARIADBD=$(find_prog mariadbd mysqld) || die "mariadbd not found (install mariadb-server; see test/deps.sh)"
    INSTALL_DB=$(find_prog mariadb-install-db mysql_install_db) || die "mariadb-install-db not found (install mariadb-server)"
    CLIENT=$(find_prog mariadb mysql) || die "mariadb client not found (install mariadb-client)"

    # sun_path holds 107 bytes plus the terminating NUL
    [ ${#SOCK} -le 107 ] || die "socket path too long (${#SOCK} bytes > 107): $SOCK"

    if pid=$(server_pid); then
        die "a server is already running for $DIR (pid $pid); run: $0 stop $DIR"
    fi
    rm -f -- "$PIDFILE" "$SOCK"

    if [ ! -d "$DATA/mysql" ]; then
        mkdir -p -- "$DATA"
        if ! "$INSTALL_DB" --no-defaults --user=root --datadir="$DATA" \
                --auth-root-authentication-method=socket --skip-test-db \
                --skip-name-resolve >"$DIR/install-db.log" 2>&1; then
            tail -n 25 -- "$DIR/install-db.log" >&2
            die "mariadb-install-db failed (full output: $DIR/install-db.log)"
        fi
    fi

    # No --skip-name-resolve, on purpose: with it, MariaDB 10.11 keeps the host name
    # "localhost" of a Unix-socket connection even after a PROXY header gave it another
    # address, so 'root'@'localhost' (unix_socket auth, which checks the uid of the
    # socket's peer, i.e. of the proxy) stays reachable from any browser. With name
    # resolution on, the proxied address decides (a loopback source still counts as
    # localhost).
    # setsid: own session, so a Ctrl-C in the caller's terminal does not reach it;
    # the caller stops it with "$0 stop DIR".
    setsid "$MARIADBD" --no-defaults \
        --user=root \
        --datadir="$DATA" \
        --socket="$SOCK" \
        --pid-file="$PIDFILE" \
        --log-error="$ERRLOG" \
        --skip-networking \
        --proxy-protocol-networks=localhost \
        --innodb-buffer-pool-size=64M \
        --max-connections=500 \
        </dev/null >>"$ERRLOG" 2>&1 &
    local spawned=$!

    local deadline=$((SECONDS + START_TIMEOUT)) ok=0
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "$spawned" 2>/dev/null; then
            wait "$spawned" 2>/dev/null || true
            die "mariadbd exited during startup"
        fi
        if [ -S "$SOCK" ] && client -e 'select 1' >/dev/null 2>&1; then
            ok=1; break
        fi
        sleep 0.2
    done
    if [ $ok -ne 1 ]; then
        kill -TERM "$spawned" 2>/dev/null || true
        die "mariadbd did not answer on $SOCK within ${START_TIMEOUT}s (pid $spawned, signalled to stop)"
    fi

    # Demo schema and account. Anonymous accounts are dropped: ''@localhost would
    # otherwise shadow demo@'%' for local connections.
    if ! client >"$DIR/setup.log" 2>&1 <<'SQL'
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS demo;
CREATE USER IF NOT EXISTS 'demo'@'%' IDENTIFIED BY 'demo';
CREATE USER IF NOT EXISTS 'demo'@'localhost' IDENTIFIED BY 'demo';
GRANT ALL PRIVILEGES ON demo.* TO 'demo'@'%';
GRANT ALL PRIVILEGES ON demo.* TO 'demo'@'localhost';
FLUSH PRIVILEGES;
SQL
    then
        cat -- "$DIR/setup.log" >&2
        die "creating the demo database and user failed (server still running, pid $(cat "$PIDFILE" 2>/dev/null || echo "$spawned"))"
    fi

    local pid
    pid=$(server_pid) || pid=$spawned
    echo "mariadb: started pid $pid, socket $SOCK, error log $ERRLOG"
}

do_stop() {
    local pid
    if ! pid=$(server_pid); then
        if [ -e "$PIDFILE" ]; then
            echo "mariadb: pid file $PIDFILE names no running server; removing it"
            rm -f -- "$PIDFILE"
        else
            echo "mariadb: not running (no $PIDFILE)"
        fi
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive "$pid"; do
        if [ $SECONDS -ge $deadline ]; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            die "mariadbd (pid $pid) did not stop within ${STOP_TIMEOUT}s; sent SIGKILL"
        fi
        sleep 0.1
    done
    rm -f -- "$PIDFILE" "$SOCK"
    echo "mariadb: stopped pid $pid"
}

case $cmd in
    start) do_start ;;
    stop) do_stop ;;
    *) usage ;;
esac
