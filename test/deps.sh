#!/usr/bin/env bash
# Install what wsproxy's build, demo and tests need on Debian 12 (idempotent; quick when
# everything is there). Run as root; elsewhere it prints what to install and exits 1.
#   test/deps.sh            everything: the build, the demo and the test toolchain
#   test/deps.sh demo       only what `make run` needs: the build, MariaDB, openssl,
#                           python3 (the studio's page server), node + test/node_modules
#   test/deps.sh postgres   only what `make run ENGINE=postgres` needs: the build,
#                           PostgreSQL 15 and its headers, node + test/node_modules
# Note: always use /usr/bin/python3 for the Python tests (Debian's websockets/pytest);
# a python3 earlier on PATH (pyenv, venv) does not see Debian's packages.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

SET=${1:-test}
DEMO_PKGS="gcc make libbearssl-dev mariadb-server mariadb-client openssl python3"
# libclang-rt-14-dev: clang's sanitizer and libFuzzer runtimes (build/fuzz); clang
# only recommends it, and recommends are not installed here. libmariadbd-dev and
# libmariadb-dev: the server plugin headers and libmysqlservices.a (make
# mariadb-plugin; make run loads the plugin into its throwaway MariaDB).
# The service pieces, each checked by the tool that reads it: mandoc (man
# page lint), man-db (man -l), systemd (systemd-analyze), logrotate, and
# prometheus (promtool and a real server scraping the metrics).
DEMO_PKGS="$DEMO_PKGS libmariadbd-dev libmariadb-dev"
TEST_PKGS="clang libclang-rt-14-dev python3-websockets python3-pytest socat chromium
mandoc man-db systemd logrotate prometheus"
# PostgreSQL 15 and its server headers (make postgres-extension, PGXS);
# libkrb5-dev: gssapi.h, which the server headers include.
PG_PKGS="postgresql postgresql-server-dev-15 libkrb5-dev"
TEST_PKGS="$TEST_PKGS $PG_PKGS"

# The host rows of test/test_hosts.py: static musl, i386 and s390x (run under
# qemu-user).  i386 uses the i686 cross compiler, not gcc-multilib, which
# Debian 12 will not install beside gcc-s390x-linux-gnu.  The rows' BearSSL:
# host_bearssl below.
TEST_PKGS="$TEST_PKGS musl-tools gcc-i686-linux-gnu libc6-dev-i386-cross
gcc-s390x-linux-gnu libc6-dev-s390x-cross qemu-user-static"
case $SET in
    demo) PKGS=$DEMO_PKGS ;;
    postgres) PKGS="gcc make libbearssl-dev $PG_PKGS" ;;
    test) PKGS="$DEMO_PKGS $TEST_PKGS" ;;
    *) echo "usage: $0 [demo|postgres|test]" >&2; exit 2 ;;
esac

node_ok() {  # a usable node (>= 18) and npm, from Debian or elsewhere (e.g. NodeSource)
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || return 1
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    [ "$major" -ge 18 ] 2>/dev/null
}

# Debian's npm conflicts with NodeSource's nodejs (which bundles npm): only ask for the
# Debian packages when no usable node/npm is there at all.
node_ok || PKGS="$PKGS nodejs npm"

missing=()
have_dpkg=0
command -v dpkg-query >/dev/null 2>&1 && have_dpkg=1
if [ $have_dpkg -eq 1 ]; then
    # one dpkg-query for all: "name status" for each package dpkg knows
    # shellcheck disable=SC2086
    status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $PKGS 2>/dev/null || true)
fi
for p in $PKGS; do
    if [ $have_dpkg -eq 0 ] || ! grep -qx "$p installed" <<<"$status"; then missing+=("$p"); fi
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ $have_dpkg -eq 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
        echo "deps.sh: missing packages: ${missing[*]}" >&2
        echo "deps.sh: on Debian 12, as root:" >&2
        echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "deps.sh: installing ${missing[*]} (apt-get; this can take a few minutes)"
    # apt's own progress goes to the terminal (a copy to the log for failures)
    log=$(mktemp /tmp/wsproxy-deps.XXXXXX)
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends "${missing[@]}"; } 2>&1 | tee "$log" | sed -u 's/^/  apt: /'; then
        echo "deps.sh: apt-get failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
    node_ok || { echo "deps.sh: node >= 18 and npm still not usable" >&2; exit 1; }
fi

# BearSSL for the i386 and s390x rows: Debian's libbearssl-dev of that
# architecture, unpacked under /opt/wsproxy-hosts (the Makefile's HOST_DEPS),
# never installed -- installed, its /usr/lib/TRIPLET/libbearssl.a could be
# the one the native build's BEARSSL_LIB finds.  apt hears of the foreign
# architecture for this download only (no dpkg --add-architecture, so the
# machine's own apt runs are unchanged).
host_bearssl() {
    local arch=$1 triplet=$2 dir=/opt/wsproxy-hosts/$1 tmp
    local opts=(-o APT::Architectures::="$(dpkg --print-architecture)" -o APT::Architectures::="$arch")
    [ -f "$dir/usr/lib/$triplet/libbearssl.a" ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "deps.sh: missing $dir/usr/lib/$triplet/libbearssl.a: as root on Debian 12, run" \
             "test/deps.sh (it unpacks libbearssl-dev:$arch there)" >&2
        exit 1
    fi
    echo "deps.sh: unpacking libbearssl-dev:$arch into $dir"
    # One foreign index that fails to download (a mirror mid-sync) is not
    # fatal here: the download below says whether the package was found.
    apt-get "${opts[@]}" update >/dev/null 2>&1 || true
    tmp=$(mktemp -d /tmp/wsproxy-bearssl.XXXXXX)
    chmod 755 "$tmp"  # apt downloads as _apt
    if ! (cd "$tmp" && apt-get "${opts[@]}" download "libbearssl-dev:$arch" >/dev/null 2>&1); then
        echo "deps.sh: apt-get download libbearssl-dev:$arch failed" >&2
        exit 1
    fi
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/libbearssl-dev_*_"$arch".deb "$dir"
    rm -rf "$tmp"
}
if [ "$SET" = test ]; then
    host_bearssl i386 i386-linux-gnu
    host_bearssl s390x s390x-linux-gnu
fi

# Node modules for the JS client and browser tests. A stamp holding the hash of
# package.json + package-lock.json tells whether node_modules is current.
cd "$HERE"
if [ -f package-lock.json ]; then
    want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
else
    want=$(sha256sum < package.json | cut -d' ' -f1)
fi
stamp=node_modules/.wsproxy-deps-stamp
if [ ! -d node_modules ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    log=$(mktemp /tmp/wsproxy-npm.XXXXXX)
    if [ -f package-lock.json ]; then npmcmd=(npm ci); else npmcmd=(npm install); fi
    echo "deps.sh: ${npmcmd[*]} in $HERE"
    # playwright-core downloads nothing, but keep any browser download off regardless:
    # the tests drive Debian's /usr/bin/chromium.
    if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "${npmcmd[@]}" --no-audit --no-fund \
            --loglevel=error >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "deps.sh: ${npmcmd[*]} failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
    # npm install may have written a lock file: hash what is there now
    if [ -f package-lock.json ]; then
        cat package.json package-lock.json | sha256sum | cut -d' ' -f1 > "$stamp"
    else
        sha256sum < package.json | cut -d' ' -f1 > "$stamp"
    fi
fi
echo "deps.sh: ok"
