"""SPEC section 4 / RFC 6455 sections 5-7: framing, relaying, protocol
errors.  Most tests share one proxy (per binary) in front of an echo engine;
each test uses its own connection, found on the engine side by the PROXY
header's source port."""

import hashlib
import os
import time

import pytest

from conftest import (finish_or_fail, OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
                      ProxySet, close_payload, frame)
from engine import conn_for


@pytest.fixture(scope="module")
def shared(wsproxy_bin, tmp_path_factory):
    ps = ProxySet(wsproxy_bin, tmp_path_factory.mktemp("framing"))
    p = ps.start(engine="echo")
    yield p
    finish_or_fail(ps)


@pytest.fixture
def ws(shared):
    c = shared.ws()
    yield c
    c.sock.close()


def engine_side(shared, c):
    return conn_for(shared.engine, c.local_port)


def collect(c, nbytes, npongs=0, timeout=10.0):
    """Read frames until nbytes of echoed data and npongs pongs arrived."""
    deadline = time.monotonic() + timeout
    data, pongs = b"", []
    while len(data) < nbytes or len(pongs) < npongs:
        f = c.recv_frame(max(0.01, deadline - time.monotonic()))
        if f.opcode == OP_PONG:
            assert f.fin
            pongs.append(f.payload)
        else:
            assert f.opcode == OP_BIN and f.fin, \
                "unexpected frame %r" % (f[:3] + (f.payload[:50],),)
            data += f.payload
    assert len(data) == nbytes
    return data, pongs


# ---------------------------------------------------------------------------
# relaying
# ---------------------------------------------------------------------------

def test_text_binary_fragmented_relayed_in_order(shared, ws):
    parts = [
        frame(OP_TEXT, "h\u00e9llo \u20ac "),
        frame(OP_BIN, bytes(range(256))),
        frame(OP_TEXT, b"", fin=True),                      # empty message
        frame(OP_TEXT, b"ab", fin=False), frame(OP_CONT, b"cd", fin=False),
        frame(OP_CONT, b"", fin=False), frame(OP_CONT, b"ef"),
        frame(OP_BIN, b"\x00\x01", fin=False), frame(OP_CONT, b"\xff" * 300),
        frame(OP_BIN, os.urandom(70000)),                    # 16-bit+ lengths
    ]
    want = ("h\u00e9llo \u20ac ").encode() + bytes(range(256)) + b"abcdef" \
        + b"\x00\x01" + b"\xff" * 300
    for p in parts:
        ws.send(p)
    conn = engine_side(shared, ws)
    total = len(want) + 70000
    assert conn.wait_bytes(total), "engine got %d of %d bytes" % (conn.nbytes, total)
    got = bytes(conn.data)
    assert got[:len(want)] == want
    assert conn.nbytes == total
    echoed, _ = collect(ws, total)
    assert echoed == got
    ws.close()


def test_data_frame_payload_unmasked_exactly(shared, ws):
    payload = os.urandom(1000)
    ws.send(frame(OP_BIN, payload, mask_key=b"\x00\x00\x00\x00"))
    ws.send(frame(OP_BIN, payload, mask_key=b"\xff\x10\x20\x30"))
    conn = engine_side(shared, ws)
    assert conn.wait_bytes(2000)
    assert bytes(conn.data) == payload * 2
    ws.close()


def test_fragment_relayed_before_message_ends(shared, ws):
    ws.send(frame(OP_TEXT, b"first part ", fin=False))
    conn = engine_side(shared, ws)
    assert conn.wait_bytes(11, timeout=5), \
        "first fragment not relayed before the message ended"
    ws.send(frame(OP_CONT, b"second"))
    assert conn.wait_bytes(17)
    assert bytes(conn.data) == b"first part second"
    ws.close()


def test_partial_frame_payload_streamed(shared, ws):
    """Half a frame's payload reaches the engine without the rest."""
    payload = os.urandom(100000)
    raw = frame(OP_BIN, payload)
    half = 14 + 50000
    ws.send(raw[:half])
    conn = engine_side(shared, ws)
    assert conn.wait_bytes(50000, timeout=5), \
        "engine got %d bytes: whole frame buffered?" % conn.nbytes
    ws.send(raw[half:])
    assert conn.wait_bytes(100000)
    assert conn.nbytes == 100000
    assert conn.hexdigest() == hashlib.sha256(payload).hexdigest()
    ws.close()


def test_frames_split_at_every_byte(shared, ws):
    """A frame stream delivered one byte per segment."""
    raw = frame(OP_TEXT, "\u20acuro", fin=False) + frame(OP_PING, b"p1") \
        + frame(OP_CONT, b"!") + frame(OP_BIN, bytes(200))
    for i in range(len(raw)):
        ws.send(raw[i:i + 1])
        time.sleep(0.001)
    want = "\u20acuro!".encode() + bytes(200)
    data, pongs = collect(ws, len(want), npongs=1)
    assert data == want and pongs == [b"p1"]
    ws.close()


def test_server_frames_binary_fin_unmasked(shared, ws):
    ws.send(frame(OP_TEXT, "text in"))
    f = ws.recv_frame()
    assert (f.fin, f.rsv, f.opcode, f.masked) == (True, 0, OP_BIN, False)
    assert f.payload == b"text in"
    ws.close()


# ---------------------------------------------------------------------------
# ping / pong
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(125))],
                         ids=["empty", "short", "125"])
def test_ping_pong_same_payload(ws, payload):
    ws.send(frame(OP_PING, payload))
    f = ws.recv_frame()
    assert f.opcode == OP_PONG and f.fin and f.payload == payload
    ws.close()


def test_ping_between_fragments(shared, ws):
    """A Ping in the middle of an open message is answered at once (the
    message is still open when the Pong must arrive)."""
    ws.send(frame(OP_TEXT, b"hello ", fin=False))
    ws.send(frame(OP_PING, b"mid-message"))
    data, pongs = collect(ws, 6, npongs=1)
    assert data == b"hello " and pongs == [b"mid-message"]
    ws.send(frame(OP_CONT, b"wor", fin=False))
    ws.send(frame(OP_PING, b"again"))
    data2, pongs = collect(ws, 3, npongs=1)
    assert data2 == b"wor" and pongs == [b"again"]
    ws.send(frame(OP_CONT, b"ld"))
    data3, _ = collect(ws, 2)
    assert data + data2 + data3 == b"hello world"
    conn = engine_side(shared, ws)
    assert conn.wait_bytes(11)
    assert bytes(conn.data) == b"hello world"
    ws.close()


def test_pings_in_a_burst_answered(ws):
    """Several Pings in one segment: RFC 6455 5.5.3 lets the server answer
    only the most recent one, so the last payload must come back and every
    Pong must carry one of the payloads sent, in order."""
    sent = [b"p%d" % i for i in range(5)]
    ws.send(b"".join(frame(OP_PING, x) for x in sent))
    pongs = []
    while not pongs or pongs[-1] != sent[-1]:
        f = ws.recv_frame()
        assert f.opcode == OP_PONG, f
        pongs.append(f.payload)
    it = iter(sent)
    assert all(x in it for x in pongs), "pongs %r out of order" % pongs
    ws.echo(b"after the burst")
    ws.close()


def test_unsolicited_pong_ignored(shared, ws):
    ws.send(frame(OP_PONG, b"nobody asked"))
    ws.send(frame(OP_PONG, b""))
    ws.echo(b"still fine")
    assert bytes(engine_side(shared, ws).data) == b"still fine"
    ws.close()


# ---------------------------------------------------------------------------
# protocol violations -> 1002
# ---------------------------------------------------------------------------

VIOLATIONS = {
    "rsv1": [frame(OP_TEXT, b"x", rsv=4)],
    "rsv2": [frame(OP_BIN, b"x", rsv=2)],
    "rsv3": [frame(OP_BIN, b"x", rsv=1)],
    "rsv-on-ping": [frame(OP_PING, b"x", rsv=4)],
    "control-126": [frame(OP_PING, b"p" * 126)],
    "close-126": [frame(OP_CLOSE, close_payload(1000, b"r" * 124))],
    "pong-200": [frame(OP_PONG, b"p" * 200)],
    "fragmented-ping": [frame(OP_PING, b"p", fin=False)],
    "fragmented-close": [frame(OP_CLOSE, close_payload(1000), fin=False)],
    "unmasked": [frame(OP_BIN, b"hello", mask=False)],
    "unmasked-ping": [frame(OP_PING, b"hello", mask=False)],
    "continuation-without-message": [frame(OP_CONT, b"x")],
    "continuation-after-complete": [frame(OP_TEXT, b"a"), frame(OP_CONT, b"b")],
    "text-while-open": [frame(OP_TEXT, b"a", fin=False), frame(OP_TEXT, b"b")],
    "binary-while-open": [frame(OP_BIN, b"a", fin=False), frame(OP_BIN, b"b")],
    "binary-while-text-open": [frame(OP_TEXT, b"a", fin=False),
                               frame(OP_BIN, b"b")],
    "close-1-byte": [frame(OP_CLOSE, b"\x03")],
    "len64-top-bit": [frame(OP_BIN, b"", length=1 << 63, len_form=64)],
    "len64-all-ones": [frame(OP_BIN, b"", length=(1 << 64) - 1, len_form=64)],
}
for _op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
    VIOLATIONS["opcode-%d" % _op] = [frame(_op, b"x")]
for _code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
              65535):
    VIOLATIONS["close-code-%d" % _code] = [frame(OP_CLOSE, close_payload(_code))]


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_protocol_violation_1002(shared, ws, name):
    for f in VIOLATIONS[name]:
        ws.send(f)
    ws.expect_close(1002)


def test_violation_does_not_affect_other_connections(shared):
    a = shared.ws()
    b = shared.ws()
    a.echo(b"before")
    b.send(frame(OP_BIN, b"x", rsv=4))
    b.expect_close(1002)
    a.echo(b"after")
    a.close()


VALID_CLOSE = [1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013,
               1014, 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", VALID_CLOSE)
def test_valid_close_code_echoed(ws, code):
    ws.echo(b"some data first")
    ws.close(code, b"bye")


def test_close_without_payload(ws):
    ws.send(frame(OP_CLOSE, b""))
    data, code, _ = ws.recv_until_close()
    assert code in (None, 1000), "empty Close answered with %s" % code
    ws.expect_eof()


# ---------------------------------------------------------------------------
# UTF-8 -> 1007
# ---------------------------------------------------------------------------

BAD_UTF8 = {
    "ff": b"ok \xff",
    "continuation-first": b"\x80abc",
    "overlong-slash": b"\xc0\xaf",
    "overlong-3": b"\xe0\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "five-byte": b"\xf8\x88\x80\x80\x80",
    "truncated-at-end": b"abc\xe2\x82",
    "bad-continuation": b"\xe2\x28\xa1",
}


@pytest.mark.parametrize("name", list(BAD_UTF8))
def test_invalid_utf8_text_1007(ws, name):
    ws.send(frame(OP_TEXT, BAD_UTF8[name]))
    ws.expect_close(1007)


def test_invalid_utf8_binary_is_fine(shared, ws):
    payload = b"".join(BAD_UTF8.values())
    ws.echo(payload)
    ws.close()


def test_valid_utf8_split_across_fragments(shared, ws):
    s = "\u20ac\U0001d11e\u00e9".encode()   # 3 + 4 + 2 bytes
    ws.send(frame(OP_TEXT, s[:1], fin=False))
    for i in range(1, len(s) - 1):
        ws.send(frame(OP_CONT, s[i:i + 1], fin=False))
    ws.send(frame(OP_CONT, s[-1:]))
    data, _ = collect(ws, len(s))
    assert data == s
    ws.close()


def test_invalid_utf8_split_across_fragments_1007(ws):
    ws.send(frame(OP_TEXT, b"abc\xe2\x82", fin=False))
    ws.send(frame(OP_CONT, b"\x28 rest"))
    ws.expect_close(1007)


def test_utf8_truncated_at_message_end_across_fragments_1007(ws):
    ws.send(frame(OP_TEXT, b"a\xf0\x9f", fin=False))
    ws.send(frame(OP_CONT, b"", fin=True))
    ws.expect_close(1007)


def test_invalid_utf8_fails_fast_in_open_message(ws):
    """The message never ends: the close must come from the bad fragment."""
    ws.send(frame(OP_TEXT, b"fine so far ", fin=False))
    ws.send(frame(OP_CONT, b"now \xff bad", fin=False))
    ws.expect_close(1007, timeout=5)


def test_invalid_utf8_fails_fast_inside_frame(ws):
    """Only the first bytes of a long text frame arrive; they are invalid."""
    raw = frame(OP_TEXT, b"ab\xfe" + b"x" * 997)
    ws.send(raw[:8 + 10])   # 2 + 2 length + 4 mask, then 10 payload bytes
    ws.expect_close(1007, timeout=5)


@pytest.mark.parametrize("split", [None, 5, 6, 9], ids=lambda s: "split-%s" % s)
def test_valid_text_before_invalid_byte_reaches_engine(shared, ws, split):
    """What the engine gets before a 1007 does not depend on how the bytes
    were segmented: the text before the invalid byte, in one read or not."""
    text = b"Hello\xc3\xff world"
    raw = frame(OP_TEXT, text)
    hdr = len(raw) - len(text)
    if split is None:
        ws.send(raw)
    else:
        ws.send(raw[:hdr + split])
        time.sleep(0.2)
        ws.send(raw[hdr + split:])
    ws.expect_close(1007)
    conn = engine_side(shared, ws)
    assert conn.wait_bytes(6, timeout=shared.t(5)), \
        "the engine got %r of the text before the invalid byte" % bytes(conn.data)
    assert bytes(conn.data) == b"Hello\xc3"


def test_invalid_utf8_close_reason_1007(ws):
    ws.send(frame(OP_CLOSE, close_payload(1000, b"bad \xff reason")))
    ws.expect_close(1007)


def test_valid_utf8_close_reason(ws):
    ws.close(1000, "d\u00e9j\u00e0 vu \u20ac".encode())


# ---------------------------------------------------------------------------
# --max-message -> 1009
# ---------------------------------------------------------------------------

@pytest.fixture
def limited(proxy):
    return proxy("--max-message", "1000")


def test_max_message_exact_limit_ok(limited):
    c = limited.ws()
    c.echo(os.urandom(1000))
    c.send(frame(OP_BIN, b"a" * 500, fin=False))
    c.send(frame(OP_CONT, b"b" * 500))
    assert c.recv_data(1000) == b"a" * 500 + b"b" * 500
    c.echo("t" * 1000, opcode=OP_TEXT)
    c.close()


@pytest.mark.parametrize("frames", [
    [frame(OP_BIN, b"z" * 1001)],
    [frame(OP_TEXT, b"z" * 1001)],
    [frame(OP_BIN, b"z" * 600, fin=False), frame(OP_CONT, b"z" * 401)],
    [frame(OP_TEXT, b"z" * 400, fin=False), frame(OP_PING, b"p"),
     frame(OP_CONT, b"z" * 400, fin=False), frame(OP_CONT, b"z" * 201)],
    [frame(OP_BIN, b"", length=1 << 40, len_form=64)],
], ids=["binary", "text", "fragmented", "fragmented-with-ping", "huge-header"])
def test_max_message_exceeded_1009(limited, frames):
    c = limited.ws()
    for f in frames:
        c.send(f)
    c.expect_close(1009)
    # The proxy still serves.
    d = limited.ws()
    d.echo(b"others fine")
    d.close()
