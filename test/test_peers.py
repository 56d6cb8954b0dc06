"""No session outlives its peer (SPEC section 4): resets, half-closes and
stalls on either side, in every direction state, over ws:// and wss://.

Each test here failed on the code before the connection core was rebuilt
around explicit state (commit ed93cc1): there the proxy watched only the
sockets it wanted to read or write, so a peer that went away while the
proxy was paused on the other side was never noticed.

"Released" is measured on the proxy itself: its open descriptors
(/proc/PID/fd) return to what they were before the connection.  Run with
/usr/bin/python3 (Debian's pytest)."""

import os
import socket
import ssl
import struct
import threading
import time

import pytest

from conftest import (ConnectionClosed, OP_BIN, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WSClient,
                      close_payload, frame, free_port, new_key, wait_until,
                      ws_request)
from e2e.certs import make_certs
from test_backpressure import wait_stall

MIB = 1024 * 1024


def nfds(p):
    return len(os.listdir("/proc/%d/fd" % p.proc.pid))


def settled_fds(p, settle=0.3):
    """The proxy's descriptor count once it has not changed for `settle`
    seconds (the readiness probe's connection may still be closing)."""
    last, since = nfds(p), time.monotonic()
    deadline = since + p.t(5)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        n = nfds(p)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


def wait_fds(p, want, within, what):
    """The proxy's descriptors drop to `want` within `within` seconds."""
    t0 = time.monotonic()
    deadline = t0 + p.t(within)
    while time.monotonic() < deadline:
        if nfds(p) <= want:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError("%s: proxy still holds %d descriptors (want %d) %.1f s later"
                         % (what, nfds(p), want, within))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("peers-certs")))


def start(proxy, engine, tls, certs, *args):
    """A proxy in front of `engine` (anything with .path), over wss:// when
    tls is set."""
    if not tls:
        return proxy(*args, engine=engine)
    port = free_port()
    return proxy("--https-port", str(port), "--bind", "127.0.0.1", "--socket", engine.path,
                 "--cert", certs.chain, "--key", certs.key, *args,
                 engine=engine, raw=True, port=port)


def raw_socket(c, tls):
    """The TCP socket under a client, TLS state dropped (no close_notify)."""
    return socket.socket(fileno=c.sock.detach()) if tls else c.sock


def client(p, tls, certs, rcvbuf=None, handshake=True):
    """A raw WebSocket client (handshake done), over TLS when asked.  A small
    rcvbuf (set before connecting) makes a client that stalls quickly."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(p.t(10))
    s.connect((p.host, p.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        ctx = ssl.create_default_context(cafile=certs.ca)
        s = ctx.wrap_socket(s, server_hostname="localhost")
    c = WSClient.__new__(WSClient)
    c.port, c.timeout, c.sock, c.buf, c.response = p.port, p.t(10), s, b"", None
    if handshake:
        c.handshake()
    return c


def fill_until_blocked(c, payload_len=64 * MIB, secs=3.0):
    """Sends the header and as much of one large binary frame as the path
    takes; returns the number of payload bytes sent."""
    key = b"\x01\x02\x03\x04"
    hdr = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", payload_len) + key
    c.sock.sendall(hdr)
    chunk = bytes(65536)
    sent = 0
    c.sock.settimeout(0.3)
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline and sent + len(chunk) <= payload_len:
        try:
            sent += c.sock.send(chunk)
        except (socket.timeout, ssl.SSLWantWriteError):
            break
    return sent


def unacked(sock):
    """Bytes in the socket's send queue (SIOCOUTQ)."""
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def engine_queued(e):
    """Bytes waiting in the engine's socket (the proxy wrote, it did not read)."""
    import fcntl
    import termios
    conn = e.conn(0)
    return struct.unpack("i", fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def pause_with_all_acked(c, e, p):
    """Sends one large frame piece by piece until the proxy pauses reading
    this client (the engine's socket stops filling) while every byte sent
    is acknowledged: a FIN sent now reaches the proxy at once (one queued
    behind unsent data could not)."""
    c.sock.sendall(bytes([0x82, 0xFF]) + struct.pack("!Q", 64 * MIB) + bytes(4))
    assert e.wait_conns(1)
    chunk = bytes(8192)
    last, flat = -1, 0
    for _ in range(256):
        c.sock.sendall(chunk)
        wait_until(lambda: unacked(c.sock) == 0, p.t(5),
                   what="data acknowledged before the proxy paused")
        time.sleep(0.01)
        q = engine_queued(e)
        flat = flat + 1 if q == last else 0
        last = q
        if flat >= 6:       # 48 KiB more sent, none of it reached the engine
            return
    raise AssertionError("the proxy never paused (engine queue %d)" % last)


def rst(sock):
    raw = sock
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


# -- a client that goes away while the proxy is paused reading it -----------

@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("how", ["rst", "fin"])
@pytest.mark.parametrize("reads", [False, True], ids=["stalled-engine", "reading-engine"])
def test_client_gone_while_paused(proxy, engine, certs, tls, how, reads):
    """Header and part of a large frame, then RST or FIN (no Close): the
    engine connection is closed within 1 s, whether or not it reads."""
    gate = threading.Event()
    e = engine("sink", gate=gate)
    p = start(proxy, e, tls, certs)
    base = settled_fds(p)
    if reads:
        gate.set()
    c = client(p, tls, certs)
    if how == "rst":
        fill_until_blocked(c, secs=1.0)
    else:
        pause_with_all_acked(c, e, p)
    assert e.wait_conns(1)
    s = raw_socket(c, tls)
    if how == "rst":
        rst(s)
    else:
        s.shutdown(socket.SHUT_WR)
    took = wait_fds(p, base, 1.5, "client %s while paused" % how)
    print("released after %.2f s" % took)
    if how == "fin":
        s.close()
    gate.set()


def test_client_rst_in_http_phase(proxy, engine, tmp_path):
    """A client reset in the HTTP phase is noticed although nothing is read."""
    e = engine("echo")
    p = proxy(engine=e)
    base = settled_fds(p)
    socks = []
    for _ in range(20):
        s = socket.create_connection((p.host, p.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # incomplete head
        socks.append(s)
    wait_until(lambda: nfds(p) >= base + 20, p.t(5), what="20 accepted")
    for s in socks:
        rst(s)
    wait_fds(p, base, 1.5, "resets in the HTTP phase")


# -- an engine that goes away while the proxy is paused on its client -------

class FloodEngine:
    """A Unix-socket engine that skips the PROXY header, writes as much as
    the socket takes of `total` bytes, and then closes (EOF) or resets."""

    def __init__(self, d, total=64 * MIB, reset=False):
        self.path = os.path.join(d, "flood.sock")
        self.total, self.reset = total, reset
        self.ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ls.bind(self.path)
        self.ls.listen(8)
        self.sent = 0
        self.closed_at = None
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.ls.settimeout(30)
        try:
            s, _ = self.ls.accept()
        except OSError:
            return
        s.settimeout(2)
        s.recv(4096)  # the PROXY header: unread, it would turn our close into a reset
        s.settimeout(0.5)
        buf = bytes(65536)
        deadline = time.monotonic() + 20
        while self.sent < self.total and time.monotonic() < deadline:
            try:
                self.sent += s.send(buf)
            except socket.timeout:
                break
        if self.reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        self.closed_at = time.monotonic()

    def stop(self):
        self.ls.close()
        os.unlink(self.path)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("reset", [False, True], ids=["eof", "rst"])
def test_engine_gone_client_never_reads(proxy, proxyset, certs, tls, reset):
    """The engine ends while the client reads nothing: the proxy releases
    both sockets within drain_timeout_ms of the engine's end."""
    fe = FloodEngine(proxyset.sockdir(), reset=reset)
    try:
        class E:
            path = fe.path
        p = start(proxy, E, tls, certs, "--drain-timeout", "1000")
        base = settled_fds(p)
        c = client(p, tls, certs, rcvbuf=4096)
        wait_until(lambda: fe.closed_at is not None, p.t(25), what="engine done")
        t0 = time.monotonic()
        wait_fds(p, base, 2.0, "engine %s, client not reading" % ("rst" if reset else "eof"))
        print("released %.2f s after the engine's end, %d bytes queued"
              % (time.monotonic() - t0, fe.sent))
        c.sock.close()
    finally:
        fe.stop()


def test_engine_eof_data_delivered_to_slow_client(proxy, proxyset):
    """The engine's last bytes still reach a client that reads late (within
    the drain timeout), then Close 1000."""
    fe = FloodEngine(proxyset.sockdir(), total=2 * MIB)
    try:
        class E:
            path = fe.path
        p = proxy("--drain-timeout", "5000", engine=E)
        c = client(p, False, None, rcvbuf=4096)
        wait_until(lambda: fe.closed_at is not None, p.t(25), what="engine done")
        time.sleep(0.5)
        c.sock.settimeout(p.t(10))
        data, code, _ = c.recv_until_close(timeout=p.t(10))
        assert len(data) == fe.sent, "got %d of %d bytes" % (len(data), fe.sent)
        assert code == 1000
    finally:
        fe.stop()


# -- liveness does not punish backpressure ------------------------------------

def test_ping_never_closes_a_connection_paused_by_its_engine(proxy, engine):
    gate = threading.Event()
    e = engine("sink", gate=gate)
    p = proxy("--ping-interval", "300", engine=e)
    c = client(p, False, None)
    total = 8 * MIB
    done = threading.Event()

    def upload():
        c.sock.settimeout(30)
        c.send_frame(OP_BIN, bytes(total))
        done.set()
    t = threading.Thread(target=upload, daemon=True)
    t.start()
    time.sleep(2.0)      # the engine stalls for 2 s
    gate.set()
    assert done.wait(p.t(20)), "upload did not finish"
    assert e.conn(0).wait_bytes(total, p.t(20))
    # Still open: it answers an echo-less round trip (Ping from us -> Pong).
    c.send_frame(OP_PING, b"alive")
    deadline = time.monotonic() + p.t(5)
    while True:
        f = c.recv_frame(max(0.05, deadline - time.monotonic()))
        assert f.opcode != OP_CLOSE, "closed while paused by its engine: %r" % (f.payload,)
        if f.opcode == OP_PING:
            c.send_frame(OP_PONG, f.payload)
        elif f.opcode == OP_PONG and f.payload == b"alive":
            break
    c.close()


def test_every_ping_gets_its_pong_while_output_blocked(proxy, engine):
    e = engine("source", source_bytes=32 * MIB)
    p = proxy(engine=e)
    c = client(p, False, None, rcvbuf=4096)
    conn = e.conn(0)
    wait_stall(lambda: conn.sent, 0.5, p.t(20))  # output to us is blocked now
    c.send_frame(OP_PING, b"A")
    time.sleep(0.3)
    c.send_frame(OP_PING, b"B")
    time.sleep(0.3)
    pongs = []
    deadline = time.monotonic() + p.t(30)
    while len(pongs) < 2 and time.monotonic() < deadline:
        f = c.recv_frame(p.t(10))
        if f.opcode == OP_PONG:
            pongs.append(f.payload)
    assert pongs == [b"A", b"B"], pongs


# -- valid data before a violation ------------------------------------------

@pytest.mark.parametrize("bad", ["opcode", "rsv"])
def test_data_before_violation_reaches_engine(proxy, engine, bad):
    e = engine("sink")
    p = proxy(engine=e)
    c = client(p, False, None)
    good = frame(OP_TEXT, b"SELECT 1;")
    evil = frame(3, b"x") if bad == "opcode" else frame(OP_BIN, b"x", rsv=4)
    c.send(good + evil)
    c.expect_close(1002)
    assert e.conn(0).wait_bytes(9, p.t(5)), "the text before the violation was lost"
    assert bytes(e.conn(0).data[:9]) == b"SELECT 1;"


# -- per-IP limit counts from accept -----------------------------------------

def test_per_ip_limit_counts_unfinished_handshakes(proxy, engine):
    e = engine("echo")
    p = proxy("--max-connections", "4", "--max-connections-per-ip", "2", engine=e)
    idle = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(6)]
    try:
        # The excess from 127.0.0.1 is refused at once, without a request.
        refused = 0
        for s in idle[2:]:
            s.settimeout(p.t(3))
            try:
                head = s.recv(100)
            except socket.timeout:
                head = b""
            refused += head.startswith(b"HTTP/1.1 503")
        # (the refused ones stay open: a refusal does not hold a slot)
        assert refused == 4, "%d of 4 excess connections refused at once" % refused
        # Another address still gets in: the unfinished ones do not fill the proxy.
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(p.t(5))
        s.connect(("127.0.0.1", p.port))
        key = new_key()
        s.sendall(ws_request(key=key))
        assert s.recv(12) == b"HTTP/1.1 101"
        s.close()
    finally:
        for s in idle:
            s.close()


# -- closing orders over wss:// ---------------------------------------------

@pytest.mark.parametrize("order", ["close+notify+fin", "close+fin", "close+rst",
                                   "notify+fin", "fin", "rst"])
@pytest.mark.parametrize("slow", [False, True], ids=["engine-quick", "engine-slow"])
def test_wss_close_orders_release_promptly(proxy, engine, certs, order, slow):
    e = engine("echo", tail=b"bye" if slow else b"", tail_delay=0.3 if slow else 0.0)
    p = start(proxy, e, True, certs, "--drain-timeout", "10000")
    base = settled_fds(p)
    c = client(p, True, certs)
    c.echo(b"hello")
    steps = order.split("+")
    if steps[0] == "close":
        c.send_frame(OP_CLOSE, close_payload(1001))
        steps = steps[1:]
    c.sock.settimeout(0.5)
    if "notify" in steps:
        try:
            c.sock.unwrap()
        except (OSError, ssl.SSLError, ValueError):
            pass
        raw = c.sock
    else:
        raw = raw_socket(c, True)
    if "rst" in steps:
        rst(raw)
    else:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    took = wait_fds(p, base, 1.0 + (0.4 if slow else 0), "wss %s" % order)
    print("%s released after %.2f s" % (order, took))
    raw.close()


# -- smaller points -------------------------------------------------------------

def test_tls_connection_without_request_is_logged(proxy, engine, certs, tmp_path):
    e = engine("echo")
    port = free_port()
    p = proxy("--https-port", str(port), "--bind", "127.0.0.1", "--socket", e.path,
              "--cert", certs.chain, "--key", certs.key, "--log-dir", str(tmp_path),
              engine=e, raw=True, port=port, log_dir=str(tmp_path))
    c = client(p, True, certs, handshake=False)
    c.sock.do_handshake()
    name = "127.0.0.1:%d" % c.sock.getsockname()[1]
    c.sock.close()
    p.wait_log(name + r".*(closed|ended)")


def test_close_without_code_logged_1005(proxy, engine, tmp_path):
    e = engine("echo")
    p = proxy(engine=e, log_dir=str(tmp_path))
    c = client(p, False, None)
    name = "127.0.0.1:%d" % c.sock.getsockname()[1]
    c.send_frame(OP_CLOSE, b"")
    c.recv_until_close()
    p.wait_log(name + r".* closed 1005")


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_our_close_sent_before_end(proxy, engine, certs, tls):
    """The idle timeout closes while output to the client is blocked, then
    the client's Close arrives: the client still gets what was queued and
    our Close before the end."""
    e = engine("source", source_bytes=64 * MIB)
    p = start(proxy, e, tls, certs, "--idle-timeout", "600")
    c = client(p, tls, certs, rcvbuf=4096)
    conn = e.conn(0)
    wait_stall(lambda: conn.sent, 0.5, p.t(20))
    time.sleep(1.0)                      # the idle timeout fires meanwhile
    c.send_frame(OP_CLOSE, close_payload(1000))
    data, code, reason = c.recv_until_close(timeout=p.t(20))
    assert code == 1001, (code, reason)


def test_drain_timeout_bounds_closing_once(proxy, engine):
    """The client's Close while the engine keeps sending and the client does
    not read: both sockets are released about drain_timeout_ms later, not
    twice that."""
    e = engine("source", source_bytes=64 * MIB)
    p = proxy("--drain-timeout", "1000", engine=e)
    base = settled_fds(p)
    c = client(p, False, None, rcvbuf=4096)
    time.sleep(0.3)
    c.send_frame(OP_CLOSE, close_payload(1000))
    t0 = time.monotonic()
    wait_fds(p, base, 1.6, "closing with a stalled client")
    print("released %.2f s after the Close" % (time.monotonic() - t0))
    c.sock.close()


def keepalive_timer(local_port, remote_port):
    """Seconds left on the keepalive timer of the IPv4 TCP socket with these
    ports, read from /proc/net/tcp (kernel ABI: field 'tr:tm->when', timer 2
    = keepalive, the time in clock ticks), or None if no such timer runs.
    (`ss` prints the same timer as '59sec' or '1min': not a format to
    parse.)"""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            lport = int(fields[1].split(":")[1], 16)
            rport = int(fields[2].split(":")[1], 16)
            timer, when = fields[5].split(":")
            if (lport, rport) == (local_port, remote_port):
                return int(when, 16) / os.sysconf("SC_CLK_TCK") if timer == "02" else None
    raise AssertionError("no socket %d -> %d in /proc/net/tcp" % (local_port, remote_port))


def test_vanished_client_found_by_keepalive(proxy, engine):
    """A client that vanishes without FIN or RST is found in about 2 minutes
    by default: the proxy's side of every client connection runs TCP
    keepalive (idle 60 s, then probes)."""
    p = proxy(engine=engine("echo"))
    c = client(p, False, None)
    left = keepalive_timer(p.port, c.sock.getsockname()[1])
    assert left is not None, "no keepalive timer on the proxy's socket"
    assert 30 <= left <= 60, left
    c.close()


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_burst_of_pings_in_one_segment_all_answered(proxy, engine, certs, tls):
    """40 Pings in one write, then a Close: more control frames than one
    loop turn's budget handles.  The rest must not wait for a poll event
    that never comes (the chunk they sit in blocks reading)."""
    e = engine("echo")
    p = start(proxy, e, tls, certs)
    c = client(p, tls, certs)
    c.send(b"".join(frame(OP_PING, b"p%02d" % i) for i in range(40)) +
           frame(OP_CLOSE, close_payload(1000)))
    pongs = []
    deadline = time.monotonic() + p.t(5)
    while True:
        f = c.recv_frame(max(0.05, deadline - time.monotonic()))
        if f.opcode == OP_CLOSE:
            break
        assert f.opcode == OP_PONG, f
        pongs.append(f.payload)
    assert pongs == [b"p%02d" % i for i in range(40)], pongs


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_failure_close_reaches_a_client_still_sending(proxy, engine, certs, tls):
    """A protocol violation from a client that has stopped reading and keeps
    sending: our 1002 waits behind queued output.  Once the client reads
    again it gets that output and the Close: the proxy does not close with
    the client's bytes unread (a reset, which would throw the queued Close
    away), it stops sending and discards them until the client closes."""
    e = engine("source", source_bytes=64 * MIB)
    p = start(proxy, e, tls, certs, "--drain-timeout", "5000")
    c = client(p, tls, certs, rcvbuf=4096)
    conn = e.conn(0)
    wait_stall(lambda: conn.sent, 0.5, p.t(20))
    c.send(frame(OP_BIN, b"bad", mask=False) + frame(OP_BIN, b"x" * 60000) * 4)
    time.sleep(0.5)
    got = []
    try:
        while True:
            f = c.recv_frame(timeout=p.t(20))
            got.append((f.opcode, len(f.payload)))
            if f.opcode == OP_CLOSE:
                break
    except ConnectionClosed as ex:
        raise AssertionError("no Close frame after %d frames: %s" % (len(got), ex))
    code = int.from_bytes(f.payload[:2], "big")
    reason = f.payload[2:]
    assert code == 1002, (code, reason)
