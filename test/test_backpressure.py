"""SPEC section 4, backpressure: when one side does not drain, the proxy
stops reading the other side, and its memory does not grow with the data
in flight.  Bounds allow for the kernel's socket buffers (TCP autotuning on
loopback can reach several MiB each way), not for data held by the proxy."""

import hashlib
import os
import select
import threading
import time

from conftest import OP_BIN, frame
from engine import source_data

# Each test runs against a Unix and a TCP engine (conftest.pytest_generate_tests).
ENGINE_KINDS = ("unix", "tcp")

MIB = 1024 * 1024
# Kernel buffers in the path (client and proxy TCP, engine Unix socket) plus
# the proxy's own bounded buffers stay well under this.
IN_FLIGHT_LIMIT = 16 * MIB
RSS_GROWTH_LIMIT = 24 * MIB


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def wait_stall(counter, settle, timeout):
    """Wait until counter() stops moving for `settle` seconds."""
    deadline = time.monotonic() + timeout
    last, since = counter(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return now
    raise AssertionError("counter still moving after %.0fs: %d" % (timeout, last))


def test_engine_to_slow_client(proxy, engine):
    total = 64 * MIB
    e = engine("source", source_bytes=total, seed=11)
    p = proxy(engine=e)
    rss0 = rss(p.proc.pid)
    c = p.ws()
    conn = e.conn(0)
    # The client reads nothing: the engine must get stuck.
    sent = wait_stall(lambda: conn.sent, 1.0, p.t(20))
    print("engine->client stalled at %.1f MiB, rss +%.1f MiB" % (sent / MIB, (rss(p.proc.pid) - rss0) / MIB))
    assert sent < IN_FLIGHT_LIMIT, \
        "engine could push %d MiB into a client that reads nothing" % (sent // MIB)
    grown = rss(p.proc.pid) - rss0
    assert grown < RSS_GROWTH_LIMIT, "proxy RSS grew by %d MiB" % (grown // MIB)
    # Now read everything: all of it arrives intact, then Close 1000.
    h = hashlib.sha256()
    n = 0
    while True:
        f = c.recv_frame(timeout=p.t(30))
        if f.opcode == 8:
            break
        assert f.opcode == OP_BIN and f.fin
        h.update(f.payload)
        n += len(f.payload)
    assert n == total
    assert h.hexdigest() == hashlib.sha256(source_data(total, 11)).hexdigest()
    assert int.from_bytes(f.payload[:2], "big") == 1000
    c.reply_close(1000)


def test_client_to_slow_engine(proxy, engine):
    gate = threading.Event()          # the engine reads nothing until set
    e = engine("sink", gate=gate)
    p = proxy(engine=e)
    rss0 = rss(p.proc.pid)
    c = p.ws()
    total = 64 * MIB
    payload = os.urandom(total)
    raw = frame(OP_BIN, payload)
    s = c.sock
    s.setblocking(False)
    off = 0
    stalled = False
    deadline = time.monotonic() + p.t(30)
    while off < len(raw) and time.monotonic() < deadline:
        _, w, _ = select.select([], [s], [], 1.0)
        if not w:
            stalled = True       # nothing accepted for a whole second
            break
        try:
            off += s.send(raw[off:off + 256 * 1024])
        except BlockingIOError:
            continue
    assert stalled, "client pushed all %d MiB into a stalled engine" % (
        total // MIB)
    print("client->engine stalled at %.1f MiB, rss +%.1f MiB" % (off / MIB, (rss(p.proc.pid) - rss0) / MIB))
    assert off < IN_FLIGHT_LIMIT + 64, \
        "proxy accepted %d MiB while the engine read nothing" % (off // MIB)
    grown = rss(p.proc.pid) - rss0
    assert grown < RSS_GROWTH_LIMIT, "proxy RSS grew by %d MiB" % (grown // MIB)
    # Let the engine read: the rest goes through, nothing lost.
    gate.set()
    while off < len(raw):
        _, w, _ = select.select([], [s], [], p.t(10))
        assert w, "sending stuck after the engine started reading"
        try:
            off += s.send(raw[off:off + 1024 * 1024])
        except BlockingIOError:
            pass
    s.setblocking(True)
    s.settimeout(p.t(10))
    conn = e.conn(0)
    assert conn.wait_bytes(total, timeout=p.t(30)), \
        "engine got %d of %d bytes" % (conn.nbytes, total)
    assert conn.hexdigest() == hashlib.sha256(payload).hexdigest()
    c.close()
