"""SPEC section 6: the log file."""

import os
import re
import signal
import time

from conftest import OP_BIN, WSClient, assert_complete, frame, new_key, ws_request, wait_until

TS = re.compile(r"^\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def test_log_file_events(proxy, engine, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    e = engine("echo")
    p = proxy(engine=e, log_dir=logdir)
    path = logdir / "websocket_proxy.log"
    wait_until(path.exists, p.t(5), what="websocket_proxy.log in --log-dir")
    start = p.wait_log(r"start")
    assert str(p.port) in start, "start line lacks the port: %r" % start

    # refused handshakes, each with its reason
    resp = p.http(ws_request(headers=[("Sec-WebSocket-Version", "8")]))
    assert_complete(resp, 426)
    p.wait_log(r"127\.0\.0\.1.*(426|version)")
    resp = p.http(ws_request(omit=["Host"]))
    assert_complete(resp, 400)
    p.wait_log(r"127\.0\.0\.1.*(400|host)")

    # a connection's end: close code and byte counts
    key = new_key()
    secret = b"SECRET-PAYLOAD-" + b"z" * 1219      # 1234 bytes
    c = WSClient(p.port)
    c.handshake(key=key)
    c.send(frame(OP_BIN, secret))
    assert c.recv_data(1234) == secret
    c.close(4321, b"bye")
    line = p.wait_log(r"\b4321\b")
    assert re.search(r"\b(1234|1238|1242)\b", line), \
        "connection end line lacks the byte counts: %r" % line
    assert "127.0.0.1" in line

    text = p.log()
    for ln in text.splitlines():
        assert TS.search(ln), "log line without a UTC timestamp: %r" % ln
    assert "SECRET-PAYLOAD" not in text, "payload bytes in the log"
    assert key not in text, "Sec-WebSocket-Key in the log"
    # with --log-dir the events go to the file, not to stderr
    assert "4321" not in p.stderr(), p.stderr()

    # stop is logged too
    problems = p.finish()
    assert not problems, problems
    assert any(re.search(r"\bstop", ln, re.I) for ln in p.log().splitlines()[-3:]), \
        "no stop line at the end of the log:\n" + p.log()[-1000:]


def test_sigusr1_reopens_log(proxy, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    p = proxy(log_dir=logdir)
    path = logdir / "websocket_proxy.log"
    p.wait_log(r"start")
    rotated = logdir / "websocket_proxy.log.1"
    os.rename(path, rotated)
    p.signal(signal.SIGUSR1)
    wait_until(path.exists, p.t(5), what="a new websocket_proxy.log after SIGUSR1")
    # events now go to the new file, not the renamed one
    before = rotated.read_text()
    resp = p.http(ws_request(headers=[("Sec-WebSocket-Version", "9")]))
    assert_complete(resp, 426)
    p.wait_log(r"127\.0\.0\.1.*(426|version)")
    time.sleep(0.1)
    assert rotated.read_text() == before, "old file still written after reopen"
    c = p.ws()
    c.echo(b"x")
    c.close(4444)
    p.wait_log(r"\b4444\b")


def test_stderr_without_log_dir(proxy):
    """Without --log-dir the log lines go to stderr."""
    p = proxy()
    resp = p.http(ws_request(headers=[("Sec-WebSocket-Version", "8")]))
    assert_complete(resp, 426)
    p.wait_log(r"127\.0\.0\.1.*(426|version)")


def test_health_and_metrics_probes_are_not_logged_as_failures(proxy, engine, tmp_path):
    """Issue 20, item 4: /health counted itself ("1 connections open" with
    none), and every probe and scrape was logged at INFO as "ended before a
    WebSocket (client disconnected)", which reads like an error and fills the
    log at one probe per second."""
    logdir = tmp_path / "logs"
    logdir.mkdir()
    p = proxy("--metrics-path", "/metrics", engine=engine("echo"), log_dir=logdir)
    p.wait_log(r"start")
    req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(3):
        resp = p.http(req)
        assert_complete(resp, 200)
        assert resp.body.strip().endswith(b"running, 0 connections open"), resp.body
        resp = p.http(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert_complete(resp, 200)
    c = p.ws()
    resp = p.http(req)
    assert resp.body.strip().endswith(b"running, 1 connections open"), resp.body
    c.close(4000, b"")
    p.wait_log(r"\b4000\b")   # the log is written in order: the probes came before
    # (the fixture's readiness check connects and closes without a request)
    ended = [ln for ln in p.log().splitlines() if "ended before a WebSocket" in ln]
    assert all("client closed before its request" in ln for ln in ended), p.log()
