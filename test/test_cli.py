"""SPEC section 2: the wsproxy program's command line and exit statuses."""

import re
import signal
import socket
import subprocess

import pytest

from conftest import ROOT_ARGS, Bin, free_port, port_accepts, run_bin, wait_until


def test_both_ports_exit_2(wsproxy_bin):
    """A configuration error (issue 20, item 16: it exited 1)."""
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()),
                               "--https-port", str(free_port()),
                               "--bind", "127.0.0.1", "--socket", "/tmp/x.sock"])
    assert cp.returncode == 2, cp
    assert "--http-port and --https-port are mutually exclusive" in cp.stderr
    assert cp.stderr.startswith("wsproxy: "), cp.stderr


def test_https_without_cert_exit_2(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--https-port", str(free_port()),
                               "--bind", "127.0.0.1", "--socket", "/tmp/x.sock"])
    assert cp.returncode == 2, cp
    assert "--https-port requires SSL: give --cert FILE and --key FILE" in cp.stderr


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


# ---------------------------------------------------------------------------
# Issue 12, point 10: a Unix tool, and operators see what it does
# ---------------------------------------------------------------------------

USAGE_LINE = "usage: wsproxy --socket PATH"


def assert_usage_error(cp, reason):
    assert cp.returncode == 2, cp
    lines = cp.stderr.splitlines()
    assert lines[0].startswith("wsproxy: ") and reason in lines[0], cp.stderr
    assert any(line.startswith(USAGE_LINE) for line in lines), cp.stderr


def test_bare_wsproxy_is_a_usage_error(wsproxy_bin):
    """It exited 1 with "socket_path is not set"."""
    assert_usage_error(run_bin(wsproxy_bin, [], root_args=False), "no engine socket: give --socket PATH")


def test_bad_number_is_a_usage_error(wsproxy_bin):
    """--http-port abc exited 1."""
    assert_usage_error(run_bin(wsproxy_bin, ["--http-port", "abc", "--socket", "/tmp/x.sock"]),
                       "--http-port: not a port number (1-65535): abc")
    assert_usage_error(run_bin(wsproxy_bin, ["--socket", "/tmp/x.sock", "--http-port", "1",
                                             "--idle-timeout", "-5"]),
                       "--idle-timeout: not a number")


@pytest.mark.parametrize("args", [["--socket", "/tmp/x.sock"],
                                  ["--socket", "/tmp/x.sock", "--http-port", "0"]],
                         ids=["socket-alone", "port-0"])
def test_no_port_exits_2_with_a_reason(wsproxy_bin, args):
    """It logged "not listening" and ran forever."""
    assert_usage_error(run_bin(wsproxy_bin, args, timeout=10, root_args=False),
                       "no port to listen on")


@pytest.mark.parametrize("args,reason", [
    (["--no-such-option"], "unknown or ambiguous option: --no-such-option"),
    (["-x"], "unknown option: -x"),
    (["--socket"], "--socket needs a value"),
    (["--allow-root=yes"], "--allow-root takes no value"),
    (["--socket", "/tmp/x.sock", "stray"], "unexpected argument: stray"),
], ids=["unknown", "short", "missing-value", "flag-value", "stray"])
def test_usage_messages_say_wsproxy_not_argv0(wsproxy_bin, tmp_path, args, reason):
    link = tmp_path / "some-other-name"
    link.symlink_to(wsproxy_bin.path)
    b = Bin(wsproxy_bin.name, str(link), wsproxy_bin.slow)
    cp = run_bin(b, args, root_args=False)
    assert_usage_error(cp, reason)
    assert str(link) not in cp.stderr and "some-other-name" not in cp.stderr, cp.stderr


def test_every_error_line_is_prefixed(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock", "--cert", "/nonexistent.pem",
                               "--key", "/nonexistent.key", "--https-port", "1"])
    assert cp.returncode == 2 and cp.stderr.startswith("wsproxy: "), cp


def test_missing_or_non_socket_path_warned_at_start_and_restart(proxy, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    missing = str(tmp_path / "engine-not-yet.sock")
    p = proxy(engine=None, socket_path=missing, log_dir=logdir)
    p.wait_log(r"WARN \[proxy\] engine socket %s: No such file or directory" % re.escape(missing))
    n0 = len(p.log())
    p.signal(signal.SIGHUP)
    p.wait_log(r"WARN \[proxy\] engine socket %s: No such file" % re.escape(missing), start=n0)
    plain = tmp_path / "plain-file"
    plain.write_text("not a socket")
    p2 = proxy(engine=None, socket_path=str(plain), log_dir=logdir)
    p2.wait_log(r"engine socket %s is not a socket" % re.escape(str(plain)))


def test_engine_socket_present_gives_no_warning(proxy, engine, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    p = proxy(engine=engine("echo"), log_dir=logdir)
    p.wait_log(r"started")
    c = p.ws()
    c.close()
    assert "engine socket" not in p.log(), p.log()


def test_failed_reload_is_logged_to_the_log_file(proxy, engine, tmp_path):
    """A failed SIGHUP reload reached stderr only."""
    e = engine("echo")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    port = free_port()
    cfg = tmp_path / "w.cnf"
    cfg.write_text("[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\nsocket = %s\n"
                   "log_dir = %s\n" % (port, e.path, logdir))
    p = proxy("--config", cfg, raw=True, port=port, engine=e, log_dir=logdir)
    p.wait_log(r"started")
    cfg.write_text(cfg.read_text() + "idle_timeout = later\n")
    p.signal(signal.SIGHUP)
    line = p.wait_log(r"ERROR \[proxy\] reload failed")
    assert "%s:6: idle_timeout: not a number" % cfg in line, line
    # a configuration that reads but cannot be applied: logged as well
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        cfg.write_text("[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\nsocket = %s\n"
                       "log_dir = %s\n" % (blocker.getsockname()[1], e.path, logdir))
        p.signal(signal.SIGHUP)
        line = p.wait_log(r"ERROR \[proxy\] restart failed, still serving as before")
        # glibc's wording, or musl's (the static musl build runs this too)
        assert re.search(r"Address (already )?in use", line), line
    finally:
        blocker.close()
    assert p.alive()
    c = p.ws()
    c.echo(b"still serving")
    c.close()


def test_engine_address_spellings(wsproxy_bin, proxyset):
    """--socket takes a Unix path or a numeric IP:PORT; a host name is
    refused at start, and a TCP engine draws no 'engine socket' warning."""
    cp = run_bin(wsproxy_bin, ["--socket", "localhost:3306", "--bind", "127.0.0.1",
                               "--http-port", str(free_port())])
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    # the command line's flag, not the file's key (issue 20, item 13)
    assert "wsproxy: --socket: neither a Unix socket path (starting with / or .) nor a " \
           "numeric IPv4:PORT or [IPv6]:PORT: localhost:3306" in cp.stderr, cp.stderr
    p = proxyset.start(engine=proxyset.engine("echo", kind="tcp"))
    c = p.ws()
    c.echo(b"over tcp")
    c.close()
    assert "-> tcp:127.0.0.1:" in p.stderr() and "engine socket" not in p.stderr(), p.stderr()


# ---------------------------------------------------------------------------
# Issue 20, item 13: messages that say what to do
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("typo,want", [
    ("--max-conections", "--max-connections"),
    ("--alowed-origin", "--allowed-origin"),
    ("--https_port", "--https-port"),
    ("--proxy-protocl", "--proxy-protocol"),
])
def test_a_misspelt_option_gets_the_nearest_one(wsproxy_bin, typo, want):
    cp = run_bin(wsproxy_bin, ["--socket", "/tmp/x.sock", typo, "5"], root_args=False)
    assert_usage_error(cp, "unknown or ambiguous option: %s (did you mean %s?)" % (typo, want))


def test_an_option_far_from_any_gets_no_guess(wsproxy_bin):
    cp = run_bin(wsproxy_bin, ["--frobnicate"], root_args=False)
    assert_usage_error(cp, "unknown or ambiguous option: --frobnicate")
    assert "did you mean" not in cp.stderr, cp.stderr


def test_command_line_errors_name_the_flags(wsproxy_bin, tmp_path):
    """They named the file's keys (cert_file, key_file) for --cert/--key."""
    cp = run_bin(wsproxy_bin, ["--https-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock"])
    assert "--https-port requires SSL: give --cert FILE and --key FILE" in cp.stderr, cp.stderr
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--https-port",
                               str(free_port()), "--socket", "/tmp/x.sock"])
    assert "--http-port and --https-port are mutually exclusive" in cp.stderr, cp.stderr
    if "no TLS" in run_bin(wsproxy_bin, ["--version"]).stdout:
        return
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cp = run_bin(wsproxy_bin, ["--https-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock", "--cert", str(bad), "--key", str(bad)])
    assert cp.returncode == 1, cp
    assert cp.stderr == "wsproxy: --cert %s: not a PEM file\n" % bad, cp.stderr


def test_an_origin_without_a_scheme_is_warned_about(wsproxy_bin, engine):
    """`example.com` can never equal a browser's Origin (scheme://host[:port])."""
    e = engine("echo")
    port = free_port()
    pr = subprocess.Popen([wsproxy_bin.path, "--http-port", str(port), "--bind", "127.0.0.1",
                           "--socket", e.path, "--allowed-origin", "example.com",
                           "--allowed-origin", "https://ok.example"] + ROOT_ARGS,
                          stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_accepts(port) or pr.poll() is not None, 30, what="listening")
    finally:
        pr.send_signal(signal.SIGTERM)
        err = pr.communicate(timeout=30)[1]
    warn = [ln for ln in err.splitlines() if "WARN" in ln and "example.com" in ln]
    assert len(warn) == 1 and "https://example.com" in warn[0] and "ok.example" not in warn[0], err
