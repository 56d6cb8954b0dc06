"""A real browser: Debian's headless Chromium, driven by npm playwright-core
(test/e2e/browser.js), loads test/e2e/echo.html from a tiny page server on
127.0.0.1 and talks to wsproxy in front of an echo engine.  Issue 4.

The page sends text and binary messages (one of 1 MiB) and compares the echo
byte for byte; the engine's record of what it received is compared with the
SHA-256 the page computed of what it sent.  --allowed-origin names the page
server's origin; the same page from another port (another origin) must be
refused.  Runs against each wsproxy build (a few seconds each).
"""

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse

import pytest

from conftest import OP_BIN, free_port, http_exchange, ws_request

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(HERE, "e2e")
CHROMIUM = "/usr/bin/chromium"


def require_browser():
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (test/deps.sh installs it)")
    if not os.path.isfile(os.path.join(HERE, "node_modules", "playwright-core",
                                       "package.json")):
        pytest.fail("test/node_modules/playwright-core is missing: run test/deps.sh")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("%s is missing (test/deps.sh installs Debian's chromium)" % CHROMIUM)
    return node


class PageServer:
    """Serves test/e2e/echo.html (and nothing else) on 127.0.0.1:<port>."""

    def __init__(self):
        with open(os.path.join(E2E, "echo.html"), "rb") as f:
            page = f.read()
        requests = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                if urllib.parse.urlsplit(self.path).path == "/echo.html":
                    body, status, ctype = page, 200, "text/html; charset=utf-8"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def url(self, ws_url, mib=1):
        return "%s/echo.html?%s" % (self.origin, urllib.parse.urlencode(
            {"ws": ws_url, "mib": mib}))

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def pages():
    """Two page servers: two origins."""
    require_browser()
    a, b = PageServer(), PageServer()
    yield a, b
    a.stop()
    b.stop()


def run_browser(urls, tmp_path, spki=None, timeout=90):
    node = require_browser()
    profile = tmp_path / "chromium-profile"       # fresh user-data-dir
    profile.mkdir()
    argv = [node, os.path.join(E2E, "browser.js"), "--user-data-dir", str(profile),
            "--timeout", str(timeout * 1000)]
    if spki:
        argv += ["--spki", spki]
    argv += urls
    try:
        cp = subprocess.run(argv, cwd=HERE, capture_output=True, text=True,
                            timeout=timeout + 20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("browser.js did not finish within %d s" % (timeout + 20))
    assert cp.returncode == 0, "browser.js failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert [o["url"] for o in out] == urls
    return out


def check_echo_page(o, engine_conn):
    r = o["result"]
    assert r is not None, "page gave no result: %r" % o
    assert not o["pageErrors"], o
    assert r["opened"] is True, r
    assert r["ok"] is True, r
    assert r["mismatchAt"] == -1, r
    assert r["receivedBytes"] == r["sentBytes"] > r["bigBytes"] == 1024 * 1024, r
    assert r["nonBinary"] == 0 and r["overflow"] == 0, r
    assert r["closeCode"] == 1000 and r["wasClean"] is True, r
    assert r["extensions"] == "" and r["protocol"] == "", r
    # the engine got exactly the bytes the page sent, in order
    assert engine_conn.wait_bytes(r["sentBytes"], 10)
    assert engine_conn.nbytes == r["sentBytes"]
    assert engine_conn.hexdigest() == r["sentSha256"], "engine received other bytes"
    # default PROXY v2 header with the browser's address
    assert engine_conn.header is not None and engine_conn.header["src"] == "127.0.0.1"


def test_browser_echo_and_origin_check(proxy, engine, pages, tmp_path):
    a, b = pages
    e = engine("echo")
    p = proxy("--allowed-origin", a.origin, engine=e)
    ws_url = "ws://127.0.0.1:%d/browser" % p.port
    good, other = run_browser([a.url(ws_url), b.url(ws_url)], tmp_path)

    # page from the allowed origin: everything echoed
    check_echo_page(good, e.conn(0))
    assert good["result"]["origin"] == a.origin

    # the same page from another origin: the handshake is refused (403), which
    # the browser reports as a failed WebSocket (1006, never opened)
    r = other["result"]
    assert r is not None, other
    assert r["origin"] == b.origin
    assert r["opened"] is False and r["ok"] is False, r
    assert r["sawError"] is True and r["closeCode"] == 1006, r
    p.wait_log(r"refused 403\b.*origin")
    # a refused handshake never reaches the engine
    assert len(e.conns) == 1, "engine connections: %d" % len(e.conns)

    # what the browser saw, spelled out on the wire
    bad = http_exchange(p.port, ws_request(path="/browser", headers=[("Origin", b.origin)]))
    assert bad.status == 403, bad
    c = p.ws(path="/browser", headers=[("Origin", a.origin)])
    c.send_frame(OP_BIN, b"raw check")
    assert c.recv_data(9) == b"raw check"
    c.close()
    assert a.requests and b.requests, "the pages were not fetched from both servers"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from e2e.certs import make_certs
    return make_certs(tmp_path_factory.mktemp("e2e-tls"))


def test_browser_wss_1mib(proxy, engine, pages, certs, tmp_path):
    """wss:// from Chromium, the test leaf trusted by its SPKI hash."""
    a, _ = pages
    e = engine("echo")
    port = free_port()
    p = proxy("--https-port", port, "--bind", "127.0.0.1", "--socket", e.path,
              "--cert", certs.chain, "--key", certs.key, "--allowed-origin", a.origin,
              raw=True, port=port, engine=e)
    (good,) = run_browser([a.url("wss://127.0.0.1:%d/tls" % port)], tmp_path,
                          spki=certs.spki)
    check_echo_page(good, e.conn(0))
    assert len(e.conns) == 1
    p.wait_log(r"closed 1000")
    # the only TLS failure allowed is the readiness probe's (connect, close)
    bad = [line for line in p.log().splitlines()
           if re.search(r"TLS (handshake failed|error)", line)
           and "client closed the connection" not in line]
    assert not bad, p.log()
