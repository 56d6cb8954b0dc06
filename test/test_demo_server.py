"""engines/mariadb/demo-server.sh, the throwaway MariaDB behind `make run`,
started alone (as run-demo.sh starts it) with the plugin built by
`make mariadb-plugin`.  Issue 20.  Needs root; /usr/bin/python3."""

import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import ROOT, free_port

SCRIPT = str(ROOT / "engines" / "mariadb" / "demo-server.sh")


@pytest.fixture
def demo_dir():
    if not os.path.exists(ROOT / "build" / "mariadb" / "wsproxy.so"):
        pytest.fail("build/mariadb/wsproxy.so is missing: run make mariadb-plugin")
    d = tempfile.mkdtemp(prefix="wsdemo", dir="/tmp")   # short: the socket path
    yield d
    subprocess.run(["bash", SCRIPT, "stop", d], capture_output=True, timeout=60)
    shutil.rmtree(d, ignore_errors=True)


def start(d, port):
    return subprocess.run(["bash", SCRIPT, "start", d, str(port)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_taken_port_is_the_last_line(demo_dir):
    """Issue 20, item 3: the cause came first, then 20 lines of the error log."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        cp = start(demo_dir, port)
    finally:
        s.close()
    assert cp.returncode == 1, cp.stdout + cp.stderr
    last = cp.stderr.strip().splitlines()[-1]
    assert last.startswith("demo-server.sh: the proxy is not serving: ") and \
        "bind(127.0.0.1:%d): Address already in use" % port in last, cp.stderr


def test_the_demo_database_takes_emoji(demo_dir):
    """Issue 20, item 5: the demo's database was latin1 (the server reads only
    its own my.cnf, not Debian's utf8mb4 defaults): an emoji insert failed
    with 1366.  Through the proxy, as the studio sends it."""
    port = free_port()
    cp = start(demo_dir, port)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "state=RUNNING" in cp.stdout, cp.stdout
    emoji = "caf\u00e9 \U0001F600"
    q = subprocess.run(["node", str(ROOT / "test" / "query.js"), "--url",
                        "ws://127.0.0.1:%d/" % port, "--user", "demo", "--password", "demo",
                        "--database", "demo", "--json",
                        "CREATE TABLE t (s VARCHAR(20)); INSERT INTO t VALUES ('%s'); "
                        "SELECT s, @@character_set_database AS db FROM t" % emoji],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    out = q.stdout.decode()
    assert q.returncode == 0, out + q.stderr.decode()
    assert json.loads(out.strip().splitlines()[-1]) == [{"s": emoji, "db": "utf8mb4"}], out
