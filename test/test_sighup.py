"""SPEC section 2: --config FILE re-read on SIGHUP (ws_proxy_restart through
the program): the new port serves, established connections survive, and a
configuration that cannot be applied leaves the old one running."""

import signal
import socket
import time

from conftest import free_port, port_accepts, wait_until


def write_config(path, port, socket_path, extra=()):
    lines = ["# wsproxy test configuration",
             "http_port = %d" % port,
             "bind_address = 127.0.0.1",
             "socket_path = %s" % socket_path]
    lines += list(extra)
    path.write_text("\n".join(lines) + "\n")


def start_with_config(proxy, e, cfg):
    """wsproxy --config CFG on a free port in front of engine e."""
    port = free_port()
    write_config(cfg, port, e.path)
    return proxy("--config", cfg, raw=True, port=port, engine=e), port


def test_sighup_moves_port_and_keeps_connections(proxy, engine, tmp_path):
    e = engine("echo")
    cfg = tmp_path / "wsproxy.cnf"
    port_b = free_port()
    p, port_a = start_with_config(proxy, e, cfg)
    old = p.ws()
    old.echo(b"before reload")

    write_config(cfg, port_b, e.path)
    p.signal(signal.SIGHUP)
    wait_until(lambda: port_accepts(port_b), p.t(5),
               what="the new port to accept after SIGHUP")
    wait_until(lambda: not port_accepts(port_a), p.t(5),
               what="the old port to stop accepting")
    old.echo(b"after reload: the old connection still relays")
    p.port = port_b
    new = p.ws()
    new.echo(b"on the new port")
    new.close()
    old.close()
    assert p.alive()


def test_sighup_same_port_keeps_listening(proxy, engine, tmp_path):
    e = engine("echo")
    cfg = tmp_path / "wsproxy.cnf"
    p, port = start_with_config(proxy, e, cfg)
    old = p.ws()
    write_config(cfg, port, e.path, ["max_message = 100"])
    p.signal(signal.SIGHUP)
    # No window where the port refuses: poll it hard across the reload.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert port_accepts(port, timeout=1.0), "port refused during reload"
    old.echo(b"survived")
    old.close()
    c = p.ws()
    c.echo(b"y" * 100)
    c.close()


def test_sighup_bad_config_keeps_old(proxy, engine, tmp_path):
    e = engine("echo")
    cfg = tmp_path / "wsproxy.cnf"
    p, port_a = start_with_config(proxy, e, cfg)
    old = p.ws()
    old.echo(b"before")
    log_before = len(p.log())

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        write_config(cfg, busy, e.path)
        p.signal(signal.SIGHUP)
        line = p.wait_log(r"restart|reload|fail|error", start=log_before)
        assert line
        time.sleep(0.2)
        assert p.alive(), "proxy died on a bad configuration"
        assert port_accepts(port_a), "old port no longer serves"
        old.echo(b"old connection untouched")
        c = p.ws()
        c.echo(b"old port still serves")
        c.close()
    finally:
        blocker.close()

    # Mutually exclusive ports: also refused, also harmless.
    write_config(cfg, port_a, e.path, ["https_port = %d" % free_port()])
    p.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert p.alive() and port_accepts(port_a)
    old.echo(b"still")
    old.close()


def test_sighup_without_port_stops_listening(proxy, engine, tmp_path):
    """A configuration with no port stops listening (a valid restart);
    established connections go on; putting a port back listens again."""
    e = engine("echo")
    cfg = tmp_path / "wsproxy.cnf"
    p, port = start_with_config(proxy, e, cfg)
    old = p.ws()
    cfg.write_text("bind_address = 127.0.0.1\nsocket_path = %s\n" % e.path)
    p.signal(signal.SIGHUP)
    wait_until(lambda: not port_accepts(port), p.t(5),
               what="the port to stop accepting")
    assert p.alive()
    old.echo(b"still relaying without a listener")
    write_config(cfg, port, e.path)
    p.signal(signal.SIGHUP)
    wait_until(lambda: port_accepts(port), p.t(5), what="listening again")
    c = p.ws()
    c.echo(b"back")
    c.close()
    old.close()
