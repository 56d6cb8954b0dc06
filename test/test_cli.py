"""SPEC section 2: the wsproxy program's command line and exit statuses."""

import socket

from conftest import free_port, run_bin


def test_both_ports_exit_1(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()),
                               "--https-port", str(free_port()),
                               "--bind", "127.0.0.1", "--socket", "/tmp/x.sock"])
    assert cp.returncode == 1, cp
    assert "http_port and https_port are mutually exclusive" in cp.stderr
    assert cp.stderr.startswith("wsproxy: "), cp.stderr


def test_https_without_cert_exit_1(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--https-port", str(free_port()),
                               "--bind", "127.0.0.1", "--socket", "/tmp/x.sock"])
    assert cp.returncode == 1, cp
    assert "https_port requires SSL: set cert_file and key_file" in cp.stderr


def test_port_in_use_exit_1(wsproxy_bin):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        cp = run_bin(wsproxy_bin, ["--http-port", str(port), "--bind",
                                   "127.0.0.1", "--socket", "/tmp/x.sock"])
    finally:
        s.close()
    assert cp.returncode == 1, cp
    assert cp.stderr.startswith("wsproxy: ") and str(port) in cp.stderr, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1, \
        "want one line of reason: %r" % cp.stderr


def test_help_exit_0(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--help"])
    assert cp.returncode == 0, cp
    out = cp.stdout
    for opt in ("--http-port", "--https-port", "--socket", "--proxy-protocol",
                "--config", "--max-message", "--ping-interval"):
        assert opt in out, "--help does not mention %s" % opt


def test_version_exit_0(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--version"])
    assert cp.returncode == 0, cp
    assert cp.stdout.strip(), "--version printed nothing"


def test_unknown_option_exit_2(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--no-such-option"])
    assert cp.returncode == 2, cp
    assert cp.stderr.strip(), "no usage message on stderr"


def test_bad_proxy_protocol_value_refused(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind",
                               "127.0.0.1", "--socket", "/tmp/x.sock",
                               "--proxy-protocol", "v3"])
    assert cp.returncode in (1, 2), cp
    assert cp.stderr.strip()
