"""wss:// through BearSSL against real TLS clients: Python's ssl module with
python3-websockets, `openssl s_client`, and npm `ws`.  Certificates are made
by the openssl CLI at test time (never committed).  Run with /usr/bin/python3
(Debian's pytest and websockets); each test runs against every build in
WSPROXY_BINS (plain and ASan+UBSan)."""
import asyncio
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from conftest import cpu_seconds, free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(*args, **kw):
    subprocess.run(args, check=True, capture_output=True, timeout=120, **kw)


class PKI:
    """A test CA (EC P-256), an intermediate, and leaves of every kind."""

    def __init__(self, d):
        self.d = d
        self.ext = self.p("leaf.ext")
        with open(self.ext, "w") as f:
            f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        with open(self.p("ca.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", self.p("ca.key"), "-out", self.p("ca.pem"), "-days", "30",
           "-subj", "/CN=wsproxy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.key("inter", "rsa:2048")
        self.sign("inter", "ca", self.p("ca.ext"), cn="wsproxy test intermediate")

    def p(self, name):
        return os.path.join(self.d, name)

    def key(self, name, kind):
        if kind.startswith("rsa:"):
            sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
               "rsa_keygen_bits:" + kind[4:], "-out", self.p(name + ".key"))
        else:
            sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:" + kind,
               "-out", self.p(name + ".key"))
        return self.p(name + ".key")

    def sign(self, name, issuer, ext=None, cn="localhost", days=20):
        sh("openssl", "req", "-new", "-key", self.p(name + ".key"), "-out", self.p(name + ".csr"),
           "-subj", "/CN=" + cn)
        sh("openssl", "x509", "-req", "-in", self.p(name + ".csr"), "-CA", self.p(issuer + ".pem"),
           "-CAkey", self.p(issuer + ".key"), "-CAcreateserial", "-out", self.p(name + ".pem"),
           "-days", str(days), "-extfile", ext or self.ext)
        return self.p(name + ".pem")

    def leaf(self, name, kind, encoding="pkcs8", chain=False):
        """Returns (cert_file, key_file) for a new leaf."""
        self.key(name, kind)
        self.sign(name, "inter" if chain else "ca")
        key = self.p(name + ".key")
        if encoding == "pkcs1":
            sh("openssl", "rsa", "-in", key, "-traditional", "-out", self.p(name + ".pkcs1.key"))
            key = self.p(name + ".pkcs1.key")
        elif encoding == "sec1":
            sh("openssl", "ec", "-in", key, "-out", self.p(name + ".sec1.key"))
            key = self.p(name + ".sec1.key")
        cert = self.p(name + ".pem")
        if chain:
            with open(self.p(name + ".chain.pem"), "wb") as f:
                f.write(open(cert, "rb").read() + open(self.p("inter.pem"), "rb").read())
            cert = self.p(name + ".chain.pem")
        return cert, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def ec_leaf(pki):
    return pki.leaf("ec256", "P-256")


def client_ctx(pki):
    ctx = ssl.create_default_context(cafile=pki.p("ca.pem"))
    return ctx


def start_wss(proxy, engine, cert, key, *extra, **kw):
    port = free_port()
    return proxy("--https-port", port, "--bind", "127.0.0.1", "--socket", engine.path,
                 "--cert", cert, "--key", key, *extra, raw=True, port=port, **kw)


def wss_roundtrip(port, ctx, messages, host="localhost"):
    async def run():
        async with websockets.connect("wss://%s:%d/" % (host, port), ssl=ctx, max_size=None,
                                      open_timeout=20) as ws:
            got = []
            for m in messages:
                await ws.send(m)
                want = len(m.encode() if isinstance(m, str) else m)
                buf = b""
                while len(buf) < want:
                    buf += await asyncio.wait_for(ws.recv(), 20)
                got.append(buf)
            return got
    return asyncio.run(run())


def peer_cert_sha256(port, ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def file_sha256_of_cert(path):
    der = subprocess.run(["openssl", "x509", "-in", path, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("kind", ["ec256-pkcs8", "ec256-sec1", "ec384-chain", "rsa2048-pkcs1",
                                  "rsa4096-pkcs8"])
def test_wss_echo_each_key_kind(proxy, engine, pki, kind):
    spec = {"ec256-pkcs8": ("P-256", "pkcs8", False), "ec256-sec1": ("P-256", "sec1", False),
            "ec384-chain": ("P-384", "pkcs8", True), "rsa2048-pkcs1": ("rsa:2048", "pkcs1", False),
            "rsa4096-pkcs8": ("rsa:4096", "pkcs8", False)}[kind]
    cert, key = pki.leaf("k-" + kind, spec[0], spec[1], chain=spec[2])
    e = engine("echo")
    p = start_wss(proxy, e, cert, key)
    big = os.urandom(1 << 20)
    got = wss_roundtrip(p.port, client_ctx(pki), [b"hello", "t\u00e9xt", big])
    assert got == [b"hello", "t\u00e9xt".encode(), big]
    assert "SHA-256" in p.wait_log(r"certificate CN=localhost")


def test_openssl_sees_tls12_ecdhe_aead_only(proxy, engine, pki, ec_leaf):
    p = start_wss(proxy, engine("echo"), *ec_leaf)

    def s_client(*opts):
        r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % p.port,
                            "-CAfile", pki.p("ca.pem"), *opts], input=b"", capture_output=True,
                           timeout=30)
        return (r.stdout + r.stderr).decode("utf-8", "replace")

    out = s_client("-tls1_2")
    assert "Protocol  : TLSv1.2" in out, out
    cipher = [l for l in out.splitlines() if "Cipher    :" in l][0]
    assert "ECDHE" in cipher and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    assert "Verify return code: 0 (ok)" in out
    for opts in (["-tls1_1"], ["-tls1"], ["-tls1_3"],
                 ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"],
                 ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"]):
        out = s_client(*opts)
        assert "Cipher is (NONE)" in out, (opts, out)
    chacha = s_client("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert "ECDHE-ECDSA-CHACHA20-POLY1305" in chacha
    # Refusals are counted as TLS failures and logged with a reason.
    p.wait_log(r"TLS handshake failed: .*unsupported protocol version")
    p.wait_log(r"TLS handshake failed: .*no common cipher suite")


def test_rsa_server_prefers_its_own_order(proxy, engine, pki):
    cert, key = pki.leaf("rsa-pref", "rsa:2048", "pkcs1")
    p = start_wss(proxy, engine("echo"), cert, key)
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % p.port, "-tls1_2",
                        "-cipher", "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"],
                       input=b"", capture_output=True, timeout=30)
    assert "ECDHE-RSA-AES128-GCM-SHA256" in r.stdout.decode(), r.stdout.decode()


def test_session_resumption(proxy, engine, pki, ec_leaf):
    p = start_wss(proxy, engine("echo"), *ec_leaf)
    ctx = client_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert t.recv(100).startswith(b"HTTP/1.1 200")
            session = t.session
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost", session=session) as t:
            assert t.session_reused


def test_npm_ws_over_wss(proxy, engine, pki, ec_leaf):
    if not os.path.isdir(os.path.join(HERE, "node_modules", "ws")):
        pytest.fail("test/node_modules is missing: run test/deps.sh (make test does)")
    p = start_wss(proxy, engine("echo"), *ec_leaf)
    script = r"""
const WebSocket = require('ws'); const fs = require('fs'); const crypto = require('crypto');
const ws = new WebSocket(process.argv[1], {ca: fs.readFileSync(process.argv[2])});
const big = crypto.randomBytes(1 << 20); let got = [];
ws.on('open', () => ws.send(big));
ws.on('message', (d) => { got.push(d); const n = got.reduce((a, b) => a + b.length, 0);
  if (n === big.length) { if (!Buffer.concat(got).equals(big)) process.exit(3); ws.close(1000); } });
ws.on('close', (code) => { console.log('closed ' + code); process.exit(code === 1000 ? 0 : 4); });
ws.on('error', (e) => { console.error(e.message); process.exit(2); });
setTimeout(() => { console.error('timeout'); process.exit(5); }, 30000);
"""
    r = subprocess.run(["node", "-e", script, "wss://localhost:%d/" % p.port, pki.p("ca.pem")],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, NODE_PATH=os.path.join(HERE, "node_modules")))
    assert r.returncode == 0 and "closed 1000" in r.stdout, r.stdout + r.stderr


def test_tls_failures_are_logged_and_connections_go_on(proxy, engine, pki, ec_leaf):
    p = start_wss(proxy, engine("echo"), *ec_leaf, "--handshake-timeout", "1500")
    # Plain HTTP to a TLS port, a client that hangs up mid-handshake, one
    # that says nothing, and one that refuses our certificate.
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:  # closed by the server: EOF or, with bytes unread, a reset
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x00\x50\x01\x00")
    idle = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    untrusting = ssl.create_default_context()  # system CAs: our CA is unknown
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            untrusting.wrap_socket(s, server_hostname="localhost")
    # (The fixture's readiness probe also connects and hangs up.)
    p.wait_log(r"TLS handshake failed: unsupported TLS version")  # the HTTP bytes
    p.wait_log(r"TLS handshake failed: client closed the connection")
    p.wait_log(r"TLS handshake failed: client sent alert \d+ \(certificate refused\)")
    p.wait_log(r"TLS handshake failed: handshake timeout", timeout=p.t(6))
    idle.settimeout(5)
    assert idle.recv(10) == b""
    idle.close()
    assert wss_roundtrip(p.port, client_ctx(pki), [b"still serving"]) == [b"still serving"]


def write_config(path, port, socket_path, cert, key):
    with open(path, "w") as f:
        f.write("https_port = %d\nbind = 127.0.0.1\nsocket = %s\ncert = %s\nkey = %s\n"
                % (port, socket_path, cert, key))


def test_restart_with_bad_files_keeps_old_certificate(proxy, engine, pki, tmp_path):
    cert, key = pki.leaf("rotate-a", "P-256")
    live_cert, live_key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    sh("cp", cert, live_cert)
    sh("cp", key, live_key)
    e = engine("echo")
    port = free_port()
    conf = str(tmp_path / "wsproxy.cnf")
    write_config(conf, port, e.path, live_cert, live_key)
    p = proxy("--config", conf, raw=True, port=port)
    ctx = client_ctx(pki)
    old = file_sha256_of_cert(cert)
    assert peer_cert_sha256(port, ctx) == old

    async def hold_open():
        async with websockets.connect("wss://localhost:%d/" % port, ssl=ctx) as ws:
            await ws.send(b"before")
            assert await ws.recv() == b"before"
            # A broken key: the restart fails, the old certificate serves.
            with open(live_key, "w") as f:
                f.write("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
            p.signal(signal.SIGHUP)
            wait_until(lambda: "restart failed" in p.stderr(), p.t(10), what="restart failure")
            assert "key_file" in p.stderr()
            assert peer_cert_sha256(port, ctx) == old
            # New good files: new connections get the new certificate,
            # the established session goes on.
            new_cert, new_key = pki.leaf("rotate-b", "rsa:2048")
            sh("cp", new_cert, live_cert)
            sh("cp", new_key, live_key)
            p.signal(signal.SIGHUP)
            want = file_sha256_of_cert(new_cert)
            wait_until(lambda: peer_cert_sha256(port, ctx) == want, p.t(10), what="new cert")
            await ws.send(b"after")
            assert await ws.recv() == b"after"
    asyncio.run(hold_open())


def test_wss_slow_client_backpressure_without_spinning(proxy, engine, pki, ec_leaf):
    """A wss:// client that reads nothing stops the engine side: the engine
    stalls, the proxy neither buffers without bound nor spins, and once the
    client reads, every byte arrives intact."""
    from conftest import WSClient
    from engine import source_data
    total = 32 << 20
    e = engine("source", source_bytes=total, seed=5)
    p = start_wss(proxy, e, *ec_leaf)
    c = WSClient(p.port, timeout=p.t(30))
    c.sock = client_ctx(pki).wrap_socket(c.sock, server_hostname="localhost")
    c.handshake()
    conn = e.conn(0)
    last, since = conn.sent, time.monotonic()
    deadline = time.monotonic() + p.t(20)
    while time.monotonic() - since < 1.0:
        assert time.monotonic() < deadline, "engine never stalled"
        time.sleep(0.05)
        if conn.sent != last:
            last, since = conn.sent, time.monotonic()
    assert conn.sent < 16 << 20
    cpu0 = cpu_seconds(p.proc.pid)
    time.sleep(1.5)
    spent = cpu_seconds(p.proc.pid) - cpu0
    assert spent < 0.2, "proxy used %.2f s of CPU in 1.5 s while stalled" % spent
    h, n = hashlib.sha256(), 0
    while True:
        f = c.recv_frame(timeout=p.t(30))
        if f.opcode == 8:
            break
        h.update(f.payload)
        n += len(f.payload)
    assert n == total and h.hexdigest() == hashlib.sha256(source_data(total, 5)).hexdigest()
    assert int.from_bytes(f.payload[:2], "big") == 1000


def test_close_notify_ends_the_tls_stream(proxy, engine, pki, ec_leaf):
    """RFC 5246 7.2.1: the proxy ends TLS with close_notify, for an HTTP
    answer (here /health) as for a WebSocket it closes."""
    p = start_wss(proxy, engine("echo"), *ec_leaf)
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % p.port, "-msg",
                        "-quiet", "-CAfile", pki.p("ca.pem")],
                       input=b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", capture_output=True,
                       timeout=30)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert "HTTP/1.1 200 OK" in out, out[-2000:]
    assert "<<< TLS 1.2, Alert [length 0002], warning close_notify" in out, out[-2000:]


class BioClient:
    """A TLS client over a raw socket through memory BIOs, so that it can
    send close_notify without a FIN and without reading the answer."""

    def __init__(self, port, ctx, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.plain = b""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def fill(self):
        data = self.sock.recv(65536)
        assert data, "server closed during the TLS handshake"
        self.inc.write(data)

    def write(self, data):
        self.obj.write(data)
        self.flush()

    def read_until(self, marker):
        while marker not in self.plain:
            try:
                self.plain += self.obj.read(65536)
            except ssl.SSLWantReadError:
                self.fill()

    def close_notify(self):
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def upgrade(self):
        from conftest import ws_request
        self.write(ws_request())
        self.read_until(b"\r\n\r\n")
        assert self.plain.startswith(b"HTTP/1.1 101"), self.plain[:100]


def test_close_notify_after_close_ends_at_once(proxy, engine, pki, ec_leaf):
    """close_notify (no FIN) after the client's Close, with an engine that
    keeps the drain going: the connection ends at once, not after the
    drain timeout (issue 17, item 6)."""
    from conftest import OP_CLOSE, close_payload, frame
    e = engine("echo", hold=30)
    p = start_wss(proxy, e, *ec_leaf, "--drain-timeout", "6000")
    c = BioClient(p.port, client_ctx(pki), p.t(10))
    c.upgrade()
    c.write(frame(OP_CLOSE, close_payload(1000)))
    time.sleep(0.2)
    t0 = time.monotonic()
    c.close_notify()
    c.sock.settimeout(p.t(10))
    try:
        while c.sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    took = time.monotonic() - t0
    assert took < p.t(1.5), "closed %.2f s after close_notify" % took
    c.sock.close()


def test_close_notify_from_client_not_reading_ends_at_once(proxy, engine, pki, ec_leaf):
    """close_notify (no FIN) from a client that reads nothing while the
    engine streams: the engine session is freed at once, not never."""
    e = engine("source", source_bytes=16 << 20, seed=3)
    p = start_wss(proxy, e, *ec_leaf)
    c = BioClient(p.port, client_ctx(pki), p.t(10))
    c.upgrade()
    conn = e.conn(0)
    assert wait_until(lambda: conn.sent > (64 << 10), p.t(10), what="engine output")
    start = len(p.log())
    c.close_notify()
    try:
        p.wait_log(r"closed \d+ \(", timeout=3, start=start)
        assert conn.wait_closed(p.t(3)), "engine session still open"
    finally:
        c.sock.close()


def test_a_tls13_only_client_hears_that_tls12_is_required(proxy, engine, pki, ec_leaf):
    """Issue 20, item 15: it was logged as "no common cipher suite or curve",
    which sends an operator looking at cipher lists."""
    p = start_wss(proxy, engine("echo"), *ec_leaf)
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % p.port, "-tls1_3",
                        "-CAfile", pki.p("ca.pem")], input=b"", capture_output=True, timeout=30)
    assert b"Cipher is (NONE)" in r.stdout + r.stderr
    line = p.wait_log(r"TLS handshake failed: (?!client closed)")
    assert "TLS 1.2 is required" in line and "TLS 1.3" in line, line
