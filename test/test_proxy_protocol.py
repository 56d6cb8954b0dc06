"""SPEC section 2, "secure by default": the PROXY protocol header that lets
the engine see the browser's address."""

import re

from conftest import OP_BIN, frame
from engine import KINDS, V2_SIG

# Each test runs against each kind of engine socket (conftest.pytest_generate_tests).
ENGINE_KINDS = KINDS


def test_default_is_v2_with_client_address(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e)            # no --proxy-protocol: the default
    c = p.ws()
    c.echo(b"after the header")
    conn = e.conn(0)
    h = conn.header
    assert conn.header_error is None, conn.header_error
    assert h is not None, "no PROXY header by default"
    assert h["version"] == 2
    assert h["raw"].startswith(V2_SIG)
    assert h["ver_cmd"] == 0x21, "want version 2 / PROXY command"
    assert h["family"] == 0x11, "want TCP over IPv4 for a 127.0.0.1 client"
    assert h["length"] >= 12
    assert h["src"] == "127.0.0.1"
    assert h["sport"] == c.local_port
    assert h["dst"] == "127.0.0.1"
    assert h["dport"] == p.port
    # The header is stripped: the engine's stream is exactly the payload.
    assert bytes(conn.data) == b"after the header"
    c.close()


def test_v2_each_connection_has_its_own_port(proxy, engine):
    e = engine("echo")
    p = proxy("--proxy-protocol", "v2", engine=e)
    clients = [p.ws() for _ in range(3)]
    for c in clients:
        c.echo(b"x")
    sports = sorted(c.local_port for c in clients)
    conns = e.wait_conns(3)
    assert sorted(conn.header["sport"] for conn in conns) == sports
    for c in clients:
        c.close()


def test_v1_text_line(proxy, engine):
    e = engine("echo")
    p = proxy("--proxy-protocol", "v1", engine=e)
    c = p.ws()
    c.echo(b"v1 payload")
    conn = e.conn(0)
    assert conn.header_error is None, conn.header_error
    h = conn.header
    assert h is not None and h["version"] == 1
    assert h["raw"] == ("PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n"
                        % (c.local_port, p.port)).encode()
    assert bytes(conn.data) == b"v1 payload"
    c.close()


def test_off_sends_nothing_and_warns(proxy, engine):
    e = engine("echo", proxy="off")   # records the raw stream
    # the test engine's socket is this process's (root's, as wsproxy runs here)
    p = proxy("--proxy-protocol", "off", "--allow-socket-owner", engine=e)
    c = p.ws()
    c.send(frame(OP_BIN, b"PROXY-less first bytes"))
    assert c.recv_data(22) == b"PROXY-less first bytes"
    conn = e.conn(0)
    assert bytes(conn.data) == b"PROXY-less first bytes", \
        "engine stream must start with the client's payload"
    c.close()
    line = p.wait_log(r"warn.*proxy|proxy.*warn")
    assert re.search(r"off|disabled|without", line, re.I), line


def test_v2_no_warning(proxy):
    p = proxy()
    c = p.ws()
    c.echo(b"x")
    c.close()
    for line in p.log().splitlines():
        assert not re.search(r"warn.*proxy.?protocol", line, re.I), line


def test_v2_over_ipv6(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e, bind="::1")
    c = p.ws()
    c.echo(b"six")
    h = e.conn(0).header
    assert h is not None and h["version"] == 2
    assert h["family"] == 0x21, "want TCP over IPv6 for a ::1 client"
    assert h["length"] >= 36
    assert (h["src"], h["sport"]) == ("::1", c.local_port)
    assert (h["dst"], h["dport"]) == ("::1", p.port)
    c.close()


def test_v1_over_ipv6(proxy, engine):
    e = engine("echo")
    p = proxy("--proxy-protocol", "v1", engine=e, bind="::1")
    c = p.ws()
    c.echo(b"six")
    h = e.conn(0).header
    assert h["raw"] == ("PROXY TCP6 ::1 ::1 %d %d\r\n"
                        % (c.local_port, p.port)).encode()
    c.close()
