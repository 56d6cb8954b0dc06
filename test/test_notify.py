"""The wsproxy program speaks systemd's notify protocol itself (no
libsystemd): with NOTIFY_SOCKET set it sends datagrams to that socket --
READY=1 once listening, RELOADING=1 with MONOTONIC_USEC then READY=1 around a
SIGHUP restart, STOPPING=1, STATUS= with the state and open connections.
The test plays the service manager: it binds the datagram socket itself,
a filesystem path or an abstract name, and checks each datagram's sender."""

import os
import signal
import socket
import struct
import time

import pytest

from conftest import free_port, wait_until
from test_sighup import write_config


class Manager:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)

    def recv(self, timeout):
        """One datagram as (dict of KEY=value, sender pid)."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            raise AssertionError("no notify datagram within %.1fs" % timeout)
        pid = None
        for level, kind, body in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", body[:12])[0]
        text = data.decode("utf-8")
        assert text and not text.endswith("\n"), repr(text)
        fields = dict(line.split("=", 1) for line in text.split("\n"))
        return fields, pid

    def expect(self, key, timeout, pid):
        """Datagrams until one carries `key`; returns its fields."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            fields, sender = self.recv(max(0.05, deadline - time.monotonic()))
            assert sender == pid, "datagram from pid %s, not wsproxy's %s" % (sender, pid)
            seen.append(fields)
            if key in fields:
                return fields
        raise AssertionError("no %s within %.1fs; got %r" % (key, timeout, seen))

    def close(self):
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request, monkeypatch, tmp_path):
    if request.param == "abstract":
        name = "wsproxy-test-%d-%d" % (os.getpid(), time.monotonic_ns())
        m = Manager("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = os.path.join(str(tmp_path), "notify")
        if len(path) > 100:
            pytest.fail("temporary path too long for a Unix socket: %s" % path)
        m = Manager(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield m
    m.close()


def test_notify_lifecycle(manager, proxy, engine, tmp_path):
    e = engine("echo")
    cfg = tmp_path / "wsproxy.conf"
    port = free_port()
    write_config(cfg, port, e.path)
    p = proxy("--config", cfg, raw=True, port=port, engine=e, wait=False)
    pid = p.proc.pid

    ready = manager.expect("READY", p.t(10), pid)
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "RUNNING ws:// on port %d, 0 connections open" % port, ready
    p.wait_ready()  # READY=1 came only once the port listens: it accepts now

    c = p.ws()
    c.echo(b"counted")
    st = manager.expect("STATUS", p.t(5), pid)
    while st["STATUS"] != "RUNNING ws:// on port %d, 1 connections open" % port:
        st = manager.expect("STATUS", p.t(5), pid)

    before = time.monotonic()
    p.signal(signal.SIGHUP)
    rel = manager.expect("RELOADING", p.t(5), pid)
    after = time.monotonic()
    assert rel["RELOADING"] == "1"
    usec = int(rel["MONOTONIC_USEC"])     # CLOCK_MONOTONIC, like time.monotonic()
    assert before * 1e6 - 1000 <= usec <= after * 1e6 + 1000, (before, usec, after)
    ready = manager.expect("READY", p.t(5), pid)
    assert "RELOADING" not in ready and ready["STATUS"].startswith("RUNNING"), ready
    c.echo(b"the connection survived the reload")
    c.close()

    p.signal(signal.SIGTERM)
    stop = manager.expect("STOPPING", p.t(10), pid)
    assert stop["STOPPING"] == "1"
    p.proc.wait(p.t(10))
    assert p.proc.returncode == 0, p.stderr()


def test_notify_failed_reload_is_ready_again(manager, proxy, engine, tmp_path):
    """A configuration that cannot be applied still ends the reload with
    READY=1: the old one goes on serving."""
    e = engine("echo")
    cfg = tmp_path / "wsproxy.conf"
    port = free_port()
    write_config(cfg, port, e.path)
    p = proxy("--config", cfg, raw=True, port=port, engine=e, wait=False)
    manager.expect("READY", p.t(10), p.proc.pid)
    cfg.write_text("http_port = %d\nhttps_port = %d\nsocket_path = %s\n"
                   % (port, free_port(), e.path))
    p.signal(signal.SIGHUP)
    manager.expect("RELOADING", p.t(5), p.proc.pid)
    ready = manager.expect("READY", p.t(5), p.proc.pid)
    assert ready["STATUS"] == "RUNNING ws:// on port %d, 0 connections open" % port
    wait_until(p.alive, 1, what="proxy alive")


def unix_dgram_sockets(pid):
    """Inodes of the Unix datagram sockets process `pid` holds."""
    mine = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    dgram = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[4] == "0002":      # SOCK_DGRAM
                dgram.add(cols[6])
    return mine & dgram


def test_no_notify_socket_sends_nothing(proxy, manager, monkeypatch):
    """Without NOTIFY_SOCKET the program runs as before and opens no
    datagram socket; nothing reaches a manager listening anyway."""
    monkeypatch.delenv("NOTIFY_SOCKET")
    p = proxy()
    c = p.ws()
    c.echo(b"x")
    c.close()
    assert not unix_dgram_sockets(p.proc.pid)
    p.signal(signal.SIGHUP)
    with pytest.raises(AssertionError, match="no notify datagram"):
        manager.recv(p.t(1.5))
    assert p.alive()
