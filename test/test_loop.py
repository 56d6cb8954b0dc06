"""Hot and cold connections (wsproxy.c, loop_sort): while some connections
are busy, the loop polls only those and takes the idle rest every few
milliseconds.  These tests hold a busy connection open and check that the
idle ones are still served: their messages, their hang-ups and their
timers.  Run with /usr/bin/python3 (Debian's pytest)."""
import threading
import time

from conftest import OP_BIN
from engine import conn_for

COLD = 150   # 300 sockets: more than WS_PROXY_SCAN_FIRST, all cold after 1 s
HOT_S = 1.0  # WS_PROXY_HOT_MS, in seconds


class Busy(threading.Thread):
    """Echoes on one connection without pause until stopped; counts echoes
    and keeps the first failure."""

    def __init__(self, conn):
        super().__init__(daemon=True)
        self.conn, self.stop, self.count, self.error = conn, threading.Event(), 0, None

    def run(self):
        try:
            while not self.stop.is_set():
                msg = b"busy %d" % self.count
                self.conn.echo(msg)
                self.count += 1
        except Exception as exc:  # reported by the test, not swallowed
            self.error = exc

    def finish(self):
        self.stop.set()
        self.join(10)
        assert not self.is_alive(), "busy connection stuck"
        assert self.error is None, "busy connection failed: %r" % (self.error,)


def open_idle(p, n):
    conns = [p.ws() for _ in range(n)]
    for i, c in enumerate(conns):
        c.echo(b"hello %d" % i)
    return conns


def test_idle_connections_served_while_one_is_busy(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e)
    idle = open_idle(p, COLD)
    busy = Busy(p.ws())
    busy.start()
    time.sleep(HOT_S + 0.5)   # the idle ones turn cold; the busy one stays hot
    count0 = busy.count
    # Each cold connection answers promptly although the busy one never
    # leaves the loop without work.
    for i, c in enumerate(idle[::10]):
        msg = b"wake %d" % i
        c.send_frame(OP_BIN, msg)
        assert c.recv_data(len(msg), timeout=p.t(2)) == msg
    assert busy.is_alive() and busy.count > count0, "busy connection stalled"
    # A cold client that leaves is noticed: the engine sees its session end.
    gone = conn_for(e, idle[1].local_port)
    idle[1].abort()
    assert gone.wait_eof(p.t(2)), "cold client's hang-up not relayed"
    assert busy.is_alive(), "busy connection stopped"
    busy.finish()
    assert busy.count > 50, busy.count
    for c in idle[2:]:
        c.echo(b"still here")


def test_engine_bytes_reach_cold_connections_while_one_is_busy(proxy, engine):
    """Bytes the engine sends on its own to a cold connection arrive well
    before the next sort of the hot set (every second): on Linux the
    doorbell holds the cold engine sockets too (loop_bell)."""
    e = engine("echo")
    p = proxy(engine=e)
    idle = open_idle(p, COLD)
    busy = Busy(p.ws())
    busy.start()
    time.sleep(HOT_S + 0.5)   # the idle ones turn cold
    for i, c in enumerate(idle[::15]):
        msg = b"push %d" % i
        t0 = time.monotonic()
        conn_for(e, c.local_port)._send(msg)
        assert c.recv_data(len(msg), timeout=p.t(2)) == msg
        waited = time.monotonic() - t0
        assert waited < p.t(0.5), "cold connection waited %.3f s for engine bytes" % waited
    busy.finish()


def test_cold_connections_timers_run_while_one_is_busy(proxy, engine):
    e = engine("echo")
    p = proxy("--idle-timeout", "1500", engine=e)
    idle = open_idle(p, COLD)
    busy = Busy(p.ws())
    busy.start()
    # The idle timeout is a timer of the cold connections: it fires while
    # the loop is busy with the hot one, which stays open.
    t0 = time.monotonic()
    for c in idle:
        data, code, _ = c.recv_until_close(timeout=p.t(6))
        assert code == 1001
    assert time.monotonic() - t0 < p.t(5)
    assert busy.is_alive(), "busy connection closed"
    busy.finish()
