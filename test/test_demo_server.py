"""engines/mariadb/demo-server.sh, the throwaway MariaDB behind `make run`,
started alone (as run-demo.sh starts it) with the plugin built by
`make mariadb-plugin`.  Issue 20.  Needs root; /usr/bin/python3."""

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
