"""Constrained hosts, on every run (issue 19): static musl, i386, and
big-endian s390x under qemu-user -- each row's unit tests and a ws:// echo
through its static program, wss:// too where the row has BearSSL -- plus the
library compiled as FreeBSD and macOS see it (test/hosts/README says what
that proves and what not), a unity build, the tunables' limits, and the
exported symbols of i386 PIC code.  A missing toolchain FAILS, naming
test/deps.sh, which installs it; nothing here is skipped.

What each row costs (seconds) and the sizes the README's table shows are
written to build/hosts/costs.txt.  Run with /usr/bin/python3 (Debian's
pytest and websockets)."""
import asyncio
import concurrent.futures
import datetime
import os
import re
import shutil
import ssl
import subprocess
import threading
import time

import pytest
import websockets

from conftest import ROOT, Bin, ProxySet, finish_or_fail, free_port

ROOT = str(ROOT)
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wstrict-prototypes"]
# name -> (compiler, how to run a program, binutils prefix, has BearSSL)
HOSTS = {
    "musl": ("musl-gcc", [], "", False),
    "i386": ("i686-linux-gnu-gcc", [], "i686-linux-gnu-", True),
    "s390x": ("s390x-linux-gnu-gcc", ["qemu-s390x-static"], "s390x-linux-gnu-", True),
}
TOOLS = ["musl-gcc", "i686-linux-gnu-gcc", "s390x-linux-gnu-gcc", "qemu-s390x-static",
         "i686-linux-gnu-size", "s390x-linux-gnu-size", "size", "readelf", "clang", "openssl"]
COSTS = {}
_costs_lock = threading.Lock()


def cost(row, what, seconds):
    with _costs_lock:
        COSTS.setdefault(row, {})[what] = COSTS.get(row, {}).get(what, 0.0) + seconds


def sh(args, timeout=300, **kw):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def size_of(prefix, path):
    """text + data + bss, bytes, as the row's binutils count them."""
    out = sh([prefix + "size", path]).stdout.splitlines()
    return int(out[1].split()[3])


@pytest.fixture(scope="module")
def built():
    """Builds every row at once (one make per row, in parallel); fails
    loudly when a toolchain or a row's BearSSL is missing."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    missing += [lib for lib in ("/opt/wsproxy-hosts/i386/usr/lib/i386-linux-gnu/libbearssl.a",
                                "/opt/wsproxy-hosts/s390x/usr/lib/s390x-linux-gnu/libbearssl.a")
                if not os.path.exists(lib)]
    if missing:
        pytest.fail("missing for the host rows: %s -- run test/deps.sh (as root), which "
                    "installs them" % " ".join(missing), pytrace=False)

    def build(row):
        t0 = time.monotonic()
        r = sh(["make", "-s"] + ["build/hosts/%s/%s" % (row, f)
                                 for f in ("wsproxy", "unit", "wsproxy.o")]
               + (["build/hosts/i386/wsproxy-pic.o"] if row == "i386" else []))
        cost(row, "build", time.monotonic() - t0)
        return row, r

    with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
        for row, r in pool.map(build, HOSTS):
            assert r.returncode == 0, "%s row does not build:\n%s" % (row, r.stderr[-4000:])
    # A qemu row's program starts through a wrapper, so that the harness
    # (conftest's Proxy) runs it like any other binary.
    for row, (_, run, _, _) in HOSTS.items():
        if run:
            w = os.path.join(ROOT, "build/hosts", row, "run-wsproxy")
            with open(w, "w") as f:
                f.write('#!/bin/sh\nexec %s "$(dirname "$0")/wsproxy" "$@"\n' % " ".join(run))
            os.chmod(w, 0o755)
    yield
    write_costs()


def write_costs():
    lines = ["row\tbuild_s\tunit_s\techo_s\tobject_bytes\tstatic_program_bytes"]
    for row, (_, _, prefix, _) in HOSTS.items():
        c = COSTS.get(row, {})
        d = os.path.join(ROOT, "build/hosts", row)
        try:
            sizes = (size_of(prefix, d + "/wsproxy.o"), size_of(prefix, d + "/wsproxy"))
        except Exception:
            sizes = ("?", "?")
        lines.append("%s\t%.1f\t%.1f\t%.1f\t%s\t%s" % (row, c.get("build", 0), c.get("unit", 0),
                                                      c.get("echo", 0), sizes[0], sizes[1]))
    for row in sorted(set(COSTS) - set(HOSTS)):
        lines.append("%s\t%s" % (row, "\t".join("%s=%.1f" % kv for kv in COSTS[row].items())))
    with open(os.path.join(ROOT, "build/hosts/costs.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def host_bin(row):
    run = HOSTS[row][1]
    d = os.path.join(ROOT, "build/hosts", row)
    return Bin(row, os.path.join(d, "run-wsproxy" if run else "wsproxy"), bool(run))


# ---- each row: unit tests, and an echo through the program -------------

@pytest.mark.parametrize("row", sorted(HOSTS))
def test_host_unit_tests(built, row):
    """Every unit case (under qemu too: the whole set takes about 5 s)."""
    t0 = time.monotonic()
    r = sh(HOSTS[row][1] + [os.path.join(ROOT, "build/hosts", row, "unit")], timeout=600)
    cost(row, "unit", time.monotonic() - t0)
    assert r.returncode == 0 and " 0 failed" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("row", sorted(HOSTS))
def test_host_program_echoes_ws(built, row, tmp_path):
    t0 = time.monotonic()
    ps = ProxySet(host_bin(row), tmp_path)
    try:
        p = ps.start(engine="echo")
        c = p.ws()
        for payload in (b"hello from " + row.encode(), bytes(range(256)) * 300):
            assert c.echo(payload) == payload
        c.close()
    finally:
        finish_or_fail(ps)
    cost(row, "echo", time.monotonic() - t0)


def self_signed_until_2051(d):
    """A P-256 certificate for localhost valid until mid-2051: past 2038, where
    a 32-bit time_t wraps (the i386 row logged 1915 for it)."""
    days = (datetime.date(2051, 6, 1) - datetime.date.today()).days
    key, cert = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
    r = sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", key, "-out", cert, "-days", str(days), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    assert r.returncode == 0, r.stderr
    return cert, key


@pytest.mark.parametrize("row", sorted(r for r in HOSTS if HOSTS[r][3]))
def test_host_program_echoes_wss(built, row, tmp_path):
    """wss:// where the row has BearSSL (not musl: Debian packages none for
    it).  The log must give the certificate's true expiry year."""
    t0 = time.monotonic()
    cert, key = self_signed_until_2051(str(tmp_path))
    ps = ProxySet(host_bin(row), tmp_path)
    try:
        port = free_port()
        p = ps.start("--https-port", port, "--bind", "127.0.0.1", "--socket",
                     ps.engine("echo").path, "--cert", cert, "--key", key, raw=True, port=port)
        line = p.wait_log(r"certificate CN=localhost", timeout=p.t(10))
        assert "expires 2051-05-" in line or "expires 2051-06-" in line, line
        ctx = ssl.create_default_context(cafile=cert)

        async def roundtrip():
            async with websockets.connect("wss://localhost:%d/" % port, ssl=ctx,
                                          open_timeout=30) as ws:
                await ws.send(b"over TLS on " + row.encode())
                return await asyncio.wait_for(ws.recv(), 30)
        assert asyncio.run(roundtrip()) == b"over TLS on " + row.encode()
    finally:
        finish_or_fail(ps)
    cost(row, "echo", time.monotonic() - t0)


def test_host_musl_program_passes_the_libc_sensitive_integration_tests(built):
    """The integration tests that once held only on glibc, against the static
    musl program: strerror wording (test_cli, test_limits) and the listen
    backlog across a same-port reload (test_sighup; musl's SOMAXCONN is 128)."""
    t0 = time.monotonic()
    env = dict(os.environ, WSPROXY_BINS="musl=build/hosts/musl/wsproxy")
    r = sh(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "test/test_cli.py::test_failed_reload_is_logged_to_the_log_file",
            "test/test_cli.py::test_port_in_use_exit_1",
            "test/test_limits.py::test_out_of_descriptors_waits_and_recovers",
            "test/test_sighup.py::test_sighup_same_port_keeps_listening"], env=env, timeout=600)
    cost("musl integration subset", "run", time.monotonic() - t0)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


# ---- what the object exports, and what it calls ------------------------

def test_check_symbols_ignores_hidden_symbols_of_i386_pic(built, tmp_path):
    """gcc's __x86.get_pc_thunk.* in i386 PIC code are hidden, not exported."""
    obj = "build/hosts/i386/wsproxy-pic.o"
    assert "__x86.get_pc_thunk" in sh(["nm", obj]).stdout  # the case is real
    r = sh(["make", "-s", "check-symbols", "SYMBOLS_OBJ=" + obj])
    assert r.returncode == 0 and obj in r.stdout, r.stdout + r.stderr
    # and the check still catches an exported name without the prefix
    src = tmp_path / "leak.c"
    src.write_text("int leaked_name = 1;\nint ws_proxy_fine = 2;\n"
                   "__attribute__((visibility(\"hidden\"))) int hidden_name = 3;\n")
    bad = str(tmp_path / "leak.o")
    assert sh(["i686-linux-gnu-gcc", "-fPIC", "-c", "-o", bad, str(src)]).returncode == 0
    r = sh(["make", "-s", "check-symbols", "SYMBOLS_OBJ=" + bad])
    assert r.returncode != 0 and "leaked_name" in r.stdout and "hidden_name" not in r.stdout, \
        r.stdout + r.stderr


@pytest.mark.parametrize("row", sorted(HOSTS))
def test_library_never_calls_strerror(built, row):
    """strerror() may share one buffer between threads; the loop thread and
    API callers both format errors, so the library uses strerror_r()."""
    undefined = sh(["nm", "-u", "build/hosts/%s/wsproxy.o" % row]).stdout.split()
    assert "strerror" not in undefined and "strerror_r" in " ".join(undefined), undefined


# ---- compiles: other systems, a unity build, the tunables' limits -------

def compile_(args, what, timeout=120):
    t0 = time.monotonic()
    r = sh(args, timeout=timeout)
    cost("compiles", what, time.monotonic() - t0)
    return r


def first_error(r):
    return next((l for l in r.stderr.splitlines() if "error" in l), "")


NOT_LINUX = ["-U__linux__", "-U__linux", "-Ulinux", "-U__gnu_linux__"]
SYSTEMS = {"freebsd": ["-D__FreeBSD__=14"], "macos": ["-D__APPLE__=1", "-D__MACH__=1"]}


@pytest.mark.parametrize("cc", ["gcc", "clang"])
@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_library_compiles_as_other_systems_see_it(built, system, cc):
    """wsproxy.c through test/hosts/probe.c with that system's visibility
    rules: warning-free, with keepalive timing and SIGPIPE protection on.
    An engine on macOS that defines _POSIX_C_SOURCE still compiles (the file
    asks for _DARWIN_C_SOURCE); on FreeBSD nothing can show the BSD names
    again, so the file stops with a #error that says what to do."""
    base = [cc] + WARN + ["-pedantic", "-pthread", "-fsyntax-only"] + NOT_LINUX + \
        SYSTEMS[system] + ["-isystem", "test/hosts/" + system, "test/hosts/probe.c"]
    r = compile_(base, "%s-%s" % (system, cc))
    assert r.returncode == 0, r.stderr
    r = compile_(base + ["-D_POSIX_C_SOURCE=200809L"], "%s-posix-%s" % (system, cc))
    if system == "macos":
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0 and "do not define _POSIX_C_SOURCE" in first_error(r), r.stderr


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_program_compiles_as_other_systems_see_it(built, system):
    """program/main.c defined _POSIX_C_SOURCE, which hides initgroups() on
    the BSDs and macOS."""
    r = compile_(["gcc"] + WARN + ["-pthread", "-fsyntax-only"] + NOT_LINUX + SYSTEMS[system] +
                 ["-isystem", "test/hosts/" + system, "program/main.c"], "main-" + system)
    assert r.returncode == 0, r.stderr


def test_unity_build(built, tmp_path):
    """test/hosts/unity.c: a system header first, then wsproxy.c and
    program/main.c in one unit, -std=c99 with glibc's default feature set
    (so no accept4, pipe2 or setresuid declared): builds warning-free and
    the program echoes."""
    exe = str(tmp_path / "wsproxy")
    r = compile_(["gcc"] + WARN + ["-D_DEFAULT_SOURCE", "-O1", "-pthread",
                                   "-DWS_PROXY_NO_TLS", "-o", exe, "test/hosts/unity.c"], "unity")
    assert r.returncode == 0, r.stderr
    ps = ProxySet(Bin("unity", exe, False), tmp_path)
    try:
        c = ps.start(engine="echo").ws()
        assert c.echo(b"one translation unit") == b"one translation unit"
        c.close()
    finally:
        finish_or_fail(ps)


def test_unity_build_under_strict_c99_stops_with_the_fix(built):
    """With no feature-test macro at all, -std=c99 hides POSIX from the
    header read first; the first error is the file's own, naming the fix."""
    r = compile_(["gcc"] + WARN + ["-pthread", "-fsyntax-only", "test/hosts/unity.c"],
                 "unity-strict")
    assert r.returncode != 0
    assert "POSIX.1-2008 is not visible" in first_error(r) and "_GNU_SOURCE" in first_error(r), \
        r.stderr[:3000]


def test_program_needs_no_linux_uapi_headers(built):
    """musl-gcc has no linux/ headers (nor Alpine without linux-headers)."""
    r = compile_(["musl-gcc"] + WARN + ["-fsyntax-only", "program/main.c"], "main-musl")
    assert r.returncode == 0, r.stderr


TUNABLES = [
    ("WS_PROXY_BUF_SIZE=150", "WS_PROXY_BUF_SIZE must exceed WS_PROXY_MAX_HEADER"),
    ("WS_PROXY_MAX_HEADER=100", "WS_PROXY_MAX_HEADER must be at least 1024"),
    ("WS_PROXY_MAX_HEADERS=2", "WS_PROXY_MAX_HEADERS must be at least 8"),
    ("WS_PROXY_FREE_BUFS=-1", "WS_PROXY_FREE_BUFS must be at least 0"),
    ("WS_PROXY_ACCEPT_BUDGET=0", "must be at least 1"),
    ("WS_PROXY_LISTEN_BACKLOG=0", "must be at least 1"),
    ("WS_PROXY_COLD_MS=0", "must be at least 1"),
    ("WS_PROXY_KEEPALIVE_S=1", "WS_PROXY_KEEPALIVE_S must be 0 (off) or 2 to 65535"),
    ("WS_PROXY_TLS_MAX_CHAIN=0", "WS_PROXY_TLS_MAX_CHAIN must be at least 1"),
    ("WS_PROXY_TLS_CACHE_BYTES=0", "WS_PROXY_TLS_CACHE_BYTES must be at least 100"),
    # within the limits: compiles warning-free
    ("WS_PROXY_FREE_BUFS=0", None),
    ("WS_PROXY_KEEPALIVE_S=0", None),
    ("WS_PROXY_BUF_SIZE=2048 -DWS_PROXY_MAX_HEADER=1024", None),
]


def test_tunables_below_their_limits_stop_the_build(built):
    def one(t):
        define, want = t
        args = ["gcc"] + WARN + ["-fsyntax-only"] + ["-D" + d.lstrip("-D")
                                                     for d in define.split()] + ["wsproxy.c"]
        return t, compile_(args, "tunables")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, TUNABLES))
    bad = []
    for (define, want), r in results:
        if want is None and r.returncode != 0:
            bad.append("-D%s should compile:\n%s" % (define, r.stderr[:1500]))
        elif want is not None and (r.returncode == 0 or want not in first_error(r)):
            bad.append("-D%s: want #error %r first, got:\n%s" % (define, want, r.stderr[:1500]))
    assert not bad, "\n".join(bad)
