"""End to end with a real engine: Debian's MariaDB behind wsproxy, driven by a
Node client (npm mysql2 over npm ws's createWebSocketStream,
test/e2e/sql_client.js).  Issue 4.

One MariaDB (test/mariadb.sh: private Unix socket, networking off,
proxy_protocol_networks=localhost, user demo/demo, root by unix_socket) serves
the whole module; every test runs against each wsproxy build (they take a few
seconds each, also under ASan).

MariaDB runs in a network namespace of its own (`unshare -n`) when the machine
allows it: it listens on its Unix socket only, and the namespace keeps the
reverse DNS lookup it does for a proxied client address such as 127.0.0.2
(see the PROXY tests below) off the network -- it fails at once with
ENETUNREACH instead of asking the machine's resolver.

What MariaDB 10.11 does with the PROXY header, as observed here (mariadb.sh
leaves name resolution on, i.e. skip_name_resolve=OFF):
  * header on, client 127.0.0.1 or ::1: MariaDB maps these two addresses to the
    host name "localhost" (hard-wired, no lookup), so the processlist shows
    "localhost:<client port>", USER() is user@localhost -- and root with no
    password still gets in: unix_socket authenticates by the uid of the Unix
    socket's peer, which is wsproxy (running as root here), whatever the
    header says.
  * header on, client 127.0.0.2 (any address but 127.0.0.1/::1): the
    processlist shows "127.0.0.2:<client port>", demo is demo@127.0.0.2
    (account demo@'%'), and root is refused ("Access denied for user
    'root'@'127.0.0.2'"): no root account matches that host.
  * header off: every client is "localhost" (no port) and root gets in from
    any address -- the hazard of SPEC section 2.
  * wsproxy running as an unprivileged user (nobody): unix_socket compares
    that user's name with "root" and refuses, header or not.
  * (not tested here, mariadb.sh cannot be told) with skip_name_resolve=ON,
    MariaDB 10.11.19 shows the proxied address in the processlist but still
    matches accounts as 'localhost': root@localhost via unix_socket gets in
    from 127.0.0.2 too, i.e. the header does not protect at all.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings

import pytest

from conftest import Bin, ProxySet, free_port, run_bin, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLIENT = os.path.join(HERE, "e2e", "sql_client.js")
MARIADB_SH = os.path.join(HERE, "mariadb.sh")

# A 16 MiB BLOB travels in a statement (and a row) slightly bigger than 16 MiB:
# Debian's default max_allowed_packet (16 MiB, which mariadb.sh keeps) is too
# small, so the fixture raises it for new sessions.
MAX_ALLOWED_PACKET = 64 * 1024 * 1024


def _find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
        for d in ("/usr/sbin", "/usr/bin"):
            if os.access(os.path.join(d, n), os.X_OK):
                return os.path.join(d, n)
    return None


def require_node():
    node = shutil.which("node")
    if not node:
        pytest.fail("node is not installed (test/deps.sh installs it)")
    for mod in ("ws", "mysql2"):
        if not os.path.isfile(os.path.join(HERE, "node_modules", mod, "package.json")):
            pytest.fail("test/node_modules/%s is missing: run test/deps.sh" % mod)
    return node


class MariaDB:
    def __init__(self, d, client):
        self.dir = d
        self.sock = os.path.join(d, "mysqld.sock")
        self.client = client

    def root_sql(self, sql):
        """Run SQL as root over the socket (unix_socket auth: we are root)."""
        cp = subprocess.run(
            [self.client, "--no-defaults", "--protocol=socket",
             "--socket=" + self.sock, "-uroot", "--batch", "-N", "-e", sql],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert cp.returncode == 0, "root SQL %r failed: %s" % (sql, cp.stderr)
        return cp.stdout

    def errlog(self):
        try:
            with open(os.path.join(self.dir, "mysqld.err"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def _netns_ok():
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    try:
        cp = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return unshare if cp.returncode == 0 else None


@pytest.fixture(scope="module")
def mariadb():
    require_node()
    if not _find("mariadbd", "mysqld") or not _find("mariadb-install-db", "mysql_install_db"):
        pytest.fail("mariadb-server is not installed (test/deps.sh installs it)")
    client = _find("mariadb", "mysql")
    if not client:
        pytest.fail("mariadb-client is not installed (test/deps.sh installs it)")
    d = tempfile.mkdtemp(prefix="wsmdb", dir="/tmp")   # short socket path
    # the unprivileged-proxy test runs wsproxy as nobody: it must reach the socket
    os.chmod(d, 0o755)
    db = MariaDB(d, client)
    env = dict(os.environ)
    cmd = ["bash", MARIADB_SH, "start", d]
    unshare = _netns_ok()
    if unshare:
        cmd = [unshare, "-n"] + cmd
    else:
        # No namespace (e.g. an unprivileged container): MariaDB's reverse
        # lookup of 127.0.0.2 goes to the system resolver; keep it short.
        env["RES_OPTIONS"] = "timeout:1 attempts:1"
        warnings.warn("unshare -n not permitted: MariaDB runs in the host's "
                      "network namespace (one reverse DNS lookup of 127.0.0.2)")
    started = False
    try:
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                                stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail("test/mariadb.sh start did not finish within 90 s\n"
                        + db.errlog())
        started = True
        if cp.returncode != 0:
            pytest.fail("test/mariadb.sh start failed (%d):\n%s\n%s"
                        % (cp.returncode, cp.stdout, cp.stderr))
        db.root_sql("SET GLOBAL max_allowed_packet = %d" % MAX_ALLOWED_PACKET)
        assert db.root_sql("SELECT @@skip_name_resolve, @@proxy_protocol_networks"
                           ).split() == ["0", "localhost"], \
            "mariadb.sh settings changed: these tests assume name resolution " \
            "on and PROXY headers trusted from localhost"
        yield db
    finally:
        if started:
            cp = subprocess.run(["bash", MARIADB_SH, "stop", d], capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
            if cp.returncode != 0:
                warnings.warn("mariadb.sh stop: %s %s" % (cp.stdout, cp.stderr))
        shutil.rmtree(d, ignore_errors=True)


def sql_client(p, mode, *args, local_address=None, user=None, password=None,
               database=None, ca=None, timeout=60):
    """Run test/e2e/sql_client.js MODE against proxy `p`; returns its JSON."""
    node = require_node()
    scheme = "wss" if ca else "ws"
    host = getattr(p, "host", "127.0.0.1")
    argv = [node, CLIENT, mode, "--url", "%s://%s:%d/" % (scheme, host, p.port),
            "--timeout", str(int(p.t(timeout) * 1000))]
    for opt, val in (("--local-address", local_address), ("--user", user),
                     ("--password", password), ("--database", database),
                     ("--ca", ca)):
        if val is not None:
            argv += [opt, val]
    argv += list(args)
    try:
        cp = subprocess.run(argv, cwd=HERE, capture_output=True, text=True,
                            timeout=p.t(timeout) + 15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("sql_client.js %s did not finish; proxy log:\n%s"
                    % (mode, p.log()[-3000:]))
    assert cp.returncode == 0, "sql_client.js %s failed:\n%s\n%s\nproxy log:\n%s" % (
        mode, cp.stdout, cp.stderr, p.log()[-3000:])
    lines = cp.stdout.strip().splitlines()
    assert lines, "sql_client.js %s printed nothing" % mode
    return json.loads(lines[-1])


def start(proxy, mariadb, *args):
    return proxy(*args, engine=None, socket_path=mariadb.sock)


# ---------------------------------------------------------------------------
# the SQL workload (PROXY v2, the default)
# ---------------------------------------------------------------------------

def test_rows_10000_in_batches(proxy, mariadb):
    p = start(proxy, mariadb)
    r = sql_client(p, "rows", "--rows", "10000", "--batch", "500")
    assert r["ok"] is True
    assert r["rows"] == 10000
    assert r["batches"] == 20
    assert len(r["sha256"]) == 64
    assert r["endCode"] == 1000, "COM_QUIT -> engine EOF -> Close 1000"


def test_blob_16_mib(proxy, mariadb):
    p = start(proxy, mariadb)
    r = sql_client(p, "blob", "--blob-bytes", str(16 * 1024 * 1024))
    assert r["ok"] is True
    assert r["bytes"] == 16 * 1024 * 1024
    assert r["maxAllowedPacket"] == MAX_ALLOWED_PACKET
    assert r["endCode"] == 1000


def test_50_concurrent_sessions(proxy, mariadb):
    p = start(proxy, mariadb)
    r = sql_client(p, "concurrent", "--sessions", "50")
    assert r["ok"] is True
    assert r["sessions"] == 50 and r["distinctIds"] == 50
    assert r["endCode"] == 1000
    # every session was a WebSocket of its own (+1 for the admin session),
    # each ended by the engine after COM_QUIT
    wait_until(lambda: len(re.findall(r"closed 1000", p.log())) >= 51, p.t(10),
               what="51 connections closed with 1000")


def test_dropped_websocket_rolls_back_open_transaction(proxy, mariadb):
    p = start(proxy, mariadb)
    r = sql_client(p, "rollback")
    assert r["ok"] is True
    assert r["lockedBefore"] == "ER_LOCK_WAIT_TIMEOUT"
    assert r["after"] == [{"id": 1, "val": 1}]
    assert r["endCode"] == 1000
    # wsproxy saw the client vanish (no Close frame)
    p.wait_log(r"closed 1006")


# ---------------------------------------------------------------------------
# PROXY protocol with MariaDB (SPEC section 2, "secure by default")
# ---------------------------------------------------------------------------

def whoami(p, user, password, local_address):
    r = sql_client(p, "whoami", local_address=local_address, user=user,
                   password=password, database="")
    assert r["localAddress"] == local_address, r
    return r


@pytest.mark.parametrize("version", ["default", "v2", "v1"])
def test_header_gives_mariadb_the_client_address(proxy, mariadb, version):
    args = [] if version == "default" else ["--proxy-protocol", version]
    p = start(proxy, mariadb, *args)
    # 127.0.0.1: MariaDB names it "localhost" (hard-wired for 127.0.0.1 and
    # ::1), but the port is the client's: the header was used.
    r = whoami(p, "demo", "demo", "127.0.0.1")
    assert r["ok"] is True, r
    assert r["host"] == "localhost:%d" % r["localPort"], r
    assert r["user"] == "demo@localhost", r
    # another loopback address shows up as itself
    r = whoami(p, "demo", "demo", "127.0.0.2")
    assert r["ok"] is True, r
    assert r["host"] == "127.0.0.2:%d" % r["localPort"], (
        "MariaDB should see the client's address and port (a name here would "
        "mean /etc/hosts or DNS names 127.0.0.2): %r" % r)
    assert r["user"] == "demo@127.0.0.2", r
    assert r["cur_user"] == "demo@%", r
    for line in p.log().splitlines():
        assert "WARN" not in line or "proxy_protocol" not in line, line


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_header_makes_mariadb_refuse_passwordless_root(proxy, mariadb, version):
    p = start(proxy, mariadb, "--proxy-protocol", version)
    # From 127.0.0.2 the account lookup uses that address: no root account
    # matches, root is refused.
    r = whoami(p, "root", "", "127.0.0.2")
    assert r["ok"] is False, "root logged in through the PROXY header: %r" % r
    assert r["code"] == "ER_ACCESS_DENIED_ERROR", r
    assert "'root'@'127.0.0.2'" in r["message"], r
    # The limit of the protection, documented: a client on 127.0.0.1 is
    # "localhost" for MariaDB, matches root@localhost, and unix_socket then
    # checks the uid of the Unix-socket peer -- wsproxy's, root here.
    r = whoami(p, "root", "", "127.0.0.1")
    assert r["ok"] is True and r["cur_user"] == "root@localhost", r
    assert r["host"] == "localhost:%d" % r["localPort"], r


def test_proxy_protocol_off_lets_any_client_in_as_root(proxy, mariadb):
    """The hazard the default prevents: with the header off, MariaDB sees
    wsproxy's own Unix-socket connection -- host "localhost", peer uid 0 -- and
    logs a password-less "root" in, wherever the client comes from."""
    p = start(proxy, mariadb, "--proxy-protocol", "off", "--allow-socket-owner")
    line = p.wait_log(r"WARN.*proxy.?protocol")
    assert "off" in line, line
    r = whoami(p, "demo", "demo", "127.0.0.1")
    assert r["ok"] is True and r["host"] == "localhost", r
    for addr in ("127.0.0.1", "127.0.0.2"):
        r = whoami(p, "root", "", addr)
        assert r["ok"] is True, "root refused from %s with the header off: %r" % (addr, r)
        assert r["user"] == "root@localhost" and r["cur_user"] == "root@localhost", r
        assert r["host"] == "localhost", r


def test_proxy_protocol_off_as_the_sockets_owner_refuses(wsproxy_bin, mariadb):
    """The program's own guard against the hazard above: here mariadbd runs as
    root and owns its socket, and so would wsproxy; without
    --allow-socket-owner it refuses to start, in one line."""
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", mariadb.sock, "--proxy-protocol", "off"])
    assert os.stat(mariadb.sock).st_uid == os.geteuid()
    assert cp.returncode == 1 and len(cp.stderr.strip().splitlines()) == 1, cp
    assert "refusing to relay with --proxy-protocol off" in cp.stderr, cp.stderr
    assert "MariaDB's unix_socket" in cp.stderr and "--allow-socket-owner" in cp.stderr


def test_unprivileged_wsproxy_cannot_log_in_as_root(wsproxy_bin, tmp_path, mariadb):
    """The mitigation that holds even for local clients: run wsproxy as its own
    unprivileged user.  unix_socket then compares that user's name ("nobody")
    with "root" and refuses, even with the header off."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.fail("setpriv (util-linux) is not installed")
    as_nobody = Bin(wsproxy_bin.name, setpriv, wsproxy_bin.slow)
    ps = ProxySet(as_nobody, tmp_path)
    try:
        port = free_port()
        p = ps.start("--reuid=65534", "--regid=65534", "--clear-groups", "--",
                     wsproxy_bin.path, "--http-port", port, "--bind", "127.0.0.1",
                     "--socket", mariadb.sock, "--proxy-protocol", "off",
                     raw=True, port=port)
        r = whoami(p, "root", "", "127.0.0.1")
        assert r["ok"] is False, "root logged in through a wsproxy run as nobody: %r" % r
        # 1698: the account root@localhost matched, its unix_socket check failed
        assert r["code"] == "ER_ACCESS_DENIED_NO_PASSWORD_ERROR", r
        assert "'root'@'localhost'" in r["message"], r
        r = whoami(p, "demo", "demo", "127.0.0.1")
        assert r["ok"] is True and r["user"] == "demo@localhost", r
    finally:
        problems = ps.finish()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# wss:// (TLS through BearSSL), the client trusting the test CA
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from e2e.certs import make_certs
    return make_certs(tmp_path_factory.mktemp("e2e-tls"))


def start_tls(proxy, mariadb, certs, *args):
    port = free_port()
    return proxy("--https-port", port, "--bind", "127.0.0.1", "--socket", mariadb.sock,
                 "--cert", certs.chain, "--key", certs.key, *args, raw=True, port=port)


def test_wss_rows_blob_and_header(proxy, mariadb, certs):
    p = start_tls(proxy, mariadb, certs)
    p.wait_log(r"certificate.*SHA-256")
    r = sql_client(p, "rows", "--rows", "10000", "--batch", "500", ca=certs.ca)
    assert r["ok"] is True and r["rows"] == 10000 and r["endCode"] == 1000, r
    r = sql_client(p, "blob", "--blob-bytes", str(16 * 1024 * 1024), ca=certs.ca)
    assert r["ok"] is True and r["bytes"] == 16 * 1024 * 1024 and r["endCode"] == 1000, r
    # the PROXY header goes out over TLS connections too
    r = sql_client(p, "whoami", local_address="127.0.0.2", database="", ca=certs.ca)
    assert r["ok"] is True and r["host"] == "127.0.0.2:%d" % r["localPort"], r
    r = sql_client(p, "whoami", local_address="127.0.0.2", user="root", password="",
                   database="", ca=certs.ca)
    assert r["ok"] is False and r["code"] == "ER_ACCESS_DENIED_ERROR", r


def test_burst_of_websockets_waits_for_a_full_backlog(proxy, mariadb):
    """1,000 WebSockets at once against a stock MariaDB (issue 17, item 10):
    while its accept queue (back_log) is full, a non-blocking connect() to
    its Unix socket fails with EAGAIN where a blocking client would wait,
    and 456 of 1,000 got 502.  The proxy waits and retries within the
    handshake timeout, so every client is upgraded and gets the server's
    first packet (over max_connections, MariaDB's own "Too many
    connections").  Over mariadb.sh's max_connections (500) some still get
    502 when MariaDB closes before the PROXY header is written (EPIPE):
    that is the engine refusing, not its backlog."""
    import socket
    from conftest import OP_BIN, WSClient, new_key, ws_request
    p = start(proxy, mariadb, "--handshake-timeout", "20000")
    n = 1000
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=p.t(30))
            socks.append(s)
        for s in socks:        # all requests at once, then read the answers
            s.sendall(ws_request(key=new_key()))
        statuses = {}
        for s in socks:
            c = WSClient.__new__(WSClient)
            c.sock, c.buf, c.timeout, c.port = s, b"", p.t(30), p.port
            r = c.read_response(expect=None)
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status == 101:
                f = c.recv_frame(timeout=p.t(30))   # the server's first packet
                assert f.opcode == OP_BIN and f.payload, f
        refused = [l for l in p.log().splitlines() if "refused 502" in l]
        backlog = [l for l in refused if "send PROXY header" not in l]
        assert not backlog, "%r; %d refused for a full backlog:\n%s" % (
            statuses, len(backlog), "\n".join(backlog[:5]))
        assert set(statuses) <= {101, 502} and statuses.get(101, 0) >= 500, statuses
    finally:
        for s in socks:
            s.close()
