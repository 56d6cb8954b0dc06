"""SPEC section 7: garbage from clients (and the engine) never crashes the
proxy, and other connections go on untouched.  Deterministic (seeded) and
bounded in count and time; the sanitizer build catches memory errors, and
the proxy fixture asserts a clean exit at the end."""

import random
import socket
import struct
import time

from conftest import (OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT,
                      close_payload, frame, raise_nofile, read_until_eof,
                      ws_request)


def garbage_request(rnd):
    kind = rnd.randrange(6)
    if kind == 0:
        return rnd.randbytes(rnd.randint(1, 3000))
    if kind == 1:   # valid request with random bytes spliced in
        req = bytearray(ws_request())
        for _ in range(rnd.randint(1, 8)):
            req[rnd.randrange(len(req))] = rnd.randrange(256)
        return bytes(req)
    if kind == 2:   # truncated request
        req = ws_request()
        return req[:rnd.randint(1, len(req) - 1)]
    if kind == 3:   # header lines without end, with NULs and bare CR/LF
        return b"GET / HTTP/1.1\r\n" + b"".join(
            rnd.choice([b"X: \x00\r\n", b"\r", b"\n", b"Host:\r\n", b": v\r\n",
                        b"Sec-WebSocket-Key: " + b"A" * rnd.randint(0, 80) + b"\r\n",
                        b"Content-Length: 99999999999999999999\r\n"])
            for _ in range(rnd.randint(1, 200)))
    if kind == 4:   # huge request line
        return b"GET /" + b"a" * rnd.randint(100, 20000) + b" HTTP/1.1\r\n\r\n"
    return b"\r\n" * rnd.randint(1, 5000)


def garbage_frames(rnd):
    kind = rnd.randrange(5)
    if kind == 0:
        return rnd.randbytes(rnd.randint(1, 4000))
    out = b""
    for _ in range(rnd.randint(1, 20)):
        op = rnd.choice([OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, 3, 11, 15])
        n = rnd.choice([0, 1, 2, 125, 126, 127, 300, 70000])
        payload = rnd.randbytes(n)
        if op == OP_CLOSE and n >= 2 and rnd.random() < 0.5:
            payload = close_payload(rnd.choice([1000, 1005, 3000, 0]), payload[2:50])
        out += frame(op, payload, fin=rnd.random() < 0.7,
                     rsv=0 if rnd.random() < 0.8 else rnd.randrange(8),
                     mask=rnd.random() < 0.9,
                     length=None if rnd.random() < 0.8 else rnd.choice(
                         [0, 1, 126, 65535, 1 << 32, (1 << 63) + 5]),
                     len_form=rnd.choice([None, None, None, 16, 64]))
    if kind == 1:   # cut mid-frame
        out = out[:rnd.randint(1, len(out))]
    return out


def blast(port, payload, handshake, rnd, timeout=3.0):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as ex:
        raise AssertionError("proxy stopped accepting: %s" % ex)
    try:
        if handshake:
            s.sendall(ws_request())
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if rnd.random() < 0.5:
            read_until_eof(s, 0.05)
    finally:
        if rnd.random() < 0.3:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        s.close()


def test_garbage_does_not_hurt(proxy, engine):
    raise_nofile(4096)
    e = engine("echo")
    p = proxy("--max-message", "1000000", engine=e)
    bystander = p.ws()
    bystander.echo(b"before")
    rnd = random.Random(20240601)
    deadline = time.monotonic() + p.t(25)
    n = 0
    for i in range(400):
        if time.monotonic() > deadline:
            break
        if i % 2:
            blast(p.port, garbage_request(rnd), False, rnd)
        else:
            blast(p.port, garbage_frames(rnd), True, rnd)
        n += 1
        if i % 50 == 49:
            bystander.echo(b"during %d" % i)
    assert n >= 100, "only %d garbage connections within the time bound" % n
    assert p.alive()
    bystander.echo(b"after")
    fresh = p.ws()
    fresh.echo(b"fresh")
    fresh.close()
    bystander.close()
    resp = p.http(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200


def test_garbage_from_engine_is_just_bytes(proxy, engine):
    """The engine may send anything: it is relayed as binary data, even
    bytes that look like WebSocket frames or HTTP."""
    junk = frame(OP_CLOSE, close_payload(1002), mask=False) \
        + b"HTTP/1.1 200 OK\r\n\r\n" + bytes(range(256))
    e = engine("echo")
    p = proxy(engine=e)
    c = p.ws()
    c.echo(junk)
    c.close()


def test_many_open_handshakes_idle(proxy):
    """Many connections that never finish their request do not block a
    good client."""
    raise_nofile(4096)
    p = proxy()
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            socks.append(s)
        c = p.ws()
        c.echo(b"not blocked")
        c.close()
    finally:
        for s in socks:
            s.close()
