#!/usr/bin/python3
"""A long randomized test where both ends misbehave, against the wsproxy
program (by default the ASan+UBSan build, build/asan/wsproxy).

Two proxies run side by side, one serving ws:// and one wss:// (a throwaway
certificate made by the openssl CLI), both in front of an engine written here:
a Unix-socket server that strips the PROXY v2 header and then echoes, stalls,
resets, closes early or half-closes.  Clients (raw sockets, Python's ssl
through memory BIOs for wss://) send random valid and invalid frames in random
chunks (down to one byte, TLS records and TCP writes chunked separately),
Pings, Pongs, Close frames and TLS close_notify in every order, resets
(SO_LINGER 0), half-closes (FIN without Close) and stalls (they stop reading).
Every connection's behaviour (client and engine) comes from a generator seeded
with CHAOS_SEED and its index, so a run can be replayed; timing is not.

Each client binds its own source address in 127.0.0.0/8, which names it in
the engine's PROXY header and in /proc/net/tcp: so the driver knows, for each
client, which engine connection is its own and when the proxy stops holding
the client's socket (the socket has no owner any more).

Invariants (a failure names the connection, the seed and what happened when):
  crash       the proxies stay up; no sanitizer report in their stderr; they
              exit 0 on SIGTERM (LeakSanitizer included).
  outlive     once one end of a pair is gone (client FIN/RST/close, a Close or
              protocol violation the proxy can read, engine EOF/reset/close,
              or the proxy dropping either side), both the engine connection
              and the proxy's client socket are gone within drain timeout +
              CHAOS_SLACK (2 s).  Within CHAOS_PROMPT (2 s) when nothing may
              wait: a client reset, a FIN without a Close frame (a FIN that
              would queue behind bytes the paused proxy's closed window does
              not take is invisible to any proxy: such a client resets
              instead), or a Close,
              close_notify or violation in front of an engine that answers
              EOF at once.
  exact       well-behaved connections (a client that completes, in front of
              an echo engine, stalls included) get every byte back, in order,
              and the engine gets every byte; everything any client or engine
              receives is a prefix of what was sent; data decoded before a
              protocol violation reaches the echo engine (RFC 6455 7.1.7).
  close       a well-behaved client's Close is answered with its code and
              TCP closed after it; the proxy closes no such client itself.
  protocol    server frames are unmasked, RSV clear, binary FIN data, Close
              codes valid, nothing after a Close; violations get 1002, 1007
              or 1009 as RFC 6455 says; 101 with the right Accept.
  fds         /proc/PID/fd of each proxy back to its baseline at the end.
  health      GET /health answers 200 during and after the run, with as
              many connections open at the end as at the start.
  log         every connection the proxy accepted ends with one log line.

Usage:
  /usr/bin/python3 test/chaos.py [--secs N] [--seed S] [--conc N] [--bin PATH]
  make chaos CHAOS_SECS=N            (CHAOS_SEED=S to replay a run)
  /usr/bin/python3 test/chaos.py --seed S --conn I   (replay one connection)
Exit status 0 when every invariant held, 1 otherwise.
"""

import argparse
import asyncio
import collections
import fcntl
import os
import random
import re
import select
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import termios
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from conftest import (Bin, Proxy, Response, accept_for, close_payload,  # noqa: E402
                      frame, free_port, new_key, sanitizer_problems,
                      ws_request, OP_BIN, OP_CLOSE, OP_CONT, OP_PING, OP_PONG,
                      OP_TEXT)
from engine import V2_SIG, _parse_v2  # noqa: E402
from e2e.certs import make_certs  # noqa: E402

ROOT = os.path.dirname(HERE)

# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


class Cfg:
    drain_ms = 3000
    handshake_ms = 5000
    ping_ms = 3000
    max_message = 1 << 20
    tls_share = 0.25
    prompt = float(os.environ.get("CHAOS_PROMPT", "2.0"))
    slack = float(os.environ.get("CHAOS_SLACK", "2.0"))

    @property
    def general(self):
        return self.drain_ms / 1000.0 + self.slack


CLIENT_KINDS = [("good", 26), ("closer", 16), ("stall", 14), ("violate", 14),
                ("reset", 12), ("halfclose", 8), ("early", 10)]
ENGINE_KINDS = [("echo", 46), ("linger", 9), ("stall", 20), ("reset", 9),
                ("close", 9), ("halfclose", 7)]
CLOSER_PLAIN = ["wait", "close_fin", "close_rst", "close_close", "fin_only",
                "rst_only"]
CLOSER_TLS = CLOSER_PLAIN + ["close_notify_fin", "notify_fin", "notify_only",
                             "close_wait_notify", "close_wait_fin",
                             "close_notify_rst"]
# Variants that read the server's Close and expect it to echo theirs.  Not
# after our close_notify (the server may answer with its own and send nothing
# more), nor after a FIN under TLS (a truncated TLS stream may be dropped).
CLOSER_WAITS = {"wait", "close_fin", "close_wait_notify", "close_wait_fin"}
STALL_ENDS = ["resume", "resume", "resume", "rst", "close", "fin_hold",
              "close_frame"]
EARLY_PLAIN = ["req_rst", "req_fin", "req_idle", "garbage", "full_rst",
               "full_fin"]
EARLY_TLS = ["tls_rst", "tls_fin", "tls_idle", "tls_garbage"]
CUT_POINTS = ["before101", "after101", "midframe", "afterdata", "timer"]

# (name, expected close code): frames a client must never send.
VIOLATIONS = [("rsv", 1002), ("opcode", 1002), ("unmasked", 1002),
              ("ctl_long", 1002), ("ctl_frag", 1002), ("cont_no_msg", 1002),
              ("new_msg_open", 1002), ("close_1byte", 1002),
              ("close_code", 1002), ("close_utf8", 1007), ("len64_top", 1002),
              ("utf8", 1007), ("utf8_trunc", 1007), ("oversize", 1009)]
BAD_UTF8 = [(b"\xc0\xaf", 0), (b"\xff", 0), (b"\xed\xa0\x80", 1),
            (b"\xf4\x90\x80\x80", 1), (b"\xe0\x80\xaf", 1),
            (b"\xf0\x80\x80\xaf", 1), (b"\x80", 0)]
BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                   5000, 65535]
GOOD_CLOSE_CODES = [1000, 1000, 1000, 1001, 1003, 1008, 3000, 4000, 4999]
VALID_SERVER_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | \
    set(range(3000, 5000))

CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,\n"
         * 6 + "\u00e9\u00df\u00fc\u00f1\u0436\u05d0" + "\u20ac\u4e2d\u6587\u5b57"
         + "\U0001f600\U0001f680\U00010348")


FLOOD = b"\x00flood"     # payload prefix of the Pings sent while stalled


def wchoice(rng, table):
    total = sum(w for _, w in table)
    x = rng.uniform(0, total)
    for name, w in table:
        x -= w
        if x <= 0:
            return name
    return table[-1][0]


def utf8_text(rng, n):
    if n <= 0:
        return b""
    s = "".join(rng.choices(CHARS, k=max(1, n // 2))).encode()
    while len(s) < n:
        s += "".join(rng.choices(CHARS, k=max(1, (n - len(s)) // 2))).encode()
    cut = min(n, len(s))      # at a character boundary at or before n
    while 0 < cut < len(s) and (s[cut] & 0xC0) == 0x80:
        cut -= 1
    return s[:cut]


def now():
    return time.monotonic()


# ---------------------------------------------------------------------------
# a connection's plan: everything decided up front from (seed, index)
# ---------------------------------------------------------------------------


class Plan:
    def __init__(self, seed, idx, cfg, tls_ok):
        rng = random.Random("%s/%d" % (seed, idx))
        self.idx = idx
        self.io_seed = rng.getrandbits(64)
        self.tls = tls_ok and rng.random() < cfg.tls_share
        self.ckind = wchoice(rng, CLIENT_KINDS)
        self.ekind = wchoice(rng, ENGINE_KINDS)
        self.variant = None
        self.flood = []
        self.mid_frame = b""
        self.pings = []          # payloads of our Pings, in order
        self.allowed_extra = b""  # violation: bytes that may also be relayed
        self.expect_code = None
        self.min_engine = 0      # bytes the echo engine must get (point 6)
        self.path = rng.choice(["/", "/db", "/x?y=1", "/" + "a" * 200])
        self.pipeline = rng.random() < 0.2
        self.chunk = rng.choice(["byte", "tiny", "small", "mixed", "mixed",
                                 "bulk"])
        self.byte_budget = rng.choice([64, 512, 2048])
        self.raw_chunk = rng.choice(["all", "all", "mixed", "tiny"])
        self.hs_bytewise = rng.random() < 0.3
        self.patience = rng.uniform(1.0, 4.0)
        self.pauses = []
        big = self.ckind in ("stall",) or rng.random() < 0.15
        total = self._total(rng, big)
        if self.ckind == "violate":
            total = min(total, 65536)
        self.bursts, self.payload = self._messages(rng, total, cfg)
        self.close_code = rng.choice(GOOD_CLOSE_CODES + [None])
        self.close_reason = rng.choice([b"", b"bye", "d\u00e9j\u00e0".encode()])
        if self.ckind == "closer":
            self.variant = rng.choice(CLOSER_TLS if self.tls else CLOSER_PLAIN)
        elif self.ckind == "stall":
            self.variant = rng.choice(STALL_ENDS)
            self.stall_at = rng.randrange(len(self.bursts) + 1)
            self.stall_secs = rng.uniform(0.3, 2.0) if self.variant == "resume" \
                else rng.uniform(0.5, 3.0)
            # Pings while not reading: the Pongs must stay bounded
            self.flood = [self._frame(rng, OP_PING, FLOOD + struct.pack("!I", k))
                          for k in range(rng.choice([0, 0, 200, 2000]))]
        elif self.ckind in ("reset", "halfclose"):
            self.variant = rng.choice(CUT_POINTS)
            self.cut_frac = rng.random()
            self.cut_time = rng.uniform(0.0, 2.0)
        elif self.ckind == "early":
            self.variant = rng.choice(EARLY_TLS if self.tls else EARLY_PLAIN)
            self.cut_frac = rng.random()
        elif self.ckind == "violate":
            self._violation(rng, cfg)
        self.pauses = [rng.choice([0, 0, 0.05, 0.3, 0.8]) for _ in self.bursts]
        if self.variant == "midframe":
            # a large frame cut off part way (the proxy may be paused on it)
            self.pipeline = False
            self.payload = rng.randbytes(rng.randint(256 << 10, cfg.max_message - 1))
            self.mid_frame = frame(OP_BIN, self.payload, mask_key=self._mask(rng))
        # the engine
        self.e_linger = rng.uniform(0.2, 1.5) if self.ekind == "linger" else 0
        self.e_at = None         # byte count that triggers the engine's act
        self.e_time = None       # ... or time after accept, whichever first
        self.e_forever = False
        self.e_stall = 0
        if self.ekind in ("stall", "reset", "close", "halfclose"):
            n = len(self.payload)
            self.e_at = rng.choice([0, rng.randint(0, max(0, n)),
                                    rng.randint(0, max(0, n // 4))])
            if self.ekind != "stall":
                self.e_time = rng.choice([None, rng.uniform(0, 2.5)])
            else:
                self.e_forever = rng.random() < 0.3
                self.e_stall = rng.uniform(0.3, 2.5)
        self.stream = self.payload + self.allowed_extra

    @staticmethod
    def _total(rng, big):
        if big:
            return rng.choice([rng.randint(128 << 10, 1 << 20),
                               rng.randint(1 << 20, 3 << 20),
                               rng.randint(16 << 10, 256 << 10)])
        return rng.choice([0, rng.randint(1, 256), rng.randint(256, 8192),
                           rng.randint(8192, 128 << 10),
                           rng.randint(8192, 128 << 10)])

    def _mask(self, rng):
        return rng.randbytes(4)

    def _frame(self, rng, op, data, fin=True, **kw):
        form = None
        # data frames only: a control frame's length must fit 7 bits
        if op < 8 and rng.random() < 0.05:
            form = 64 if rng.random() < 0.5 else (16 if len(data) < 65536 else None)
        return frame(op, data, fin=fin, mask_key=self._mask(rng), len_form=form,
                     **kw)

    def _control(self, rng):
        """A Ping or an unsolicited Pong to put between frames, or None."""
        x = rng.random()
        if x < 0.12:
            data = rng.randbytes(rng.choice([0, 1, 7, 125, rng.randint(0, 125)]))
            self.pings.append(data)
            return self._frame(rng, OP_PING, data)
        if x < 0.16:
            return self._frame(rng, OP_PONG, rng.randbytes(rng.randint(0, 20)))
        return None

    def _messages(self, rng, total, cfg):
        """Bursts of valid frames carrying `total` payload bytes."""
        bursts, payload = [], bytearray()
        burst = []
        cap = min(cfg.max_message // 2, 512 << 10)
        while len(payload) < total or (total == 0 and not bursts and not burst
                                       and rng.random() < 0.5):
            size = min(total - len(payload),
                       rng.choice([0, rng.randint(1, 125), rng.randint(126, 4096),
                                   rng.randint(4096, 65536), rng.randint(1, cap)]))
            text = size <= 65536 and rng.random() < 0.3
            data = utf8_text(rng, size) if text else rng.randbytes(size)
            if total == 0:
                data = b""
            nfrag = 1 if rng.random() < 0.6 else rng.randint(2, 6)
            cuts = sorted(rng.randint(0, len(data)) for _ in range(nfrag - 1))
            parts = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            for k, part in enumerate(parts):
                op = (OP_TEXT if text else OP_BIN) if k == 0 else OP_CONT
                burst.append(self._frame(rng, op, part, fin=k == len(parts) - 1))
                c = self._control(rng)
                if c:
                    burst.append(c)
            payload += data
            if rng.random() < 0.3:
                bursts.append(burst)
                burst = []
            if total == 0:
                break
        if burst:
            bursts.append(burst)
        return bursts, bytes(payload)

    def _violation(self, rng, cfg):
        name, code = rng.choice(VIOLATIONS)
        self.variant = name
        self.expect_code = code
        self.min_engine = len(self.payload)
        bad = []
        if name == "rsv":
            bad.append(self._frame(rng, OP_BIN, rng.randbytes(10),
                                   rsv=rng.choice([1, 2, 3, 4, 7])))
        elif name == "opcode":
            bad.append(self._frame(rng, rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]),
                                   rng.randbytes(5)))
        elif name == "unmasked":
            bad.append(frame(OP_BIN, rng.randbytes(rng.randint(0, 300)), mask=False))
        elif name == "ctl_long":
            bad.append(self._frame(rng, rng.choice([OP_PING, OP_PONG, OP_CLOSE]),
                                   b"\x03\xe8" + rng.randbytes(rng.randint(124, 300))))
        elif name == "ctl_frag":
            bad.append(self._frame(rng, OP_PING, b"x", fin=False))
        elif name == "cont_no_msg":
            bad.append(self._frame(rng, OP_CONT, rng.randbytes(8)))
        elif name == "new_msg_open":
            head = rng.randbytes(rng.randint(0, 100))
            bad.append(self._frame(rng, OP_BIN, head, fin=False))
            self.payload += head
            self.min_engine = len(self.payload)
            bad.append(self._frame(rng, rng.choice([OP_TEXT, OP_BIN]), b"abc"))
        elif name == "close_1byte":
            bad.append(self._frame(rng, OP_CLOSE, b"\x03"))
        elif name == "close_code":
            bad.append(self._frame(rng, OP_CLOSE,
                                   close_payload(rng.choice(BAD_CLOSE_CODES))))
        elif name == "close_utf8":
            bad.append(self._frame(rng, OP_CLOSE, close_payload(1000) + b"ok\xff"))
        elif name == "len64_top":
            bad.append(frame(OP_BIN, b"", length=(1 << 63) + rng.randint(0, 1000),
                             len_form=64, mask_key=self._mask(rng)))
        elif name in ("utf8", "utf8_trunc"):
            good = utf8_text(rng, rng.choice([0, 1, 50, 3000]))
            if name == "utf8":
                seq, k = rng.choice(BAD_UTF8)
                data = good + seq + utf8_text(rng, 20)
                fail_at = len(good) + k
            else:
                data = good + rng.choice([b"\xe2\x82", b"\xc3", b"\xf0\x9f\x98"])
                fail_at = len(data)
            # sometimes the bad text comes as the continuation of a message
            if rng.random() < 0.4 and len(data) > 2:
                cut = rng.randint(0, min(len(good), fail_at))
                while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:
                    cut -= 1      # whole characters in the valid fragment
                bad.append(self._frame(rng, OP_TEXT, data[:cut], fin=False))
                bad.append(self._frame(rng, OP_CONT, data[cut:]))
                self.payload += data[:cut]
                self.min_engine = len(self.payload)
                self.allowed_extra = data[cut:fail_at]
            else:
                bad.append(self._frame(rng, OP_TEXT, data))
                self.allowed_extra = data[:fail_at]
        elif name == "oversize":
            n = cfg.max_message + rng.randint(1, 5000)
            bad.append(frame(OP_BIN, b"", length=n, mask_key=self._mask(rng))
                       + rng.randbytes(rng.randint(0, 3000)))
        self.bursts.append(bad)

    def well_behaved(self):
        """A client that completes, in front of an engine that echoes
        everything: every byte must come back."""
        client = self.ckind in ("good", "closer") or \
            (self.ckind == "stall" and self.variant == "resume")
        engine = self.ekind in ("echo", "linger") or \
            (self.ekind == "stall" and not self.e_forever)
        return client and engine

    def summary(self):
        e = self.ekind
        if self.e_at is not None:
            e += " at %d B" % self.e_at
        if self.e_time is not None:
            e += " or %.2fs" % self.e_time
        if self.ekind == "stall":
            e += " forever" if self.e_forever else " for %.2fs" % self.e_stall
        if self.ekind == "linger":
            e += " %.2fs" % self.e_linger
        c = self.ckind + ("/" + self.variant if self.variant else "")
        return "%s %s, engine %s, %d B payload, chunks %s%s" % (
            "wss" if self.tls else "ws", c, e, len(self.payload), self.chunk,
            ", pipelined" if self.pipeline else "")


# ---------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------


class Client:
    """One WebSocket client on a raw non-blocking socket.  Outgoing bytes go
    through a queue of plaintext (frames), raw bytes and actions; TLS is an
    SSLObject over memory BIOs so that the TCP writes can be chunked and cut
    anywhere, independently of the records."""

    def __init__(self, drv, plan):
        self.drv = drv
        self.loop = drv.loop
        self.p = plan
        self.io = random.Random(plan.io_seed)
        self.idx = plan.idx
        self.src = drv.src_addr(plan.idx)
        self.sock = None
        self.fd = -1
        self.ev = {}
        self.q = collections.deque()
        self.qoff = 0
        self.raw_out = bytearray()
        self.raw_sent = 0
        self.raw_rcvd = 0
        self.plain_sent = 0
        self.wake = asyncio.Event()
        self.changed = asyncio.Event()
        self.writer = None
        self.reading = False
        self.stalled = False
        self.ever_stalled = False
        self.wr_closed = False
        self.no_more = False     # Close, close_notify or FIN queued
        self.dead = False
        self.eof = False
        self.rx = bytearray()
        self.resp = None
        self.key = None
        self.rcvd = 0
        self.pong_idx = 0
        self.flood_last = -1
        self.srv_close = None
        self.tls = None
        self.hs_done = False
        self.hs_err = None
        self.tls_eof = False
        self.engine = None
        self.seen_held = False
        self.inode = None
        self.settled = False
        self.released = None
        self.failed = set()
        self.close_sent_prompt = False
        self.done = False
        self.sport = None
        self.hex = None

    # -- failures ------------------------------------------------------------
    def fail(self, inv, msg):
        if inv in self.failed:
            return
        self.failed.add(inv)
        self.drv.failure(inv, self, msg)

    def t(self, name):
        return self.ev.get(name)

    def rel(self, t):
        return "%.3fs" % (t - self.ev["start"]) if t is not None else "-"

    def timeline(self):
        items = sorted((v, "client " + k) for k, v in self.ev.items())
        if self.engine:
            items += sorted((v, "engine " + k) for k, v in self.engine.ev.items())
        if self.released is not None:
            items.append((self.released, "proxy released client socket"))
        items.sort()
        return ", ".join("%s %s" % (self.rel(v), k) for v, k in items)

    # -- events ----------------------------------------------------------------
    def mark(self, name):
        self.ev.setdefault(name, now())
        self.changed.set()

    async def until(self, pred, timeout):
        deadline = now() + timeout
        while not pred():
            left = deadline - now()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        return True

    def gone(self):
        return self.dead or self.eof

    # -- socket ----------------------------------------------------------------
    async def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((self.src, 0))
        self.sock, self.fd = s, s.fileno()
        self.sport = s.getsockname()[1]
        a = [int(x) for x in self.src.split(".")]
        self.hex = "%02X%02X%02X%02X:%04X" % (a[3], a[2], a[1], a[0], self.sport)
        self.drv.by_src[self.src] = self
        port = self.drv.tls_port if self.p.tls else self.drv.port
        try:
            await asyncio.wait_for(self.loop.sock_connect(s, ("127.0.0.1", port)),
                                   10)
        except (OSError, asyncio.TimeoutError) as e:
            self.fail("crash", "connect to the proxy failed: %r" % e)
            self._close("closed")
            return False
        self.mark("connected")
        if self.p.tls:
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = (self.drv.ssl_ctx.wrap_bio(inc, out,
                                                   server_hostname="127.0.0.1"),
                        inc, out)
        self.read_on()
        self.writer = asyncio.ensure_future(self._writer())
        return True

    def read_on(self):
        if not self.reading and not self.dead and not self.eof and not self.stalled:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True

    def read_off(self):
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def stall(self):
        self.stalled = self.ever_stalled = True
        self.mark("stall")
        self.read_off()

    def unstall(self):
        self.stalled = False
        self.ev["unstall"] = now()
        self.read_on()

    def _unread(self):
        try:
            b = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
            return struct.unpack("i", b)[0]
        except OSError:
            return 0

    def _fin_deliverable(self, ms=50):
        """Can a FIN sent now reach the proxy?  Not while this socket's send
        queue holds bytes the proxy's closed window does not take (it has
        paused reading this client): TCP sends the FIN behind them, so no
        proxy can see it.  Waits up to `ms` for the queue to drain."""
        deadline = time.monotonic() + ms / 1000.0
        while True:
            try:
                b = fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0\0\0\0")
                if struct.unpack("i", b)[0] == 0:
                    return True
            except OSError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def _close(self, kind):
        if self.dead:
            return
        if kind == "closed" and self.sock and not self._fin_deliverable():
            # A FIN stuck behind unsent bytes: the client gives up with a
            # reset instead, which the proxy can see (see fin()).
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
            kind = "rst"
        self.read_off()
        if self.writer and self.writer is not asyncio.current_task():
            self.writer.cancel()
        if kind == "closed" and self.sock and self._unread() > 0:
            kind = "rst"     # close() with unread data sends RST
        if self.sock:
            try:
                self.loop.remove_writer(self.fd)
            except Exception:
                pass
            self.sock.close()
        self.dead = True
        self.wr_closed = True
        self.mark("closed")
        if kind == "rst":
            self.mark("rst")
        self.changed.set()

    def rst(self):
        if not self.dead and self.sock:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._close("rst")

    def close_sock(self):
        self._close("closed")

    def fin(self):
        if self.dead or self.wr_closed:
            return
        if self.sock and not self._fin_deliverable():
            self.rst()   # a FIN queued behind unsent bytes would be invisible
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.wr_closed = True
        self.no_more = True
        self.mark("fin")

    # -- output ----------------------------------------------------------------
    def put(self, item):
        self.q.append(item)
        self.wake.set()

    def put_mark(self, name):
        self.put(("mark", name))

    def _pchunk(self):
        io, kind = self.io, self.p.chunk
        if kind == "byte" and self.plain_sent < self.p.byte_budget:
            return 1
        if kind in ("byte", "tiny"):
            return io.randint(1, 16) if self.plain_sent < 65536 else \
                io.choice([1, 100, 1400, 4096, 16384])
        if kind == "small":
            return io.randint(1, 512)
        if kind == "mixed":
            return io.choice([1, 2, 3, 5, 8, 100, 1400, 4096, 16384, 65536])
        return 65536

    def _rchunk(self, n):
        if not self.tls or self.p.raw_chunk == "all":
            if self.tls and self.p.hs_bytewise and not self.hs_done:
                return 1
            return n
        if self.p.hs_bytewise and not self.hs_done:
            return 1
        if self.p.raw_chunk == "tiny" and self.raw_sent < 4096:
            return min(n, self.io.randint(1, 16))
        return min(n, self.io.choice([1, 7, 100, 1400, 5000, 65536]))

    def _delay(self):
        # a pause makes the proxy read single bytes; only for the first ones,
        # so that the handshake stays well within its timeout
        if self.p.chunk == "byte" and self.plain_sent < min(100, self.p.byte_budget):
            return 0.001
        if self.p.tls and self.p.hs_bytewise and not self.hs_done and \
                self.raw_sent < 100:
            return 0.001
        return 0.002 if self.io.random() < 0.03 else 0

    def _take_plain(self):
        n = self._pchunk()
        out = bytearray()
        while self.q and len(out) < n:
            head = self.q[0]
            if isinstance(head, tuple):
                break
            take = head[self.qoff:self.qoff + n - len(out)]
            out += take
            self.qoff += len(take)
            if self.qoff >= len(head):
                self.q.popleft()
                self.qoff = 0
        return bytes(out)

    def _do_item(self, item):
        kind = item[0]
        if kind == "mark":
            self.mark(item[1])
        elif kind == "raw":
            self.raw_out += item[1]
        elif kind == "notify":
            sslobj, _, out = self.tls
            try:
                sslobj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            self.raw_out += out.read()
        elif kind == "fin":
            self.fin()
        elif kind == "rst":
            self.rst()
        elif kind == "close":
            self.close_sock()

    async def _writable(self):
        fut = self.loop.create_future()

        def ready():
            if not fut.done():
                fut.set_result(None)
        self.loop.add_writer(self.fd, ready)
        try:
            await fut
        finally:
            if not self.dead:
                self.loop.remove_writer(self.fd)

    async def _writer(self):
        while not self.wr_closed and not self.dead:
            if not self.raw_out:
                if not self.q:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                head = self.q[0]
                if isinstance(head, tuple):
                    self.q.popleft()
                    self._do_item(head)
                    continue
                chunk = self._take_plain()
                self.plain_sent += len(chunk)
                if self.tls:
                    try:
                        self.tls[0].write(chunk)
                    except ssl.SSLError:
                        self.mark("tls_write_error")
                        return
                    self.raw_out += self.tls[2].read()
                else:
                    self.raw_out += chunk
                continue
            n = self._rchunk(len(self.raw_out))
            try:
                sent = self.sock.send(bytes(self.raw_out[:n]))
            except BlockingIOError:
                await self._writable()
                continue
            except OSError:
                self.mark("write_error")
                self.wr_closed = True
                return
            del self.raw_out[:sent]
            self.raw_sent += sent
            self.drv.stats["wire_out"] += sent
            self.changed.set()
            d = self._delay()
            if d:
                await asyncio.sleep(d)
            elif self.io.random() < 0.05:
                await asyncio.sleep(0)

    def flush_tls(self):
        out = self.tls[2].read()
        if out:
            self.put(("raw", out))

    # -- input -----------------------------------------------------------------
    def _on_readable(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self.mark("got_rst")
            data = b""
        self.changed.set()
        self.raw_rcvd += len(data)
        if not data:
            self.mark("eof")
            self.eof = True
            self.read_off()
            if self.tls:
                self.tls[1].write_eof()
                self._tls_pump()
            return
        if self.tls:
            self.tls[1].write(data)
            self._tls_pump()
        else:
            self._feed(data)

    def _tls_pump(self):
        sslobj, _, out = self.tls
        if not self.hs_done:
            try:
                sslobj.do_handshake()
                self.hs_done = True
                self.mark("tls_hs")
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as e:
                self.hs_err = e
                self.mark("tls_hs_error")
            o = out.read()
            if o:
                self.raw_out += o
                self.wake.set()
            if not self.hs_done:
                return
        while not self.tls_eof:
            try:
                d = sslobj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.tls_eof = True
                self.mark("tls_close_notify")
                break
            except (ssl.SSLError, OSError):
                self.tls_eof = True
                self.mark("tls_eof")
                break
            if not d:
                break
            self._feed(d)

    def _feed(self, data):
        self.rx += data
        if self.resp is None:
            i = self.rx.find(b"\r\n\r\n")
            if i < 0:
                if len(self.rx) > 16384:
                    self.fail("protocol", "response head over 16 KiB")
                    self.resp = False
                return
            head = bytes(self.rx[:i + 4])
            del self.rx[:i + 4]
            try:
                self.resp = Response(head)
            except AssertionError as e:
                self.fail("protocol", "malformed HTTP response: %s" % e)
                self.resp = False
                return
            self.mark("response")
            if self.resp.status == 101 and self.key and \
                    self.resp.header("Sec-WebSocket-Accept") != accept_for(self.key):
                self.fail("protocol", "101 with a wrong Sec-WebSocket-Accept")
        if not self.resp or self.resp.status != 101:
            return
        self._frames()

    def _frames(self):
        buf = self.rx
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, off = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, off = struct.unpack_from("!Q", buf, 2)[0], 10
            if b1 & 0x80:
                self.fail("protocol", "server frame is masked")
                off += 4
            if len(buf) < off + n:
                return
            payload = bytes(buf[off:off + n])
            del buf[:off + n]
            self._frame(b0 & 0x80, (b0 >> 4) & 7, b0 & 15, payload)

    def _frame(self, fin, rsv, op, payload):
        if self.srv_close is not None:
            self.fail("protocol", "frame (opcode %d) after the server's Close" % op)
            return
        if rsv:
            self.fail("protocol", "server frame with RSV bits %d" % rsv)
        if op == OP_BIN and fin:
            want = self.p.stream[self.rcvd:self.rcvd + len(payload)]
            if payload != want:
                k = next((i for i in range(min(len(want), len(payload)))
                          if want[i] != payload[i]), min(len(want), len(payload)))
                self.fail("exact", "client got a byte that was never sent at "
                          "offset %d (frame of %d, %d sent)" % (
                              self.rcvd + k, len(payload), len(self.p.stream)))
            self.rcvd += len(payload)
            self.drv.stats["to_client"] += len(payload)
        elif op == OP_PING:
            if not self.no_more and not self.dead:
                f = frame(OP_PONG, payload, mask_key=self.io.randbytes(4))
                self.q.insert(1 if self.qoff else 0, f)
                self.wake.set()
        elif op == OP_PONG and payload.startswith(FLOOD) and len(payload) == 10:
            k = struct.unpack("!I", payload[6:])[0]
            if k >= len(self.p.flood) or k <= self.flood_last:
                self.fail("protocol", "Pong for flood Ping %d out of order or "
                          "never sent" % k)
            self.flood_last = k
        elif op == OP_PONG:
            pings = self.p.pings
            while self.pong_idx < len(pings) and pings[self.pong_idx] != payload:
                self.pong_idx += 1
            if self.pong_idx >= len(pings):
                self.fail("protocol", "Pong %r answers no Ping we sent" % payload[:20])
            else:
                self.pong_idx += 1
        elif op == OP_CLOSE:
            code, reason = None, b""
            if len(payload) == 1:
                self.fail("protocol", "server Close with a 1-byte payload")
            elif len(payload) >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                reason = payload[2:]
                if code not in VALID_SERVER_CODES:
                    self.fail("protocol", "server Close with invalid code %d" % code)
                try:
                    reason.decode("utf-8")
                except UnicodeDecodeError:
                    self.fail("protocol", "server Close reason is not UTF-8")
            self.srv_close = (code, reason)
            self.mark("srv_close")
            self.drv.stats["codes"][code] += 1
        else:
            self.fail("protocol", "server sent opcode %d fin=%d (want binary "
                      "frames with FIN)" % (op, bool(fin)))
        self.changed.set()

    # -- the script --------------------------------------------------------------
    async def run(self):
        self.ev["start"] = now()
        try:
            await self.script()
        finally:
            if not self.dead:
                self.close_sock()
            self.p.bursts, self.p.flood = [], []    # sent or never to be
            self.p.mid_frame = b""
            self.tls = None          # OpenSSL's buffers
            self.q.clear()
            self.done = True
            self.mark("done")

    def queue_close(self, code=None, reason=b""):
        payload = b"" if code is None else close_payload(code, reason)
        self.close_sent_prompt = (self.p.ekind == "echo" and not self.ever_stalled
                                  and self.rcvd >= len(self.p.payload))
        self.put(frame(OP_CLOSE, payload, mask_key=self.io.randbytes(4)))
        self.put_mark("close_sent")
        self.no_more = True

    def queue_notify(self):
        self.notify_prompt = (self.p.ekind == "echo" and not self.ever_stalled
                              and self.rcvd >= len(self.p.payload))
        self.put(("notify",))
        self.put_mark("notify_sent")
        self.no_more = True

    def engine_ends_early(self):
        p = self.p
        return p.ekind in ("reset", "close", "halfclose") and \
            (p.e_at == 0 or (p.e_time is not None and p.e_time < 0.5))

    async def script(self):
        p = self.p
        if p.ckind == "early":
            return await self.s_early()
        if not await self.connect():
            return
        if p.tls and not await self.tls_handshake():
            return
        if not await self.request():
            return
        k = p.ckind
        if k in ("good", "closer", "stall"):
            await self.s_exchange()
        elif k == "violate":
            await self.s_violate()
        else:
            await self.s_cut()

    async def tls_handshake(self):
        self._tls_pump()
        ok = await self.until(lambda: self.hs_done or self.hs_err or self.gone(),
                              15)
        if not self.hs_done and self.slow_to_send():
            self.drv.stats["slow_408"] += 1
            self.close_sock()
            return False
        if not self.hs_done:
            self.fail("handshake", "TLS handshake did not complete: %s (%d bytes "
                      "sent, %d queued, %d received)" % (
                          self.hs_err or ("proxy closed" if self.gone() else
                                          "timeout") if ok else
                          "no answer within 15 s", self.raw_sent,
                          len(self.raw_out), self.raw_rcvd))
            self.close_sock()
            return False
        return True

    async def request(self):
        p = self.p
        self.key = new_key()
        self.put(ws_request(path=p.path, key=self.key))
        self.put_mark("req_sent")
        if p.pipeline and p.bursts:
            for f in p.bursts[0]:
                self.put(f)
        if p.ckind in ("reset", "halfclose") and p.variant == "before101":
            await self.until(lambda: "req_sent" in self.ev or self.dead, 10)
            return True
        await self.until(lambda: self.resp is not None or self.gone(), 15)
        if self.resp and self.resp.status == 101:
            self.mark("101")
            return True
        if self.engine_ends_early() and (not self.resp or self.resp.status == 502):
            self.close_sock()
            return False
        if self.resp and self.resp.status == 408 and self.slow_to_send():
            self.drv.stats["slow_408"] += 1
            self.close_sock()
            return False
        self.fail("handshake", "no 101 (%s)" % (
            "status %d" % self.resp.status if self.resp else
            "proxy closed" if self.gone() else "no answer within 15 s"))
        self.close_sock()
        return False

    def slow_to_send(self):
        """Whether the handshake timeout may have been our own doing: this
        driver, loaded, had not sent the whole handshake a second before
        the proxy's deadline."""
        limit = self.drv.cfg.handshake_ms / 1000.0 - 1.0
        start = self.ev.get("connected", self.ev["start"])
        sent = self.ev.get("req_sent")
        if self.p.tls and not self.hs_done:
            return now() - start >= limit and bool(self.raw_out or self.q)
        return sent is None or sent - start > limit

    def _finish_polite(self):
        """After the server's Close: reply with the same code (RFC 6455
        5.5.1), unless we already sent ours."""
        if self.srv_close is not None and not self.no_more and not self.dead:
            code = self.srv_close[0]
            self.queue_close(code if code is not None else None)

    async def wait_eof(self, timeout):
        return await self.until(lambda: self.eof or self.dead, timeout)

    async def s_exchange(self):
        p, cfg = self.p, self.drv.cfg
        wb = p.well_behaved()
        for i, burst in enumerate(p.bursts):
            if p.ckind == "stall" and i == p.stall_at:
                if await self.do_stall():
                    return
            if not (p.pipeline and i == 0):
                for f in burst:
                    self.put(f)
            if p.pauses[i]:
                await asyncio.sleep(p.pauses[i])
            if self.dead:
                return
        if p.ckind == "stall" and p.stall_at >= len(p.bursts):
            if await self.do_stall():
                return
        self.put_mark("data_sent")
        patience = 30 if wb else p.patience
        got = await self.until(lambda: ("data_sent" in self.ev and
                                        self.rcvd >= len(p.payload))
                               or self.srv_close or self.gone(), patience)
        if wb and not (got and self.rcvd >= len(p.payload)):
            self.fail("exact", "echo incomplete (waited up to %ds): client got %d of %d "
                      "bytes, engine got %d%s" % (
                          patience, self.rcvd, len(p.payload),
                          self.engine.rcvd if self.engine else -1,
                          ", server Close %r" % (self.srv_close,)
                          if self.srv_close else
                          ", proxy closed" if self.gone() else ""))
        if self.srv_close:
            if wb:
                self.fail("close", "unexpected Close %r from the proxy" %
                          (self.srv_close,))
            self._finish_polite()
            await self.wait_eof(cfg.general + 1 if wb else 3.0)
            return
        if self.gone():
            if wb:
                self.fail("close", "proxy closed the connection without a Close")
            return
        v = p.variant if p.ckind == "closer" else "wait"
        await self.closing(v, wb)

    async def do_stall(self):
        """Stop reading; returns True when the script ends here."""
        p = self.p
        self.stall()
        for f in p.flood:
            self.put(f)
        await asyncio.sleep(p.stall_secs)
        v = p.variant
        if v == "resume":
            self.unstall()
            return False
        if v == "rst":
            self.rst()
        elif v == "close":
            self.close_sock()
        elif v == "fin_hold":
            self.fin()
            await asyncio.sleep(self.io.uniform(0.5, 2.0))
            self.close_sock()
        elif v == "close_frame":
            self.queue_close(1000)
            await asyncio.sleep(self.io.uniform(0.5, 3.0))
            self.close_sock()
        return True

    async def closing(self, v, wb):
        p, cfg = self.p, self.drv.cfg
        code = p.close_code
        reason = p.close_reason if code is not None else b""
        # a client that expects nothing in particular does not wait long:
        # the pair invariant is measured from the first end either way
        g = cfg.general + 1 if wb else 3.0
        if v in ("fin_only",):
            self.put(("fin",))
            await self.wait_eof(g)
        elif v == "rst_only":
            self.rst()
        elif v == "notify_fin":
            self.queue_notify()
            self.put(("fin",))
            await self.wait_eof(g)
        elif v == "notify_only":
            self.queue_notify()
            await self.wait_eof(g)
        else:
            self.queue_close(code, reason)
            if v == "close_fin":
                self.put(("fin",))
            elif v == "close_notify_fin":
                self.queue_notify()
                self.put(("fin",))
            elif v == "close_rst":
                self.put(("rst",))
            elif v == "close_notify_rst":
                self.queue_notify()
                self.put(("rst",))
            elif v == "close_close":
                self.put(("close",))
            if v in CLOSER_WAITS and not (v == "close_fin" and p.tls):
                got = await self.until(lambda: self.srv_close or self.gone(), g)
                if wb and not self.srv_close:
                    self.fail("close", "no Close answered ours within %.1fs (%s)"
                              % (g, "proxy closed" if got else "timeout"))
                elif wb and self.srv_close[0] != code:
                    self.fail("close", "our Close %s was answered with %r" %
                              (code, self.srv_close))
                if v == "close_wait_notify" and not self.gone():
                    self.queue_notify()
                    self.put(("fin",))
                elif v == "close_wait_fin" and not self.gone():
                    self.put(("fin",))
                ok = await self.wait_eof(g)
                if wb and self.srv_close and not ok:
                    self.fail("outlive", "proxy did not close TCP within %.1fs of "
                              "its Close" % g)
            else:
                await self.until(lambda: self.dead or self.eof, g)
        if wb and self.engine and self.engine.rcvd != len(p.payload):
            self.fail("exact", "engine got %d of %d bytes" % (self.engine.rcvd,
                                                              len(p.payload)))

    async def s_violate(self):
        p, cfg = self.p, self.drv.cfg
        for i, burst in enumerate(p.bursts):
            if i == len(p.bursts) - 1:
                # everything before the violation first, in its own writes
                self.put_mark("prefix_sent")
            if not (p.pipeline and i == 0):
                for f in burst:
                    self.put(f)
            if i < len(p.bursts) - 1 and p.pauses[i]:
                await asyncio.sleep(p.pauses[i])
        self.put_mark("viol_sent")
        self.viol_eligible = p.ekind in ("echo", "linger")
        strict = p.ekind == "echo"
        # The writer may still be sending what comes before (65 KiB byte by
        # byte over TLS takes seconds): the Close is due from when the
        # violation left, not from when it was queued.
        await self.until(lambda: "viol_sent" in self.ev or self.gone(), 120)
        await self.until(lambda: self.srv_close or self.gone(),
                         cfg.general + 1 if strict else 3.0)
        if strict:
            if not self.srv_close:
                self.fail("protocol", "no Close after a %s violation" % p.variant)
            elif self.srv_close[0] != p.expect_code:
                self.fail("protocol", "violation %s: want Close %d, got %r" % (
                    p.variant, p.expect_code, self.srv_close))
        if self.io.random() < 0.5:
            self._finish_polite()
        await self.wait_eof(cfg.general + 1 if strict else 3.0)

    async def s_cut(self):
        """reset / halfclose at a chosen point."""
        p, cfg = self.p, self.drv.cfg
        v = p.variant
        if v == "midframe":
            f = p.mid_frame
            mark = self.raw_sent + int(len(f) * (0.05 + 0.9 * p.cut_frac))
            self.put(f)
            await self.until(lambda: self.raw_sent >= mark or self.gone(),
                             0.3 + p.cut_time)
        elif v in ("afterdata", "timer"):
            for i, burst in enumerate(p.bursts):
                if not (p.pipeline and i == 0):
                    for f in burst:
                        self.put(f)
            if v == "afterdata":
                await self.until(lambda: self.rcvd >= len(p.payload) * p.cut_frac
                                 or self.gone(), 3)
            else:
                await asyncio.sleep(p.cut_time)
        if self.dead:
            return
        if p.ckind == "reset":
            self.rst()
        else:
            self.fin()
            await self.wait_eof(cfg.prompt + 2)
            self.close_sock()

    async def s_early(self):
        p, cfg = self.p, self.drv.cfg
        v = p.variant
        if not await self.connect():
            return
        if v.startswith("tls_"):
            sslobj, _, out = self.tls
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = out.read()
            if v == "tls_garbage":
                hello = ws_request(key=new_key())
            else:
                hello = hello[:max(1, int(len(hello) * p.cut_frac))]
            self.put(("raw", hello))
            self.put_mark("partial_sent")
            await self.until(lambda: "partial_sent" in self.ev or self.gone(), 5)
            if v == "tls_rst":
                self.rst()
            elif v == "tls_fin":
                self.fin()
                await self.wait_eof(cfg.prompt + 2)
            else:
                lim = cfg.handshake_ms / 1000.0 + cfg.slack + 2
                if not await self.wait_eof(lim):
                    self.fail("outlive", "%s: proxy kept an unfinished TLS "
                              "handshake open over %.1fs" % (v, lim))
            return
        self.key = new_key()
        req = ws_request(path=p.path, key=self.key)
        if v == "garbage":
            req = bytes(self.io.randbytes(self.io.randint(1, 300))) + b"\r\n\r\n"
        elif v.startswith("req_"):
            req = req[:max(1, int(len(req) * p.cut_frac))]
            if req.endswith(b"\r\n\r\n"):
                req = req[:-1]
        self.put(req)
        self.put_mark("partial_sent")
        await self.until(lambda: "partial_sent" in self.ev or self.gone(), 5)
        if v in ("req_rst", "full_rst"):
            self.rst()
        elif v in ("req_fin", "full_fin"):
            self.fin()
            await self.wait_eof(cfg.prompt + 2)
        elif v == "req_idle":
            lim = cfg.handshake_ms / 1000.0 + cfg.slack
            if not await self.until(lambda: self.resp or self.gone(), lim):
                self.fail("outlive", "half-sent request still open after %.1fs "
                          "(handshake timeout %d ms)" % (lim, cfg.handshake_ms))
        elif v == "garbage":
            await self.until(lambda: self.resp is not None or self.gone(),
                             cfg.general + 2)
            if self.resp and not 400 <= self.resp.status < 500:
                self.fail("protocol", "garbage request got status %d" %
                          self.resp.status)

    # -- the pair invariant -------------------------------------------------------
    def end_times(self):
        """(first end of either side, time by which both must be gone)."""
        ev, p, cfg = self.ev, self.p, self.drv.cfg
        e = self.engine.ev if self.engine else {}
        firsts = [ev.get(k) for k in ("fin", "closed", "rst")]
        firsts += [e.get(k) for k in ("shut", "closed", "rst", "hup")]
        firsts.append(self.released)
        inband = p.ekind in ("echo", "linger") and not self.ever_stalled
        prompts = [ev.get("rst")]
        for k in ("fin", "closed"):
            if ev.get(k) is not None and (ev.get("close_sent") is None or
                                          ev["close_sent"] > ev[k]):
                prompts.append(ev[k])
        if inband:
            for k in ("close_sent", "viol_sent", "notify_sent"):
                firsts.append(ev.get(k))
        if p.ekind == "echo" and not self.ever_stalled:
            if self.close_sent_prompt:
                prompts.append(ev.get("close_sent"))
            if getattr(self, "notify_prompt", False):
                prompts.append(ev.get("notify_sent"))
            prompts.append(ev.get("viol_sent"))
        firsts = [t for t in firsts if t is not None]
        prompts = [t for t in prompts if t is not None]
        if not firsts and not prompts:
            return None, None, None
        first = min(firsts + prompts)
        due = first + cfg.general
        why = "general"
        if prompts and min(prompts) + cfg.prompt < due:
            due = min(prompts) + cfg.prompt
            why = "prompt"
        return first, due, why

    def engine_released(self):
        e = self.engine
        if e is None:
            return None
        ts = [e.ev.get(k) for k in ("hup", "closed", "rst")]
        ts = [t for t in ts if t is not None]
        return min(ts) if ts else None

    def check(self, t, final=False):
        """Returns True when this pair needs no more watching."""
        first, due, why = self.end_times()
        if first is None:
            return False
        cl_open = self.seen_held and self.released is None
        en_open = self.engine is not None and self.engine_released() is None
        # /proc scans every 0.2 s, and this loop may run late: a release is
        # seen up to that much after it happened
        tol = 0.3 + self.drv.recent_lag()
        if t > due + tol or final:
            def what(leg):
                return ("%s still open %.2fs after the first end (%s bound "
                        "%.1fs); plan: %s" % (leg, t - first, why, due - first,
                                              self.p.summary()))
            if cl_open and t > due + tol:
                self.fail("outlive", what("the proxy's client socket"))
            if en_open and t > due + tol:
                self.fail("outlive", what("the engine connection"))
            rel = self.engine_released()
            if rel is not None and rel > due + tol and "outlive" not in self.failed:
                self.fail("outlive", "engine connection released %.2fs after the "
                          "first end (%s bound %.1fs); plan: %s" % (
                              rel - first, why, due - first, self.p.summary()))
            if self.released is not None and self.released > due + tol and \
                    "outlive" not in self.failed:
                self.fail("outlive", "client socket released %.2fs after the "
                          "first end (%s bound %.1fs); plan: %s" % (
                              self.released - first, why, due - first,
                              self.p.summary()))
        if self.done and not cl_open and not en_open and t > first + 1.0 and (
                self.seen_held or t > due + tol):
            self.settle()
            return True
        return False

    def settle(self):
        self.settled = True
        p = self.p
        first, due, why = self.end_times()
        self.drv.stats["pairs_" + why] += 1
        e = self.engine
        if e is not None and p.ckind == "violate" and p.ekind == "echo" and \
                e.rcvd < p.min_engine:
            self.fail("exact", "violation %s: engine got %d bytes, but %d were "
                      "decoded before it (RFC 6455 7.1.7)" % (
                          p.variant, e.rcvd, p.min_engine))
        if p.well_behaved() and not self.failed:
            self.drv.stats["wb_conns"] += 1
            self.drv.stats["wb_bytes"] += len(p.payload)
        if not self.failed:   # keep memory flat on long runs
            p.stream = p.payload = p.allowed_extra = b""
            p.bursts, p.pings, p.flood = [], [], []
            self.rx = self.raw_out = bytearray()
            self.q.clear()


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------


class EConn:
    OUT_HIGH = 256 << 10

    def __init__(self, drv, sock):
        self.drv = drv
        self.loop = drv.loop
        self.sock = sock
        self.fd = sock.fileno()
        sock.setblocking(False)
        self.hdr = bytearray()
        self.c = None
        self.p = None
        self.rcvd = 0
        self.out = bytearray()
        self.ev = {"accept": now()}
        self.reading = False
        self.writing = False
        self.open = True
        self.acted = False
        self.stalled = False
        self.shut = False
        self.timer = None
        drv.econns.add(self)
        self.read_on()

    def read_on(self):
        if self.open and not self.reading and not self.stalled and \
                "eof" not in self.ev and len(self.out) < self.OUT_HIGH:
            self.loop.add_reader(self.fd, self.on_read)
            self.reading = True

    def read_off(self):
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def on_read(self):
        limit = 65536
        if self.p and self.p.e_at is not None and not self.acted:
            limit = max(1, min(limit, self.p.e_at - self.rcvd))
        try:
            data = self.sock.recv(limit)
        except BlockingIOError:
            return
        except OSError:
            self.proxy_gone()
            return
        if not data:
            self.ev.setdefault("eof", now())
            self.read_off()
            self.after_eof()
            return
        if self.c is None:
            self.header(data)
        else:
            self.data(data)

    def header(self, data):
        self.hdr += data
        if len(self.hdr) < 16:
            return
        if bytes(self.hdr[:12]) != V2_SIG:
            self.drv.failure("protocol", None, "engine connection without a PROXY "
                             "v2 header: %r" % bytes(self.hdr[:40]))
            self.close()
            return
        length = struct.unpack(">H", self.hdr[14:16])[0]
        if len(self.hdr) < 16 + length:
            return
        info = _parse_v2(bytes(self.hdr[:16]), bytes(self.hdr[16:16 + length]))
        rest = bytes(self.hdr[16 + length:])
        c = self.drv.by_src.get(info.get("src"))
        if c is not None and c.settled:
            c.fail("outlive", "engine connection opened %.2fs after the client "
                   "was gone" % (now() - c.end_times()[0]))
            self.close()
            return
        if c is None or c.engine is not None:
            self.drv.failure("protocol", None, "engine connection from %s:%s "
                             "matches no client" % (info.get("src"),
                                                    info.get("sport")))
            self.close()
            return
        if info.get("sport") != c.sport:
            c.fail("protocol", "PROXY header names port %s, client port %s" % (
                info.get("sport"), c.sport))
        self.c, self.p = c, c.p
        c.engine = self
        self.ev["matched"] = now()
        p = self.p
        if p.e_time is not None:
            self.timer = self.loop.call_later(p.e_time, self.act)
        if p.e_at == 0:
            self.act()
        if rest and self.open:
            self.data(rest)

    def data(self, data):
        c = self.c
        want = c.p.stream[self.rcvd:self.rcvd + len(data)]
        if data != want:
            k = next((i for i in range(min(len(want), len(data)))
                      if want[i] != data[i]), min(len(want), len(data)))
            c.fail("exact", "engine got a byte the client never sent as payload at "
                   "offset %d (%d sent)" % (self.rcvd + k, len(c.p.stream)))
        self.rcvd += len(data)
        self.drv.stats["to_engine"] += len(data)
        if not self.shut:
            self.out += data
            self.flush()
        if self.p.e_at is not None and self.rcvd >= self.p.e_at and not self.acted:
            self.act()
        if len(self.out) >= self.OUT_HIGH:
            self.read_off()

    def flush(self):
        while self.out and self.open:
            try:
                n = self.sock.send(bytes(self.out[:262144]))
            except BlockingIOError:
                if not self.writing:
                    self.loop.add_writer(self.fd, self.flush)
                    self.writing = True
                return
            except OSError:
                self.proxy_gone()
                return
            del self.out[:n]
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if self.open:
            self.read_on()
            if "eof" in self.ev:
                self.after_eof()

    def act(self):
        """The engine's planned misbehaviour."""
        if self.acted or not self.open:
            return
        self.acted = True
        k = self.p.ekind
        self.ev["act"] = now()
        if k == "stall":
            self.stalled = True
            self.read_off()
            if not self.p.e_forever:
                self.loop.call_later(self.p.e_stall, self.unstall)
        elif k == "reset":
            self.stalled = True
            self.read_off()
            self.loop.call_later(0.02, self.reset)
        elif k == "close":
            self.close()
        elif k == "halfclose":
            self.out.clear()
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.shut = True
            self.ev["shut"] = now()

    def unstall(self):
        self.stalled = False
        self.ev["unstall"] = now()
        self.read_on()

    def reset(self):
        if not self.open:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close("rst")

    def after_eof(self):
        """The proxy shut its side: finish sending, then close (at once, or
        after `linger` for an engine that takes its time)."""
        if self.out or not self.open or self.ev.get("closing"):
            return
        self.ev["closing"] = now()
        linger = self.p.e_linger if self.p else 0
        if linger:
            self.loop.call_later(linger, self.close)
        else:
            self.close()

    def proxy_gone(self):
        """The proxy closed its end: what it wrote before is still queued
        here, so a reading engine takes it first, as a real one would."""
        self.ev.setdefault("hup", now())
        if self.open and self.reading and self.c is not None:
            self.shut = True
            while self.open:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                self.data(data)
        self.close()

    def close(self, kind="closed"):
        if not self.open:
            return
        self.read_off()
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if self.timer:
            self.timer.cancel()
        self.sock.close()
        self.open = False
        self.out = bytearray()
        self.ev.setdefault(kind, now())
        self.drv.econns.discard(self)
        if self.c:
            self.c.changed.set()


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


class Driver:
    def __init__(self, args):
        self.args = args
        self.cfg = Cfg()
        self.seed = args.seed
        self.failures = []
        self.by_src = {}
        self.spawned = 0
        self.pairs = []
        self.econns = set()
        self.stats = collections.Counter()
        self.stats["codes"] = collections.Counter()
        self.kinds = collections.Counter()
        self.lag_max = 0.0
        self.lags = collections.deque()
        self.stop = False

    # -- reporting ---------------------------------------------------------------
    def failure(self, inv, client, msg):
        entry = (inv, client, msg, now())
        self.failures.append(entry)
        who = "conn %d" % client.idx if client else "proxy"
        if len(self.failures) <= 100:
            print("FAIL [%s] %s: %s" % (inv, who, msg), flush=True)
        elif len(self.failures) == 101:
            print("chaos: more failures are not printed as they come", flush=True)

    def src_addr(self, i):
        i += 1
        return "127.%d.%d.%d" % (1 + (i // 64516) % 250, 1 + (i // 254) % 254,
                                 1 + i % 254)

    # -- processes ---------------------------------------------------------------
    def start(self):
        a = self.args
        self.tmp = tempfile.mkdtemp(prefix="wschaos")
        self.sockdir = tempfile.mkdtemp(prefix="wsc", dir="/tmp")
        self.engine_path = os.path.join(self.sockdir, "e.sock")
        b = Bin("asan", a.bin, True)
        common = ["--bind", "127.0.0.1", "--socket", self.engine_path,
                  "--drain-timeout", str(self.cfg.drain_ms),
                  "--handshake-timeout", str(self.cfg.handshake_ms),
                  "--ping-interval", str(self.cfg.ping_ms),
                  "--max-message", str(self.cfg.max_message),
                  "--max-connections", "4096"]
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(self.engine_path)
        self.lsock.listen(1024)
        self.lsock.setblocking(False)
        self.port = free_port()
        self.proxies = []
        logs = os.path.join(self.tmp, "ws")
        os.makedirs(logs)
        self.proxies.append(Proxy(b, ["--http-port", str(self.port)] + common +
                                  ["--log-dir", logs], self.port, self.tmp,
                                  log_dir=logs))
        self.tls_ok = self.cfg.tls_share > 0
        self.tls_port = None
        if self.tls_ok:
            certs = make_certs(os.path.join(self.tmp, "certs"))
            self.tls_port = free_port()
            logs = os.path.join(self.tmp, "wss")
            os.makedirs(logs)
            self.proxies.append(Proxy(b, ["--https-port", str(self.tls_port), "--cert",
                                          certs.chain, "--key", certs.key] +
                                      common + ["--log-dir", logs],
                                      self.tls_port, self.tmp, log_dir=logs))
            ctx = ssl.create_default_context(cafile=certs.ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self.ssl_ctx = ctx
        for pr in self.proxies:
            pr.wait_ready(timeout=30)
        self.ports = {pr.port for pr in self.proxies}

    def fds(self, pr):
        try:
            return len(os.listdir("/proc/%d/fd" % pr.proc.pid))
        except OSError:
            return -1

    @staticmethod
    def memory(pid):
        """'VmRSS (peak VmHWM)' of a process, from /proc."""
        try:
            with open("/proc/%d/status" % pid) as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
            return "%s (peak %s)" % (st["VmRSS"].strip(), st["VmHWM"].strip())
        except (OSError, KeyError):
            return "?"

    def fd_detail(self, pr):
        out = []
        d = "/proc/%d/fd" % pr.proc.pid
        try:
            names = os.listdir(d)
        except OSError:
            return "(process gone)"
        for name in sorted(names, key=int):
            try:
                out.append("%s->%s" % (name, os.readlink(os.path.join(d, name))))
            except OSError:
                pass
        return " ".join(out)

    def health(self, pr, timeout=15):
        """GET /health, blocking (run in a thread)."""
        s = socket.create_connection(("127.0.0.1", pr.port), timeout=timeout)
        try:
            if pr.port == self.tls_port:
                s = self.ssl_ctx.wrap_socket(s, server_hostname="127.0.0.1")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while True:
                try:
                    d = s.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not d:
                    break
                data += d
                if b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    r = Response(head + b"\r\n\r\n")
                    cl = r.header("Content-Length")
                    if cl and len(body) >= int(cl):
                        break
            return Response(data)
        finally:
            s.close()

    async def check_health(self, when):
        for pr in self.proxies:
            t0 = now()
            try:
                r = await self.loop.run_in_executor(None, self.health, pr)
                if r.status != 200:
                    self.failure("health", None, "%s: /health got %d" % (when, r.status))
                    continue
                line = r.body.decode(errors="replace").strip()
                m = re.search(r"(\d+) connections open", line)
                n = int(m.group(1)) if m else -1
                if when == "start":
                    pr.open_at_start = n
                elif when == "end":
                    self.health_lines.append(line)
                    if n != pr.open_at_start:
                        self.failure("health", None, "/health on port %d says %d "
                                     "connections open at the end, %d at the "
                                     "start" % (pr.port, n, pr.open_at_start))
            except Exception as e:
                self.failure("health", None, "%s: /health on port %d failed after "
                             "%.1fs: %r" % (when, pr.port, now() - t0, e))

    # -- tasks ---------------------------------------------------------------------
    def on_accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            EConn(self, s)

    def tcp_inodes(self):
        """{client address:port in /proc/net/tcp hex: socket inode} for the
        proxies' accepted sockets that have an owner."""
        out = {}
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[9] != "0" and int(parts[1][-4:], 16) in self.ports:
                    out[parts[2]] = parts[9]
        return out

    def fd_inodes(self):
        """Inodes of every socket the proxies hold.  A socket that got a RST
        leaves /proc/net/tcp at once, while the proxy may still hold it: the
        descriptor table is what says whether it was released."""
        out = set()
        for pr in self.proxies:
            d = "/proc/%d/fd" % pr.proc.pid
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                try:
                    link = os.readlink(os.path.join(d, name))
                except OSError:
                    continue
                if link.startswith("socket:["):
                    out.add(link[8:-1])
        return out

    async def watcher(self):
        """Engine hang-ups every 50 ms, /proc/net/tcp and the pairs every
        200 ms."""
        k = 0
        while not self.stop_watch:
            await asyncio.sleep(0.05)
            t = now()
            if self.econns:
                pl = select.poll()
                fds = {}
                for e in list(self.econns):
                    pl.register(e.fd, select.POLLRDHUP)
                    fds[e.fd] = e
                for fd, rev in pl.poll(0):
                    e = fds[fd]
                    if rev & select.POLLRDHUP:
                        e.ev.setdefault("rdhup", t)
                    if rev & (select.POLLHUP | select.POLLERR):
                        e.proxy_gone()
            k += 1
            if k % 4:
                continue
            tcp = self.tcp_inodes()
            held = self.fd_inodes()
            for c in self.pairs:
                if c.hex is None:
                    continue
                if c.inode is None and c.hex in tcp:
                    c.inode = tcp[c.hex]
                    c.seen_held = True
                if c.inode is None:
                    continue
                if c.inode in held:
                    c.released = None
                elif c.released is None:
                    c.released = t
                    c.changed.set()
            self.pairs = [c for c in self.pairs if not c.check(t)]
            lag = now() - t
            self.lag_max = max(self.lag_max, lag)

    def recent_lag(self):
        """The longest this loop ran late in the last 3 s."""
        t = now()
        while self.lags and self.lags[0][0] < t - 3:
            self.lags.popleft()
        return max([lag for _, lag in self.lags] or [0])

    async def monitor(self):
        last = now()
        while not self.stop_watch:
            await asyncio.sleep(0.1)
            t = now()
            lag = max(0.0, t - last - 0.1)
            self.lags.append((t, lag))
            self.lag_max = max(self.lag_max, lag)
            last = t
            for pr in self.proxies:
                if not pr.alive() and not self.stop:
                    bad = sanitizer_problems(pr.stderr())
                    self.failure("crash", None, "proxy on port %d exited with status "
                                 "%s%s" % (pr.port, pr.proc.returncode,
                                           ": " + bad[0] if bad else ""))
                    self.stop = True

    async def run_client(self, c):
        try:
            await asyncio.wait_for(c.run(), 60)
        except asyncio.TimeoutError:
            c.fail("crash", "client script still running after 60 s (stuck): %s"
                   % c.timeline())
            c.rst()
            c.done = True
        except Exception:
            c.fail("crash", "driver error: %s" % traceback.format_exc())
            c.rst()
            c.done = True
        finally:
            self.active -= 1

    async def spawner(self, until):
        i = self.args.first
        tasks = []
        while not self.stop and now() < until:
            if self.args.conn is not None and i > self.args.conn:
                break
            if self.active >= self.args.conc:
                await asyncio.sleep(0.01)
                continue
            plan = Plan(self.seed, i, self.cfg, self.tls_ok)
            i += 1
            c = Client(self, plan)
            self.spawned += 1
            self.pairs.append(c)
            self.kinds[(plan.ckind, plan.ekind)] += 1
            self.stats["tls" if plan.tls else "plain"] += 1
            self.active += 1
            tasks.append(asyncio.ensure_future(self.run_client(c)))
            if len(self.failures) > 1000:
                self.stop = True
            await asyncio.sleep(self.rng.uniform(0, 0.02))
        if tasks:
            await asyncio.wait(tasks)
        return i - self.args.first

    async def main(self):
        a = self.args
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.lsock.fileno(), self.on_accept)
        self.rng = random.Random(self.seed)
        self.active = 0
        self.stop_watch = False
        self.health_lines = []
        t0 = self.t0 = now()
        self.base = [self.fds(pr) for pr in self.proxies]
        await self.check_health("start")
        await asyncio.sleep(0.3)
        self.base = [self.fds(pr) for pr in self.proxies]
        watch = asyncio.ensure_future(self.watcher())
        mon = asyncio.ensure_future(self.monitor())
        wind = min(15.0, 0.4 * a.secs)
        until = t0 + max(1.0, a.secs - wind)

        async def periodic_health():
            while not self.stop and now() < until:
                await asyncio.sleep(5)
                await self.check_health("mid-run")
        ph = asyncio.ensure_future(periodic_health())
        last = now()

        async def progress():
            nonlocal last
            while not self.stop_watch:
                await asyncio.sleep(10 if a.secs < 600 else 60)
                print("chaos: %4.0fs %d connections, %d active, %d failures, "
                      "%d MiB to engine" % (now() - t0, self.spawned,
                                            self.active, len(self.failures),
                                            self.stats["to_engine"] >> 20),
                      flush=True)
        prog = asyncio.ensure_future(progress())
        n = await self.spawner(until)
        ph.cancel()
        # every pair settles (or is reported) within the bound
        deadline = now() + self.cfg.general + 3
        while self.pairs and now() < deadline:
            await asyncio.sleep(0.1)
        t = now()
        for c in self.pairs:
            c.check(t, final=True)
            if c.seen_held and c.released is None:
                c.fail("outlive", "client socket still held by the proxy at the "
                       "end: %s" % c.timeline())
            if c.engine is not None and c.engine_released() is None:
                c.fail("outlive", "engine connection still open at the end: %s"
                       % c.timeline())
        for e in list(self.econns):
            if e.c is None:
                self.failure("outlive", None, "unmatched engine connection open")
            elif "outlive" not in e.c.failed:
                e.c.fail("outlive", "engine connection still open at the end: %s"
                         % e.c.timeline())
        # descriptors back to the baseline
        for pr, base in zip(self.proxies, self.base):
            if not pr.alive():
                continue
            ok = False
            end = now() + self.cfg.general
            while now() < end:
                if self.fds(pr) == base:
                    ok = True
                    break
                await asyncio.sleep(0.1)
            if not ok:
                self.failure("fds", None, "proxy on port %d holds %d descriptors, "
                             "%d at the start: %s" % (pr.port, self.fds(pr), base,
                                                      self.fd_detail(pr)))
        if all(pr.alive() for pr in self.proxies):
            await self.check_health("end")
        self.mem = [self.memory(pr.proc.pid) for pr in self.proxies]
        self.stop_watch = True
        for tk in (watch, mon, prog):
            tk.cancel()
        self.duration = now() - t0
        return n

    def finish(self):
        self.stop = True
        problems = []
        for pr in self.proxies:
            for msg in pr.finish():
                problems.append(msg)
        for msg in problems:
            self.failure("crash", None, msg)
        self.check_logs()

    def check_logs(self):
        """Every connection the proxy accepted ends with exactly one log line
        (closed, ended, refused or TLS handshake failed)."""
        rx = re.compile(r"\[conn \d+ ([0-9.]+:\d+)\] (closed|ended|refused|"
                        r"TLS handshake failed)\b")
        ends = collections.Counter()
        for pr in self.proxies:
            for line in pr.log().splitlines():
                m = rx.search(line)
                if m:
                    ends[m.group(1)] += 1
        for c in self.by_src.values():
            accepted = c.seen_held or c.engine is not None or c.raw_rcvd > 0
            n = ends.get("%s:%s" % (c.src, c.sport), 0)
            if accepted and n != 1:
                c.fail("log", "%d log lines for the connection's end (want 1)" % n)
        try:
            self.lsock.close()
        except OSError:
            pass
        for e in list(self.econns):
            e.sock.close()

    def report(self, n):
        st = self.stats
        print("chaos: seed %s, %.1f s, %d connections (%d ws, %d wss), "
              "%d well-behaved verified with %d bytes exact each way" % (
                  self.seed, self.duration, n, st["plain"], st["tls"],
                  st["wb_conns"], st["wb_bytes"]))
        print("chaos: %d bytes reached the engine, %d bytes reached clients, "
              "%d bytes on the wire from clients; max driver lag %.2fs" % (
                  st["to_engine"], st["to_client"], st["wire_out"], self.lag_max))
        codes = ", ".join("%s: %d" % (k, v) for k, v in
                          sorted(st["codes"].items(), key=lambda kv: str(kv[0])))
        print("chaos: Close codes received: %s" % (codes or "none"))
        ck = collections.Counter()
        for (c, e), v in self.kinds.items():
            ck[c] += v
        print("chaos: clients: %s" % ", ".join("%s %d" % kv for kv in sorted(ck.items())))
        print("chaos: memory at the end: proxies %s; this driver %s" % (
            ", ".join(getattr(self, "mem", [])), self.memory(os.getpid())))
        print("chaos: %d pairs checked against the prompt bound, %d against "
              "drain + slack" % (st["pairs_prompt"], st["pairs_general"]))
        if st["slow_408"]:
            print("chaos: %d handshakes timed out while this driver was still "
                  "sending them (not counted as failures)" % st["slow_408"])
        for line in self.health_lines:
            print("chaos: /health: %s" % line)
        if not self.failures:
            print("chaos: OK, every invariant held")
            return 0
        by = collections.Counter(f[0] for f in self.failures)
        print("chaos: FAILED, %d failures (%s); replay with CHAOS_SEED=%s" % (
            len(self.failures), ", ".join("%s %d" % kv for kv in sorted(by.items())),
            self.seed))
        # every failure in a file; here the first of each kind
        path = os.path.join(self.tmp, "failures.txt")
        seen = set()
        with open(path, "w") as f:
            for inv, c, msg, t in self.failures:
                text = "--- [%s] %s" % (inv, msg)
                if c is not None:
                    text = "\n".join(
                        ["--- [%s] conn %d (%s:%s): %s" % (inv, c.idx, c.src,
                                                           c.sport, msg),
                         "    plan: %s" % c.p.summary(),
                         "    timeline: %s" % c.timeline(),
                         "    replay alone: CHAOS_SEED=%s /usr/bin/python3 "
                         "test/chaos.py --conn %d" % (self.seed, c.idx)] +
                        ["    log: %s" % ln for ln in self.log_lines(c)[:6]])
                f.write(text + "\n")
                key = (inv, c.p.ckind, c.p.variant, c.p.ekind) if c else (inv, msg)
                if key not in seen and len(seen) < 16:
                    seen.add(key)
                    print(text)
        print("chaos: all %d failures with their timelines: %s" % (
            len(self.failures), path))
        return 1

    def log_lines(self, c):
        pr = self.proxies[1] if c.p.tls and len(self.proxies) > 1 else self.proxies[0]
        needle = "%s:%s]" % (c.src, c.sport)
        return [ln for ln in pr.log().splitlines() if needle in ln]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=float,
                    default=float(os.environ.get("CHAOS_SECS", "20")))
    ap.add_argument("--seed", default=os.environ.get("CHAOS_SEED"))
    ap.add_argument("--conc", type=int, default=int(os.environ.get("CHAOS_CONC", "24")))
    ap.add_argument("--bin", default=os.environ.get(
        "CHAOS_BIN", os.path.join(ROOT, "build", "asan", "wsproxy")))
    ap.add_argument("--conn", type=int, default=None,
                    help="replay only connection I of the seed's plans")
    ap.add_argument("--tls-share", type=float, default=None)
    args = ap.parse_args()
    if args.seed is None:
        args.seed = str(random.SystemRandom().randrange(10 ** 9))
    args.first = 0
    if args.conn is not None:
        args.first = args.conn
        args.conc = 1
    if not os.access(args.bin, os.X_OK):
        print("chaos: %s is not an executable; run `make build/asan/wsproxy`" %
              args.bin, file=sys.stderr)
        return 2
    drv = Driver(args)
    if args.tls_share is not None:
        drv.cfg.tls_share = args.tls_share
    print("chaos: seed %s (replay: CHAOS_SEED=%s), %.0f s, %d concurrent, %s; "
          "drain %d ms, bound drain+%.1fs, prompt %.1fs" % (
              args.seed, args.seed, args.secs, args.conc, args.bin,
              drv.cfg.drain_ms, drv.cfg.slack, drv.cfg.prompt), flush=True)
    n = 0
    drv.duration = 0
    try:
        drv.start()
        n = asyncio.run(asyncio.wait_for(drv.main(), args.secs + 180))
    except Exception:
        drv.failure("crash", None, "driver: %s" % traceback.format_exc())
        n = drv.spawned
        drv.duration = now() - getattr(drv, "t0", now())
    finally:
        if hasattr(drv, "proxies"):
            drv.finish()
        shutil.rmtree(getattr(drv, "sockdir", "/nonexistent"), ignore_errors=True)
    rc = drv.report(n)
    if rc == 0:
        shutil.rmtree(drv.tmp, ignore_errors=True)
    else:
        print("chaos: proxy logs kept in %s" % drv.tmp)
    return rc


if __name__ == "__main__":
    sys.exit(main())
