"""The PostgreSQL extension (engines/postgres, issue 22) in Debian's real
PostgreSQL 15: build/postgres/wsproxy.so preloaded into private servers
(initdb in a temp dir as the postgres OS user, its socket in that dir, a free
port, shared_preload_libraries = 'wsproxy', dynamic_library_path naming a
copy of the build the server can read), configured by postgresql.conf and
ALTER SYSTEM, and queried through the in-server proxy with Neon's serverless
driver (test/pg_query.js: npm @neondatabase/serverless over npm ws).

pg_hba.conf is Debian's default (local peer, host scram-sha-256) plus, where a
test says so, `trust` lines for the role trusty on the socket and on
127.0.0.1.  The extension's control and SQL files must be installed
(make postgres-install; test/run-tests.sh does it).

Every server test runs with the plain build and with the ASan+UBSan build
(build/postgres-asan, its runtime preloaded into postgres); a sanitizer
report in the server's log fails the test.

Run:  make postgres-extension postgres-extension-asan postgres-install &&
      /usr/bin/python3 -m pytest test/test_postgres_extension.py -q
"""

import functools
import json
import os
import pwd
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import free_port, port_accepts, wait_until
from test_e2e_mariadb import require_node as node

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILDS = {"plain": os.path.join(ROOT, "build", "postgres"),
          "asan": os.path.join(ROOT, "build", "postgres-asan")}
PG_QUERY = os.path.join(HERE, "pg_query.js")
SANITIZER = ("ERROR: AddressSanitizer", "runtime error:")

# Debian's pg_hba.conf as pg_createcluster writes it (comments dropped).
DEBIAN_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""
TRUST_HBA = """\
local   all             postgres                                peer
local   all             trusty                                  trust
local   all             all                                     peer
host    all             trusty          127.0.0.1/32            trust
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""


@functools.lru_cache(maxsize=None)
def pg_bin():
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    d = out.stdout.strip()
    if out.returncode or not os.path.isfile(os.path.join(d, "postgres")):
        pytest.fail("PostgreSQL's server is not installed (test/deps.sh installs it)")
    return d


@functools.lru_cache(maxsize=None)
def asan_runtime():
    return subprocess.run(["gcc", "-print-file-name=libasan.so"], text=True,
                          capture_output=True, check=True).stdout.strip()


def as_postgres():
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def chown_postgres(path):
    pw = pwd.getpwnam("postgres")
    for base, dirs, files in os.walk(path):
        for n in [base] + [os.path.join(base, x) for x in dirs + files]:
            os.lchown(n, pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope="session")
def initialised():
    """One data directory made by initdb as postgres, copied for each server."""
    share = subprocess.run(["pg_config", "--sharedir"], capture_output=True,
                           text=True).stdout.strip()
    if not os.path.isfile(os.path.join(share, "extension", "wsproxy.control")):
        pytest.fail("wsproxy.control is not installed: run `make postgres-install`")
    d = tempfile.mkdtemp(prefix="wspg", dir="/tmp")
    os.chmod(d, 0o755)
    chown_postgres(d)
    data = os.path.join(d, "data")
    cp = subprocess.run([os.path.join(pg_bin(), "initdb"), "-D", data, "-U", "postgres",
                         "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8",
                         "--locale=C"], capture_output=True, text=True, timeout=120,
                        stdin=subprocess.DEVNULL, cwd=d, **as_postgres())
    assert cp.returncode == 0, "initdb failed:\n%s%s" % (cp.stdout, cp.stderr)
    yield data
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", params=sorted(BUILDS))
def build(request, initialised):
    so = os.path.join(BUILDS[request.param], "wsproxy.so")
    if not os.path.isfile(so):
        pytest.fail("%s is missing: run `make postgres-extension postgres-extension-asan`" % so)
    return request.param, so


class Server:
    """A postgres on a private socket and port with the extension preloaded."""

    def __init__(self, initialised, build, conf=None, hba=DEBIAN_HBA, preload=True):
        self.san = build[0] == "asan"
        self.dir = tempfile.mkdtemp(prefix="wspg", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        shutil.copytree(initialised, self.data, symlinks=True)
        shutil.copy(build[1], os.path.join(self.dir, "wsproxy.so"))
        if self.san:
            shim = os.path.join(ROOT, "build", "shim", "swift_demangle.so")
            assert os.path.isfile(shim), "%s is missing: make postgres-extension-asan" % shim
            shutil.copy(shim, self.dir)
        self.port = free_port()
        self.http_port = free_port()
        self.logpath = os.path.join(self.dir, "server.log")
        opts = {
            "port": self.port, "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "'%s'" % self.dir,
            "dynamic_library_path": "'%s:$libdir'" % self.dir,
            "shared_buffers": "'16MB'", "max_connections": 40,
            "wsproxy.http_port": self.http_port,
        }
        if preload:
            opts["shared_preload_libraries"] = "'wsproxy'"
        opts.update(conf or {})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in opts.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(hba)
        chown_postgres(self.dir)
        os.chmod(self.data, 0o700)
        self.proc = None

    def start(self, timeout=60, setup=True):
        env = dict(os.environ)
        if self.san:
            shim = os.path.join(self.dir, "swift_demangle.so")  # a copy postgres can read
            # the runtime first; the shim: see test/shim/swift_demangle.c
            env["LD_PRELOAD"] = "%s %s" % (asan_runtime(), shim)
            # postgres itself is not instrumented: its leaks at exit are not ours
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
            env["UBSAN_OPTIONS"] = "print_stacktrace=1"
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([os.path.join(pg_bin(), "postgres"), "-D", self.data],
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                     start_new_session=True, **as_postgres())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("postgres exited (%s) during start:\n%s"
                            % (self.proc.returncode, self.logtext()[-3000:]))
            if self.psql("SELECT 1", check=False)[0] == 0:
                break
            time.sleep(0.1)
        else:
            self.kill()
            pytest.fail("postgres did not answer within %ss:\n%s"
                        % (timeout, self.logtext()[-3000:]))
        if setup:
            self.psql("CREATE EXTENSION wsproxy; "
                      "CREATE ROLE alice LOGIN PASSWORD 'alice-secret'; "
                      "CREATE ROLE trusty LOGIN; CREATE ROLE bob LOGIN PASSWORD 'bob'")
        return self

    def psql(self, sql, user="postgres", check=True):
        """psql on the Unix socket as the postgres OS user (peer); returns
        the rows (lists of strings), or with check=False (rc, rows, stderr)."""
        cp = subprocess.run([os.path.join(pg_bin(), "psql"), "-X", "-A", "-t", "-q",
                             "-F", "\t", "-h", self.dir, "-p", str(self.port), "-U", user,
                             "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=self.dir, **as_postgres())
        rows = [line.split("\t") for line in cp.stdout.splitlines()]
        if check:
            assert cp.returncode == 0, "psql %r failed: %s" % (sql, cp.stderr)
            return rows
        return cp.returncode, rows, cp.stderr

    def status(self):
        names = ["state", "reason", "port", "scheme", "connections_open",
                 "connections_total", "bytes_to_engine", "bytes_to_client"]
        row = self.psql("SELECT %s FROM wsproxy_status()" % ", ".join(names))[0]
        return dict(zip(names, row))

    def restart_proxy(self):
        """SELECT wsproxy_restart(): (ok, stderr)."""
        rc, _, err = self.psql("SELECT wsproxy_restart()", check=False)
        return rc == 0, err

    def logtext(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Fast shutdown (SIGINT) unless it has exited; checks the log."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail("postgres did not stop within %ss:\n%s"
                            % (timeout, self.logtext()[-3000:]))
        self.log.close()
        text = self.logtext()
        assert not any(m in text for m in SANITIZER), text[-6000:]
        assert "terminated by signal" not in text and self.proc.returncode == 0, \
            "postgres exited with %s:\n%s" % (self.proc.returncode, text[-3000:])
        self.proc = None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server_factory(initialised, build):
    made = []

    def make(**kw):
        s = Server(initialised, build, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.cleanup()


# ---------------------------------------------------------------------------
# the client: Neon's serverless driver
# ---------------------------------------------------------------------------

def query(port, *sql, user="alice", password="alice-secret", scheme="ws", ca=None,
          origin=None):
    """pg_query.js: a list of JSON results, one per statement (or the
    connect error as the only element), then {"close": code}."""
    argv = [node(), PG_QUERY, "--url", "%s://127.0.0.1:%d/" % (scheme, port),
            "--user", user, "--password=" + password, "--timeout", "20000"]
    if ca:
        argv += ["--ca", ca]
    if origin:
        argv += ["--origin", origin]
    cp = subprocess.run(argv + list(sql), capture_output=True, text=True, timeout=40,
                        stdin=subprocess.DEVNULL)
    out = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    assert out, "pg_query.js printed nothing (rc %s): %s" % (cp.returncode, cp.stderr)
    return out


def rows(port, sql, **kw):
    r = query(port, sql, **kw)
    assert "rows" in r[0], r
    return r[0]["rows"]


def refused(port, user, password, **kw):
    """The connect error of a login through the WebSocket."""
    r = query(port, "SELECT 1", user=user, password=password, **kw)
    assert r[0].get("connect"), "%s got in: %r" % (user, r)
    return r[0]


class Session:
    """A session held open by pg_query.js --pause: step() runs the next
    statement; with wait_close, after the last it waits for the close."""

    def __init__(self, port, *sql, wait_close=False, origin=None, user="alice",
                 password="alice-secret", scheme="ws", ca=None):
        argv = [node(), PG_QUERY, "--url", "%s://127.0.0.1:%d/" % (scheme, port),
                "--user", user, "--password=" + password, "--pause"]
        if wait_close:
            argv.append("--wait-close")
        if origin:
            argv += ["--origin", origin]
        if ca:
            argv += ["--ca", ca]
        self.p = subprocess.Popen(argv + list(sql), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, timeout=20):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("pg_query.js said nothing within %ss" % timeout)
        assert line, "pg_query.js ended: %s" % self.p.stderr.read()
        return json.loads(line)

    def step(self):
        self.p.stdin.write("\n")
        self.p.stdin.flush()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


# ---------------------------------------------------------------------------
# queries through the in-server proxy
# ---------------------------------------------------------------------------

def test_queries_over_ws(server_factory):
    s = server_factory().start()
    r = query(s.http_port,
              "SELECT current_user AS u, host(inet_client_addr()) AS a",
              "SELECT 1::int AS i, 2.5::numeric AS n, 'x'::text AS t, true AS b, "
              "'{1,2}'::int[] AS arr, '\\x00ff'::bytea AS by, NULL AS z",
              "SELECT count(*)::int AS c, sum(g)::bigint AS s FROM generate_series(1, 100000) g",
              "SELECT repeat('a', 16 * 1024 * 1024) AS v",
              "SELECT 1/0")
    assert r[0]["rows"] == [{"u": "alice", "a": "127.0.0.1"}]
    assert r[1]["rows"][0]["i"] == 1 and r[1]["rows"][0]["t"] == "x" and \
        r[1]["rows"][0]["arr"] == [1, 2] and r[1]["rows"][0]["z"] is None
    assert r[2]["rows"] == [{"c": 100000, "s": "5000050000"}]
    assert r[3]["rows"][0]["v"] == "a" * (16 * 1024 * 1024)
    assert r[4]["code"] == "22012", r[4]
    assert r[5] == {"close": 1000}, r
    # 100,000 rows come back through it too
    big = rows(s.http_port, "SELECT g, md5(g::text) FROM generate_series(1, 100000) g")
    assert len(big) == 100000 and big[-1]["g"] == 100000
    st = s.status()
    assert st["state"] == "RUNNING" and st["port"] == str(s.http_port) and st["scheme"] == "ws"
    assert int(st["connections_total"]) == 2 and int(st["bytes_to_client"]) > 16 * 1024 * 1024, st
    log = s.logtext()
    assert "must prove a secret" in log and "proxy_protocol is off" not in log, log[-3000:]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from e2e.certs import make_certs
    return make_certs(tmp_path_factory.mktemp("pg-tls"))


def server_tls(s, certs):
    """The server's own certificate (ssl = on), as postgres can read it."""
    for name, src in (("server.crt", certs.chain), ("server.key", certs.key)):
        dst = os.path.join(s.data, name)
        shutil.copy(src, dst)
        os.chmod(dst, 0o600)
    chown_postgres(s.data)


def test_queries_over_wss_with_the_servers_certificate(server_factory, certs):
    port = free_port()
    s = server_factory(conf={"ssl": "on", "wsproxy.http_port": 0, "wsproxy.https_port": port})
    server_tls(s, certs)
    s.start()
    assert s.status()["scheme"] == "wss"
    r = query(port, "SELECT current_user AS u, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
              scheme="wss", ca=certs.ca)
    # TLS ends in the proxy: the relayed session itself is plain
    assert r[0]["rows"] == [{"u": "alice", "ssl": False}], r
    # a client that does not trust the CA gets no session
    r = query(port, "SELECT 1", scheme="wss")
    assert "error" in r[0], r


# ---------------------------------------------------------------------------
# configuration and wsproxy_restart()
# ---------------------------------------------------------------------------

def test_restart_moves_the_port_and_keeps_sessions(server_factory):
    s = server_factory().start()
    old = s.http_port
    held = Session(old, "SELECT 1 AS one", "SELECT current_user AS u")
    try:
        assert held.line() == {"rows": [{"one": 1}]}
        assert held.line() == {"waiting": 1}
        new = free_port()
        s.psql("ALTER SYSTEM SET wsproxy.http_port = %d" % new)
        s.psql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        # a reload moves nothing
        assert s.status()["port"] == str(old) and not port_accepts(new)
        assert rows(old, "SELECT 2 AS two") == [{"two": 2}]
        ok, err = s.restart_proxy()
        assert ok, err
        assert s.status()["port"] == str(new)
        assert rows(new, "SELECT 3 AS three") == [{"three": 3}]
        assert not port_accepts(old)
        # the session opened before the restart goes on
        held.step()
        assert held.line() == {"rows": [{"u": "alice"}]}
    finally:
        held.close()
    # ALTER SYSTEM without pg_reload_conf(): the restart reads the files
    newer = free_port()
    s.psql("ALTER SYSTEM SET wsproxy.http_port = %d" % newer)
    ok, err = s.restart_proxy()
    assert ok, err
    assert rows(newer, "SELECT 4 AS four") == [{"four": 4}]
    # no port: STOPPED, a valid restart
    s.psql("ALTER SYSTEM SET wsproxy.http_port = 0")
    ok, err = s.restart_proxy()
    assert ok, err
    assert s.status()["state"] == "STOPPED" and not port_accepts(newer)


def test_both_ports_is_an_error_and_the_old_port_serves(server_factory):
    s = server_factory().start()
    s.psql("ALTER SYSTEM SET wsproxy.https_port = %d" % free_port())
    ok, err = s.restart_proxy()
    assert not ok and "http_port and https_port are mutually exclusive" in err, err
    st = s.status()
    assert st["state"] == "RUNNING" and st["port"] == str(s.http_port), st
    assert rows(s.http_port, "SELECT 1 AS one") == [{"one": 1}]


def test_both_ports_at_start_is_failed_not_an_abort(server_factory):
    s = server_factory(conf={"wsproxy.https_port": free_port()}).start()
    st = s.status()
    assert st["state"] == "FAILED" and "mutually exclusive" in st["reason"], st
    assert "mutually exclusive" in s.logtext()
    assert not port_accepts(s.http_port)
    s.psql("ALTER SYSTEM SET wsproxy.https_port = 0")
    ok, err = s.restart_proxy()
    assert ok, err
    assert rows(s.http_port, "SELECT 1 AS one") == [{"one": 1}]


def test_bad_certificate_fails_and_changes_nothing(server_factory, certs):
    port = free_port()
    s = server_factory(conf={"wsproxy.http_port": 0, "wsproxy.https_port": port,
                             "wsproxy.ssl_cert_file": "'c.pem'",
                             "wsproxy.ssl_key_file": "'k.pem'"})
    for name, src in (("c.pem", certs.chain), ("k.pem", certs.key)):
        shutil.copy(src, os.path.join(s.data, name))
    chown_postgres(s.data)
    s.start()
    assert rows(port, "SELECT 1 AS one", scheme="wss", ca=certs.ca) == [{"one": 1}]
    with open(os.path.join(s.data, "bad.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    chown_postgres(s.data)
    s.psql("ALTER SYSTEM SET wsproxy.ssl_cert_file = 'bad.pem'")
    ok, err = s.restart_proxy()
    assert not ok and "wsproxy_restart failed" in err and "bad.pem" in err, err
    st = s.status()
    assert st["state"] == "RUNNING" and st["scheme"] == "wss" and st["port"] == str(port)
    assert rows(port, "SELECT 2 AS two", scheme="wss", ca=certs.ca) == [{"two": 2}]


def test_functions_are_superuser_only_by_default(server_factory):
    s = server_factory().start()
    for fn in ("wsproxy_restart()", "wsproxy_status()", "wsproxy_clients()"):
        r = query(s.http_port, "SELECT * FROM %s" % fn)
        assert r[0].get("code") == "42501" and "permission denied" in r[0]["error"], r
    s.psql("GRANT EXECUTE ON FUNCTION wsproxy_restart() TO alice")
    r = query(s.http_port, "SELECT wsproxy_restart()")
    assert "rows" in r[0], r


def test_clients_join_pg_stat_activity(server_factory):
    s = server_factory().start()
    held = Session(s.http_port, "SELECT pg_backend_pid() AS pid", "SELECT 1",
                   origin="https://app.example")
    try:
        pid = held.line()["rows"][0]["pid"]
        assert held.line() == {"waiting": 1}
        got = s.psql("SELECT c.pid, host(c.client_addr), c.scheme, c.origin, a.usename, "
                     "a.client_addr IS NOT NULL FROM wsproxy_clients() c "
                     "JOIN pg_stat_activity a USING (pid)")
        assert got == [[str(pid), "127.0.0.1", "ws", "https://app.example", "alice", "t"]], got
        # the client's own port, as the proxy saw it, is the one pg_query.js used
        port = int(s.psql("SELECT client_port FROM wsproxy_clients()")[0][0])
        assert 0 < port < 65536 and port not in (s.port, s.http_port)
    finally:
        held.close()
    wait_until(lambda: s.psql("SELECT count(*) FROM wsproxy_clients()") == [["0"]], 10,
               what="the session to leave wsproxy_clients()")


# ---------------------------------------------------------------------------
# security: no WebSocket login without a secret
# ---------------------------------------------------------------------------

def test_trust_and_peer_never_apply_to_relayed_sessions(server_factory):
    s = server_factory(hba=TRUST_HBA).start()
    # trusty has a trust line on 127.0.0.1: refused through the WebSocket
    e = refused(s.http_port, "trusty", "")
    assert "password authentication is required for WebSocket sessions" in e["error"], e
    assert 'pg_hba.conf line 4 says "trust"' in s.logtext()
    # postgres has no password: SCRAM fails
    e = refused(s.http_port, "postgres", "anything")
    assert e["code"] == "28P01", e
    # a SCRAM user gets in
    assert rows(s.http_port, "SELECT current_user AS u") == [{"u": "alice"}]
    # locally, trust and peer still work
    assert s.psql("SELECT current_user") == [["postgres"]]
    assert s.psql("SELECT current_user", user="trusty") == [["trusty"]]
    cp = subprocess.run([os.path.join(pg_bin(), "psql"), "-XAtq", "-h", "127.0.0.1", "-p",
                         str(s.port), "-U", "trusty", "-d", "postgres", "-c",
                         "SELECT current_user"], capture_output=True, text=True, timeout=30)
    assert cp.stdout.strip() == "trusty", cp.stderr


def test_relay_over_the_unix_socket_refuses_peer_and_trust(server_factory):
    """listen_addresses = '': the worker relays over the Unix socket, and a
    relayed session is known by the worker's pid."""
    hba = "local all alice scram-sha-256\n" + TRUST_HBA
    s = server_factory(hba=hba, conf={"listen_addresses": "''"}).start()
    assert "-> unix:" in s.logtext()
    for user in ("postgres", "trusty"):  # peer (as the server's own user), trust
        e = refused(s.http_port, user, "x")
        assert "password authentication is required for WebSocket sessions" in e["error"], e
    e = refused(s.http_port, "bob", "bob")   # peer, and no OS user bob
    assert "Peer authentication failed" in e["error"], e
    assert rows(s.http_port, "SELECT current_user AS u") == [{"u": "alice"}]
    assert s.psql("SELECT current_user") == [["postgres"]]
    assert s.psql("SELECT current_user", user="trusty") == [["trusty"]]


# ---------------------------------------------------------------------------
# the server stops: Close 1001
# ---------------------------------------------------------------------------

def worker_pid(s):
    """The pid of the server's wsproxy worker ("postgres: wsproxy" in ps)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
            with open("/proc/%s/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == s.proc.pid and cmd.startswith(b"postgres: wsproxy"):
            return int(pid)
    raise AssertionError("no wsproxy worker under postgres %d" % s.proc.pid)


@pytest.mark.parametrize("mode", ["fast", "smart-then-fast", "fast-worker-late"])
def test_server_stop_closes_websockets_with_1001(server_factory, mode):
    """fast-worker-late: the worker runs 0.3 s after the backends got the
    shutdown signal (SIGSTOP/SIGCONT), as on a loaded machine: the backends
    end first, and their clients must still hear 1001."""
    s = server_factory().start()
    held = [Session(s.http_port, "SELECT 1 AS one", wait_close=True) for _ in range(3)]
    try:
        for h in held:
            assert h.line() == {"rows": [{"one": 1}]}
            assert h.line() == {"ready": True}
        if mode == "smart-then-fast":
            # smart shutdown waits for sessions; the proxy keeps them
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert s.proc.poll() is None
        if mode == "fast-worker-late":
            w = worker_pid(s)
            os.kill(w, signal.SIGSTOP)
            s.proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            os.kill(w, signal.SIGCONT)
        s.stop(signal.SIGINT)
        for h in held:
            assert h.line() == {"close": 1001}
    finally:
        for h in held:
            h.close()


def test_terminated_session_closes_1000_after_the_shutdown_wait(server_factory):
    """pg_terminate_backend() ends a relayed session with the shutdown's FATAL:
    the backend waits its second for a shutdown that does not come, then the
    engine's hang-up is a plain Close 1000, and the proxy serves on."""
    s = server_factory().start()
    h = Session(s.http_port, "SELECT pg_backend_pid() AS pid", wait_close=True)
    try:
        pid = h.line()["rows"][0]["pid"]
        assert h.line() == {"ready": True}
        t0 = time.monotonic()
        assert s.psql("SELECT pg_terminate_backend(%d)" % pid) == [["t"]]
        assert h.line() == {"close": 1000}
        took = time.monotonic() - t0
        assert 0.9 < took < 10, took
    finally:
        h.close()
    assert rows(s.http_port, "SELECT 1 AS one") == [{"one": 1}]


def test_not_preloaded_says_what_to_do(server_factory):
    s = server_factory(preload=False).start(setup=False)
    s.psql("CREATE EXTENSION wsproxy")
    rc, _, err = s.psql("SELECT * FROM wsproxy_status()", check=False)
    assert rc != 0 and "wsproxy is not loaded" in err and "shared_preload_libraries" in err, err


# ---------------------------------------------------------------------------
# make run ENGINE=postgres
# ---------------------------------------------------------------------------

def test_make_run_engine_postgres_prints_a_snippet_that_works():
    port, pgport = free_port(), free_port()
    p = subprocess.Popen(["bash", os.path.join(HERE, "run-postgres.sh")],
                         env=dict(os.environ, PORT=str(port), PGPORT=str(pgport)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout] + [lines.put(None)],
                     daemon=True).start()
    out = []
    try:
        deadline = time.monotonic() + 180
        while not out or "run-postgres: ready" not in out[-1]:
            line = lines.get(timeout=max(1, deadline - time.monotonic()))
            assert line is not None, "run-postgres.sh ended:\n" + "".join(out)
            out.append(line)
        text = "".join(out)
        assert "ws://127.0.0.1:%d/ (RUNNING on port %d)" % (port, port) in text, text
        snippet = text[text.index("  cd "):text.index("})();'") + len("})();'")]
        cp = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True,
                            timeout=60)
        assert "PostgreSQL 15" in cp.stdout and "'127.0.0.1'" in cp.stdout, cp
        tmp = text.split("log ", 1)[1].split("/server.log", 1)[0]
        assert os.path.isdir(tmp)
    finally:
        os.killpg(p.pid, signal.SIGTERM) if p.poll() is None else None
        p.wait(60)
    rest = []
    while True:
        line = lines.get(timeout=10)
        if line is None:
            break
        rest.append(line)
    assert "stopped PostgreSQL" in "".join(rest) and not os.path.exists(tmp), "".join(rest)
