"""A stand-in for the database engine: a Unix-socket or TCP server run in
threads (`kind` "unix", "tcp" on 127.0.0.1 or "tcp6" on ::1; `path` is the
address as wsproxy's --socket spells it).

Every connection the proxy opens is handled by its own thread (this is test
code; the proxy itself is single-threaded).  The engine first strips a PROXY
protocol v1 or v2 header if one starts the stream and records what it said,
then behaves according to its mode:

  echo      send back every byte received; on EOF optionally send `tail`
            (after `tail_delay` seconds) and close, or hold the connection
            open (`hold=True`) until the proxy closes it or the engine stops.
  sink      read everything; count bytes and keep a SHA-256 of them.
  source    send `source_bytes` bytes of deterministic data (see
            source_data()), then close (EOF), while still reading.
  eof-after echo until `eof_after` bytes were received, then close.
  (echo and sink take `gate`, an Event: they read only while it is set,
  which lets a test stall the engine to check backpressure.)
  reset     wait until client data is queued, then close without reading it
            (SO_LINGER 0): on a Unix socket this is what makes the proxy's next
            read fail with ECONNRESET, i.e. an engine error.

`refuse` is not a mode of a running engine: use refuse_path() to get an
address where nothing listens (the proxy must answer 502), and release() to
free it for an Engine.

Each connection is an EngineConn; tests wait on its events with bounded
timeouts.  Nothing here waits without a bound except the per-connection
threads, which are unblocked by stop().
"""

import hashlib
import ipaddress
import os
import random
import socket
import struct
import threading
import time

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"

# Bytes recorded verbatim per connection (the hash covers everything).
KEEP_LIMIT = 1 << 20


def source_data(n, seed=1234):
    """The deterministic byte stream a `source` engine sends."""
    return random.Random(seed).randbytes(n)


KINDS = ("unix", "tcp", "tcp6")
_HOSTS = {"tcp": (socket.AF_INET, "127.0.0.1"), "tcp6": (socket.AF_INET6, "::1")}
_held = {}  # refuse_path() address -> the bound socket that keeps it


def bind(kind, tmpdir, name, address=None):
    """A stream socket bound for `kind` and its --socket spelling: a Unix
    path tmpdir/name, or an ephemeral loopback port (or `address` again)."""
    if kind == "unix":
        path = address or os.path.join(str(tmpdir), name)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        return s, path
    family, host = _HOSTS[kind]
    port = int(address.rsplit(":", 1)[1]) if address else 0
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    port = s.getsockname()[1]
    return s, ("%s:%d" if kind == "tcp" else "[%s]:%d") % (host, port)


def refuse_path(tmpdir, kind="unix"):
    """An address with no listener behind it: a stale socket file, or a TCP
    port bound but not listening.  connect() -> ECONNREFUSED."""
    s, path = bind(kind, tmpdir, "refused.sock")
    if kind == "unix":
        s.close()  # the file stays, nothing listens
    else:
        _held[path] = s  # the port stays taken, nothing listens
    return path


def release(path):
    """Frees a refuse_path() address so that an Engine can listen there."""
    s = _held.pop(path, None)
    if s:
        s.close()
    else:
        os.unlink(path)


class HeaderError(Exception):
    pass


def _parse_v2(hdr, body):
    ver_cmd, fam, length = hdr[12], hdr[13], struct.unpack(">H", hdr[14:16])[0]
    info = {"version": 2, "ver_cmd": ver_cmd, "family": fam,
            "length": length, "raw": hdr + body}
    if ver_cmd >> 4 != 2:
        raise HeaderError("PROXY v2: bad version nibble %#x" % ver_cmd)
    # family byte -> (name, address size, address class)
    families = {0x11: ("TCP4", 4, ipaddress.IPv4Address),
                0x21: ("TCP6", 16, ipaddress.IPv6Address)}
    if fam in families:
        name, size, cls = families[fam]
        if length < 2 * size + 4:
            raise HeaderError("PROXY v2 %s: short address block" % name)
        sport, dport = struct.unpack(">HH", body[2 * size:2 * size + 4])
        info.update(src=str(cls(body[0:size])), dst=str(cls(body[size:2 * size])),
                    sport=sport, dport=dport)
    return info


def _parse_v1(line):
    info = {"version": 1, "raw": line}
    if not line.endswith(b"\r\n"):
        raise HeaderError("PROXY v1 line does not end with CRLF: %r" % line)
    parts = line[:-2].decode("ascii").split(" ")
    info["proto"] = parts[1] if len(parts) > 1 else None
    if len(parts) == 6 and parts[1] in ("TCP4", "TCP6"):
        info.update(src=parts[2], dst=parts[3],
                    sport=int(parts[4]), dport=int(parts[5]))
    elif info["proto"] != "UNKNOWN":
        raise HeaderError("PROXY v1 line malformed: %r" % line)
    return info


class EngineConn:
    def __init__(self, engine, sock, index):
        self.engine = engine
        self.sock = sock
        self.index = index
        self.header = None          # dict from the PROXY header, or None
        self.header_error = None    # str if a header was malformed
        self.nbytes = 0             # payload bytes received (header excluded)
        self.sha = hashlib.sha256()
        self.data = bytearray()     # first KEEP_LIMIT bytes received
        self.sent = 0               # bytes sent to the proxy
        self.error = None           # exception seen by the thread, if any
        self.started = threading.Event()  # header handled
        self.eof = threading.Event()      # engine read EOF from the proxy
        self.closed = threading.Event()   # engine closed its socket
        self._cv = threading.Condition()

    # -- waits (all bounded) -------------------------------------------------
    def wait_eof(self, timeout=10.0):
        return self.eof.wait(timeout)

    def wait_closed(self, timeout=10.0):
        return self.closed.wait(timeout)

    def wait_bytes(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.nbytes < n:
                left = deadline - time.monotonic()
                if left <= 0 or self.eof.is_set() and self.nbytes < n:
                    break
                self._cv.wait(min(left, 0.1))
            return self.nbytes >= n

    def hexdigest(self):
        return self.sha.hexdigest()

    # -- internals -----------------------------------------------------------
    def _record(self, chunk):
        with self._cv:
            self.nbytes += len(chunk)
            self.sha.update(chunk)
            room = KEEP_LIMIT - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self._cv.notify_all()

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise HeaderError("EOF inside PROXY header")
            buf += chunk
        return buf

    def _read_header(self, policy):
        """Strip a PROXY header if present.  policy: 'auto' strips one if the
        stream starts with one; 'off' never looks."""
        if policy == "off":
            return
        # Peek until we can tell whether a header starts the stream.
        deadline = time.monotonic() + 15.0
        while True:
            head = self.sock.recv(16, socket.MSG_PEEK)
            if not head:
                return  # EOF before any byte
            maybe_v2 = len(head) < 12 and V2_SIG.startswith(head)
            maybe_v1 = len(head) < 6 and b"PROXY ".startswith(head)
            if not (maybe_v2 or maybe_v1):
                break
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        if head.startswith(V2_SIG):
            hdr = self._recv_exact(16)
            length = struct.unpack(">H", hdr[14:16])[0]
            body = self._recv_exact(length)
            self.header = _parse_v2(hdr, body)
        elif head.startswith(b"PROXY "):
            line = b""
            while not line.endswith(b"\r\n"):
                if len(line) > 107:
                    raise HeaderError("PROXY v1 line longer than 107 bytes")
                line += self._recv_exact(1)
            self.header = _parse_v1(line)

    def _send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def run(self):
        e = self.engine
        try:
            try:
                self._read_header(e.proxy)
            except HeaderError as ex:
                self.header_error = str(ex)
            finally:
                self.started.set()
            mode = e.mode
            if mode == "source":
                self._run_source()
            elif mode == "reset":
                self._run_reset()
            else:
                self._run_stream(mode)
        except OSError as ex:
            if not e.stopping:
                self.error = ex
        finally:
            self.eof.set()  # wake waiters; the stream is over either way
            try:
                self.sock.close()
            finally:
                self.closed.set()
                with self._cv:
                    self._cv.notify_all()

    def _run_stream(self, mode):
        e = self.engine
        while True:
            if e.gate is not None:
                while not e.gate.wait(0.1):
                    if e.stopping:
                        return
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._record(chunk)
            if mode in ("echo", "eof-after"):
                out = chunk
                if mode == "eof-after":
                    out = chunk[:max(0, e.eof_after - (self.nbytes - len(chunk)))]
                if out:
                    self._send(out)
                if mode == "eof-after" and self.nbytes >= e.eof_after:
                    self.sock.shutdown(socket.SHUT_RDWR)
                    return
        self.eof.set()
        if e.tail:
            if e.tail_delay:
                time.sleep(e.tail_delay)
            self._send(e.tail)
        if e.hold:
            e._stop_event.wait(e.hold)

    def _run_source(self):
        e = self.engine
        # Read (and record) in the background so the proxy never blocks on us.
        reader = threading.Thread(target=self._drain_reader, daemon=True)
        reader.start()
        data = source_data(e.source_bytes, e.seed)
        step = e.source_chunk
        for off in range(0, len(data), step):
            self._send(data[off:off + step])
        self.sock.shutdown(socket.SHUT_WR)
        reader.join(30)

    def _drain_reader(self):
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self._record(chunk)
        except OSError:
            pass
        self.eof.set()

    def _run_reset(self):
        e = self.engine
        if e.tail:
            self._send(e.tail)
        # Wait (bounded) until client bytes are queued, and leave them unread.
        deadline = time.monotonic() + 15.0
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                if self.sock.recv(1, socket.MSG_PEEK):
                    break
            except socket.timeout:
                continue
            else:
                if not self.sock.recv(1, socket.MSG_PEEK):
                    break  # EOF
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack("ii", 1, 0))


class Engine:
    def __init__(self, tmpdir, mode="echo", proxy="auto", source_bytes=0,
                 seed=1234, source_chunk=65536, eof_after=0, tail=b"",
                 tail_delay=0.0, hold=0.0, gate=None, name="engine.sock",
                 kind="unix", address=None):
        assert mode in ("echo", "sink", "source", "eof-after", "reset"), mode
        self.mode = mode
        self.proxy = proxy
        self.source_bytes = source_bytes
        self.seed = seed
        self.source_chunk = source_chunk
        self.eof_after = eof_after
        self.tail = tail
        self.tail_delay = tail_delay
        self.hold = hold
        self.gate = gate    # threading.Event: echo/sink read only while set
        self.kind = kind
        self.conns = []
        self.stopping = False
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._threads = []
        self._lsock, self.path = bind(kind, tmpdir, name, address)
        self._lsock.listen(512)
        self._accept_thread = threading.Thread(target=self._accept_loop,
                                               daemon=True)
        self._accept_thread.start()

    def _accept_loop(self):
        while not self.stopping:
            try:
                sock, _ = self._lsock.accept()
            except OSError:
                return
            with self._cv:
                conn = EngineConn(self, sock, len(self.conns))
                self.conns.append(conn)
                self._cv.notify_all()
            t = threading.Thread(target=conn.run, daemon=True)
            t.start()   # before stop() can see it: joining an unstarted thread raises
            self._threads.append(t)

    def wait_conns(self, n, timeout=10.0):
        """Wait until at least n connections were accepted; return the list."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        "engine: expected %d connection(s), got %d after %.1fs"
                        % (n, len(self.conns), timeout))
                self._cv.wait(min(left, 0.1))
            return list(self.conns)

    def conn(self, i=-1, timeout=10.0):
        """The i-th connection (waiting for it if i >= 0)."""
        if i >= 0:
            return self.wait_conns(i + 1, timeout)[i]
        return self.wait_conns(1, timeout)[i]

    def stop(self):
        self.stopping = True
        self._stop_event.set()
        try:
            self._lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._lsock.close()
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._accept_thread.join(5)
        if self.kind == "unix":
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def errors(self):
        return [(c.index, c.error) for c in self.conns if c.error is not None]


def conn_for(engine, sport, timeout=10.0):
    """The engine connection whose PROXY header names client port `sport`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in list(engine.conns):
            if not c.started.is_set():
                continue
            if c.header and c.header.get("sport") == sport:
                return c
        time.sleep(0.01)
    raise AssertionError("no engine connection with PROXY source port %d "
                         "(headers: %r)" % (sport, [c.header for c in engine.conns]))
