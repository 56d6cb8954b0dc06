"""The Makefile as a user drives it: a change of build variables (TLS=0,
CC=clang, CFLAGS) rebuilds what was built with the old ones, for every
target including the MariaDB plugin.  Issue 20, item 10.

Each case builds a copy of the sources in a temporary directory, so the
repository's own build/ (which other tests use) is never touched.
"""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT

SOURCES = ["Makefile", "wsproxy.c", "wsproxy.h", "program/main.c",
           "engines/mariadb/wsproxy_plugin.c", "test/unit.c"]


@pytest.fixture
def tree(tmp_path):
    for f in SOURCES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tmp_path / f)
    return tmp_path


def make(tree, *args, env=None):
    """make in the copy; returns its output (commands are echoed: no -s)."""
    e = dict(os.environ)
    for v in ("TLS", "CC", "CFLAGS", "LDFLAGS", "MAKEFLAGS", "MFLAGS"):
        e.pop(v, None)
    e.update(env or {})
    cp = subprocess.run(["make", "-C", str(tree)] + list(args), capture_output=True,
                        text=True, timeout=600, env=e, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, "make %s:\n%s%s" % (args, cp.stdout, cp.stderr)
    return cp.stdout


def version(tree, path="build/wsproxy"):
    return subprocess.run([str(tree / path), "--version"], capture_output=True, text=True,
                          timeout=10).stdout


def test_a_change_of_build_variables_rebuilds(tree):
    out = make(tree, "build/wsproxy")
    assert "-o build/wsproxy " in out, out
    assert "TLS: BearSSL" in version(tree)
    # the same variables: nothing to do
    out = make(tree, "build/wsproxy")
    assert "-o build/wsproxy " not in out, out
    # TLS=0 on the command line, then in the environment as run-demo.sh's caller sets it
    out = make(tree, "TLS=0", "build/wsproxy")
    assert "-o build/wsproxy " in out, out
    assert "no TLS" in version(tree)
    out = make(tree, "build/wsproxy", env={"TLS": "0"})
    assert "-o build/wsproxy " not in out, out
    out = make(tree, "build/wsproxy")
    assert "-o build/wsproxy " in out, out
    assert "TLS: BearSSL" in version(tree)
    # another compiler, other flags
    if shutil.which("clang"):
        out = make(tree, "CC=clang", "build/wsproxy")
        assert out.startswith("clang ") or "\nclang " in out, out
    out = make(tree, "CFLAGS=-O1", "build/wsproxy", "build/unit")
    assert "-O1 " in out and "-o build/wsproxy " in out and "-o build/unit " in out, out


def test_the_plugin_is_rebuilt_with_tls_after_a_build_without(tree):
    """The failure make run TLS=1 met after make run: a plugin built without
    TLS was "up to date" and the server said https_port: this build has no TLS."""
    if subprocess.run(["make", "-s", "-C", str(ROOT), "mariadb-version-check"],
                      capture_output=True, timeout=60).returncode != 0:
        pytest.fail("the MariaDB plugin cannot be built here: run test/deps.sh")
    out = make(tree, "TLS=0", "mariadb-plugin")
    assert "-DWS_PROXY_NO_TLS" in out and "-o build/mariadb/wsproxy.so" in out, out
    out = make(tree, "mariadb-plugin")
    assert "-o build/mariadb/wsproxy.so" in out and "-DWS_PROXY_NO_TLS" not in out, out
    out = make(tree, "mariadb-plugin")
    assert "-o build/mariadb/wsproxy.so" not in out, out
