"""Faults the kernel reports rarely, injected with an LD_PRELOAD shim
(build/shim/fault.so, from test/shim/fault.c) into the plain build (the
ASan build refuses a preload ahead of its runtime):

- accept() errors that concern one new connection (Linux passes a pending
  network error, or EPERM from a firewall, through accept) are skipped;
  only a broken listener is fatal;
- every descriptor is created close-on-exec atomically (socket() with
  SOCK_CLOEXEC, pipe2), so a host thread that forks cannot leak one;
- a 502 body says "engine unavailable" and nothing of the server's insides;
- without a thread CPU clock (CLOCK_THREAD_CPUTIME_ID failing), idle
  connections are still served while one is busy (failed before 7cdfbaa,
  which read the timespec the failed call left).
- an engine TCP socket has TCP_NODELAY (test_engine_tcp_socket_has_nodelay).

Each failed on ed93cc1.  Run with /usr/bin/python3 (Debian's pytest)."""

import os
import re
import time

import pytest

from conftest import OP_BIN, ROOT, Bin, ProxySet, assert_complete, finish_or_fail, ws_request
from engine import KINDS

# Each test runs against each kind of engine socket (conftest.pytest_generate_tests).
ENGINE_KINDS = KINDS

SHIM = str(ROOT / "build" / "shim" / "fault.so")
PLAIN = Bin("plain", str(ROOT / "build" / "wsproxy"), False)


@pytest.fixture
def shimmed(tmp_path, monkeypatch, engine_kind):
    assert os.path.exists(SHIM), "build/shim/fault.so missing: make build/shim/fault.so"
    monkeypatch.setenv("LD_PRELOAD", SHIM)
    ps = ProxySet(PLAIN, tmp_path, engine_kind)
    yield ps
    finish_or_fail(ps)


PER_CONNECTION = "ENETDOWN,ENOPROTOOPT,EHOSTDOWN,ENONET,EHOSTUNREACH,EOPNOTSUPP," \
                 "ENETUNREACH,EPERM,ECONNABORTED,EPROTO,EINTR"


def test_accept_errors_of_one_connection_are_skipped(shimmed, monkeypatch, tmp_path):
    monkeypatch.setenv("WSPROXY_SHIM_ACCEPT", PER_CONNECTION)
    p = shimmed.start(log_dir=str(tmp_path))
    c = p.ws()
    c.echo(b"still serving")
    c.close()
    resp = p.http(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_complete(resp, 200)
    assert "failed" not in p.log(), p.log()


def test_descriptors_are_born_close_on_exec(shimmed, tmp_path):
    p = shimmed.start(log_dir=str(tmp_path))
    c = p.ws()               # listener, wake pipe, client and engine sockets
    c.echo(b"x")
    c.close()
    assert "shim:" not in p.stderr(), p.stderr()


def test_502_body_reveals_nothing(shimmed, tmp_path):
    secret = shimmed.refused()
    p = shimmed.start(engine=None, socket_path=secret, log_dir=str(tmp_path))
    resp = p.http(ws_request())
    assert_complete(resp, 502)
    assert resp.body == b"engine unavailable\n", resp.body
    assert secret.encode() not in resp.raw
    # the log says it in words (issue 20, item 15: "send PROXY header to(...)")
    p.wait_log(r"refused 502: engine unavailable: connect to " + re.escape(secret) +
               ": Connection refused")


def test_engine_tcp_socket_has_nodelay(shimmed, monkeypatch, tmp_path, engine_kind):
    """TCP_NODELAY on every engine TCP socket (a relayed query is one small
    write that must not wait for an ACK); a Unix engine socket has none."""
    monkeypatch.setenv("WSPROXY_SHIM_NODELAY", "1")
    p = shimmed.start(log_dir=str(tmp_path))
    for _ in range(2):
        c = p.ws()
        c.echo(b"x")
        c.close()
    want = 0 if engine_kind == "unix" else 2
    assert p.stderr().count("shim: TCP_NODELAY on an engine socket") == want, p.stderr()


def test_cold_connections_served_without_a_thread_cpu_clock(shimmed, monkeypatch):
    from test_loop import COLD, HOT_S, Busy, open_idle
    monkeypatch.setenv("WSPROXY_SHIM_THREAD_CLOCK", "fail")
    p = shimmed.start(engine="echo")
    idle = open_idle(p, COLD)
    busy = Busy(p.ws())
    busy.start()
    time.sleep(HOT_S + 0.5)   # the idle ones turn cold; the busy one stays hot
    for i, c in enumerate(idle[::15]):
        msg = b"wake %d" % i
        c.send_frame(OP_BIN, msg)
        assert c.recv_data(len(msg), timeout=p.t(2)) == msg
    busy.finish()
