"""SPEC section 4: the close handshake in both directions, engine errors,
vanishing clients, and liveness (ping interval, idle and handshake
timeouts)."""

import signal
import socket
import struct
import time

import pytest

from conftest import (OP_BIN, OP_CLOSE, OP_PING, OP_PONG,
                      close_payload, frame, read_until_eof, ws_request)
from engine import source_data

# Each test runs against a Unix and a TCP engine (conftest.pytest_generate_tests).
ENGINE_KINDS = ("unix", "tcp")


# ---------------------------------------------------------------------------
# close handshake
# ---------------------------------------------------------------------------

def test_client_close_engine_sees_eof_and_tail_arrives_first(proxy, engine):
    """Client Close -> engine gets EOF (SHUT_WR); what the engine still sends
    arrives before the server's Close, which echoes the client's code."""
    e = engine("echo", tail=b"engine's last words", tail_delay=0.3)
    p = proxy(engine=e)
    c = p.ws()
    c.echo(b"query")
    c.send_frame(OP_CLOSE, close_payload(4321, b"client done"))
    conn = e.conn(0)
    assert conn.wait_eof(p.t(5)), "engine did not see EOF after client Close"
    data, code, _ = c.recv_until_close(timeout=p.t(10))
    assert data == b"engine's last words"
    assert code == 4321
    c.expect_eof()


def test_client_close_payload_flushed_before_eof(proxy, engine):
    """Data sent right before the Close (same segment) reaches the engine
    before its EOF."""
    e = engine("sink")
    p = proxy(engine=e)
    c = p.ws()
    payload = bytes(range(256)) * 40
    c.send(frame(OP_BIN, payload) + frame(OP_CLOSE, close_payload(1000)))
    data, code, _ = c.recv_until_close(timeout=p.t(10))
    assert code == 1000 and data == b""
    c.expect_eof()
    conn = e.conn(0)
    assert conn.wait_eof(p.t(5))
    assert bytes(conn.data) == payload


def test_drain_timeout_bounds_close(proxy, engine):
    """An engine that never closes after EOF: the server's Close still comes,
    after about drain_timeout."""
    e = engine("echo", hold=30)
    p = proxy("--drain-timeout", "500", engine=e)
    c = p.ws()
    c.echo(b"x")
    t0 = time.monotonic()
    c.send_frame(OP_CLOSE, close_payload(1000))
    data, code, _ = c.recv_until_close(timeout=p.t(8))
    elapsed = time.monotonic() - t0
    assert code == 1000
    assert elapsed >= 0.3, "Close came after %.2fs: did not wait for the " \
        "engine at all" % elapsed
    c.expect_eof()


def test_engine_eof_all_data_then_1000(proxy, engine):
    e = engine("eof-after", eof_after=300)
    p = proxy(engine=e)
    c = p.ws()
    payload = bytes(range(100)) * 3
    c.send(frame(OP_BIN, payload))
    data, code, _ = c.recv_until_close(timeout=p.t(10))
    assert data == payload
    assert code == 1000
    c.reply_close(1000)


def test_engine_source_then_eof(proxy, engine):
    n = 3 * 1024 * 1024 + 17
    e = engine("source", source_bytes=n, seed=99)
    p = proxy(engine=e)
    c = p.ws()
    data, code, _ = c.recv_until_close(timeout=p.t(30))
    assert len(data) == n and data == source_data(n, 99)
    assert code == 1000
    c.reply_close(1000)


def test_engine_reset_1011(proxy, engine):
    e = engine("reset")
    p = proxy(engine=e)
    c = p.ws()
    c.send(frame(OP_BIN, b"this will be left unread"))
    data, code, _ = c.recv_until_close(timeout=p.t(10))
    assert code == 1011, "engine reset must give Close 1011, got %s" % code
    c.reply_close(1011)
    d = p.ws()   # the proxy goes on
    d.close()


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_client_vanishes_mid_frame(proxy, engine, rst):
    e = engine("echo")
    p = proxy(engine=e)
    other = p.ws()
    other.echo(b"other before")
    c = p.ws()
    c.echo(b"hello")
    raw = frame(OP_BIN, b"q" * 5000)
    c.send(raw[:2000])
    conn = e.conn(1)
    assert conn.wait_bytes(5 + 1992, timeout=p.t(5))
    c.abort(rst=rst)
    assert conn.wait_eof(p.t(5)), "engine connection not closed after the " \
        "client disappeared"
    assert conn.wait_closed(p.t(5))
    other.echo(b"other after")
    other.close()
    n = p.ws()
    n.echo(b"new one")
    n.close()


def test_client_vanishes_mid_handshake(proxy):
    p = proxy()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(ws_request()[:30])
    s.close()
    c = p.ws()
    c.echo(b"fine")
    c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_stop_signal_sends_1001_and_exits_0(proxyset, sig):
    e = proxyset.engine("echo")
    p = proxyset.start(engine=e)
    c = p.ws()
    c.echo(b"x")
    p.signal(sig)
    data, code, _ = c.recv_until_close(timeout=p.t(10))
    assert code == 1001
    assert p.proc.wait(p.t(15)) == 0
    assert e.conn(0).wait_eof(p.t(5)), "engine connection left open"
    assert not p.finish(), "unclean exit"


# ---------------------------------------------------------------------------
# liveness
# ---------------------------------------------------------------------------

def test_ping_interval_silent_client_gets_ping(proxy):
    p = proxy("--ping-interval", "300")
    c = p.ws()
    t0 = time.monotonic()
    f = c.recv_frame(timeout=p.t(3))
    assert f.opcode == OP_PING and f.fin, "want a Ping, got %r" % (f,)
    assert time.monotonic() - t0 >= 0.15, "ping came before the interval"
    # Answering keeps the connection: over several intervals it survives.
    c.send_frame(OP_PONG, f.payload)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        try:
            f = c.recv_frame(timeout=0.2)
        except socket.timeout:
            continue
        assert f.opcode == OP_PING, "unexpected frame %r" % (f,)
        c.send_frame(OP_PONG, f.payload)
    c.echo(b"alive after 1.5s of answered pings")
    c.close()


def test_ping_unanswered_1001_and_engine_freed(proxy, engine):
    e = engine("echo")
    p = proxy("--ping-interval", "300", engine=e)
    c = p.ws()
    t0 = time.monotonic()
    saw_ping = False
    while True:
        f = c.recv_frame(timeout=p.t(5))
        if f.opcode == OP_PING:
            saw_ping = True
            continue   # do not answer
        assert f.opcode == OP_CLOSE, f
        break
    assert saw_ping
    code = struct.unpack("!H", f.payload[:2])[0]
    assert code == 1001
    assert time.monotonic() - t0 >= 0.45
    c.expect_eof()
    assert e.conn(0).wait_eof(p.t(5)), "engine session not freed"


def test_idle_timeout_1001(proxy, engine):
    e = engine("echo")
    p = proxy("--idle-timeout", "600", engine=e)
    c = p.ws()
    # Traffic keeps it open well past the timeout...
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        c.echo(b"keepalive")
        last = time.monotonic()   # the proxy saw traffic no later than this
        time.sleep(0.15)
    # ...silence closes it, but not before the timeout.
    data, code, _ = c.recv_until_close(timeout=p.t(5))
    assert code == 1001
    assert time.monotonic() - last >= 0.4, "closed %.2fs after traffic" % (
        time.monotonic() - last)
    c.reply_close(1001)
    assert e.conn(0).wait_eof(p.t(5))


def test_handshake_timeout_closes(proxy):
    p = proxy("--handshake-timeout", "400")
    silent = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    partial = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    partial.sendall(ws_request()[:40])
    t0 = time.monotonic()
    for s in (silent, partial):
        data, closed = read_until_eof(s, p.t(5))
        assert closed, "connection still open after handshake timeout"
        s.close()
    assert time.monotonic() - t0 >= 0.2
    c = p.ws()   # a prompt client is served
    c.echo(b"ok")
    c.close()


# ---------------------------------------------------------------------------
# the client's FIN and Close: deadlines derived from state (issue 17, 1-3)
# ---------------------------------------------------------------------------

def send_with_fin(sock, data):
    """data and our FIN in one segment: corked, the FIN is tacked onto the
    unsent data, so the proxy's poll reports both at once."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def test_fin_before_request_complete_still_ends_session(proxy, engine):
    """A FIN seen while the request head is still incomplete: once open, the
    bytes before the FIN wait on an engine that does not read, and the FIN
    grace still ends the connection (it used to stay open forever)."""
    import threading
    gate = threading.Event()          # the engine reads nothing until set
    e = engine("sink", gate=gate)
    p = proxy(engine=e)
    req = ws_request()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=p.t(10))
    s.sendall(req[:-2])
    time.sleep(0.3)                   # the proxy holds a partial head
    # Each 1-byte message before a Ping is its own write to the engine: a
    # few thousand fill the engine's socket buffer within one segment.
    burst = (frame(OP_BIN, b"z") + frame(OP_PING, b"p")) * 3000
    start = len(p.log())
    send_with_fin(s, req[-2:] + burst)
    try:
        # the defect left it open forever; 8 s leaves room for a loaded machine
        p.wait_log(r"closed \d+ \(client disconnected\)", timeout=p.t(8), start=start)
    finally:
        gate.set()
        s.close()


def test_fin_with_close_keeps_the_drain_timeout(proxy, engine):
    """Close and FIN in one segment: the engine still gets its drain
    timeout (not the 0.5 s FIN grace) to send its last bytes."""
    e = engine("echo", tail=b"late answer", tail_delay=1.2)
    p = proxy("--drain-timeout", "4000", engine=e)
    c = p.ws()
    c.echo(b"q")
    send_with_fin(c.sock, frame(OP_CLOSE, close_payload(1000)))
    data, code, _ = c.recv_until_close(timeout=p.t(8))
    assert data == b"late answer", "the engine's tail was cut: %r" % data
    assert code == 1000
    c.expect_eof()
    assert "drain timed out" not in p.log()


@pytest.mark.parametrize("opt", ["--ping-interval", "--idle-timeout"])
def test_after_client_close_no_ping_no_idle_and_code_echoed(proxy, engine, opt):
    """After the client's Close only the drain runs: no Ping to a closed
    client, no idle timeout, and its code is echoed, not 1001."""
    e = engine("echo", hold=30)
    p = proxy(opt, "300", "--drain-timeout", "1500", engine=e)
    c = p.ws()
    c.echo(b"q")
    c.send_frame(OP_CLOSE, close_payload(1000))
    seen = []
    t0 = time.monotonic()
    while True:
        f = c.recv_frame(timeout=p.t(6))
        seen.append(f.opcode)
        if f.opcode == OP_CLOSE:
            break
    assert OP_PING not in seen, "Pinged a client that sent Close: %r" % seen
    code = struct.unpack("!H", f.payload[:2])[0]
    assert code == 1000, "want the client's 1000 echoed, got %d" % code
    assert time.monotonic() - t0 >= 1.2, "the drain was cut short"
    c.expect_eof()


# ---------------------------------------------------------------------------
# liveness measured by progress (issue 17, items 4-5)
# ---------------------------------------------------------------------------

def read_slowly(c, rate, timeout):
    """Read frames at about `rate` bytes/s, answering every Ping at once;
    returns (data, close code)."""
    data = b""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        f = c.recv_frame(timeout=max(0.01, deadline - time.monotonic()))
        if f.opcode == OP_PING:
            c.send_frame(OP_PONG, f.payload)
            continue
        if f.opcode == OP_CLOSE:
            return data, struct.unpack("!H", f.payload[:2])[0] if f.payload else None
        data += f.payload
        ahead = t0 + len(data) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


@pytest.mark.parametrize("opt", ["--ping-interval", "--send-timeout"])
def test_slow_reader_keeps_its_result(proxy, engine, opt):
    """A client reading a large result at 1.3 MB/s (answering every Ping at
    once) gets all of it: its Ping waits behind megabytes already queued,
    and the bytes it keeps taking show it is alive.  It was closed 1001 "no
    answer to ping" after about 2 s."""
    n = 8 << 20
    e = engine("source", source_bytes=n, seed=17)
    p = proxy(opt, "1000", engine=e)
    c = p.ws()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    data, code = read_slowly(c, 1.3e6, p.t(30))
    assert code == 1000, "closed %s after %d of %d bytes" % (code, len(data), n)
    assert data == source_data(n, 17)
    c.reply_close(1000)


def test_client_that_stops_reading_is_closed_and_logged(proxy, engine):
    """A client that reads nothing while the engine streams: closed after
    --send-timeout, and the log says it stopped reading (not a reset)."""
    e = engine("source", source_bytes=16 << 20, seed=4)
    p = proxy("--send-timeout", "1500", engine=e)
    c = p.ws()
    conn = e.conn(0)
    t0 = time.monotonic()
    line = p.wait_log(r"client stopped reading: took none of our bytes for \d+ s",
                      timeout=6)
    took = time.monotonic() - t0
    assert took >= 1.4, "closed after %.2f s: %s" % (took, line)
    assert conn.wait_closed(p.t(3)), "engine session still open"
    assert "closed 1006 (client stopped reading)" in p.log()
    assert "reset" not in p.log()
    c.sock.close()



def test_fin_during_engine_connect_still_relays(proxy, tmp_path):
    """A FIN seen while the engine connect is still in progress (here: the
    engine's accept queue is full, so the proxy waits and retries) used to
    end the connection at once, losing the request and the bytes behind
    it.  The FIN is a fact like any other: once the engine takes the
    connection the 101 goes out, the data is relayed, then the FIN grace
    ends it."""
    path = str(tmp_path / "full.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(0)
    fillers = []
    try:
        for _ in range(64):           # fill the accept queue: connects fail EAGAIN
            f = socket.socket(socket.AF_UNIX)
            f.setblocking(False)
            try:
                f.connect(path)
            except BlockingIOError:
                f.close()
                break
            fillers.append(f)
        p = proxy("--handshake-timeout", "20000", engine=None, socket_path=path)
        s = socket.create_connection(("127.0.0.1", p.port), timeout=p.t(10))
        s.sendall(ws_request() + frame(OP_BIN, b"behind the request"))
        time.sleep(0.5)               # the proxy is in its connect retries
        s.shutdown(socket.SHUT_WR)    # the FIN, while the proxy still waits
        time.sleep(0.5)
        for f in fillers:             # now let the engine take connections
            f.close()
        srv.settimeout(p.t(10))
        got = b""
        deadline = time.monotonic() + p.t(10)
        while b"behind the request" not in got and time.monotonic() < deadline:
            conn, _ = srv.accept()
            conn.settimeout(p.t(5))
            try:
                while b"behind the request" not in got:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            finally:
                conn.close()
        assert b"behind the request" in got, "the engine got %r; log:\n%s" % (got, p.log())
        resp = s.recv(4096)
        assert resp.startswith(b"HTTP/1.1 101"), resp
    finally:
        for f in fillers:
            f.close()
        srv.close()
