"""The MariaDB daemon plugin (engines/mariadb, issue 9) in Debian's real
MariaDB: build/mariadb/wsproxy.so loaded into private servers
(--plugin-dir=build/mariadb --plugin-load-add=wsproxy.so, a temp datadir and
socket, and a free port on 127.0.0.1 that the plugin relays to with a PROXY v2
header), configured from my.cnf and by SQL, queried through the WebSocket
with npm mysql2 (test/query.js, test/e2e/sql_client.js) and with a small
MySQL-protocol client below (sessions held open across restarts).

The data directory comes from mariadb-install-db --user=mysql, as Debian's
package makes it: root@localhost and mysql@localhost both IDENTIFIED VIA
mysql_native_password USING 'invalid' OR unix_socket.

Every server test runs with the plain build and with the ASan+UBSan build
(build/mariadb-asan, the sanitizer runtime preloaded into mariadbd); a
sanitizer report in the error log fails the test.

Run:  make mariadb-plugin mariadb-plugin-asan &&
      /usr/bin/python3 -m pytest test/test_mariadb_plugin.py -q
"""

import functools
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (OP_CLOSE, WSClient, ConnectionClosed, free_port, port_accepts,
                      wait_until)
from test_e2e_mariadb import _find as find_program, require_node as node

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLUGIN_DIR = os.path.join(ROOT, "build", "mariadb")
PLUGIN = os.path.join(PLUGIN_DIR, "wsproxy.so")
# Every server test runs with the plain build and with the ASan+UBSan build
# (make mariadb-plugin-asan), whose runtime is then preloaded into mariadbd.
BUILDS = {"plain": PLUGIN_DIR, "asan": os.path.join(ROOT, "build", "mariadb-asan")}
QUERY_JS = os.path.join(HERE, "query.js")
SQL_CLIENT = os.path.join(HERE, "e2e", "sql_client.js")
FAULT_SHIM = os.path.join(ROOT, "build", "shim", "fault.so")


def _find(*names):
    p = find_program(*names)
    if not p:
        pytest.fail("%s not installed (test/deps.sh installs it)" % names[0])
    return p


# ---------------------------------------------------------------------------
# private servers
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def asan_runtime():
    """The ASan runtime the sanitized plugin was linked against."""
    return subprocess.run(["gcc", "-print-file-name=libasan.so"], text=True,
                          capture_output=True, check=True).stdout.strip()


class Build:
    def __init__(self, data, name):
        self.data, self.san = data, name == "asan"
        self.plugin_dir = BUILDS[name]


@pytest.fixture(scope="session", params=sorted(BUILDS))
def template(request, initialised):
    """The data directory to copy, and the plugin build to load."""
    plugin = os.path.join(BUILDS[request.param], "wsproxy.so")
    if not os.path.isfile(plugin):
        pytest.fail("%s is missing: run `make mariadb-plugin mariadb-plugin-asan`" % plugin)
    return Build(initialised, request.param)


@pytest.fixture(scope="session")
def initialised():
    """One initialised data directory, copied for every server."""
    d = tempfile.mkdtemp(prefix="wsplug", dir="/tmp")
    os.chmod(d, 0o755)
    data = os.path.join(d, "data")
    cp = subprocess.run([_find("mariadb-install-db", "mysql_install_db"), "--no-defaults",
                         "--user=mysql", "--datadir=" + data, "--skip-test-db",
                         "--auth-root-authentication-method=socket"],
                        capture_output=True, text=True, timeout=120,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, "mariadb-install-db failed:\n%s%s" % (cp.stdout, cp.stderr)
    yield data
    shutil.rmtree(d, ignore_errors=True)


class Server:
    """A mariadbd on a private socket with the plugin, configured by my.cnf."""

    def __init__(self, template, user="root", cnf=None, load=True, args=(), direct=False,
                 plugins=()):
        self.dir = tempfile.mkdtemp(prefix="wsplug", dir="/tmp")   # short paths
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        shutil.copytree(template.data, self.data, symlinks=True)
        self.san = template.san
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.errpath = os.path.join(self.dir, "mysqld.err")
        self.user = user
        plugin_dir = template.plugin_dir
        if user != "root" or plugins:
            # a copy the server's user can read wherever the checkout lives,
            # with the other plugins (.so paths) the test installs
            plugin_dir = os.path.join(self.dir, "plugin")
            os.mkdir(plugin_dir)
            for so in (os.path.join(template.plugin_dir, "wsproxy.so"),) + tuple(plugins):
                shutil.copy(so, plugin_dir)
            pw = pwd.getpwnam(user)
            for base, dirs, files in os.walk(self.dir):
                for n in [base] + [os.path.join(base, x) for x in dirs + files]:
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
        opts = {
            "datadir": self.data, "socket": self.sock, "log-error": self.errpath,
            "pid-file": os.path.join(self.dir, "mysqld.pid"), "user": user,
            "tmpdir": self.dir,     # not the shared /tmp, whose files others may clean
            "port": free_port(), "bind-address": "127.0.0.1",   # a private loopback port
            "innodb-buffer-pool-size": "32M",
            "innodb-log-file-size": "16M", "plugin-dir": plugin_dir,
            "proxy_protocol_networks": "127.0.0.1/32", "max-connections": "300",
        }
        if load:
            opts["plugin-load-add"] = "wsproxy.so"
        if direct:      # started as `user`, as systemd's User= does: no user option
            del opts["user"]
        self.direct = direct
        opts.update(cnf or {})
        self.opts = opts
        self.cnf = os.path.join(self.dir, "my.cnf")
        self.write_cnf()
        self.client = _find("mariadb", "mysql")
        self.args = list(args)
        self.proc = None
        self.rootpw = None   # None: root logs in by unix_socket (we are root)

    def write_cnf(self):
        with open(self.cnf, "w") as f:
            f.write("[mariadbd]\n")
            for k, v in self.opts.items():
                if v is not False:
                    f.write("%s\n" % k if v is None else "%s = %s\n" % (k, v))

    def start(self, timeout=60, setup=True, env=None):
        env = dict(os.environ, **(env or {}))
        if self.san:
            env["LD_PRELOAD"] = " ".join(filter(None, [asan_runtime(), env.get("LD_PRELOAD")]))
            # mariadbd itself is not instrumented: its leaks at exit are not ours
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
            env["UBSAN_OPTIONS"] = "print_stacktrace=1"
        # no network namespace here (the proxy's port must be reachable):
        # keep MariaDB's reverse lookup of 127.0.0.2 short
        env["RES_OPTIONS"] = "timeout:1 attempts:1"
        self.proc = subprocess.Popen(
            [_find("mariadbd", "mysqld"), "--defaults-file=" + self.cnf] + self.args,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
            **({"user": self.user, "group": self.user, "extra_groups": []}
               if self.direct else {}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("mariadbd exited (%s) during start:\n%s"
                            % (self.proc.returncode, self.errlog()[-3000:]))
            if os.path.exists(self.sock) and self.sql("SELECT 1", check=False)[0] == 0:
                break
            time.sleep(0.1)
        else:
            self.kill()
            pytest.fail("mariadbd did not answer within %ss:\n%s"
                        % (timeout, self.errlog()[-3000:]))
        if self.san:
            with open("/proc/%d/maps" % self.pid) as f:
                assert "libasan" in f.read(), "the sanitizer runtime is not in mariadbd"
        if not setup:
            return self
        self.sql("CREATE DATABASE IF NOT EXISTS demo;"
                 "CREATE USER IF NOT EXISTS demo@'%' IDENTIFIED BY 'demo';"
                 "CREATE USER IF NOT EXISTS demo@localhost IDENTIFIED BY 'demo';"
                 "GRANT ALL ON demo.* TO demo@'%'; GRANT ALL ON demo.* TO demo@localhost;")
        return self

    @property
    def pid(self):
        return self.proc.pid

    def sql(self, sql, user="root", password=None, check=True):
        if user == "root" and password is None:
            password = self.rootpw
        """Runs SQL with the mariadb client on the socket; returns (rc,
        rows, stderr) or, with check, the rows (lists of strings)."""
        argv = [self.client, "--no-defaults", "--protocol=socket", "--socket=" + self.sock,
                "-u" + user, "--batch", "-N", "-e", sql]
        if password is not None:
            argv.insert(5, "--password=" + password)
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
        rows = [line.split("\t") for line in cp.stdout.splitlines()]
        if check:
            assert cp.returncode == 0, "SQL %r failed: %s" % (sql, cp.stderr)
            return rows
        return cp.returncode, rows, cp.stderr

    def status(self):
        return dict(self.sql("SHOW GLOBAL STATUS LIKE 'wsproxy%'"))

    def var(self, name):
        return self.sql("SELECT @@GLOBAL.%s" % name)[0][0]

    def restart(self, check=True):
        rc, _, err = self.sql("SET GLOBAL wsproxy_restart = ON", check=False)
        if check:
            assert rc == 0, "wsproxy_restart failed: %s" % err
        return rc, err

    def errlog(self):
        try:
            with open(self.errpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def fds(self):
        """Descriptors of mariadbd once settled (client sockets of the
        statements just run may still be closing): the least of a few looks."""
        n = []
        for _ in range(6):
            n.append(len(os.listdir("/proc/%d/fd" % self.pid)))
            time.sleep(0.05)
        return min(n)

    def threads(self):
        return len(os.listdir("/proc/%d/task" % self.pid))

    def stop(self, timeout=30):
        """SIGTERM unless it has exited; returns the seconds it took to exit."""
        if not self.proc:
            return 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail("mariadbd did not stop within %ss of SIGTERM:\n%s"
                            % (timeout, self.errlog()[-3000:]))
        # mariadbd's stderr is its error log: the sanitizers report there
        assert "ERROR: AddressSanitizer" not in self.errlog() and \
            "runtime error:" not in self.errlog(), self.errlog()[-6000:]
        # a crash at shutdown (plugin deinit, freeing the variables) shows here
        assert self.proc.returncode == 0 and "got signal" not in self.errlog(), \
            "mariadbd exited with %s:\n%s" % (self.proc.returncode, self.errlog()[-3000:])
        return time.monotonic() - t0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server_factory(template):
    made = []

    def make(**kw):
        s = Server(template, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.cleanup()


# ---------------------------------------------------------------------------
# clients
# ---------------------------------------------------------------------------

def query(port, sql, user="demo", password="demo", scheme="ws", ca=None,
          host="127.0.0.1", mysql_ca=None):
    """test/query.js through the WebSocket; returns (rc, rows or stderr)."""
    argv = [node(), QUERY_JS, "--url", "%s://%s:%d/" % (scheme, host, port), "--user", user,
            "--password=" + password, "--database=", "--json", "--timeout", "15000"]
    if ca:
        argv += ["--ca", ca]
    if mysql_ca:
        argv += ["--mysql-ca", mysql_ca]
    cp = subprocess.run(argv + [sql], capture_output=True, text=True, timeout=30,
                        stdin=subprocess.DEVNULL)
    if cp.returncode == 0:
        return 0, json.loads(cp.stdout.strip().splitlines()[-1])
    return cp.returncode, cp.stderr.strip()


def whoami(port, user, password, local_address, ca=None):
    """sql_client.js whoami from a given source address; a refused login is
    a result ({"ok": false, "message": ...})."""
    host = "[::1]" if ":" in local_address else "127.0.0.1"
    argv = [node(), SQL_CLIENT, "whoami", "--url",
            "%s://%s:%d/" % ("wss" if ca else "ws", host, port), "--user", user,
            "--password", password, "--database", "", "--local-address", local_address,
            "--timeout", "20000"]
    if ca:
        argv += ["--ca", ca]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=40,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 0 or cp.stdout.strip(), \
        "sql_client.js whoami failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    r = json.loads(cp.stdout.strip().splitlines()[-1])
    assert r.get("localAddress") in (None, local_address), r
    return r


class MySession:
    """A MySQL-protocol session (mysql_native_password) over a WebSocket,
    held open by the test."""

    def __init__(self, port, user="demo", password="demo"):
        self.ws = WSClient(port, timeout=15.0)
        self.ws.handshake()
        self.rbuf = b""
        seq, greet = self.packet()
        assert greet[0] == 10, "not a handshake v10: %r" % greet[:20]
        p = greet.index(b"\0", 1) + 1
        salt = greet[p + 4:p + 12]
        p += 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        salt += greet[p:p + 12]
        self.salt = salt
        caps = 0x1 | 0x200 | 0x8000 | 0x80000   # long pw, 4.1, secure conn, plugin auth
        body = (struct.pack("<IIB23x", caps, 1 << 24, 33) + user.encode() + b"\0"
                + bytes([20]) + self.scramble(password, salt) + b"mysql_native_password\0")
        self.send(seq + 1, body)
        seq, r = self.packet()
        if r[0] == 0xFE:   # auth switch: the plugin name, NUL, the new salt
            name, _, salt = r[1:].partition(b"\0")
            self.send(seq + 1, self.scramble(password, salt[:20]))
            seq, r = self.packet()
        assert r[0] == 0, "login failed: %r" % r

    @staticmethod
    def scramble(password, salt):
        h1 = hashlib.sha1(password.encode()).digest()
        h2 = hashlib.sha1(salt + hashlib.sha1(h1).digest()).digest()
        return bytes(a ^ b for a, b in zip(h1, h2))

    def send(self, seq, body):
        self.ws.send_frame(2, struct.pack("<I", len(body))[:3] + bytes([seq & 255]) + body)

    def packet(self):
        while True:
            if len(self.rbuf) >= 4:
                n = int.from_bytes(self.rbuf[:3], "little")
                if len(self.rbuf) >= 4 + n:
                    seq, body = self.rbuf[3], self.rbuf[4:4 + n]
                    self.rbuf = self.rbuf[4 + n:]
                    return seq, body
            f = self.ws.recv_frame()
            if f.opcode == OP_CLOSE:
                raise ConnectionClosed("Close %r" % f.payload[:2])
            self.rbuf += f.payload

    def query(self, sql):
        """Rows of a SELECT, as lists of strings (NULL = None)."""
        self.send(0, b"\x03" + sql.encode())
        _, r = self.packet()
        assert r[0] not in (0xFF,), "query failed: %r" % r
        ncols = r[0]
        for _ in range(ncols):
            self.packet()
        _, r = self.packet()
        assert r[0] == 0xFE, r           # EOF after the column definitions
        rows = []
        while True:
            _, r = self.packet()
            if r[0] == 0xFE and len(r) < 9:
                return rows
            row, p = [], 0
            for _ in range(ncols):
                if r[p] == 0xFB:
                    row.append(None)
                    p += 1
                    continue
                n, p = r[p], p + 1     # values here are short
                row.append(r[p:p + n].decode())
                p += n
            rows.append(row)

    def change_user(self, user, password):
        """COM_CHANGE_USER; True if the server accepted it."""
        body = (b"\x11" + user.encode() + b"\0" + bytes([20])
                + self.scramble(password, self.salt) + b"\0" + struct.pack("<H", 33)
                + b"mysql_native_password\0")
        self.send(0, body)
        seq, r = self.packet()
        while r[0] == 0xFE and len(r) > 1:   # auth switch: answer each plugin asked for
            name, _, salt = r[1:].partition(b"\0")
            self.send(seq + 1, self.scramble(password, salt[:20])
                      if name == b"mysql_native_password" else b"")
            seq, r = self.packet()
        assert r[0] in (0x00, 0xFF), r
        if r[0] == 0x00:
            return True
        # the server ends a session whose change of user failed
        return False

    def close_code(self, timeout=10):
        """Reads until the server's Close; returns its code."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.ws.recv_frame(max(0.05, deadline - time.monotonic()))
            if f.opcode == OP_CLOSE:
                return struct.unpack("!H", f.payload[:2])[0] if len(f.payload) >= 2 else None

    def close(self):
        self.ws.abort()


# ---------------------------------------------------------------------------
# the main server: run as root, Option 1 (my.cnf) over ws://
# ---------------------------------------------------------------------------

def serving(template, user, direct=False):
    """A server run as `user` with the proxy on a free port (ws://, ::)."""
    port = free_port()
    s = Server(template, user=user, direct=direct,
               cnf={"wsproxy_http_port": port, "wsproxy_bind_address": "::"})
    s.port = port
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def main(template):
    yield from serving(template, "root")


def back_to(s, port):
    """Puts the main server's proxy back on `port` (ws://)."""
    s.sql("SET GLOBAL wsproxy_https_port = 0; SET GLOBAL wsproxy_http_port = %d;"
          "SET GLOBAL wsproxy_bind_address = '::'" % port)
    s.restart()
    assert s.status()["Wsproxy_port"] == str(port)


def test_option1_my_cnf_serves_ws_and_a_real_query(main):
    st = main.status()
    assert (st["Wsproxy_state"], st["Wsproxy_port"], st["Wsproxy_scheme"],
            st["Wsproxy_reason"]) == ("RUNNING", str(main.port), "ws", ""), st
    rc, rows = query(main.port, "SELECT 6*7 AS answer, CURRENT_USER() AS who")
    assert rc == 0, rows
    assert rows == [{"answer": 42, "who": "demo@localhost"}], rows
    st2 = main.status()
    assert int(st2["Wsproxy_connections_total"]) > int(st["Wsproxy_connections_total"])
    assert int(st2["Wsproxy_bytes_to_engine"]) > 0 and int(st2["Wsproxy_bytes_to_client"]) > 0
    for k in ("connections_open", "refused_400", "refused_403", "refused_426", "refused_431",
              "refused_502", "refused_503", "refused_timeout", "tls_failures",
              "protocol_errors"):
        assert re.fullmatch(r"\d+", st2["Wsproxy_" + k]), (k, st2)
    assert main.var("wsproxy_restart") == "0"


def test_log_file_next_to_the_error_log(main):
    """The log sits beside the error log and records a session's end.  The
    test makes its own session, so it holds when run alone."""
    path = os.path.join(main.dir, "websocket_proxy.log")
    assert query(main.port, "SELECT 1 AS x")[0] == 0

    def text():
        with open(path) as f:
            return f.read()
    wait_until(lambda: os.path.exists(path) and "closed 1000" in text(), 5,
               what="a session's end in " + path)
    assert re.search(r"INFO .*started", text()), text()[-2000:]


def test_restart_reads_back_off_and_keeps_the_port(main):
    main.restart()
    assert main.var("wsproxy_restart") == "0"
    st = main.status()
    assert st["Wsproxy_state"] == "RUNNING" and st["Wsproxy_port"] == str(main.port)


def test_port_variable_alone_changes_nothing(main):
    other = free_port()
    try:
        main.sql("SET GLOBAL wsproxy_http_port = %d" % other)
        assert main.status()["Wsproxy_port"] == str(main.port)
        assert not port_accepts(other)
        assert query(main.port, "SELECT 1 AS x")[0] == 0
    finally:
        main.sql("SET GLOBAL wsproxy_http_port = %d" % main.port)


def test_restart_moves_the_port_and_live_sessions_survive(main):
    live = MySession(main.port)
    assert live.query("SELECT 1+1") == [["2"]]
    new = free_port()
    try:
        main.sql("SET GLOBAL wsproxy_http_port = %d" % new)
        main.restart()
        st = main.status()
        assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("RUNNING", str(new)), st
        assert query(new, "SELECT 2 AS x") == (0, [{"x": 2}])
        assert not port_accepts(main.port, host="::1")
        # the session opened on the old port goes on
        assert live.query("SELECT CONCAT('still ', 'here')") == [["still here"]]
    finally:
        live.close()
        back_to(main, main.port)


def test_restart_onto_a_taken_port_fails_and_the_old_port_serves(main):
    taken = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    taken.bind(("::", 0))
    taken.listen(1)
    tport = taken.getsockname()[1]
    live = MySession(main.port)
    try:
        main.sql("SET GLOBAL wsproxy_http_port = %d" % tport)
        rc, err = main.restart(check=False)
        assert rc != 0 and "Address already in use" in err, err
        assert "wsproxy_restart failed" in err, err
        st = main.status()
        # the status is the truth; the variables say what was asked for
        assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("RUNNING", str(main.port)), st
        assert main.var("wsproxy_http_port") == str(tport)
        assert query(main.port, "SELECT 3 AS x") == (0, [{"x": 3}])
        assert live.query("SELECT 4") == [["4"]]
    finally:
        taken.close()
        live.close()
        back_to(main, main.port)


def test_a_failed_set_statement_moves_nothing(main):
    """Issue 18: SET GLOBAL wsproxy_restart = ON, max_connections = 'abc'
    fails, and the proxy stays where it was.  Failed on main (e37c9d4): the
    restart ran in the check phase, before max_connections' check failed."""
    other = free_port()
    before = main.var("max_connections")
    try:
        main.sql("SET GLOBAL wsproxy_http_port = %d" % other)
        rc, _, err = main.sql("SET GLOBAL wsproxy_restart = ON, max_connections = 'abc'",
                              check=False)
        assert rc != 0 and "max_connections" in err, err
        st = main.status()
        assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("RUNNING", str(main.port)), st
        assert not port_accepts(other)
        assert main.var("max_connections") == before
    finally:
        back_to(main, main.port)


def test_https_without_any_certificate_is_refused(main):
    try:
        main.sql("SET GLOBAL wsproxy_http_port = 0; SET GLOBAL wsproxy_https_port = %d"
                 % free_port())
        rc, err = main.restart(check=False)
        assert rc != 0 and "https_proxy_port requires SSL to be enabled" in err, err
        st = main.status()
        assert (st["Wsproxy_state"], st["Wsproxy_port"], st["Wsproxy_scheme"]) == (
            "RUNNING", str(main.port), "ws"), st
    finally:
        back_to(main, main.port)


def test_both_ports_at_runtime_refused_until_one_is_cleared(main):
    try:
        main.sql("SET GLOBAL wsproxy_https_port = %d" % free_port())
        rc, err = main.restart(check=False)
        assert rc != 0 and "http_port and https_port are mutually exclusive" in err, err
        assert main.status()["Wsproxy_port"] == str(main.port)
    finally:
        back_to(main, main.port)


def test_restart_needs_the_privilege_of_set_global(main):
    main.sql("CREATE USER IF NOT EXISTS lowpriv@localhost IDENTIFIED BY 'lowpw';"
             "GRANT ALL ON demo.* TO lowpriv@localhost")
    main.sql("SET GLOBAL wsproxy_http_port = %d" % free_port())
    try:
        rc, _, err = main.sql("SET GLOBAL wsproxy_restart = ON", user="lowpriv",
                              password="lowpw", check=False)
        assert rc != 0 and "Access denied" in err, err
        assert main.status()["Wsproxy_port"] == str(main.port)
        # SHOW STATUS needs no privilege
        rc, rows, err = main.sql("SHOW GLOBAL STATUS LIKE 'wsproxy_state'", user="lowpriv",
                                 password="lowpw", check=False)
        assert rc == 0 and rows == [["Wsproxy_state", "RUNNING"]], (rows, err)
    finally:
        back_to(main, main.port)


@pytest.mark.parametrize("networks", ["10.0.0.0/8", ""])
def test_state_is_not_running_while_no_relayed_login_can_work(main, networks):
    """Issue 18: with proxy_protocol_networks leaving out the relay, no
    relayed login works: the state says FAILED and why, at once and at
    restart, and RUNNING again once the setting is back.  Failed on main
    (e37c9d4): RUNNING after SET GLOBAL proxy_protocol_networks = ''."""
    try:
        main.sql("SET GLOBAL proxy_protocol_networks = '%s'" % networks)
        st = main.status()
        assert st["Wsproxy_state"] == "FAILED", st
        assert "proxy_protocol_networks = 127.0.0.1/32" in st["Wsproxy_reason"], st
        rc, err = main.restart(check=False)
        assert rc != 0 and "proxy_protocol_networks" in err, err
        assert main.status()["Wsproxy_state"] == "FAILED"
    finally:
        main.sql("SET GLOBAL proxy_protocol_networks = '127.0.0.1/32'")
    assert main.status()["Wsproxy_state"] == "RUNNING"
    assert query(main.port, "SELECT 1 AS x") == (0, [{"x": 1}])


# ---------------------------------------------------------------------------
# security: no WebSocket client inherits the server's identity
# ---------------------------------------------------------------------------

ADDRESSES = ["127.0.0.1", "::1", "127.0.0.2"]


def assert_refused(r, user, *also):
    whys = ("Access denied for user '%s'" % user,) + also
    assert r["ok"] is False and r.get("stage") == "login", r
    assert any(w in r.get("message", "") for w in whys), r


@pytest.fixture(scope="module")
def as_mysql(template):
    """A server run as the service account, as Debian's systemd unit runs it:
    started as mysql, never root."""
    yield from serving(template, "mysql", direct=True)


@pytest.fixture(params=["root", "mysql"])
def either(request, template):
    """The server run as root (main), then as mysql (as_mysql), of the
    template's build."""
    return request.getfixturevalue("main" if request.param == "root" else "as_mysql")


def local_login(s, user, as_user):
    """CURRENT_USER() of a password-less login on the server's socket by a
    local client running as the system user `as_user`."""
    cp = subprocess.run(["runuser", "-u", as_user, "--", s.client, "--no-defaults",
                         "--socket=" + s.sock, "-u" + user, "-N", "-e", "SELECT CURRENT_USER()"],
                        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return cp.stdout.strip() if cp.returncode == 0 else cp.stderr.strip()


@pytest.mark.parametrize("addr", ADDRESSES)
def test_no_websocket_login_by_the_servers_peer_credentials(either, addr):
    s = either
    st = s.status()
    assert (st["Wsproxy_state"], st["Wsproxy_reason"]) == ("RUNNING", ""), st
    for user in ("root", "mysql"):
        assert_refused(whoami(s.port, user, "", addr), user)
    r = whoami(s.port, "demo", "demo", addr)
    assert r["ok"] is True and r["user"].startswith("demo@"), r


def test_change_user_to_the_servers_account_is_refused(either):
    m = MySession(either.port)
    try:
        for user in ("root", "mysql"):
            assert m.change_user(user, "") is False
        assert m.change_user("demo", "demo") is True
        assert m.query("SELECT CURRENT_USER()")[0][0].startswith("demo@")
    finally:
        m.close()


def test_local_clients_still_log_in_by_unix_socket(either):
    """The accounts are Debian's defaults, and the plugin takes nothing from
    a local client: on the socket, the system users root and mysql get in
    by unix_socket as before, whoever the server runs as."""
    with open("/proc/%d/status" % either.pid) as f:      # real, effective, saved
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", f.read(), re.M).groups()
    assert set(uids) == {str(pwd.getpwnam(either.user).pw_uid)}, uids
    assert local_login(either, "root", "root") == "root@localhost"
    assert local_login(either, "mysql", "mysql") == "mysql@localhost"
    assert "Access denied" in local_login(either, "root", "mysql")


# A peer-credential authentication plugin in a .so of its own, as MariaDB's
# CMake builds unix_socket with -DPLUGIN_AUTH_SOCKET=DYNAMIC: the logic of
# plugin/auth_socket/auth_socket.c, calling getsockopt through its own GOT.
PEERCRED_C = r"""
#define _GNU_SOURCE
#include <pwd.h>
#include <string.h>
#include <sys/socket.h>
#include <mysql/plugin_auth.h>

static int peercred_auth(MYSQL_PLUGIN_VIO *vio, MYSQL_SERVER_AUTH_INFO *info)
{
    unsigned char *pkt;
    MYSQL_PLUGIN_VIO_INFO vi;
    struct ucred cred;
    socklen_t len = sizeof cred;
    struct passwd pwb, *pw = NULL;
    char buf[1024];
    if (vio->read_packet(vio, &pkt) < 0)
        return CR_ERROR;
    info->password_used = PASSWORD_USED_NO_MENTION;
    vio->info(vio, &vi);
    if (vi.protocol != MYSQL_VIO_SOCKET)
        return CR_ERROR;
    if (getsockopt(vi.socket, SOL_SOCKET, SO_PEERCRED, &cred, &len))
        return CR_ERROR;
    if (getpwuid_r(cred.uid, &pwb, buf, sizeof buf, &pw) || !pw)
        return CR_ERROR;
    return strcmp(pw->pw_name, info->user_name) ? CR_ERROR : CR_OK;
}

static struct st_mysql_auth peercred = {MYSQL_AUTHENTICATION_INTERFACE_VERSION, 0,
                                        peercred_auth, NULL, NULL};

maria_declare_plugin(peercred){
    MYSQL_AUTHENTICATION_PLUGIN, &peercred, "peercred", "test", "SO_PEERCRED, test only",
    PLUGIN_LICENSE_GPL, NULL, NULL, 0x0100, NULL, NULL, "1.0",
    MariaDB_PLUGIN_MATURITY_STABLE} maria_declare_plugin_end;
"""


@pytest.fixture(scope="module")
def peercred_so(tmp_path_factory):
    d = tmp_path_factory.mktemp("peercred")
    (d / "peercred.c").write_text(PEERCRED_C)
    cp = subprocess.run(["gcc", "-shared", "-fPIC", "-DMYSQL_DYNAMIC_PLUGIN",
                         "-isystem", "/usr/include/mariadb/server", "-o", str(d / "peercred.so"),
                         str(d / "peercred.c")], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return str(d / "peercred.so")


@pytest.mark.parametrize("user", ["root", "mysql"])
def test_no_websocket_login_by_a_peer_credential_plugin_in_its_own_so(server_factory,
                                                                     peercred_so, user):
    """Issue 18: a peer-credential plugin that calls getsockopt itself gives
    no WebSocket login, from any address, whoever the server runs as.
    Failed on main (e37c9d4): the getsockopt hook covered only mariadbd's
    own GOT, and the WebSocket client logged in as the server's user."""
    port = free_port()
    s = server_factory(user=user, direct=user != "root", plugins=[peercred_so],
                       cnf={"wsproxy_http_port": port, "wsproxy_bind_address": "::"}).start()
    s.sql("INSTALL SONAME 'peercred'")
    s.sql("ALTER USER root@localhost IDENTIFIED VIA peercred;"
          "ALTER USER mysql@localhost IDENTIFIED VIA peercred;"
          "CREATE USER root@'%' IDENTIFIED VIA peercred;"
          "CREATE USER mysql@'%' IDENTIFIED VIA peercred")
    # the plugin works: local clients log in by it on the socket
    assert local_login(s, "mysql", "mysql") == "mysql@localhost"
    assert "Access denied" in local_login(s, "root", "mysql")
    for addr in ADDRESSES:
        for who in ("root", "mysql"):
            assert_refused(whoami(port, who, "", addr), who)
        assert whoami(port, "demo", "demo", addr)["ok"] is True


def test_federatedx_as_root_over_the_servers_own_socket(server_factory):
    """Issue 18: FederatedX logs in as root by unix_socket over the server's
    own socket while the plugin is loaded.  Failed on main (e37c9d4): the
    getsockopt hook hid the server's own uid from unix_socket."""
    fed = "/usr/lib/mysql/plugin/ha_federatedx.so"       # Debian's mariadb-server
    assert os.path.isfile(fed), fed
    s = server_factory(plugins=[fed], cnf={"wsproxy_http_port": free_port()}).start()
    assert s.status()["Wsproxy_state"] == "RUNNING"
    s.sql("INSTALL SONAME 'ha_federatedx'")
    s.sql("CREATE TABLE demo.src (id INT PRIMARY KEY, v VARCHAR(10));"
          "INSERT INTO demo.src VALUES (1, 'one');"
          "CREATE SERVER self FOREIGN DATA WRAPPER mysql OPTIONS "
          "(HOST 'localhost', SOCKET '%s', USER 'root', DATABASE 'demo');"
          "CREATE TABLE demo.fed (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=FEDERATED "
          "CONNECTION='self/src'" % s.sock)
    assert s.sql("SELECT v FROM demo.fed") == [["one"]]


def test_skip_name_resolve_matches_only_the_clients_own_address(server_factory):
    """Issue 18: under skip_name_resolve a WebSocket client matches accounts
    for its own address, never 'x'@'localhost'.  Failed on main (e37c9d4):
    over the Unix socket every client was 'localhost' (lo@localhost logged
    in from 127.0.0.2)."""
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "skip-name-resolve": None}).start()
    s.sql("CREATE USER lo@localhost IDENTIFIED BY 'lopw';"
          "CREATE USER two@'127.0.0.2' IDENTIFIED BY 'twopw'")
    for addr in ("127.0.0.1", "127.0.0.2"):
        assert_refused(whoami(port, "lo", "lopw", addr), "lo")
    r = whoami(port, "two", "twopw", "127.0.0.2")
    assert r["ok"] is True and r["user"] == "two@127.0.0.2", r
    assert_refused(whoami(port, "two", "twopw", "127.0.0.1"), "two")


def test_skip_networking_means_not_serving_and_says_so(server_factory):
    """Issue 18: the relay needs the server's TCP listener.  Failed on main
    (e37c9d4): it served over the Unix socket."""
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "skip-networking": None}).start()
    st = s.status()
    assert st["Wsproxy_state"] == "FAILED" and "skip_networking" in st["Wsproxy_reason"], st
    assert not port_accepts(port)
    assert re.search(r"\[ERROR\] mariadbd: wsproxy: not serving: .*skip_networking",
                     s.errlog())


def test_listener_not_on_loopback_means_not_serving_and_says_so(server_factory):
    """Issue 18: a server listening only on another address cannot be
    reached by the relay: FAILED, naming bind_address.  (Uses this host's
    first non-loopback IPv4 address.)"""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    addrs = [l.split()[3].split("/")[0] for l in out.splitlines() if " lo " not in l]
    assert addrs, "no non-loopback IPv4 address here:\n" + out
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "bind-address": addrs[0]}).start()
    st = s.status()
    assert st["Wsproxy_state"] == "FAILED", st
    assert "not reachable on loopback (bind_address = %s)" % addrs[0] in st["Wsproxy_reason"], st
    assert "add 127.0.0.1 to bind_address" in st["Wsproxy_reason"], st
    assert not port_accepts(port)


def test_bind_address_defaults_to_the_servers(server_factory):
    """Issue 18: wsproxy_bind_address defaults to the server's bind_address
    (here 127.0.0.1), NULL means that default, and it reads back what is
    bound.  Failed on main (e37c9d4): 0.0.0.0."""
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port}).start()
    assert s.var("wsproxy_bind_address") == "127.0.0.1"
    assert s.sql("SELECT COUNT(*) FROM information_schema.system_variables WHERE "
                 "variable_name = 'WSPROXY_BIND_ADDRESS' AND global_value = '127.0.0.1'") \
        == [["1"]]
    s.sql("SET GLOBAL wsproxy_bind_address = '::'")
    for default in ("NULL", "''", "DEFAULT"):
        s.sql("SET GLOBAL wsproxy_bind_address = '::'")
        s.sql("SET GLOBAL wsproxy_bind_address = %s" % default)
        assert s.var("wsproxy_bind_address") == "127.0.0.1", default
    s.restart()
    assert query(port, "SELECT 1 AS x") == (0, [{"x": 1}])
    assert not port_accepts(port, host="::1")


# ---------------------------------------------------------------------------
# other servers started from my.cnf
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    import sys
    sys.path.insert(0, HERE)
    from e2e.certs import make_certs
    return make_certs(tmp_path_factory.mktemp("plugcerts"))


def test_option1_wss_with_the_servers_certificate(server_factory, certs):
    port = free_port()
    s = server_factory(cnf={"wsproxy_https_port": port, "ssl_cert": certs.chain,
                            "ssl_key": certs.key, "skip-name-resolve": None}).start()
    st = s.status()
    assert (st["Wsproxy_state"], st["Wsproxy_scheme"], st["Wsproxy_port"]) == (
        "RUNNING", "wss", str(port)), st
    rc, rows = query(port, "SELECT 'tls' AS x", scheme="wss", ca=certs.ca)
    assert (rc, rows) == (0, [{"x": "tls"}]), rows
    # skip_name_resolve: every proxied client is an address to MariaDB, and
    # nobody gets in by the server's peer credentials
    for addr in ("127.0.0.1", "127.0.0.2"):
        assert_refused(whoami(port, "root", "", addr, ca=certs.ca), "root")
    # the 2-day test certificate: wsproxy's warning reaches the error log
    assert re.search(r"\[Warning\] mariadbd: wsproxy: .*certificate expires", s.errlog())


def readme_my_cnf():
    """The keys of engines/mariadb/README.md's Option 1 my.cnf."""
    with open(os.path.join(ROOT, "engines", "mariadb", "README.md")) as f:
        block = re.search(r"```ini\n\s*\[mariadbd\]\n(.*?)```", f.read(), re.S).group(1)
    keys = {}
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if "=" in line:
            k, _, v = line.partition("=")
            keys[k.strip()] = v.strip()
    return keys


# A daemon plugin named wsproxy built for another server version.
OTHER_VERSION_C = r"""
#include <mysql/plugin.h>
static struct st_mysql_daemon info = {(MYSQL_VERSION_ID - 1) << 8};
maria_declare_plugin(wsproxy){MYSQL_DAEMON_PLUGIN, &info, "wsproxy", "test", "test",
    PLUGIN_LICENSE_GPL, NULL, NULL, 0x0100, NULL, NULL, "1.0",
    MariaDB_PLUGIN_MATURITY_STABLE} maria_declare_plugin_end;
"""


@pytest.mark.parametrize("how", ["missing", "other-version"])
def test_the_readme_my_cnf_starts_a_server_whose_plugin_cannot_load(server_factory,
                                                                    tmp_path, how):
    """Issue 18: with the README's my.cnf, a server whose wsproxy.so is
    missing or built for another version still starts, and its error log
    says why.  Failed on main (e37c9d4): the README's wsproxy_* keys without
    loose- stopped the server ("unknown variable")."""
    keys = readme_my_cnf()
    assert keys.pop("plugin_load_add") == "wsproxy"
    for k in keys:
        if k.endswith("port"):
            keys[k] = str(free_port())
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    if how == "other-version":
        (tmp_path / "other.c").write_text(OTHER_VERSION_C)
        cp = subprocess.run(["gcc", "-shared", "-fPIC", "-DMYSQL_DYNAMIC_PLUGIN", "-isystem",
                             "/usr/include/mariadb/server", "-o", str(plugins / "wsproxy.so"),
                             str(tmp_path / "other.c")], capture_output=True, text=True,
                            timeout=60)
        assert cp.returncode == 0, cp.stderr
    s = server_factory(load=False, cnf=dict(keys, **{"plugin-dir": str(plugins),
                                                     "plugin_load_add": "wsproxy"}))
    s.start()
    assert not installed(s)
    why = {"missing": "No such file or directory",
           "other-version": "API version for DAEMON plugin wsproxy not supported"}[how]
    assert re.search(r"\[ERROR\] mariadbd: Can't open shared library .*wsproxy\.so.*"
                     + why, s.errlog()), s.errlog()[-3000:]


def test_log_is_rotated_by_size(server_factory):
    """Issue 18: websocket_proxy.log never grows without bound: rotated at
    wsproxy_log_size_limit, wsproxy_log_rotations files kept, through the
    server's logger service as server_audit does.  Failed on main (e37c9d4):
    no such variables (the server did not start), and the log only grew."""
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "wsproxy_log_size_limit": 2000,
                            "wsproxy_log_rotations": 2}).start()
    log = os.path.join(s.dir, "websocket_proxy.log")
    for _ in range(80):          # each one logs a line at INFO when it ends
        ws = WSClient(port)
        ws.handshake()
        ws.abort()
    wait_until(lambda: os.path.exists(log + ".2"), 10, what="websocket_proxy.log.2")
    assert not os.path.exists(log + ".3")
    for name in (log, log + ".1", log + ".2"):
        size = os.path.getsize(name)
        assert size < 2000 + 600, (name, size)      # the limit and one line
    with open(log + ".1") as f:
        assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z INFO \[conn \d+ ", f.read(), re.M)
    assert s.status()["Wsproxy_state"] == "RUNNING"


@pytest.mark.parametrize("scheme", ["wss", "ws"])
def test_require_ssl_user_by_mysql_tls_inside_the_websocket(server_factory, certs, scheme):
    """Issue 18, the seed's REQUIRE SSL promise: wss:// is TLS between the
    client and the proxy only, and MariaDB sees a plain TCP session, so a
    REQUIRE SSL account is refused (1045).  The client's own MySQL TLS,
    carried inside the WebSocket (npm mysql2's ssl option over the stream),
    is end to end with the server: the account logs in."""
    port = free_port()
    s = server_factory(cnf={"wsproxy_%s_port" % ("https" if scheme == "wss" else "http"): port,
                            "ssl_cert": certs.chain, "ssl_key": certs.key}).start()
    s.sql("CREATE USER sec@'%' IDENTIFIED BY 'secpw' REQUIRE SSL;"
          "CREATE USER sec@localhost IDENTIFIED BY 'secpw' REQUIRE SSL")
    ca = certs.ca if scheme == "wss" else None
    rc, err = query(port, "SELECT 1 AS x", user="sec", password="secpw", scheme=scheme, ca=ca)
    assert rc != 0 and "Access denied for user 'sec'" in err, err
    rc, rows = query(port, "SELECT CURRENT_USER() AS who", user="sec", password="secpw",
                     scheme=scheme, ca=ca, mysql_ca=certs.ca)
    assert (rc, rows) == (0, [{"who": "sec@localhost"}]), rows
    rc, rows = query(port, "SHOW STATUS LIKE 'Ssl_version'", user="sec", password="secpw",
                     scheme=scheme, ca=ca, mysql_ca=certs.ca)
    assert rc == 0 and rows[0]["Value"].startswith("TLSv1."), rows


def test_primary_only_a_replica_is_dormant_until_promoted(server_factory):
    """Issue 18, the seed's "only the primary serves": with wsproxy_serve_on
    = primary, a real replica (replicating from a primary started here) is
    DORMANT with no listening socket, serves once promoted without any
    restart command, and is DORMANT again once demoted."""
    pport, rport = free_port(), free_port()
    common = {"wsproxy_serve_on": "primary", "binlog_format": "ROW"}
    primary = server_factory(cnf=dict(common, **{"wsproxy_http_port": pport, "server-id": 1,
                                                 "log-bin": "mysql-bin"})).start()
    primary.sql("CREATE USER repl@'%' IDENTIFIED BY 'replpw';"
                "GRANT REPLICATION SLAVE ON *.* TO repl@'%'")
    replica = server_factory(cnf=dict(common, **{"wsproxy_http_port": rport, "server-id": 2,
                                                 "read-only": None})).start()
    replica.sql("CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = %s, "
                "MASTER_USER = 'repl', MASTER_PASSWORD = 'replpw', MASTER_USE_GTID = slave_pos;"
                "START SLAVE" % primary.opts["port"])
    primary.sql("CREATE TABLE demo.t (x INT); INSERT INTO demo.t VALUES (42)")
    wait_until(lambda: replica.sql("SELECT COUNT(*) FROM information_schema.tables WHERE "
                                   "table_schema = 'demo' AND table_name = 't'") == [["1"]]
               and replica.sql("SELECT x FROM demo.t") == [["42"]], 20,
               what="replication of demo.t")
    st = replica.status()
    assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("DORMANT", "0"), st
    assert "read_only = ON" in st["Wsproxy_reason"], st
    assert not port_accepts(rport)
    assert primary.status()["Wsproxy_state"] == "RUNNING"
    assert query(pport, "SELECT x FROM demo.t") == (0, [{"x": 42}])
    # promoted: serves, no restart command
    replica.sql("STOP SLAVE; SET GLOBAL read_only = OFF")
    wait_until(lambda: replica.status()["Wsproxy_state"] == "RUNNING", 5, what="promotion")
    assert replica.status()["Wsproxy_port"] == str(rport)
    assert query(rport, "SELECT x FROM demo.t") == (0, [{"x": 42}])
    # demoted again
    replica.sql("SET GLOBAL read_only = ON; START SLAVE")
    wait_until(lambda: replica.status()["Wsproxy_state"] == "DORMANT", 5, what="demotion")
    assert not port_accepts(rport)
    # always (the default) serves whatever read_only says
    replica.sql("SET GLOBAL wsproxy_serve_on = always")
    replica.restart()
    assert replica.status()["Wsproxy_state"] == "RUNNING"


def test_both_ports_in_my_cnf_server_starts_proxy_does_not(server_factory):
    a, b = free_port(), free_port()
    s = server_factory(cnf={"wsproxy_http_port": a, "wsproxy_https_port": b}).start()
    st = s.status()
    assert st["Wsproxy_state"] == "FAILED", st
    assert "http_port and https_port are mutually exclusive" in st["Wsproxy_reason"], st
    assert not port_accepts(a) and not port_accepts(b)
    assert re.search(r"\[ERROR\] mariadbd: wsproxy: not serving: http_port and https_port "
                     r"are mutually exclusive", s.errlog())
    rc, err = s.restart(check=False)
    assert rc != 0 and "http_port and https_port are mutually exclusive" in err, err
    assert s.status()["Wsproxy_state"] == "FAILED"
    # https alone, and the server has no certificate
    s.sql("SET GLOBAL wsproxy_http_port = 0")
    rc, err = s.restart(check=False)
    assert rc != 0 and "https_proxy_port requires SSL to be enabled" in err, err
    s.sql("SET GLOBAL wsproxy_https_port = 0; SET GLOBAL wsproxy_http_port = %d" % a)
    s.restart()
    st = s.status()
    assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("RUNNING", str(a)), st


def test_failed_stays_failed_until_restart(server_factory):
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "proxy_protocol_networks": False})
    s.start()
    st = s.status()
    assert st["Wsproxy_state"] == "FAILED" and "proxy_protocol_networks" in st["Wsproxy_reason"]
    s.sql("SET GLOBAL proxy_protocol_networks = '127.0.0.1/32'")
    time.sleep(1.5)
    assert s.status()["Wsproxy_state"] == "FAILED"   # never restarts itself
    assert not port_accepts(port)
    s.restart()
    assert s.status()["Wsproxy_state"] == "RUNNING"
    assert query(port, "SELECT 5 AS x") == (0, [{"x": 5}])


# ---------------------------------------------------------------------------
# lifecycle: INSTALL / UNINSTALL at runtime, server shutdown
# ---------------------------------------------------------------------------

def relay_threads(pid):
    """Threads of mariadbd named wsproxy (the proxy's loop)."""
    n = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                n += f.read().strip() == "wsproxy"
        except OSError:
            continue
    return n


class Hammer:
    """Other sessions running SHOW STATUS and SET GLOBAL wsproxy_restart in a
    loop (errors such as "unknown variable" while uninstalled are expected)."""

    def __init__(self, s, n=2):
        self.s, self.stop_ev, self.runs = s, threading.Event(), 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        sql = "SHOW GLOBAL STATUS LIKE 'wsproxy%'; SET GLOBAL wsproxy_restart = ON"
        while not self.stop_ev.is_set():
            try:
                subprocess.run([self.s.client, "--no-defaults", "--socket=" + self.s.sock,
                                "-uroot", "--force", "-e", sql], capture_output=True,
                               timeout=30, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pass
            self.runs += 1

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(40)
        assert not any(t.is_alive() for t in self.threads), "a hammer session hung"


def installed(s):
    return s.sql("SELECT COUNT(*) FROM information_schema.plugins "
                 "WHERE plugin_name = 'wsproxy'") == [["1"]]


def install(s, port):
    """INSTALL SONAME and start serving on `port`.  While another session
    holds the plugin, MariaDB defers an UNINSTALL until it lets go ("Plugin
    is busy"), and a new INSTALL is refused meanwhile: retry."""
    deadline = time.monotonic() + 20
    while True:
        rc, _, err = s.sql("INSTALL SONAME 'wsproxy'; SELECT @@wsproxy_http_port",
                           check=False)
        if rc == 0:
            break
        assert time.monotonic() < deadline, "INSTALL SONAME kept failing: %s" % err
        time.sleep(0.02)
    s.sql("SET GLOBAL wsproxy_http_port = %d; SET GLOBAL wsproxy_restart = ON" % port)


def uninstall(s):
    s.sql("UNINSTALL SONAME 'wsproxy'")
    wait_until(lambda: not installed(s), 20, what="wsproxy uninstalled")


def test_install_uninstall_cycles_leave_no_thread_or_descriptor(server_factory):
    s = server_factory(load=False).start()
    port = free_port()
    install(s, port)                   # warm-up: first dlopen, caches
    uninstall(s)
    fds0 = s.fds()
    # a session open at UNINSTALL gets Close 1001
    install(s, port)
    live = MySession(port)
    assert live.query("SELECT 1") == [["1"]]
    s.sql("UNINSTALL SONAME 'wsproxy'")
    assert live.close_code() == 1001
    live.close()
    assert not port_accepts(port)
    assert relay_threads(s.pid) == 0
    install(s, port)
    assert relay_threads(s.pid) == 1    # the loop thread is found by its name
    uninstall(s)
    hammer = Hammer(s)
    try:
        t0 = time.monotonic()
        for i in range(49):
            install(s, port)
            if i % 10 == 0:
                assert query(port, "SELECT %d AS i" % i) == (0, [{"i": i}])
            uninstall(s)
        took = time.monotonic() - t0
    finally:
        hammer.stop()
    assert hammer.runs > 0
    assert relay_threads(s.pid) == 0
    fds1 = s.fds()
    assert fds1 <= fds0, "descriptors of mariadbd: %d before, %d after" % (fds0, fds1)
    assert not port_accepts(port)
    print("50 INSTALL/restart/UNINSTALL cycles: %.2f s, %d hammer runs, %d fds"
          % (took, hammer.runs, fds0))


@pytest.mark.parametrize("how", ["sigterm", "sql", "sql-through-the-proxy",
                                 "sigterm-thread-pool"])
def test_shutdown_with_connections_and_concurrent_status_does_not_hang(server_factory, how):
    port = free_port()
    cnf = {"wsproxy_http_port": port}
    if how.endswith("thread-pool"):
        cnf["thread_handling"] = "pool-of-threads"
    s = server_factory(cnf=cnf).start()
    s.sql("GRANT SHUTDOWN ON *.* TO demo@localhost")
    sessions = [MySession(port) for _ in range(5)]
    for m in sessions:
        assert m.query("SELECT 7") == [["7"]]
    idle = WSClient(port)
    idle.handshake()
    hammer = Hammer(s)
    time.sleep(0.3)
    if how == "sql":
        s.sql("SHUTDOWN")
    elif how == "sql-through-the-proxy":
        sessions[0].send(0, b"\x03SHUTDOWN")
    t0 = time.monotonic()
    if how.startswith("sql"):
        s.proc.wait(30)
    took = s.stop(timeout=30) + time.monotonic() - t0
    hammer.stop()
    # the proxy stops (1001) before MariaDB ends its client sessions (which
    # would close each WebSocket with 1000, as an engine that hangs up does)
    codes = sorted(m.close_code() for m in sessions)
    assert set(codes) == {1001}, codes
    f = idle.recv_frame(5)
    while f.opcode != OP_CLOSE:         # the server's greeting first
        f = idle.recv_frame(5)
    assert f.payload[:2] == struct.pack("!H", 1001)
    assert s.proc.returncode == 0, s.errlog()[-2000:]
    assert "wsproxy" not in "".join(l for l in s.errlog().splitlines() if "[ERROR]" in l)
    print("shutdown (%s) with 6 WebSockets open and 2 status sessions: %.2f s, Close "
          "codes %s" % (how, took, codes))


def test_log_dir_and_allowed_origins_by_sql(main, tmp_path):
    logdir = tmp_path / "wslogs"
    logdir.mkdir()
    before = int(main.status()["Wsproxy_refused_403"])
    try:
        main.sql("SET GLOBAL wsproxy_log_dir = '%s'; "
                 "SET GLOBAL wsproxy_allowed_origins = 'https://app.example, https://b.example'"
                 % logdir)
        main.restart()
        ws = WSClient(main.port)
        ws.handshake(headers=[("Origin", "https://evil.example")], expect=403)
        ws.abort()
        ws = WSClient(main.port)
        ws.handshake(headers=[("Origin", "https://B.example")])
        ws.abort()
        assert int(main.status()["Wsproxy_refused_403"]) == before + 1
        wait_until(lambda: "403" in (logdir / "websocket_proxy.log").read_text(), 5,
                   what="the 403 in the new log")
    finally:
        main.sql("SET GLOBAL wsproxy_log_dir = DEFAULT; SET GLOBAL wsproxy_allowed_origins = ''")
        back_to(main, main.port)


def test_build_refuses_mismatched_dev_headers(tmp_path):
    fake = tmp_path / "dpkg-query"
    fake.write_text('#!/bin/sh\ncase "$*" in *libmariadbd-dev*) echo 1:10.11.18-0+deb12u1;; '
                    '*) echo 1:10.11.19-0+deb12u1;; esac\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (tmp_path, os.environ["PATH"]))
    cp = subprocess.run(["make", "-s", "-C", ROOT, "mariadb-version-check"], env=env,
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0
    assert "libmariadbd-dev 1:10.11.18-0+deb12u1 does not match mariadb-server " \
           "1:10.11.19-0+deb12u1" in cp.stdout + cp.stderr, cp.stdout + cp.stderr


def test_skip_grant_tables_is_refused(server_factory):
    port = free_port()
    s = server_factory(cnf={"wsproxy_http_port": port, "skip-grant-tables": None})
    s.start(setup=False)
    st = s.status()
    assert st["Wsproxy_state"] == "FAILED" and "skip_grant_tables" in st["Wsproxy_reason"], st
    assert not port_accepts(port)


def test_no_port_stops_listening_and_sessions_go_on(main):
    live = MySession(main.port)
    try:
        main.sql("SET GLOBAL wsproxy_http_port = 0")
        main.restart()
        st = main.status()
        assert (st["Wsproxy_state"], st["Wsproxy_port"], st["Wsproxy_reason"]) == (
            "STOPPED", "0", ""), st
        assert not port_accepts(main.port) and not port_accepts(main.port, host="::1")
        assert live.query("SELECT 'on'") == [["on"]]
    finally:
        live.close()
        back_to(main, main.port)


def test_command_line_options(server_factory):
    """The options work on mariadbd's command line too (plugin loaded there)."""
    port = free_port()
    s = server_factory(load=False, args=["--plugin-load-add=wsproxy.so",
                                         "--wsproxy-http-port=%d" % port,
                                         "--wsproxy-max-connections=2"]).start()
    st = s.status()
    assert (st["Wsproxy_state"], st["Wsproxy_port"]) == ("RUNNING", str(port)), st
    assert s.var("wsproxy_max_connections") == "2"
    a, b = MySession(port), MySession(port)
    try:
        ws = WSClient(port)
        ws.handshake(expect=503)
        ws.abort()
        assert int(s.status()["Wsproxy_refused_503"]) == 1
    finally:
        a.close()
        b.close()
