"""The program never lends its own identity to a client (issue 12, point 9).

Started as root, wsproxy must switch to --user NAME (or `user = NAME` in the
--config file) after binding its port, opening its log and reading its key
files; without it, it refuses to start with a one-line reason naming both ways
out, unless --allow-root (a warning at every start).

The end-to-end case is `make run`'s setup: Debian's MariaDB from
test/mariadb.sh (root and the service account `mysql` authenticated by
unix_socket, PROXY headers trusted from localhost, user demo/demo), wsproxy in
front of it with the PROXY v2 header, and WebSocket clients on 127.0.0.1, ::1
and 127.0.0.2 saying root or mysql with no password: all refused, demo works.

These tests need root (`make test` runs as root): run with /usr/bin/python3."""

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
import time
from pathlib import Path

import pytest

from conftest import ProxySet, free_port, port_accepts, run_bin, wait_until
from test_e2e_mariadb import CLIENT, HERE, mariadb, require_node  # noqa: F401  (fixture)

NOBODY = pwd.getpwnam("nobody")


def need_root():
    assert os.geteuid() == 0, "these tests start wsproxy as root: run the suite as root"


def test_root_without_user_refuses_with_both_ways_out(wsproxy_bin):
    need_root()
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock"], root_args=False)
    assert cp.returncode == 1, cp
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, "want a one-line reason: %r" % cp.stderr
    assert lines[0].startswith("wsproxy: refusing to run as root"), lines
    assert "--user NAME" in lines[0] and "--allow-root" in lines[0], lines
    assert "user = NAME" in lines[0], lines


@pytest.mark.parametrize("user,why", [("no-such-user-wsproxy", "no such user"),
                                      ("root", "is root (uid 0)")])
def test_bad_user_is_a_configuration_error(wsproxy_bin, user, why):
    need_root()
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock", "--user", user], root_args=False)
    assert cp.returncode == 2, cp
    assert cp.stderr.startswith("wsproxy: user %s" % user) and why in cp.stderr, cp.stderr


def task_ids(pid):
    """[(uids, gids, groups, CapPrm, CapEff)] of every thread of pid."""
    out = []
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, t)) as f:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        out.append((st["Uid"].split(), st["Gid"].split(), st.get("Groups", "").split(),
                    st["CapPrm"], st["CapEff"]))
    return out


@pytest.mark.parametrize("how", ["flag", "file"])
def test_user_drops_root_in_every_thread(wsproxy_bin, engine, tmp_path, how):
    """--user nobody (or user = nobody in the file): once started, every
    thread runs as nobody with no capability; a port below 1024 was bound and
    the log stays writable for SIGUSR1 and SIGHUP."""
    need_root()
    e = engine("echo")
    os.chmod(os.path.dirname(e.path), 0o755)   # nobody must reach the socket
    os.chmod(e.path, 0o777)
    logdir = tempfile.mkdtemp(prefix="wsroot", dir="/tmp")
    os.chmod(logdir, 0o755)
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        low = next((n for n in range(1023, 900, -1) if _port_free(n)), None)
        assert low, "no free port below 1024"
        cfg = Path(logdir) / "w.cnf"    # SIGHUP re-reads it as nobody
        cfg.write_text("[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\nsocket = %s\n"
                       "log_dir = %s\n%s" % (low, e.path, logdir,
                                             "user = nobody\n" if how == "file" else ""))
        args = ["--config", cfg] + (["--user", "nobody"] if how == "flag" else [])
        p = ps.start(*args, raw=True, port=low, log_dir=logdir, root_args=False)
        p.wait_log(r"running as user nobody \(uid %d" % NOBODY.pw_uid)
        tasks = task_ids(p.proc.pid)
        assert len(tasks) >= 2, tasks        # main thread + the loop thread
        for uids, gids, groups, prm, eff in tasks:
            assert uids == [str(NOBODY.pw_uid)] * 4, tasks
            assert gids == [str(NOBODY.pw_gid)] * 4, tasks
            assert "0" not in groups, tasks
            assert int(prm, 16) == 0 and int(eff, 16) == 0, tasks
        log = os.path.join(logdir, "websocket_proxy.log")
        assert os.stat(log).st_uid == NOBODY.pw_uid
        c = p.ws()
        c.echo(b"relayed as nobody")
        # the engine's peer (what unix_socket authenticates) is nobody
        cred = e.conn(0).sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        assert struct.unpack("3i", cred)[1] == NOBODY.pw_uid
        c.close()
        n0 = len(p.log())
        p.signal(signal.SIGUSR1)
        p.signal(signal.SIGHUP)
        p.wait_log(r"restarted: listening", start=n0)
        assert "reopening the log" not in p.log() and "restart failed" not in p.log()
    finally:
        problems = ps.finish()
        shutil.rmtree(logdir, ignore_errors=True)
    assert not problems, "\n".join(problems)


def _port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_allow_root_warns_at_every_start(wsproxy_bin, engine, tmp_path):
    need_root()
    e = engine("echo")
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        p = ps.start("--allow-root", engine=e, root_args=False)
        p.wait_log(r"WARN \[proxy\] running as root \(--allow-root\)")
        n0 = len(p.log())
        p.signal(signal.SIGHUP)
        p.wait_log(r"WARN \[proxy\] running as root", start=n0)
    finally:
        problems = ps.finish()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# make run's setup: MariaDB, PROXY v2, passwordless root and mysql refused
# ---------------------------------------------------------------------------

def login(port, host, user, password, local):
    node = require_node()
    url = "ws://%s:%d/" % ("[%s]" % host if ":" in host else host, port)
    cp = subprocess.run([node, CLIENT, "whoami", "--url", url, "--user", user,
                         "--password", password, "--database", "", "--local-address", local,
                         "--timeout", "30000"], cwd=HERE, capture_output=True, text=True,
                        timeout=60, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, "sql_client.js whoami failed:\n%s\n%s" % (cp.stdout, cp.stderr)
    r = json.loads(cp.stdout.strip().splitlines()[-1])
    assert r.get("localAddress") in (local, "::ffff:" + local) or r["ok"] is False, r
    return r


def test_demo_setup_refuses_passwordless_root_and_mysql(wsproxy_bin, tmp_path, mariadb):
    """A client on 127.0.0.1 that said root with no password was logged in as
    root@localhost through a wsproxy running as root."""
    need_root()
    # Debian's packaged MariaDB has the service account mysql@localhost by
    # unix_socket too; mariadb.sh's instance gets it here.
    mariadb.root_sql("CREATE USER IF NOT EXISTS 'mysql'@'localhost' IDENTIFIED VIA unix_socket")
    assert "unix_socket" in mariadb.root_sql(
        "SELECT priv FROM mysql.global_priv "
        "WHERE user = 'root' AND host = 'localhost'")
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        v4 = ps.start("--user", "nobody", "--proxy-protocol", "v2", engine=None,
                      socket_path=mariadb.sock, root_args=False)
        v6 = ps.start("--user", "nobody", engine=None, socket_path=mariadb.sock,
                      bind="::1", root_args=False)
        for p, host, local in ((v4, "127.0.0.1", "127.0.0.1"), (v6, "::1", "::1"),
                               (v4, "127.0.0.1", "127.0.0.2")):
            for user in ("root", "mysql"):
                r = login(p.port, host, user, "", local)
                assert r["ok"] is False, "%s logged in from %s with no password: %r" % (
                    user, local, r)
                assert r["code"] in ("ER_ACCESS_DENIED_ERROR",
                                     "ER_ACCESS_DENIED_NO_PASSWORD_ERROR"), r
            r = login(p.port, host, "demo", "demo", local)
            assert r["ok"] is True and r["user"].startswith("demo@"), r
        for p in (v4, v6):
            assert re.search(r"running as user nobody", p.log()), p.log()[-2000:]
    finally:
        problems = ps.finish()
    assert not problems, "\n".join(problems)


def test_first_clients_never_reach_the_engine_as_root(wsproxy_bin, engine, tmp_path):
    """Clients that hammer the port while wsproxy --user starts: even the
    first connections reach the engine as nobody (on Linux the uid changes
    before the loop thread exists)."""
    import threading
    import time
    from conftest import WSClient
    need_root()
    e = engine("echo")
    os.chmod(os.path.dirname(e.path), 0o755)
    os.chmod(e.path, 0o777)
    port = free_port()
    clients, stop = [], threading.Event()

    def hammer():
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                c = WSClient(port, timeout=10)
                c.handshake()
                clients.append(c)
                return
            except OSError:
                time.sleep(0.0005)
    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        ps.start("--user", "nobody", engine=e, port=port, root_args=False)
        for t in threads:
            t.join(30)
        assert len(clients) == 8, len(clients)
        conns = e.wait_conns(8)
        for conn in conns:
            cred = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            assert struct.unpack("3i", cred)[1] == NOBODY.pw_uid, struct.unpack("3i", cred)
    finally:
        stop.set()
        for c in clients:
            c.sock.close()
        problems = ps.finish()
    assert not problems, "\n".join(problems)


def test_keys_read_as_root_at_start_and_as_the_user_on_sighup(wsproxy_bin, engine, tmp_path):
    """The key (0600, root's) is read before the switch; a SIGHUP restart
    re-reads it as the user, fails, says so in the log, and the old
    certificate keeps serving (docs/program.md documents it)."""
    import ssl
    from e2e.certs import make_certs
    need_root()
    certs = make_certs(tmp_path / "certs")
    os.chmod(certs.key, 0o600)
    e = engine("echo")
    os.chmod(os.path.dirname(e.path), 0o755)
    os.chmod(e.path, 0o777)
    port = free_port()
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        p = ps.start("--https-port", port, "--bind", "127.0.0.1", "--socket", e.path,
                     "--cert", certs.chain, "--key", certs.key, "--user", "nobody",
                     raw=True, port=port, root_args=False)
        p.wait_log(r"running as user nobody")
        n0 = len(p.log())
        p.signal(signal.SIGHUP)
        line = p.wait_log(r"ERROR \[proxy\] restart failed, still serving as before", start=n0)
        assert "Permission denied" in line, line
        ctx = ssl.create_default_context(cafile=certs.ca)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() == "TLSv1.2"
    finally:
        problems = ps.finish()
    assert not problems, "\n".join(problems)


def test_header_off_as_the_socket_owner_refuses(wsproxy_bin, tmp_path):
    """With --proxy-protocol off, an engine that trusts Unix-socket peers by
    uid (PostgreSQL's peer, MariaDB's unix_socket) would take every client
    for the account the proxy runs as; when that account owns the socket it
    is the engine's own.  The program refuses, in one line, unless told."""
    need_root()
    os.chmod(tmp_path, 0o755)
    path = str(tmp_path / "engine.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    try:
        base = ["--http-port", str(free_port()), "--bind", "127.0.0.1", "--socket", path,
                "--proxy-protocol", "off"]
        # root owns it, and the proxy stays root
        cp = run_bin(wsproxy_bin, base + ["--allow-root"], root_args=False)
        assert cp.returncode == 1, cp
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1, "want a one-line reason: %r" % cp.stderr
        assert lines[0].startswith("wsproxy: refusing to relay with --proxy-protocol off "
                                   "as uid 0, which owns %s" % path), lines
        assert "--user NAME" in lines[0] and "--allow-socket-owner" in lines[0], lines
        # nobody owns it, and the proxy would run as nobody (PostgreSQL's case:
        # a relay run as postgres in front of postgres's socket)
        os.chown(path, 65534, 65534)
        cp = run_bin(wsproxy_bin, base + ["--user", "nobody"], root_args=False)
        assert cp.returncode == 1 and "as uid 65534, which owns" in cp.stderr, cp
        # told otherwise, or with the header on, or as another account: it serves
        for extra in (["--user", "nobody", "--allow-socket-owner"],
                      ["--user", "nobody", "--proxy-protocol", "v2"],
                      ["--allow-root"]):
            port = free_port()
            args = base[:1] + [str(port)] + base[2:] + extra
            p = subprocess.Popen([wsproxy_bin.path] + args, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                wait_until(lambda: p.poll() is not None or port_accepts(port), 20,
                           what="wsproxy %s to listen" % extra)
                assert p.poll() is None, "%s: %s" % (extra, p.stderr.read())
            finally:
                p.terminate()
                p.wait(20)
    finally:
        srv.close()


def test_a_sighup_that_changes_user_says_what_happened(wsproxy_bin, engine, tmp_path):
    """Issue 20, item 13: after a SIGHUP that named another user, the log
    also said "not started as root", though it was."""
    need_root()
    e = engine("echo")
    os.chmod(os.path.dirname(e.path), 0o755)
    os.chmod(e.path, 0o777)
    logdir = tempfile.mkdtemp(prefix="wsroot", dir="/tmp")
    os.chmod(logdir, 0o755)
    ps = ProxySet(wsproxy_bin, tmp_path)
    try:
        port = free_port()
        cfg = Path(logdir) / "w.cnf"
        body = "[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\nsocket = %s\nlog_dir = %s\n" \
            % (port, e.path, logdir)
        cfg.write_text(body + "user = nobody\n")
        p = ps.start("--config", cfg, raw=True, port=port, log_dir=logdir, root_args=False)
        p.wait_log(r"running as user nobody")
        n0 = len(p.log())
        cfg.write_text(body + "user = daemon\n")
        p.signal(signal.SIGHUP)
        line = p.wait_log(r"a change takes a full restart", start=n0)
        assert "still running as user nobody (uid %d)" % NOBODY.pw_uid in line, line
        p.wait_log(r"restarted: listening", start=n0)
        p.signal(signal.SIGUSR1)      # one more event, so the SIGHUP's lines are all out
        p.ws().close()
        time.sleep(0.5)
        assert "not started as root" not in p.log()[n0:], p.log()[n0:]
    finally:
        problems = ps.finish()
        shutil.rmtree(logdir, ignore_errors=True)
    assert not problems, "\n".join(problems)
