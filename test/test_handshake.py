"""SPEC section 3: the HTTP upgrade and every status the proxy answers."""

import base64
import os
import socket
import time

import pytest

from conftest import (SAMPLE_ACCEPT, SAMPLE_KEY, OP_BIN, OP_TEXT, WSClient,
                      accept_for, assert_complete, frame,
                      new_key, read_until_eof, Response, ws_request)
from engine import KINDS, release, source_data


# ---------------------------------------------------------------------------
# 101
# ---------------------------------------------------------------------------

def test_rfc6455_sample_key(proxy):
    p = proxy()
    c = WSClient(p.port)
    resp = c.handshake(key=SAMPLE_KEY)
    assert resp.header("Sec-WebSocket-Accept") == SAMPLE_ACCEPT
    assert resp.body == b""
    c.echo(b"after sample handshake")
    c.close()


@pytest.mark.parametrize("path", ["/", "/db", "/a/b/c?x=1&y=%20z"])
def test_any_path_upgrades(proxy, path):
    p = proxy()
    key = new_key()
    c = WSClient(p.port)
    resp = c.handshake(path=path, key=key)
    assert resp.header("Sec-WebSocket-Accept") == accept_for(key)
    c.echo(b"path " + path.encode())
    c.close()


def test_no_extension_negotiated(proxy):
    """Browsers offer permessage-deflate; the proxy must not accept it (it
    does not implement it)."""
    p = proxy()
    c = WSClient(p.port)
    resp = c.handshake(headers=[("Sec-WebSocket-Extensions",
                                 "permessage-deflate; client_max_window_bits")])
    assert resp.header("Sec-WebSocket-Extensions") is None, resp
    c.echo(b"plain")
    c.close()


@pytest.mark.parametrize("hdrs", [
    [("Connection", "keep-alive, Upgrade")],
    [("Connection", "UPGRADE"), ("Upgrade", "WebSocket")],
    [("connection", "upgrade,keep-alive"), ("upgrade", "websocket")],
    [("Upgrade", "h2c, websocket"), ("Connection", "HTTP2-Settings , upgrade")],
    [("CONNECTION", "Upgrade"), ("UPGRADE", "WEBSOCKET"),
     ("SEC-WEBSOCKET-VERSION", "13")],
], ids=["conn-list", "upper", "lower-names", "token-lists", "upper-names"])
def test_header_tokens_case_insensitive(proxy, hdrs):
    p = proxy()
    c = WSClient(p.port)
    c.handshake(headers=hdrs)
    c.echo(b"tokens")
    c.close()


# ---------------------------------------------------------------------------
# subprotocols
# ---------------------------------------------------------------------------

def test_subprotocol_selected_when_offered_and_configured(proxy):
    p = proxy("--subprotocol", "mysql", "--subprotocol", "binary")
    c = WSClient(p.port)
    resp = c.handshake(headers=[("Sec-WebSocket-Protocol", "chat, mysql")])
    assert resp.header("Sec-WebSocket-Protocol") == "mysql", resp
    c.echo(b"x")
    c.close()
    # Offering both configured ones: exactly one of them, never a list.
    c = WSClient(p.port)
    resp = c.handshake(headers=[("Sec-WebSocket-Protocol", "binary, mysql")])
    assert resp.header("Sec-WebSocket-Protocol") in ("binary", "mysql"), resp
    c.close()


def test_subprotocol_not_offered(proxy):
    p = proxy("--subprotocol", "mysql")
    c = WSClient(p.port)
    resp = c.handshake()
    assert resp.header("Sec-WebSocket-Protocol") is None, resp
    c.close()


def test_subprotocol_offered_not_configured(proxy):
    p = proxy("--subprotocol", "mysql")
    c = WSClient(p.port)
    resp = c.handshake(headers=[("Sec-WebSocket-Protocol", "chat, superchat")])
    assert resp.header("Sec-WebSocket-Protocol") is None, resp
    c.close()
    p2 = proxy()  # nothing configured: nothing selected
    c = WSClient(p2.port)
    resp = c.handshake(headers=[("Sec-WebSocket-Protocol", "mysql")])
    assert resp.header("Sec-WebSocket-Protocol") is None, resp
    c.close()


# ---------------------------------------------------------------------------
# refusals: complete HTTP answer, then the server closes
# ---------------------------------------------------------------------------

def test_wrong_version_426(proxy):
    p = proxy()
    for v in ("8", "12", "14", "abc"):
        resp = p.http(ws_request(headers=[("Sec-WebSocket-Version", v)]))
        assert_complete(resp, 426)
        assert resp.header("Sec-WebSocket-Version") == "13", resp


def test_missing_version_refused(proxy):
    p = proxy()
    resp = p.http(ws_request(omit=["Sec-WebSocket-Version"]))
    assert resp.status in (400, 426), resp
    assert_complete(resp)


def _b64(n):
    return base64.b64encode(b"k" * n).decode()


MALFORMED = {
    "missing-host": ws_request(omit=["Host"]),
    "key-15-bytes": ws_request(key=_b64(15)),
    "key-17-bytes": ws_request(key=_b64(17)),
    "key-not-base64": ws_request(key="!!!!!!!!!!!!!!!!!!!!!!=="),
    "key-empty": ws_request(key=" "),
    "missing-key": ws_request(omit=["Sec-WebSocket-Key"]),
    "post": ws_request(method="POST"),
    "put": ws_request(method="PUT"),
    "http-1.0": ws_request(version="HTTP/1.0"),
    "missing-upgrade": ws_request(omit=["Upgrade"]),
    "upgrade-not-websocket": ws_request(headers=[("Upgrade", "h2c")]),
    "missing-connection": ws_request(omit=["Connection"]),
    "connection-no-upgrade-token": ws_request(headers=[("Connection", "keep-alive")]),
    "connection-upgrade-substring": ws_request(headers=[("Connection", "Upgraded")]),
    "garbage-request-line": b"HELLO\r\nHost: x\r\n\r\n",
    "no-version-in-line": b"GET /\r\nHost: x\r\n\r\n",
    "header-without-colon": ws_request(headers=[("X-Broken\r\nNoColonHere", "1")]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_400(proxy, name):
    p = proxy()
    resp = p.http(MALFORMED[name])
    assert_complete(resp, 400)
    assert p.engine.conns == [], "a refused request must not reach the engine"


def test_health_200(proxy):
    p = proxy()
    resp = p.http(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert_complete(resp, 200)
    body = resp.body
    assert body and body.count(b"\n") <= 1 and b"\r" not in body.rstrip(b"\r\n"), \
        "want a one-line status body, got %r" % body
    assert p.engine.conns == []


def test_origin_forbidden_403_and_allowed(proxy):
    p = proxy("--allowed-origin", "https://good.example",
              "--allowed-origin", "http://other.example:8080")
    resp = p.http(ws_request(headers=[("Origin", "https://evil.example")]))
    assert_complete(resp, 403)
    resp = p.http(ws_request(headers=[("Origin", "https://good.example.evil")]))
    assert_complete(resp, 403)
    assert p.engine.conns == []
    for origin in ("https://good.example", "http://other.example:8080"):
        c = WSClient(p.port)
        c.handshake(headers=[("Origin", origin)])
        c.echo(b"hi from " + origin.encode())
        c.close()


def test_any_origin_without_allowed_list(proxy):
    p = proxy()
    c = WSClient(p.port)
    c.handshake(headers=[("Origin", "https://anything.example")])
    c.echo(b"ok")
    c.close()


def _wait_accepts_ws(p, attempts_timeout):
    """Retry (bounded) until a new WebSocket is accepted."""
    deadline = time.monotonic() + attempts_timeout
    last = None
    while time.monotonic() < deadline:
        c = WSClient(p.port)
        key = new_key()
        c.sock.sendall(ws_request(key=key))
        resp = c.read_response(key=key, expect=None)
        if resp.status == 101:
            return c
        last = resp
        c.sock.close()
        time.sleep(0.05)
    raise AssertionError("slot was not freed: last answer %r" % last)


def test_max_connections_503(proxy):
    p = proxy("--max-connections", "2")
    a, b = p.ws(), p.ws()
    resp = p.http(ws_request())
    assert_complete(resp, 503)
    a.echo(b"a still works")
    b.echo(b"b still works")
    a.close()
    c = _wait_accepts_ws(p, p.t(5))
    c.echo(b"slot reused")
    for x in (b, c):
        x.close()


def test_max_connections_per_ip_503(proxy):
    p = proxy("--max-connections-per-ip", "1")
    # Counted from accept: the readiness probe may still hold the slot.
    a = _wait_accepts_ws(p, p.t(5))
    resp = p.http(ws_request())
    assert_complete(resp, 503)
    a.echo(b"first one unaffected")
    a.close()
    c = _wait_accepts_ws(p, p.t(5))
    c.close()


def test_engine_missing_502(proxy, proxyset):
    missing = os.path.join(proxyset.sockdir(), "no-such-engine.sock")
    p = proxy(engine=None, socket_path=missing)
    resp = p.http(ws_request())
    assert_complete(resp, 502)


@pytest.mark.parametrize("engine_kind", KINDS)
def test_engine_refusing_502_then_recovers(proxy, proxyset):
    path = proxyset.refused()
    p = proxy(engine=None, socket_path=path)
    resp = p.http(ws_request())
    assert_complete(resp, 502)
    # The engine comes up at the same address: the next client gets through.
    release(path)
    e = proxyset.engine("echo", address=path)
    c = p.ws()
    c.echo(b"engine is back")
    c.close()


def test_headers_over_8k_431(proxy):
    p = proxy()
    resp = p.http(ws_request(headers=[("X-Pad", "a" * 9000)]))
    assert_complete(resp, 431)
    many = [("X-Pad-%d" % i, "b" * 100) for i in range(100)]
    resp = p.http(ws_request(headers=many))
    assert_complete(resp, 431)
    assert p.engine.conns == []


def test_headers_over_8k_without_end_431(proxy):
    """A header block that never ends is refused once it passes 8 KiB,
    without waiting for the blank line."""
    p = proxy()
    raw = ws_request()[:-2] + b"X-Pad: " + b"c" * 9000
    resp = p.http(raw)
    assert_complete(resp, 431)


def test_headers_under_8k_accepted(proxy):
    p = proxy()
    c = WSClient(p.port)
    c.handshake(headers=[("X-Pad", "d" * 6500)])
    c.echo(b"big headers ok")
    c.close()


@pytest.mark.parametrize("status_req", [
    ("426", ws_request(headers=[("Sec-WebSocket-Version", "7")])),
    ("400", ws_request(omit=["Host"])),
    ("431", ws_request(headers=[("X-Pad", "a" * 9000)])),
    ("200", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
], ids=lambda x: x[0])
def test_refusal_closes_even_if_client_keeps_quiet(proxy, status_req):
    """The server closes after a non-101 answer by itself (the client does
    nothing, does not close its side)."""
    p = proxy()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    s.sendall(status_req[1])
    data, closed = read_until_eof(s, p.t(5))
    s.close()
    assert closed, "server kept the connection open after %r" % data[:200]
    resp = Response(data)
    assert_complete(resp, int(status_req[0]))


# ---------------------------------------------------------------------------
# request arrival patterns
# ---------------------------------------------------------------------------

def test_request_one_byte_at_a_time(proxy):
    p = proxy()
    key = new_key()
    req = ws_request(path="/slow", key=key)
    c = WSClient(p.port)
    for i in range(len(req)):
        c.sock.sendall(req[i:i + 1])
        time.sleep(0.002)
    c.read_response(key=key)
    c.echo(b"after a slow request")
    c.close()


@pytest.mark.parametrize("engine_kind", KINDS)
def test_frames_pipelined_behind_request(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e)
    key = new_key()
    frames = (frame(OP_TEXT, b"first ") + frame(OP_BIN, b"second ")
              + frame(OP_TEXT, b"third", fin=False) + frame(0, b" end"))
    c = WSClient(p.port)
    c.sock.sendall(ws_request(key=key) + frames)   # one segment
    c.read_response(key=key)
    want = b"first second third end"
    assert c.recv_data(len(want)) == want
    conn = e.conn(0)
    assert conn.wait_bytes(len(want))
    assert bytes(conn.data) == want
    c.close()


@pytest.mark.parametrize("engine_kind", KINDS)
def test_engine_greeting_before_client_speaks(proxy, engine):
    e = engine("source", source_bytes=78, seed=7)
    p = proxy(engine=e)
    c = p.ws()
    data, code, _ = c.recv_until_close()
    assert data == source_data(78, 7)
    assert code == 1000
    c.reply_close(1000)
