"""Bulk transfer with a real client (python websockets 10.4, asyncio):
16 MiB each way, checked with SHA-256, through echo, sink and source
engines; plus many concurrent connections."""

import asyncio
import hashlib
import random

import websockets

from conftest import raise_nofile
from engine import KINDS, source_data

# Each test runs against each kind of engine socket (conftest.pytest_generate_tests).
ENGINE_KINDS = KINDS

MIB = 1024 * 1024
TOTAL = 16 * MIB
SIZES = [1, 2, 125, 126, 127, 1000, 65535, 65536, 65537, 100000, MIB,
         3 * MIB + 5, 7]


def message_sizes(total, seed=5):
    """Message sizes cycling through SIZES (edges of the 7/16/64-bit length
    forms) with some random ones, summing to exactly `total`."""
    rnd = random.Random(seed)
    out, left, i = [], total, 0
    while left > 0:
        n = SIZES[i % len(SIZES)] if i % 3 else rnd.randint(1, 300000)
        n = min(n, left)
        out.append(n)
        left -= n
        i += 1
    return out


def run(coro, timeout):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def connect(p, **kw):
    # Defaults a browser-like client uses (it offers permessage-deflate,
    # which the proxy must decline).
    return websockets.connect("ws://127.0.0.1:%d/" % p.port, max_size=None,
                              open_timeout=p.t(10), close_timeout=p.t(10), **kw)


def test_echo_16mib_each_way(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e)
    data = random.Random(1).randbytes(TOTAL)
    sizes = message_sizes(TOTAL)

    async def main():
        async with connect(p) as ws:
            assert ws.response_headers.get("Sec-WebSocket-Extensions") is None

            async def sender():
                off = 0
                for n in sizes:
                    await ws.send(data[off:off + n])
                    off += n
                assert off == TOTAL

            async def receiver():
                h, got = hashlib.sha256(), 0
                while got < TOTAL:
                    m = await ws.recv()
                    assert isinstance(m, bytes), "server sent a text frame"
                    h.update(m)
                    got += len(m)
                assert got == TOTAL
                return h.hexdigest()

            _, digest = await asyncio.gather(sender(), receiver())
            await ws.close(code=1000)
            assert ws.close_code == 1000
            return digest

    digest = run(main(), p.t(90))
    assert digest == hashlib.sha256(data).hexdigest()
    conn = e.conn(0)
    assert conn.nbytes == TOTAL
    assert conn.hexdigest() == hashlib.sha256(data).hexdigest()


def test_sink_16mib_text_and_binary(proxy, engine):
    e = engine("sink")
    p = proxy(engine=e)
    rnd = random.Random(2)
    h = hashlib.sha256()

    async def main():
        total = 0
        async with connect(p, compression=None) as ws:
            i = 0
            while total < TOTAL:
                n = min(TOTAL - total, SIZES[i % len(SIZES)])
                if i % 2:
                    m = rnd.randbytes(n)
                else:   # UTF-8 text with multi-byte characters
                    m = ("\u20ac" * (n // 3) + "a" * (n % 3))
                b = m.encode() if isinstance(m, str) else m
                h.update(b)
                total += len(b)
                await ws.send(m)
                i += 1
            await ws.close(code=1000)
        return total

    total = run(main(), p.t(90))
    conn = e.conn(0)
    assert conn.wait_eof(p.t(10))
    assert conn.nbytes == total
    assert conn.hexdigest() == h.hexdigest()


def test_source_16mib(proxy, engine):
    e = engine("source", source_bytes=TOTAL, seed=3)
    p = proxy(engine=e)

    async def main():
        h, got = hashlib.sha256(), 0
        async with connect(p) as ws:
            try:
                while True:
                    m = await ws.recv()
                    assert isinstance(m, bytes)
                    h.update(m)
                    got += len(m)
            except websockets.ConnectionClosedOK:
                pass
            assert ws.close_code == 1000
        return got, h.hexdigest()

    got, digest = run(main(), p.t(90))
    assert got == TOTAL
    assert digest == hashlib.sha256(source_data(TOTAL, 3)).hexdigest()


def test_many_concurrent_connections(proxy, engine):
    raise_nofile(4096)
    e = engine("echo")
    p = proxy(engine=e)
    N = 300

    async def main():
        opened = 0
        all_open = asyncio.Event()

        async def one(i):
            nonlocal opened
            async with connect(p, compression=None) as ws:
                opened += 1
                if opened == N:
                    all_open.set()
                await all_open.wait()     # all N are open at the same time
                msg = ("conn %d " % i).encode() * 50
                await ws.send(msg)
                got = b""
                while len(got) < len(msg):
                    got += await ws.recv()
                assert got == msg
                return i
        return await asyncio.gather(*(one(i) for i in range(N)))

    assert sorted(run(main(), p.t(60))) == list(range(N))
    assert len(e.conns) == N
