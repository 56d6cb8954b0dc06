"""`make run` (test/run-demo.sh) as a newcomer meets it, over ws:// and, with
TLS=1, over wss:// with its throwaway CA.  Issue 10.

Each case starts the real script on free ports (its own MariaDB, wsproxy, the
studio's page server), reads the banner, uses what it prints -- the studio
URL, the /health line, the query.js command, the CA -- and stops it with
SIGTERM, which must stop everything and remove its directory.
"""

import fcntl
import os
import pty
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import termios
import time
import urllib.request

import pytest

from conftest import BINS, ROOT, free_port
from engine import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
QUERY = os.path.join(HERE, "query.js")


# A network of its own for the demo: loopback, and a veth pair with an address
# from a private range that exists only inside this namespace.
NETNS_ADDR = "10.77.91.1"
NETNS_SETUP = ("ip link set lo up && ip link add wsd0 type veth peer name wsd1 && "
               "ip addr add %s/24 dev wsd0 && ip link set wsd1 up && ip link set wsd0 up && "
               "exec \"$@\"" % NETNS_ADDR)


class Demo:
    """run-demo.sh, started as `via` says: "script" (bash run-demo.sh), "make"
    (make run), "make | tee" (its output piped), "terminal" (make run typed at
    an interactive bash on a pseudo-terminal of its own)."""

    def __init__(self, tls, netns=False, via="script", **extra_env):
        b = next((x for x in BINS if not x.slow), BINS[0])
        self.port, self.studio_port = free_port(), free_port()
        env = dict(os.environ, PORT=str(self.port), STUDIO_PORT=str(self.studio_port),
                   WSPROXY=b.path, TLS="1" if tls else "0", **extra_env)
        for v in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
            env.pop(v, None)
        cmd = {"script": ["bash", os.path.join(HERE, "run-demo.sh")],
               "make": ["make", "-s", "-C", str(ROOT), "run"],
               "make | tee": ["bash", "-c", 'make -s -C "$0" run | tee /dev/null', str(ROOT)],
               "terminal": ["bash", "--norc", "--noprofile", "-i"]}[via]
        if netns:   # unshare execs the shell, which execs run-demo.sh: the pid stays
            cmd = ["unshare", "-n", "sh", "-c", NETNS_SETUP, "sh"] + cmd
        self.master = None
        if via == "terminal":
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(
                cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
            os.close(slave)
            self.fd = self.master
            # typed at an interactive shell, the terminal's session leader, which
            # passes a hang-up on to its jobs as a login shell in a terminal does
            os.write(self.master, b"make -s -C '%s' run\n" % str(ROOT).encode())
        else:
            self.proc = subprocess.Popen(cmd,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
            self.fd = self.proc.stdout.fileno()
        self.out = ""
        self.read_until(r"Press Ctrl-C to stop", 90)
        m = re.search(r"removes (/\S+?)\)", self.out)
        assert m, self.out
        self.tmp = m.group(1)

    def read_until(self, pattern, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not sel.select(0):
                raise AssertionError("run-demo.sh: no /%s/ in:\n%s" % (pattern, self.out))
            if sel.select(min(left, 1.0)):
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:   # EIO: a pseudo-terminal whose other side is closed
                    chunk = b""
                if not chunk:
                    raise AssertionError("run-demo.sh ended (%s):\n%s"
                                         % (self.proc.wait(10), self.out))
                self.out += chunk.decode(errors="replace")
        sel.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError("run-demo.sh did not stop within 40 s of SIGTERM")
        self.out += self.proc.stdout.read().decode(errors="replace")
        return rc


def query(url, sql, *args, netns_of=None):
    """query.js; netns_of=PID: from inside that process's network namespace."""
    pre = ["nsenter", "-t", str(netns_of), "-n"] if netns_of else []
    cp = subprocess.run(pre + ["node", QUERY, "--url", url, *args, sql], cwd=HERE,
                        capture_output=True, text=True, timeout=60,
                        stdin=subprocess.DEVNULL)
    return cp


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_make_run_serves_the_studio(tls):
    d = Demo(tls)
    try:
        out = d.out
        assert out.count("deps.sh: ok") == 1, out
        scheme, ws = ("https", "wss") if tls else ("http", "ws")
        origin = "%s://127.0.0.1:%d" % (scheme, d.studio_port)
        url = "%s://127.0.0.1:%d/" % (ws, d.port)
        assert "accepts pages from %s only" % origin in out, out
        assert re.search(r"health +: 200 OK - wsproxy \S+ running, 0 connections open", out), out
        page = "%s/#url=%s&user=demo&password=demo&database=demo" % (origin, url)
        assert page in out, out
        ca = None
        ctx = None
        if tls:
            m = re.search(r"--ignore-certificate-errors-spki-list=([A-Za-z0-9+/=]{44}) ", out)
            assert m, out
            ca = os.path.join(d.tmp, "tls", "ca.pem")
            assert ("--ca %s" % ca) in out, out
            ctx = ssl.create_default_context(cafile=ca)
        # the page, over https with the CA for localhost and 127.0.0.1
        for host in ("127.0.0.1", "localhost"):
            with urllib.request.urlopen("%s://%s:%d/index.html" % (scheme, host, d.studio_port),
                                        timeout=10, context=ctx) as r:
                body = r.read().decode()
            assert r.status == 200 and 'id="sql"' in body
        # the printed query.js command, with several statements
        extra = ["--ca", ca] if ca else []
        cp = query(url, "CREATE TABLE IF NOT EXISTS demo_t (id INT); "
                   "INSERT INTO demo_t VALUES (1), (2); SELECT COUNT(*) AS n FROM demo_t",
                   "--json", *extra)
        assert cp.returncode == 0, cp.stderr
        lines = cp.stdout.strip().splitlines()
        assert len(lines) == 3 and lines[2] == '[{"n":"2"}]', cp.stdout
        # the studio's origin is let through, another one refused
        cp = query(url, "SELECT 1", "--origin", origin, *extra)
        assert cp.returncode == 0, cp.stderr
        cp = query(url, "SELECT 1", "--origin", "http://127.0.0.1:1", *extra)
        assert cp.returncode == 1 and "403" in cp.stderr, cp.stderr
        with open(os.path.join(d.tmp, "studio-http.log")) as f:
            log = f.read()
        assert "GET /index.html" in log and "password" not in log, log
        # The proxy runs inside MariaDB (Option 1); the printed SQL moves it
        # (Option 3), and the new URL serves while the old port is closed.
        assert "wsproxy is running inside MariaDB" in out, out
        m = re.search(r'(mariadb --no-defaults --socket=\S+ -uroot -e) \\\n\s+"(SET GLOBAL [^"]+)"',
                      out)
        assert m, out
        cp = subprocess.run(m.group(1).split() + [m.group(2)], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
        assert cp.returncode == 0, cp.stderr
        new = re.search(r"the URL becomes (\S+)/\)", out).group(1) + "/"
        assert re.search(r"Wsproxy_state\s+RUNNING", cp.stdout), cp.stdout
        assert re.search(r"Wsproxy_port\s+%d" % int(new.rsplit(":", 1)[1].strip("/")),
                         cp.stdout), cp.stdout
        cp = query(new, "SELECT 1 AS one", "--json", *extra)
        assert cp.returncode == 0 and '"one":1' in cp.stdout, (cp.stdout, cp.stderr)
    finally:
        rc = d.stop()
    assert rc == 0, d.out
    assert "mariadb: stopped" in d.out, d.out
    assert not os.path.exists(d.tmp), d.out


@pytest.mark.parametrize("how", ["TERM", "Ctrl-C"])
def test_make_run_in_front_of_an_existing_engine(tmp_path, how):
    """SOCKET=: the standalone program (as nobody) fronts a running engine,
    and the banner shows no demo credentials that engine may not have.  On
    Ctrl-C wsproxy gets the SIGINT too and stops by itself: that is said
    as well (issue 20, item 15)."""
    sockdir = tempfile.mkdtemp(prefix="wsd", dir="/tmp")
    os.chmod(sockdir, 0o755)
    e = Engine(sockdir, mode="echo")
    os.chmod(e.path, 0o777)
    try:
        d = Demo(False, SOCKET=e.path)
        try:
            assert "wsproxy is running (pid" in d.out and "as nobody" in d.out, d.out
            assert "password" not in d.out.split("Press Ctrl-C")[0].split("engine ")[1], d.out
            assert "--user USER --password PASSWORD" in d.out, d.out
            assert re.search(r"health +: 200 OK", d.out), d.out
            if how == "Ctrl-C":
                os.killpg(d.proc.pid, signal.SIGINT)
                d.proc.wait(40)
        finally:
            rc = d.stop()
        assert rc == 0, d.out
        assert re.search(r"stopped wsproxy|wsproxy \(pid \d+\) (had )?stopped", d.out), d.out
        assert "mariadb" not in d.out, d.out
    finally:
        e.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def listening(pid):
    """The TCP sockets that listen in PID's network namespace: [(address, port)]."""
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htln"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    socks = []
    for line in out.splitlines():
        addr, _, port = line.split()[3].rpartition(":")
        socks.append((addr.strip("[]"), int(port)))
    return socks


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_make_run_listens_on_loopback_only(tls):
    """Issue 20, item 1: the demo printed "127.0.0.1" but the plugin listened on
    every interface, so anyone on the network could log in with the printed
    password.  The demo runs in a network namespace of its own, with a second,
    non-loopback address: nothing may listen there, before or after the printed
    SQL moves the proxy, while 127.0.0.1 serves."""
    d = Demo(tls, netns=True)
    pid = d.proc.pid
    try:
        ws = "wss" if tls else "ws"
        extra = ["--ca", os.path.join(d.tmp, "tls", "ca.pem")] if tls else []
        cp = query("%s://127.0.0.1:%d/" % (ws, d.port), "SELECT 1 AS one", "--json",
                   "--user", "demo", "--password", "demo", *extra, netns_of=pid)
        assert cp.returncode == 0 and '"one":1' in cp.stdout, (cp.stdout, cp.stderr)
        m = re.search(r'(mariadb --no-defaults --socket=\S+ -uroot -e) \\\n\s+"(SET GLOBAL [^"]+)"',
                      d.out)
        expect = {d.port, d.studio_port}
        for moved in (False, True):
            socks = listening(pid)
            ports = {p for _, p in socks}
            assert expect <= ports, (socks, d.out)
            for port in sorted(ports):
                cp = query("%s://%s:%d/" % (ws, NETNS_ADDR, port), "SELECT 1", "--user", "demo",
                           "--password", "demo", *extra, netns_of=pid)
                assert cp.returncode != 0 and "ECONNREFUSED" in cp.stderr, \
                    (port, cp.stdout, cp.stderr)
            assert all(a in ("127.0.0.1", "::1") for a, _ in socks), (socks, d.out)
            if moved:
                break
            assert m, d.out
            cp = subprocess.run(m.group(1).split() + [m.group(2)], capture_output=True,
                                text=True, timeout=30, stdin=subprocess.DEVNULL)
            assert cp.returncode == 0, cp.stderr
            new = int(re.search(r"the URL becomes \S+:(\d+)/\)", d.out).group(1))
            assert re.search(r"Wsproxy_port\s+%d" % new, cp.stdout), cp.stdout
            expect = {new, d.studio_port}
    finally:
        rc = d.stop()
    assert rc == 0, d.out
    assert not os.path.exists(d.tmp), d.out


def processes_naming(text):
    """PIDs of the processes whose command line contains text."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("how", ["TERM to make", "Ctrl-C", "Ctrl-C, output piped",
                                 "terminal closed"])
def test_every_way_a_session_ends_stops_what_it_started(how):
    """Issue 20, item 2: only INT and TERM were trapped and MariaDB runs in a
    session of its own, so closing the terminal (SIGHUP) or a Ctrl-C with the
    output piped (the reader dies first: every write fails) left a root
    MariaDB and its data behind.  Each way must stop MariaDB and the page
    server and remove the directory, within 40 s."""
    via = {"TERM to make": "make", "Ctrl-C": "make", "Ctrl-C, output piped": "make | tee",
           "terminal closed": "terminal"}[how]
    d = Demo(False, via=via)
    engine = int(re.search(r"engine +: MariaDB .*\(pid (\d+),", d.out).group(1))
    pages = int(re.search(r"served by pid (\d+),", d.out).group(1))
    assert processes_naming(d.tmp) == [engine], d.out
    if how == "TERM to make":
        d.proc.send_signal(signal.SIGTERM)
    elif how == "terminal closed":
        os.close(d.master)      # the kernel hangs the terminal up: SIGHUP
    else:                       # the terminal's Ctrl-C: SIGINT to the foreground group
        os.killpg(d.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 40   # MariaDB's shutdown is slow on a busy machine
    try:
        rc = d.proc.wait(40)
    except subprocess.TimeoutExpired:
        rc = None
    # the terminal's shell ends at once; run-demo.sh goes on cleaning up
    while time.monotonic() < deadline and (processes_naming(d.tmp) or os.path.exists(d.tmp)):
        time.sleep(0.1)
    left = processes_naming(d.tmp)
    for pid in left + [engine, pages]:   # what the demo left, so the next test runs
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if os.path.exists(d.tmp):
        shutil.rmtree(d.tmp, ignore_errors=True)
        raise AssertionError("%s: %s left behind (rc %s), processes %s:\n%s"
                             % (how, d.tmp, rc, left, d.out))
    assert rc is not None, "%s: make run still runs 40 s later:\n%s" % (how, d.out)
    assert not left, (how, left, d.out)
    assert not os.path.exists("/proc/%d" % pages) or \
        open("/proc/%d/stat" % pages).read().split()[2] == "Z", (how, d.out)


@pytest.mark.parametrize("which", ["PORT", "STUDIO_PORT"])
@pytest.mark.parametrize("holder", ["listening", "bound"])
def test_a_taken_port_is_the_last_thing_said(which, holder):
    """Issue 20, item 3: with 8080 taken the cause was line 2 of 27 and the
    last line said MariaDB did not start.  The last line names the cause and
    the variable that picks another port; nothing is left behind.  `bound`:
    a socket bound without listening, which no connect can see."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if holder == "listening":
        s.listen(1)
    port = s.getsockname()[1]
    env = dict(os.environ, TLS="0", PORT=str(free_port()), STUDIO_PORT=str(free_port()))
    env[which] = str(port)
    try:
        cp = subprocess.run(["bash", os.path.join(HERE, "run-demo.sh")], env=env,
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    finally:
        s.close()
    out = cp.stdout + cp.stderr
    assert cp.returncode == 1, out
    last = cp.stderr.strip().splitlines()[-1]
    assert "127.0.0.1:%d" % port in last and "Address already in use" in last, out
    assert ("%s=" % which) in last, out
    assert "wsproxy-demo." not in out, out   # said before anything started
