"""Fixtures and raw-socket helpers for the wsproxy integration suite.

The binaries under test come from WSPROXY_BINS, a space-separated list of
name=path (default "plain=build/wsproxy", relative paths are taken from the
repository root); every test that uses the `wsproxy_bin` fixture (directly or
through `proxy`) runs once per binary.

Run with Debian's interpreter:  /usr/bin/python3 -m pytest test/ -q
"""

import base64
import ctypes
import hashlib
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest

from engine import Engine, refuse_path

ROOT = Path(__file__).resolve().parent.parent
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


def raise_nofile(want=8192):
    """Raise RLIMIT_NOFILE (soft) towards `want`; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


raise_nofile()

# ---------------------------------------------------------------------------
# binaries
# ---------------------------------------------------------------------------

Bin = namedtuple("Bin", "name path slow")


def _parse_bins():
    spec = os.environ.get("WSPROXY_BINS", "").strip() or "plain=build/wsproxy"
    bins = []
    for item in spec.split():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise pytest.UsageError("WSPROXY_BINS: bad entry %r (want name=path)"
                                    % item)
        p = Path(path)
        if not p.is_absolute():
            p = ROOT / p
        bins.append(Bin(name, str(p), "asan" in name or "san" in path))
    return bins


BINS = _parse_bins()


@pytest.fixture(scope="session", params=BINS, ids=[b.name for b in BINS])
def wsproxy_bin(request):
    b = request.param
    if not os.access(b.path, os.X_OK):
        pytest.fail("wsproxy binary %r not found or not executable (%s); "
                    "run `make` first or fix WSPROXY_BINS" % (b.name, b.path))
    return b


# Started as root, wsproxy refuses to run without --user NAME or --allow-root.
# The suite's proxies stay root (as before) unless a test says otherwise;
# test_root.py covers --user and the refusal.
ROOT_ARGS = ["--allow-root"] if os.geteuid() == 0 else []


def proc_env():
    env = dict(os.environ)
    env.update(SAN_ENV)
    return env


def _die_with_us():
    """In the child: get SIGKILL if the test process dies, so an interrupted
    run leaves no proxy behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def sanitizer_problems(text):
    return [line for line in text.splitlines()
            if any(m in line for m in SANITIZER_MARKS)]


def run_bin(b, args, timeout=20, root_args=True):
    """Run the binary to completion (CLI tests); returns CompletedProcess and
    fails the test on sanitizer reports or a hang.  root_args=False leaves
    out ROOT_ARGS."""
    args = list(args) + (ROOT_ARGS if root_args else [])
    try:
        cp = subprocess.run([b.path] + list(args), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=proc_env(),
                            timeout=timeout * (3 if b.slow else 1))
    except subprocess.TimeoutExpired:
        pytest.fail("%s %s did not exit within %ss" % (b.path, args, timeout))
    bad = sanitizer_problems(cp.stderr)
    assert not bad, "sanitizer report:\n" + cp.stderr
    return cp


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_accepts(port, timeout=0.3, host="127.0.0.1"):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return False
    s.close()
    return True


def cpu_seconds(pid):
    """CPU time (user + system) process pid has used, from /proc/PID/stat in
    clock ticks (SC_CLK_TCK, not an assumed 100)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(pred, timeout, step=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(step)


# ---------------------------------------------------------------------------
# the proxy process
# ---------------------------------------------------------------------------

class Proxy:
    """One running wsproxy process."""

    def __init__(self, b, args, port, workdir, log_dir=None, engine=None,
                 host="127.0.0.1", root_args=True):
        self.host = host
        self.bin = b
        self.args = list(args) + (ROOT_ARGS if root_args else [])
        self.port = port
        self.workdir = workdir
        self.log_dir = log_dir
        self.engine = engine
        self.slow = b.slow
        self.stdout_path = os.path.join(workdir, "stdout.%d" % id(self))
        self.stderr_path = os.path.join(workdir, "stderr.%d" % id(self))
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([b.path] + self.args,
                                     stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err,
                                     env=proc_env(), preexec_fn=_die_with_us)
        self.finished = False

    def t(self, seconds):
        """A timeout scaled for the sanitizer build."""
        return seconds * (2.5 if self.slow else 1)

    def wait_ready(self, port=None, timeout=15.0):
        port = port or self.port
        deadline = time.monotonic() + self.t(timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "wsproxy exited (status %s) before listening on %d:\n%s"
                    % (self.proc.returncode, port, self.stderr()))
            if port_accepts(port, host=self.host):
                return
            time.sleep(0.01)
        raise AssertionError("wsproxy did not accept on port %d within %.0fs:\n%s"
                             % (port, timeout, self.stderr()))

    def stderr(self):
        if not self._err.closed:
            self._err.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_path(self):
        return os.path.join(self.log_dir, "websocket_proxy.log")

    def log(self):
        """Log text: the log file with --log-dir, stderr otherwise."""
        if self.log_dir:
            try:
                with open(self.log_path(), "rb") as f:
                    return f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return ""
        return self.stderr()

    def wait_log(self, pattern, timeout=5.0, start=0):
        """Wait until a log line (after offset `start`) matches regex."""
        rx = re.compile(pattern, re.I)
        found = []

        def pred():
            for line in self.log()[start:].splitlines():
                if rx.search(line):
                    found.append(line)
                    return True
            return False
        try:
            wait_until(pred, self.t(timeout), what="log line /%s/" % pattern)
        except AssertionError:
            raise AssertionError("no log line matches /%s/; log:\n%s"
                                 % (pattern, self.log()[start:][-4000:]))
        return found[0]

    def signal(self, sig):
        self.proc.send_signal(sig)

    def alive(self):
        return self.proc.poll() is None

    def finish(self, sig=None, timeout=15.0):
        """Stop with `sig` (SIGTERM); return a list of problems (empty =
        clean)."""
        sig = sig or signal.SIGTERM
        if self.finished:
            return []
        self.finished = True
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.t(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                problems.append("wsproxy did not exit within %.0fs of %s"
                                % (self.t(timeout), sig.name))
        rc = self.proc.returncode
        self._out.close()
        self._err.close()
        err = self.stderr()
        if rc != 0:
            problems.append("wsproxy exit status %s (want 0)" % rc)
        bad = sanitizer_problems(err)
        if bad:
            problems.append("sanitizer report: %s" % bad[0])
        if problems:
            problems.append("stderr tail:\n" + err[-6000:])
        return problems

    # -- clients -----------------------------------------------------------
    def ws(self, path="/", **kw):
        """A raw WebSocket client, handshake done and checked (101)."""
        c = WSClient(self.port, timeout=self.t(10), host=self.host)
        c.handshake(path=path, **kw)
        return c

    def http(self, raw, timeout=10.0):
        return http_exchange(self.port, raw, timeout=self.t(timeout))


class ProxySet:
    """Starts proxies and engines; finish() stops them and reports problems.
    Usable from fixtures of any scope."""

    def __init__(self, b, workdir, kind="unix"):
        self.bin = b
        self.workdir = workdir
        self.kind = kind    # the engines': "unix", "tcp" or "tcp6"
        self.proxies = []
        self.engines = []
        self.sockdirs = []

    def sockdir(self):
        # Unix socket paths must stay short (108 bytes): not under tmp_path.
        d = tempfile.mkdtemp(prefix="wse", dir="/tmp")
        self.sockdirs.append(d)
        return d

    def engine(self, mode="echo", **kw):
        kw.setdefault("kind", self.kind)
        e = Engine(self.sockdir(), mode=mode, **kw)
        self.engines.append(e)
        return e

    def refused(self):
        """An engine address of this set's kind where nothing listens."""
        return refuse_path(self.sockdir(), self.kind)

    def start(self, *args, engine="echo", socket_path=None, port=None,
              log_dir=None, raw=False, wait=True, bind="127.0.0.1", root_args=True):
        """Start wsproxy.  Unless raw=True the arguments get
        --http-port PORT --bind BIND (default 127.0.0.1; "::1" for IPv6)
        --socket PATH (PATH from `engine`: an Engine, a mode name for a new
        Engine, or None with socket_path) and --log-dir if given; extra args
        follow.  With raw=True only the extra args are passed (pass `port`
        so readiness can be checked)."""
        if isinstance(engine, str):
            engine = self.engine(engine)
        host = bind if bind and bind != "0.0.0.0" else "127.0.0.1"
        if port is None:
            port = free_port(host)
        argv = []
        if not raw:
            argv += ["--http-port", str(port)]
            if bind:
                argv += ["--bind", bind]
            path = socket_path or (engine.path if engine else None)
            if path:
                argv += ["--socket", path]
            if log_dir:
                argv += ["--log-dir", str(log_dir)]
        argv += [str(a) for a in args]
        p = Proxy(self.bin, argv, port, str(self.workdir), log_dir=log_dir,
                  engine=engine, host=host, root_args=root_args)
        self.proxies.append(p)
        if wait:
            p.wait_ready()
        return p

    def finish(self):
        problems = []
        for p in reversed(self.proxies):
            try:
                msgs = p.finish()
            except Exception as ex:   # never leave a process behind
                msgs = ["teardown error: %r" % ex]
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait(10)
            for msg in msgs:
                problems.append("[%s %s] %s" % (p.bin.name, " ".join(p.args), msg))
        for e in self.engines:
            try:
                e.stop()
            except Exception as ex:
                problems.append("engine stop error: %r" % ex)
        for d in self.sockdirs:
            shutil.rmtree(d, ignore_errors=True)
        return problems


def finish_or_fail(ps):
    """Stops a ProxySet; its problems (exit status, sanitizer reports) fail
    the test."""
    problems = ps.finish()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def pytest_generate_tests(metafunc):
    """A test module that sets ENGINE_KINDS = KINDS (from engine.py) runs
    each test that uses engine_kind (proxyset, proxy, engine) once per
    kind of engine socket; elsewhere engines listen on Unix sockets."""
    kinds = getattr(metafunc.module, "ENGINE_KINDS", None)
    if kinds and "engine_kind" in metafunc.fixturenames:
        metafunc.parametrize("engine_kind", kinds, scope="function")


@pytest.fixture
def engine_kind():
    return "unix"


@pytest.fixture
def proxyset(wsproxy_bin, tmp_path, engine_kind):
    ps = ProxySet(wsproxy_bin, tmp_path, engine_kind)
    yield ps
    finish_or_fail(ps)


@pytest.fixture
def proxy(proxyset):
    """Factory: proxy(*extra_args, engine="echo"|Engine|None, ...) -> Proxy."""
    return proxyset.start


@pytest.fixture
def engine(proxyset):
    """Factory: engine(mode="echo", **kw) -> Engine (stopped at teardown)."""
    return proxyset.engine


# ---------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="          # RFC 6455 section 1.3
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def ws_request(path="/", key=None, method="GET", version="HTTP/1.1",
               host="127.0.0.1", headers=None, omit=()):
    """Build an upgrade request.  `headers` (list of (name, value)) replaces
    headers of the same name (case-insensitive) or is appended; `omit` drops
    headers by name."""
    key = key or new_key()
    base = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
    extra = list(headers or [])
    names = {n.lower() for n, _ in extra}
    omitted = {n.lower() for n in omit}
    hdrs = [(n, v) for n, v in base if n.lower() not in names | omitted]
    hdrs += [(n, v) for n, v in extra if n.lower() not in omitted]
    lines = ["%s %s %s" % (method, path, version)]
    lines += ["%s: %s" % hv for hv in hdrs]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Response:
    def __init__(self, raw):
        self.raw = raw
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, "response has no end of headers: %r" % raw[:500]
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
        assert m, "bad status line %r" % lines[0]
        self.status = int(m.group(1))
        self.reason = m.group(2) or ""
        self.headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name and name == name.strip(), \
                "bad header line %r" % line
            self.headers.setdefault(name.lower(), []).append(value.strip())

    def header(self, name):
        v = self.headers.get(name.lower())
        return None if v is None else ", ".join(v)

    def tokens(self, name):
        v = self.header(name) or ""
        return [t.strip().lower() for t in v.split(",") if t.strip()]

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.raw[:300])


def read_until_eof(sock, timeout):
    """Read until the peer closes; returns (data, closed)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk


def http_exchange(port, raw, timeout=10.0, chunks=None):
    """Send `raw`, read the whole answer until the server closes.  Asserts
    it closed within `timeout`; returns a Response."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(raw)
        except (ConnectionResetError, BrokenPipeError):
            pass
        data, closed = read_until_eof(s, timeout)
    finally:
        s.close()
    assert data, "no answer to %r" % raw[:200]
    assert closed, "server did not close the connection after %r" % data[:300]
    return Response(data)


def assert_complete(resp, status=None):
    """A complete non-101 HTTP answer: status line, Content-Length matching
    the body exactly."""
    if status is not None:
        assert resp.status == status, "want %d, got %r" % (status, resp)
    cl = resp.header("Content-Length")
    assert cl is not None and cl.isdigit(), \
        "no valid Content-Length in %r" % resp.raw[:500]
    assert int(cl) == len(resp.body), \
        "Content-Length %s but body has %d bytes: %r" % (cl, len(resp.body),
                                                         resp.raw[:500])


# ---------------------------------------------------------------------------
# raw WebSocket client
# ---------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

Frame = namedtuple("Frame", "fin rsv opcode masked payload")


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, mask_key=None,
          length=None, len_form=None):
    """Encode a client frame.  `length` overrides the encoded length (for
    lying headers); `len_form` forces 7/16/64-bit length encoding."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 15)
    mbit = 0x80 if mask else 0
    form = len_form or (7 if n < 126 else 16 if n < 65536 else 64)
    if form == 7:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif form == 16:
        hdr = struct.pack("!BBH", b0, mbit | 126, n & 0xFFFF)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n & (2 ** 64 - 1))
    if not mask:
        return hdr + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    return hdr + key + apply_mask(payload, key)


def apply_mask(data, key, offset=0):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 2))[offset % 4:offset % 4 + n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


class ConnectionClosed(Exception):
    pass


class WSClient:
    def __init__(self, port, timeout=10.0, host="127.0.0.1"):
        self.port = port
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.response = None

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def handshake(self, path="/", key=None, headers=None, extra=b"",
                  expect=101, request=None):
        key = key or new_key()
        req = request or ws_request(path=path, key=key, headers=headers)
        self.sock.sendall(req + extra)
        return self.read_response(key=key, expect=expect)

    def read_response(self, key=None, expect=101):
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            if time.monotonic() > deadline:
                raise AssertionError("no complete response head: %r" % self.buf)
            self._fill(deadline)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest
        resp = Response(head + b"\r\n\r\n")
        self.response = resp
        if expect is not None:
            assert resp.status == expect, "want %d, got %r" % (expect, resp)
        if expect == 101:
            assert "websocket" in resp.tokens("Upgrade"), resp
            assert "upgrade" in resp.tokens("Connection"), resp
            if key is not None:
                assert resp.header("Sec-WebSocket-Accept") == accept_for(key), resp
        return resp

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionClosed("connection closed by server (buffered %r)"
                                   % self.buf[:100])
        self.buf += chunk

    def _take(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload=b"", **kw):
        self.sock.sendall(frame(opcode, payload, **kw))

    def recv_frame(self, timeout=None):
        """One server frame; asserts server frames are never masked."""
        deadline = time.monotonic() + (timeout or self.timeout)
        b0, b1 = self._take(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8, deadline))[0]
        masked = bool(b1 & 0x80)
        key = self._take(4, deadline) if masked else None
        payload = self._take(n, deadline)
        if masked:
            payload = apply_mask(payload, key)
        f = Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 15, masked, payload)
        assert not f.masked, "server frame is masked: %r" % (f,)
        assert f.rsv == 0, "server frame has RSV bits: %r" % (f,)
        return f

    def recv_data(self, n, timeout=None):
        """Collect exactly n payload bytes from server data frames (binary,
        FIN set); answers nothing.  Pings are answered with pongs."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out = b""
        while len(out) < n:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.send_frame(OP_PONG, f.payload)
                continue
            assert f.opcode == OP_BIN and f.fin, \
                "want a binary FIN data frame, got %r (after %d bytes)" % (
                    f[:3] + (f.payload[:60],), len(out))
            out += f.payload
        assert len(out) == n, "got %d bytes, want %d" % (len(out), n)
        return out

    def recv_until_close(self, timeout=None, answer_pings=True):
        """Read frames until a Close; returns (data, code, reason).  Data
        frames must be binary with FIN set."""
        deadline = time.monotonic() + (timeout or self.timeout)
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no Close frame within timeout; data %r"
                                     % data[:100])
            f = self.recv_frame(left)
            if f.opcode == OP_CLOSE:
                assert f.fin, "fragmented Close from server"
                if not f.payload:
                    return data, None, b""
                assert len(f.payload) >= 2, "1-byte close payload from server"
                code = struct.unpack("!H", f.payload[:2])[0]
                return data, code, f.payload[2:]
            if f.opcode == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, f.payload)
                continue
            if f.opcode == OP_PONG:   # answer to a ping the test sent
                assert f.fin
                continue
            assert f.opcode == OP_BIN and f.fin, \
                "want a binary FIN data frame, got %r" % (f[:3] + (f.payload[:60],),)
            data += f.payload

    def expect_close(self, code, timeout=None):
        """The server sends Close `code` and then closes the TCP connection
        (without waiting for us)."""
        try:
            data, got, reason = self.recv_until_close(timeout)
        except ConnectionClosed as e:
            raise AssertionError("want Close %d, server closed TCP without a "
                                 "Close frame (%s)" % (code, e))
        assert got == code, "want Close %s, got Close %s (reason %r)" % (
            code, got, reason)
        self.expect_eof()
        return data, reason

    def expect_eof(self, timeout=None):
        """The server closes TCP; no further bytes arrive."""
        rest, closed = read_until_eof(self.sock, timeout or self.timeout)
        rest = self.buf + rest
        self.buf = b""
        assert not rest, "bytes after the Close frame: %r" % rest[:100]
        assert closed, "server did not close the TCP connection"

    def reply_close(self, code, timeout=3.0):
        """Complete a server-initiated close handshake as a real client does
        (echo the code), then the server must close TCP promptly."""
        try:
            self.send_frame(OP_CLOSE, close_payload(code) if code else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.expect_eof(timeout)

    def close(self, code=1000, reason=b""):
        """Clean close handshake initiated by us; returns data received
        before the server's Close and checks the code is echoed."""
        self.send_frame(OP_CLOSE, close_payload(code, reason))
        data, got, _ = self.recv_until_close()
        assert got == code, "Close %d not echoed: got %s" % (code, got)
        self.expect_eof()
        self.sock.close()
        return data

    def echo(self, payload, opcode=OP_BIN):
        """Send one message, expect the echo engine's bytes back."""
        self.send_frame(opcode, payload)
        if isinstance(payload, str):
            payload = payload.encode()
        got = self.recv_data(len(payload))
        assert got == payload, "echo mismatch"
        return got

    def abort(self, rst=True):
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        try:
            self.sock.close()
        except OSError:
            pass
