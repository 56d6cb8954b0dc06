"""A second real client: npm `ws` under node (test/clients/ws_node_test.js)."""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_node_ws_client(proxy, engine):
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (test/deps.sh installs it)")
    if not os.path.isfile(os.path.join(HERE, "node_modules", "ws", "package.json")):
        pytest.fail("test/node_modules/ws is missing: run test/deps.sh "
                    "(npm install in test/) before the suite")
    e = engine("echo")
    p = proxy(engine=e)
    try:
        cp = subprocess.run([node, os.path.join(HERE, "clients", "ws_node_test.js"),
                             str(p.port)], cwd=HERE, capture_output=True,
                            text=True, timeout=p.t(60), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("node client did not finish")
    assert cp.returncode == 0, "node client failed:\n%s\n%s" % (cp.stdout,
                                                               cp.stderr)
    assert cp.stdout.strip().endswith("OK")
    assert e.conns and e.conns[0].header is not None
