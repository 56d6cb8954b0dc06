#!/usr/bin/env bash
# What `make test` runs (after test/deps.sh installed the peers): builds
# every variant -- gcc with and without TLS, clang, ASan+UBSan -- then one
# pytest session over the C unit tests and the integration tests, each
# integration test against the plain and the ASan+UBSan binary.
# test/test_hosts.py builds the host rows (make hosts) itself, to time them.  pytest's
# summary line ends the output; any failure makes the exit status non-zero.
# Debian's pytest and python3-websockets: /usr/bin/python3, never pyenv's.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s all build/unit build/asan/unit build/tsan/unit build/header_test build/fuzz build/shim/fault.so
# Warnings are errors with clang too, with and without TLS.
make -s build/clang/wsproxy build/clang/notls.o
# The MariaDB daemon plugin, plain and ASan+UBSan (test/test_mariadb_plugin.py
# loads each into real servers).
make -s mariadb-plugin mariadb-plugin-asan
# The PostgreSQL extension, plain and ASan+UBSan; its control and SQL files
# go into the server's extension directory (test_postgres_extension.py
# loads each build into real servers through dynamic_library_path).
make -s postgres-extension postgres-extension-asan postgres-install
export WSPROXY_BINS="${WSPROXY_BINS:-plain=build/wsproxy asan=build/asan/wsproxy}"
exec /usr/bin/python3 -m pytest test -q -p no:cacheprovider -o junit_family=xunit2 "$@"
