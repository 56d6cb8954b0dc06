"""The program as a Linux service, checked with the tools that read each
piece: `make install`/`uninstall` into a temporary DESTDIR, the manual page
through mandoc and man, the systemd unit through `systemd-analyze verify`
and `security --offline=yes`, the logrotate rules through logrotate itself
(a dry run of the shipped file, and a real rotation of a running proxy's
log).  The notify protocol is in test_notify.py, the metrics in
test_metrics.py."""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, Bin, ProxySet, finish_or_fail, free_port, run_bin

DIST = ROOT / "dist"
EXPOSURE_MAX = 2.0

def run(cmd, **kw):
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kw)


def make(*args):
    cp = run(["make", "-s", "-C", str(ROOT)] + list(args), timeout=300)
    assert cp.returncode == 0, "make %s failed:\n%s%s" % (args, cp.stdout, cp.stderr)
    return cp


def tree(root):
    """Files under root, as paths relative to it."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.is_file() or p.is_symlink())


INSTALLED = [
    "etc/logrotate.d/wsproxy",
    "etc/wsproxy/wsproxy.conf",
    "usr/local/bin/wsproxy",
    "usr/local/include/wsproxy.h",
    "usr/local/lib/systemd/system/wsproxy.service",
    "usr/local/share/man/man1/wsproxy.1",
]


def test_install_file_list_and_installed_binary_runs(tmp_path):
    dest = tmp_path / "dest"
    make("install", "DESTDIR=%s" % dest)
    assert tree(dest) == INSTALLED
    modes = {f: stat.S_IMODE((dest / f).stat().st_mode) for f in INSTALLED}
    assert modes.pop("usr/local/bin/wsproxy") == 0o755
    assert set(modes.values()) == {0o644}, modes
    assert (dest / "usr/local/include/wsproxy.h").read_bytes() == \
        (ROOT / "wsproxy.h").read_bytes()

    exe = dest / "usr/local/bin/wsproxy"
    # stripped (issue 20, item 11): no symbol table and no debug sections,
    # while build/wsproxy keeps them for a debugger
    sections = run(["readelf", "-S", "-W", str(exe)]).stdout
    assert ".symtab" not in sections and ".debug_" not in sections, sections
    assert ".debug_info" in run(["readelf", "-S", "-W", str(ROOT / "build/wsproxy")]).stdout
    assert exe.stat().st_size < (ROOT / "build/wsproxy").stat().st_size
    cp = run([str(exe), "--version"])
    assert cp.returncode == 0 and cp.stdout.startswith("wsproxy "), cp
    # The installed binary serves: a WebSocket through it reaches an engine.
    ps = ProxySet(Bin("installed", str(exe), False), tmp_path)
    try:
        p = ps.start()
        c = p.ws()
        c.echo(b"through the installed binary")
        c.close()
    finally:
        finish_or_fail(ps)

    make("uninstall", "DESTDIR=%s" % dest)
    assert tree(dest) == []


def test_install_keeps_an_existing_config(tmp_path):
    dest = tmp_path / "dest"
    conf = dest / "etc/wsproxy/wsproxy.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[wsproxy]\nhttp_port = 9999\n")
    cp = make("install", "DESTDIR=%s" % dest)
    assert "keeping" in cp.stdout
    assert conf.read_text() == "[wsproxy]\nhttp_port = 9999\n"
    make("install", "DESTDIR=%s" % dest)      # twice: still kept
    assert conf.read_text() == "[wsproxy]\nhttp_port = 9999\n"
    cp = make("uninstall", "DESTDIR=%s" % dest)
    assert tree(dest) == ["etc/wsproxy/wsproxy.conf"], "changed config removed"
    # An unchanged example goes with uninstall.
    conf.unlink()
    make("install", "DESTDIR=%s" % dest)
    make("uninstall", "DESTDIR=%s" % dest)
    assert tree(dest) == []


def test_install_paths_follow_prefix(tmp_path):
    dest = tmp_path / "dest"
    make("install", "DESTDIR=%s" % dest, "PREFIX=/opt/ws", "SYSCONFDIR=/opt/ws/etc")
    unit = (dest / "opt/ws/lib/systemd/system/wsproxy.service").read_text()
    assert "\nExecStart=/opt/ws/bin/wsproxy --config /opt/ws/etc/wsproxy/wsproxy.conf\n" in unit
    man = (dest / "opt/ws/share/man/man1/wsproxy.1").read_text()
    assert "/opt/ws/etc/wsproxy/wsproxy.conf" in man and "/etc/wsproxy/wsproxy.conf" \
        not in man.replace("/opt/ws/etc/wsproxy/wsproxy.conf", "")
    assert (dest / "opt/ws/etc/wsproxy/wsproxy.conf").is_file()
    assert (dest / "opt/ws/bin/wsproxy").is_file()


# ---------------------------------------------------------------------------
# the manual page
# ---------------------------------------------------------------------------

def test_manual_page_lints_clean():
    cp = run(["mandoc", "-T", "lint", "-W", "all", str(DIST / "wsproxy.1")])
    assert cp.returncode == 0 and not cp.stdout and not cp.stderr, cp


def test_manual_page_renders_with_man():
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0")
    cp = run(["man", "--warnings", "-l", str(DIST / "wsproxy.1")], env=env)
    assert cp.returncode == 0, cp
    assert not cp.stderr.strip(), "troff warnings:\n" + cp.stderr
    text = re.sub(r".\x08", "", cp.stdout)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                    "CONFIGURATION FILE", "SIGNALS", "EXIT STATUS", "ENVIRONMENT",
                    "FILES", "METRICS", "SECURITY", "EXAMPLES", "SEE ALSO"):
        assert re.search(r"^%s$" % section, text, re.M), "no section %s" % section
    for word in ("PROXY header", "SIGHUP", "SIGUSR1", "NOTIFY_SOCKET",
                 "/etc/wsproxy/wsproxy.conf", "websocket_proxy.log", "Origin"):
        assert word in text, word


def man_options():
    """The options the OPTIONS section describes (its .TP tags)."""
    src = (DIST / "wsproxy.1").read_text()
    body = src.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
    tags = re.findall(r"^\.TP\n(.*)$", body, re.M)
    opts = set()
    for tag in tags:
        m = re.match(r"^\.B[IR]? \\-\\-([a-z][a-z0-9\\-]*)", tag)
        assert m, "OPTIONS entry that is not an option: %r" % tag
        opts.add("--" + m.group(1).replace("\\-", "-"))
    return opts


def help_options(b):
    cp = run_bin(b, ["--help"])
    assert cp.returncode == 0, cp
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cp.stdout))


def test_manual_page_and_help_list_the_same_options(wsproxy_bin):
    in_man, in_help = man_options(), help_options(wsproxy_bin)
    assert in_help - in_man == set(), "in --help but not in wsproxy.1"
    assert in_man - in_help == set(), "in wsproxy.1 but not in --help"


# ---------------------------------------------------------------------------
# the systemd unit
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed_unit(tmp_path_factory):
    """The unit as `make install` writes it, with every path it names (the
    binary, the configuration, the manual page) installed under a temporary
    PREFIX, so systemd-analyze can check that they exist."""
    root = tmp_path_factory.mktemp("prefix")
    make("install", "PREFIX=%s/usr" % root, "SYSCONFDIR=%s/etc" % root)
    unit = root / "usr/lib/systemd/system/wsproxy.service"
    assert unit.is_file()
    return unit, root


def test_unit_verifies(installed_unit):
    unit, root = installed_unit
    env = dict(os.environ, MANPATH="%s/usr/share/man" % root)
    cp = run(["systemd-analyze", "verify", str(unit)], env=env, cwd=str(root))
    assert cp.returncode == 0 and not cp.stdout.strip() and not cp.stderr.strip(), cp
    # The same check fails loudly when something it names is missing: it
    # really looks at the paths.
    env["MANPATH"] = str(root / "nowhere")
    cp = run(["systemd-analyze", "verify", str(unit)], env=env, cwd=str(root))
    assert cp.returncode != 0 and "man wsproxy(1)" in cp.stderr, cp


def test_unit_settings():
    unit = (DIST / "wsproxy.service").read_text()
    settings = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            settings.setdefault(k, []).append(v)
    want = {"Type": "notify", "DynamicUser": "yes", "NoNewPrivileges": "yes",
            "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
            "CapabilityBoundingSet": "", "ExecReload": "/bin/kill -HUP $MAINPID",
            "ExecStart": "/usr/local/bin/wsproxy --config /etc/wsproxy/wsproxy.conf",
            "LogsDirectory": "wsproxy"}
    for k, v in want.items():
        assert settings.get(k, [None])[0] == v, (k, settings.get(k))
    assert "@system-service" in settings["SystemCallFilter"]
    # Two descriptors per connection, for far more than the default 1024.
    assert int(settings["LimitNOFILE"][0]) >= 2 * 1024 + 64


def exposure(unit):
    cp = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)])
    m = re.search(r"Overall exposure level for wsproxy\.service: (\d+\.\d+)", cp.stdout)
    assert m, cp
    return float(m.group(1)), cp


def test_unit_security_exposure(installed_unit):
    unit, _ = installed_unit
    score, cp = exposure(unit)
    assert score <= EXPOSURE_MAX, cp.stdout
    # docs/service.md publishes the figure: keep it true.
    doc = (ROOT / "docs" / "service.md").read_text()
    assert "exposure level %.1f" % score in doc, \
        "docs/service.md does not state the exposure level %.1f" % score


# ---------------------------------------------------------------------------
# logrotate
# ---------------------------------------------------------------------------

def test_logrotate_rules_dry_run(tmp_path):
    cp = run(["logrotate", "-d", "-s", str(tmp_path / "state"),
              str(DIST / "wsproxy.logrotate")])
    out = cp.stdout + cp.stderr
    assert cp.returncode == 0, out
    assert "error" not in out.lower(), out
    assert "rotating pattern: /var/log/wsproxy/websocket_proxy.log" in out, out


def test_logrotate_rotates_a_running_proxys_log(proxy, tmp_path):
    """A real rotation with the shipped rules, pointed at a proxy's log and
    with its postrotate signalling that proxy: the old lines move to .1,
    the proxy writes new ones to a fresh websocket_proxy.log."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    p = proxy(log_dir=logs)
    c = p.ws()
    c.echo(b"before rotation")
    c.close()
    p.wait_log(r"closed 1000")

    rules = (DIST / "wsproxy.logrotate").read_text()
    rules = rules.replace("/var/log/wsproxy/", "%s/" % logs)
    assert "systemctl kill --kill-whom=main --signal=SIGUSR1 wsproxy.service" in rules
    rules = re.sub(r"systemctl kill .*", "kill -USR1 %d" % p.proc.pid, rules)
    conf = tmp_path / "rules"
    conf.write_text(rules)
    os.chmod(conf, 0o644)
    cp = run(["logrotate", "-f", "-v", "-s", str(tmp_path / "state"), str(conf)])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "running postrotate script" in cp.stderr + cp.stdout

    rotated = logs / "websocket_proxy.log.1"
    assert "closed 1000" in rotated.read_text()
    c = p.ws()
    c.echo(b"after rotation")
    c.close()
    line = p.wait_log(r"closed 1000")           # in the new file
    assert line
    assert p.log().count("closed 1000") == 1, p.log()
    assert rotated.read_text().count("closed 1000") == 1
    assert p.alive()


# ---------------------------------------------------------------------------
# the example configuration
# ---------------------------------------------------------------------------

def test_example_config_runs_with_every_setting(proxy, engine, tmp_path):
    """The shipped wsproxy.conf starts the program as it is (paths pointed
    at the test's engine, port and log), and so does a copy with every
    commented-out setting switched on (https_port and its files aside)."""
    e = engine("echo")
    text = (DIST / "wsproxy.conf").read_text()
    settings = re.findall(r"^#? ?([a-z_]+) = (.*)$", text, re.M)
    assert len(settings) >= 19, settings
    tls_only = {"https_port", "cert_file", "key_file"}
    for i, everything in enumerate((False, True)):
        port = free_port()
        logs = tmp_path / ("logs%d" % i)
        logs.mkdir()
        lines = []
        for line in text.splitlines():
            m = re.match(r"^(#? ?)([a-z_]+) = (.*)$", line)
            if m and m.group(2) not in tls_only and (everything or not m.group(1)):
                key, value = m.group(2), m.group(3)
                value = {"http_port": str(port), "socket_path": e.path,
                         "log_dir": str(logs)}.get(key, value)
                line = "%s = %s" % (key, value)
            lines.append(line)
        conf = tmp_path / ("wsproxy%d.conf" % i)
        conf.write_text("\n".join(lines) + "\n")
        p = proxy("--config", conf, raw=True, port=port, engine=e, log_dir=logs)
        c = p.ws(headers=[("Origin", "https://studio.example.com")])
        c.echo(b"example configuration")
        c.close()
        line = p.wait_log(r"started: listening on ws://127\.0\.0\.1:%d" % port)
        if everything:
            assert "allowed_origins=https://studio.example.com" in line, line
            assert "metrics_path=/metrics" in line, line
