"""The --config file, read the way MariaDB reads an option file (issue 12,
point 4), and the command line overriding it (point 5).

MariaDB itself is the oracle: Debian's `my_print_defaults --defaults-file=F
wsproxy` prints what MariaDB's reader (mysys/my_default.c) makes of a file,
and the tests compare it with what wsproxy logs in its "started" line (the
configuration in force).  Where wsproxy deliberately differs (see docs/program.md),
the test says so.  Run with /usr/bin/python3 (Debian's pytest)."""

import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import free_port, run_bin, wait_until, port_accepts, ws_request, assert_complete

ORACLE = shutil.which("my_print_defaults")


def oracle(path, *groups):
    """MariaDB's reading of `path`: [(name, value or None)] in order."""
    assert ORACLE, "my_print_defaults is missing (mariadb-client; test/deps.sh installs it)"
    cp = subprocess.run([ORACLE, "--defaults-file=%s" % path] + list(groups or ["wsproxy"]),
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, "my_print_defaults failed: %s" % cp.stderr
    out = []
    for line in cp.stdout.split("\n")[:-1]:
        if not line.startswith("--"):    # a value holding "\n"
            assert out and out[-1][1] is not None, cp.stdout
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
            continue
        name, eq, value = line[2:].partition("=")
        out.append((name, value if eq else None))
    return out


def started(p):
    """{setting: value} from the proxy's "started" log line."""
    line = p.wait_log(r"started: listening on")
    m = re.search(r"listening on (\S+) -> (?:unix|tcp):(.*?); (.*)$", line)
    assert m, line
    vals = {"listen": m.group(1), "socket": m.group(2)}
    rest = m.group(3)
    for key in ("allowed_origins", "subprotocols"):
        mm = re.search(r"%s=(.*?)(?: \w+=|$)" % key, rest)
        if mm:   # a long line is cut at 1 KiB
            vals[key] = mm.group(1)
    for key, val in re.findall(r"(\w+)=(\S+)", rest):
        vals.setdefault(key, val)
    return vals


def start(proxy, cfg, *args, port=None, **kw):
    return proxy("--config", cfg, *args, raw=True, port=port, engine=None, **kw)


def base(port, sock):
    return "[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\nsocket = %s\n" % (port, sock)


# Values written in every way MariaDB's reader accepts, each on its own
# allowed_origin line (commas would split the list, so none contain one).
VALUE_FORMS = [
    "allowed_origin = plain",
    "allowed_origin=nospace",
    "allowed_origin   =   padded   ",
    "allowed_origin\t=\ttabs\t",
    'allowed_origin = "double"',
    "allowed_origin = 'single'",
    'allowed_origin = "with # hash" # and a comment',
    "allowed_origin = inline # comment",
    "allowed_origin = 'it\\'s'",
    'allowed_origin = "say \\"hi\\""',
    "allowed_origin = back\\\\slash",
    "allowed_origin = keep\\qunknown",
    "allowed_origin = a\\sspace",
    "allowed_origin = \"mismatched'",
    "allowed_origin = \"x\"y\"",
    "allowed_origin = semi ; part of the value",
    "allowed-origin = dashes",
    "  allowed_origin = indented",
    "allowed_origin = crlf\r",
]


def test_values_read_as_mariadb_reads_them(proxy, engine, tmp_path):
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "wsproxy.cnf"
    cfg.write_text(base(port, e.path) + "# a comment\n; another\n" +
                   "\n".join(VALUE_FORMS) + "\n")
    want = [v for k, v in oracle(cfg) if k.replace("-", "_") == "allowed_origin"]
    assert len(want) == len(VALUE_FORMS), want
    # what MariaDB made of them, spelled out (the oracle must not drift)
    assert want[:14] == ["plain", "nospace", "padded", "tabs", "double", "single",
                         "with # hash", "inline", "it's", 'say "hi"', "back\\slash",
                         "keep\\qunknown", "a space", "\"mismatched'"], want
    p = start(proxy, cfg, port=port)
    assert started(p)["allowed_origins"] == ",".join(want)


def test_quoted_bind_and_socket_work(proxy, engine, tmp_path):
    """bind_address = "127.0.0.1" used to fail, socket = '/path' was taken with
    its quotes (every client got 502)."""
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "wsproxy.cnf"
    cfg.write_text('[wsproxy]\nhttp_port = "%d"\nbind_address = "127.0.0.1"\n'
                   "socket = '%s'   # the engine\n" % (port, e.path))
    assert oracle(cfg) == [("http_port", str(port)), ("bind_address", "127.0.0.1"),
                           ("socket", e.path)]
    p = start(proxy, cfg, port=port)
    assert started(p)["socket"] == e.path
    c = p.ws()
    c.echo(b"through a quoted socket path")
    c.close()


def test_sections_shared_with_the_engine(proxy, engine, tmp_path):
    """A my.cnf shared with MariaDB: only [wsproxy] (any case) and the
    --config-section are read; port = 3306 under [mariadbd] is not an error."""
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "my.cnf"
    cfg.write_text("[client]\nport = 3306\nsocket = /wrong/client.sock\n"
                   "[mariadbd]\nport = 3306\nbind-address = not-an-address\n"
                   "proxy_protocol_networks = localhost\n"
                   "[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\n"
                   "[mysqld]\nsocket = /wrong/mysqld.sock\n"
                   "[WSProxy]\nsocket = %s\n"
                   "[engine]\nsubprotocols = mysql\n"
                   "[ wsproxy ]\nallowed_origin = https://spaced.example\n" % (port, e.path))
    got = oracle(cfg, "wsproxy", "engine")
    assert ("port", "3306") not in got and ("subprotocols", "mysql") in got
    # MariaDB does not strip a blank after '[' (the group " wsproxy" matches
    # nothing); wsproxy does, and reads that last section too.
    assert ("allowed_origin", "https://spaced.example") not in got
    p = start(proxy, cfg, "--config-section", "engine", port=port)
    v = started(p)
    assert v["socket"] == e.path and v["subprotocols"] == "mysql", v
    assert v["allowed_origins"] == "https://spaced.example", v
    assert v["listen"] == "ws://127.0.0.1:%d" % port
    # without --config-section the [engine] section is ignored
    p.finish()
    p2 = start(proxy, cfg, port=port)
    assert started(p2)["subprotocols"] == "(none)"


def test_lines_before_any_section_are_wsproxy_settings(proxy, engine, tmp_path):
    """Files written for earlier wsproxy versions have no section header
    (MariaDB refuses such a file: a documented difference)."""
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "old.cnf"
    cfg.write_text("http_port = %d\nbind_address = 127.0.0.1\nsocket_path = %s\n" % (port, e.path))
    cp = subprocess.run([ORACLE, "--defaults-file=%s" % cfg, "wsproxy"], capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode != 0 and "without preceding group" in cp.stderr
    p = start(proxy, cfg, port=port)
    assert started(p)["socket"] == e.path


def test_include_and_includedir(proxy, engine, tmp_path):
    e = engine("echo")
    port = free_port()
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "20-b.cnf").write_text("[wsproxy]\nallowed_origin = https://b.example\n")
    (d / "10-a.cnf").write_text("[wsproxy]\nallowed_origin = https://a.example\n")
    (d / "30-c.conf").write_text("[wsproxy]\nallowed_origin = https://ignored.example\n")
    (d / "ignored.cnf.bak").write_text("[wsproxy]\nallowed_origin = https://bak.example\n")
    inc = tmp_path / "inc.cnf"
    inc.write_text("[wsproxy]\nsubprotocol = chat\n[mariadbd]\nport = 1\n")
    cfg = tmp_path / "my.cnf"
    cfg.write_text(base(port, e.path) + "!include %s\n!includedir %s\n"
                   "allowed_origin = https://last.example\n" % (inc, d))
    want = [v for k, v in oracle(cfg) if k == "allowed_origin"]
    assert want == ["https://a.example", "https://b.example", "https://last.example"]
    assert ("subprotocol", "chat") in oracle(cfg)
    p = start(proxy, cfg, port=port)
    v = started(p)
    assert v["allowed_origins"] == ",".join(want), v
    assert v["subprotocols"] == "chat"


def test_relative_include_is_beside_the_including_file(proxy, engine, tmp_path):
    """MariaDB takes a relative !include from the current directory; wsproxy
    from the including file's directory (a documented difference)."""
    e = engine("echo")
    port = free_port()
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "extra.cnf").write_text("[wsproxy]\nsubprotocol = rel\n")
    cfg = sub / "wsproxy.cnf"
    cfg.write_text(base(port, e.path) + "!include extra.cnf\n")
    p = start(proxy, cfg, port=port)
    assert started(p)["subprotocols"] == "rel"


def test_long_lines_are_never_split(proxy, engine, tmp_path):
    """A line over 4,095 bytes was split, and a tail holding '=' applied as
    a setting of its own."""
    e = engine("echo")
    port = free_port()
    long_origin = "https://" + "a" * 5000 + ".example"
    tail = "x" * (4095 - len("subprotocol = ")) + "max_message=5"
    cfg = tmp_path / "long.cnf"
    cfg.write_text(base(port, e.path) + "subprotocol = %s\nallowed_origin = %s\n"
                   % (tail, long_origin))
    p = start(proxy, cfg, port=port)
    assert started(p)["max_message"] == "0", "a line's tail was applied as a setting"
    # the whole values are in force (the log line is too short to show them)
    c = p.ws(headers=[("Origin", long_origin)])
    c.echo(b"x" * 10)
    c.close()
    c = p.ws(headers=[("Sec-WebSocket-Protocol", tail)])
    assert c.response.header("Sec-WebSocket-Protocol") == tail
    c.close()
    assert_complete(p.http(ws_request(headers=[("Origin", "https://other.example")])), 403)


def check_origins(p, origins):
    for o in (origins[0], origins[64], origins[69]):
        c = p.ws(headers=[("Origin", o)])
        c.close()
    assert_complete(p.http(ws_request(headers=[("Origin", "https://o70")])), 403)


def test_seventy_origins_in_the_file_and_on_the_command_line(proxy, engine, tmp_path):
    """The 65th string option failed with "out of memory"."""
    e = engine("echo")
    port = free_port()
    origins = ["https://o%d" % i for i in range(70)]
    cfg = tmp_path / "many.cnf"
    cfg.write_text(base(port, e.path) + "".join("allowed_origin = %s\n" % o for o in origins))
    check_origins(start(proxy, cfg, port=port), origins)
    args = []
    for o in origins:
        args += ["--allowed-origin", o]
    check_origins(proxy(*args, engine=e), origins)


def run_until_listening(b, cfg, port):
    """wsproxy --config cfg (no ROOT_ARGS): its stderr once it listened and
    was stopped with SIGTERM."""
    pr = subprocess.Popen([b.path, "--config", str(cfg)], stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_accepts(port) or pr.poll() is not None, 10 * (3 if b.slow else 1),
                   what="wsproxy to listen")
    finally:
        if pr.poll() is None:
            pr.send_signal(signal.SIGTERM)
        err = pr.communicate(timeout=30)[1]
    assert pr.returncode == 0, err
    return err


def test_booleans_prefixes_and_dashes(wsproxy_bin, engine, tmp_path):
    """Bare boolean keys, loose-/skip-/enable- prefixes, K/M suffixes and '-'
    or '_' in keys, as MariaDB takes them.  Started as root, allow_root in the
    file is what lets wsproxy run (without it: the refusal, exit 1)."""
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "b.cnf"
    body = (base(port, e.path) + "loose-no-such-setting = 1\nloose_other\n"
            "handshake-timeout-ms = 2K\n")
    cfg.write_text(body + "allow_root\n")
    got = oracle(cfg)
    assert ("loose-no-such-setting", "1") in got and ("allow_root", None) in got, got
    for text, runs in ((body + "allow_root\n", True), (body + "allow-root = on\n", True),
                       (body + "enable-allow-root\n", True), (body, False),
                       (body + "allow_root\nskip-allow-root\n", False),
                       (body + "allow_root = 0\n", False)):
        cfg.write_text(text)
        if runs or os.geteuid() != 0:
            err = run_until_listening(wsproxy_bin, cfg, port)
            assert "handshake_timeout_ms=2048" in err, err
            assert ("running as root (--allow-root)" in err) == (os.geteuid() == 0), err
        else:
            cp = run_bin(wsproxy_bin, ["--config", str(cfg)], root_args=False)
            assert cp.returncode == 1 and "refusing to run as root" in cp.stderr, (text, cp)


# Each broken file: (text, what the error must say).  Every error names the
# file and the line.
BAD_FILES = [
    ("[wsproxy]\nhttp_port = 8080\nno_such_setting = 1\n", 3, "unknown setting: no_such_setting"),
    ("[wsproxy]\n\n\nbind_address = localhost\n", 4,
     "bind_address: not a numeric IPv4 or IPv6 address: localhost"),
    ("[wsproxy]\nhttp_port = 80 80\n", 2, "http_port: not a port number"),
    ("[wsproxy]\nhttp_port = 8080 ; a comment\n", 2, "http_port: not a port number"),
    ("[wsproxy\nx = 1\n", 1, "section header without ']'"),
    ("[wsproxy]\nsocket\n", 2, "socket: needs a value"),
    ("[wsproxy]\nmax_connections = 2000000\n", 2, "max_connections: not a number from 0 to 1000000"),
    ("[wsproxy]\nproxy_protocol = v3\n", 2, "proxy_protocol: expected v2, v1 or off"),
    ("[wsproxy]\n= value\n", 2, "a value without a setting name"),
    ("[wsproxy]\nconfig = /etc/other.cnf\n", 2, "config: only on the command line"),
    ("[wsproxy]\n!include /nonexistent/x.cnf\n", 2, "!include /nonexistent/x.cnf"),
    ("[wsproxy]\n!includedir /nonexistent/d\n", 2, "/nonexistent/d: No such file or directory"),
    ("[wsproxy]\n!include\n", 2, "!include needs a file name"),
    ("[wsproxy]\n!includ /x\n", 2, "unknown directive"),
    ("[wsproxy]\nallow_root = maybe\n", 2, "allow_root: not a boolean"),
    ("[wsproxy]\nsocket = /tmp/" + "s" * 120 + "\n", 2, "socket: longer than 107 bytes"),
    ("[wsproxy]\nhttp_port = 8080\x00\n", 2, "NUL byte"),
]


@pytest.mark.parametrize("text,line,what", BAD_FILES,
                         ids=["unknown", "bind", "port", "semicolon", "section", "bare",
                              "maxconn", "pp", "noname", "config", "include", "includedir",
                              "include-empty", "directive", "bool", "socketlen", "nul"])
def test_errors_name_file_and_line(wsproxy_bin, tmp_path, text, line, what):
    cfg = tmp_path / "bad.cnf"
    cfg.write_bytes(text.encode())
    cp = run_bin(wsproxy_bin, ["--config", str(cfg), "--socket", "/tmp/x.sock",
                               "--http-port", str(free_port())])
    assert cp.returncode == 2, cp
    first = cp.stderr.splitlines()[0]
    assert first.startswith("wsproxy: %s:%d: " % (cfg, line)), cp.stderr
    assert what in first, cp.stderr


def test_include_loop_is_an_error(wsproxy_bin, tmp_path):
    cfg = tmp_path / "self.cnf"
    cfg.write_text("[wsproxy]\n!include %s\n" % cfg)
    cp = run_bin(wsproxy_bin, ["--config", str(cfg)])
    assert cp.returncode == 2
    assert "%s:2: !include nested more than 10 deep" % cfg in cp.stderr, cp.stderr


def test_error_in_included_file_names_that_file(wsproxy_bin, tmp_path):
    inc = tmp_path / "inc.cnf"
    inc.write_text("[wsproxy]\n\nidle_timeout = soon\n")
    cfg = tmp_path / "main.cnf"
    cfg.write_text("[wsproxy]\n!include %s\n" % inc)
    cp = run_bin(wsproxy_bin, ["--config", str(cfg)])
    assert cp.returncode == 2
    assert cp.stderr.startswith("wsproxy: %s:3: idle_timeout: not a number" % inc), cp.stderr


def test_missing_config_file(wsproxy_bin, tmp_path):
    cp = run_bin(wsproxy_bin, ["--config", str(tmp_path / "none.cnf")])
    assert cp.returncode == 2
    assert cp.stderr.startswith("wsproxy: %s: No such file or directory" % (tmp_path / "none.cnf"))


# ---------------------------------------------------------------------------
# point 5: the command line overrides the file, lists included
# ---------------------------------------------------------------------------

def test_command_line_overrides_every_option(proxy, engine, tmp_path):
    e = engine("echo")
    port, file_port = free_port(), free_port()
    cfg = tmp_path / "o.cnf"
    cfg.write_text("[wsproxy]\nhttp_port = %d\nbind_address = 0.0.0.0\nsocket = /wrong.sock\n"
                   "max_message = 10\nproxy_protocol = off\nsubprotocol = a\nsubprotocol = b\n"
                   % file_port)
    p = start(proxy, cfg, "--http-port", port, "--bind", "127.0.0.1", "--socket", e.path,
              "--max-message", "1M", "--proxy-protocol", "v1", "--subprotocol", "c", port=port)
    v = started(p)
    assert v["listen"] == "ws://127.0.0.1:%d" % port and v["socket"] == e.path, v
    assert v["max_message"] == str(1 << 20) and v["proxy_protocol"] == "v1", v
    assert v["subprotocols"] == "c", "a list on the command line replaces the file's: %r" % v
    assert not port_accepts(file_port)


def test_origin_removed_on_the_command_line_loses_access(proxy, engine, tmp_path):
    """--allowed-origin on the command line was appended to the file's list,
    so an origin the operator meant to remove kept access."""
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "o.cnf"
    cfg.write_text(base(port, e.path) + "allowed_origin = https://old.example\n")
    p = start(proxy, cfg, "--allowed-origin", "https://new.example",
              "--allowed-origin", "https://also.example", port=port)
    assert started(p)["allowed_origins"] == "https://new.example,https://also.example"
    assert_complete(p.http(ws_request(headers=[("Origin", "https://old.example")])), 403)
    for origin in ("https://new.example", "https://also.example"):
        c = p.ws(headers=[("Origin", origin)])
        c.echo(b"ok")
        c.close()
    # and on SIGHUP the same rule holds
    cfg.write_text(base(port, e.path) + "allowed_origin = https://old.example\n"
                   "max_message = 77\n")
    log0 = len(p.log())
    p.signal(signal.SIGHUP)
    line = p.wait_log(r"restarted: listening", start=log0)
    assert "max_message=77" in line and "allowed_origins=https://new.example,https://also.example" in line


def test_conflicts_say_where_each_setting_came_from(wsproxy_bin, tmp_path):
    cfg = tmp_path / "c.cnf"
    cfg.write_text("[wsproxy]\nhttp_port = %d\nsocket = /tmp/x.sock\n[engine]\nhttps_port = %d\n"
                   % (free_port(), free_port()))
    cp = run_bin(wsproxy_bin, ["--config", cfg, "--config-section", "engine"])
    assert cp.returncode == 2, cp
    assert cp.stderr == ("wsproxy: http_port and https_port are mutually exclusive "
                         "(http_port from %s:2, https_port from %s:5)\n" % (cfg, cfg)), cp.stderr
    cp = run_bin(wsproxy_bin, ["--config", cfg, "--config-section", "engine", "--http-port", "0"])
    assert cp.returncode == 2, cp
    assert cp.stderr == ("wsproxy: https_port requires SSL: set cert_file and key_file "
                         "(https_port from %s:5)\n" % cfg), cp.stderr
    cp = run_bin(wsproxy_bin, ["--config", cfg, "--config-section", "engine",
                               "--https-port", str(free_port())])
    assert cp.stderr == ("wsproxy: http_port and --https-port are mutually exclusive "
                         "(http_port from %s:2, --https-port from the command line)\n" % cfg), \
        cp.stderr


def test_random_files_read_as_mariadb_reads_them(tmp_path):
    """Differential test: 400 random files of allowed_origin lines (quotes,
    backslashes, '#', ';', '=', blanks, comments, sections) read by
    wsproxy's reader (test/config_dump.c) and by MariaDB's.  SEED=n NFILES=n
    run others."""
    import random
    here = os.path.dirname(os.path.abspath(__file__))
    exe = tmp_path / "config_dump"
    cp = subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror",
                         "-DWS_PROXY_NO_TLS", "-pthread", "-o", str(exe),
                         os.path.join(here, "config_dump.c")], capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 0, cp.stderr
    rnd = random.Random(int(os.environ.get("SEED", "12")))
    alphabet = ["a", "b", " ", "\t", '"', "'", "\\", "#", ";", "n", "s", "=", "t"]
    files = []
    for i in range(int(os.environ.get("NFILES", "400"))):
        lines = ["[wsproxy]"]
        for _ in range(rnd.randint(1, 6)):
            kind = rnd.random()
            if kind < 0.1:
                lines.append(rnd.choice(["# c", "; c", "", "  \t", "[other]", "[wsproxy]",
                                         "[WSPROXY]  # x", "loose-x = 1"]))
                continue
            key = rnd.choice(["allowed_origin", "allowed-origin", "allowed_origins"])
            value = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 9)))
            lines.append(rnd.choice(["", " ", "\t"]) + key + rnd.choice(["", " ", "\t "]) +
                         "=" + value)
        f = tmp_path / ("r%03d.cnf" % i)
        f.write_text("\n".join(lines) + "\n")
        files.append(f)
    out = subprocess.run([str(exe)] + [str(f) for f in files], capture_output=True,
                         text=True, timeout=120).stdout.splitlines()
    assert len(out) == len(files)
    compared = 0
    for f, got in zip(files, out):
        values = []
        for k, v in oracle(f):
            if k.replace("-", "_") in ("allowed_origin", "allowed_origins"):
                values = [] if v == "" else values + [v]
            else:
                assert k == "loose-x", k
        if any("," in v for v in values):
            continue
        want = ",".join(values)
        assert got.startswith("ok "), (f.read_text(), got)
        assert bytes.fromhex(got[3:]).decode() == want, (f.read_text(), got, values)
        compared += 1
    assert compared > len(files) * 0.85, compared


def test_a_file_over_16_mib_is_refused(wsproxy_bin, tmp_path):
    cfg = tmp_path / "huge.cnf"
    with open(cfg, "wb") as f:
        f.write(b"[wsproxy]\n" + (b"# padding padding padding padding padding\n" * 400000))
    cp = run_bin(wsproxy_bin, ["--config", str(cfg)])
    assert cp.returncode == 2
    assert cp.stderr.startswith("wsproxy: %s: larger than 16777216 bytes" % cfg), cp.stderr


def test_command_line_unsets_what_the_file_set(wsproxy_bin, proxy, engine, tmp_path):
    """Every option can be overridden, also back to its default: an empty
    value unsets a string or a list, --skip-allow-root a boolean."""
    e = engine("echo")
    port = free_port()
    logdir = tmp_path / "logs"
    logdir.mkdir()
    cfg = tmp_path / "u.cnf"
    cfg.write_text(base(port, e.path) + "log_dir = %s\nallowed_origin = https://a.example\n"
                   "allow_root\n" % logdir)
    p = start(proxy, cfg, "--log-dir", "", "--allowed-origin", "", port=port, root_args=False)
    v = started(p)   # read from stderr: the log went there, not to the file
    assert v["allowed_origins"] == "(any)", v
    assert not (logdir / "websocket_proxy.log").exists()
    c = p.ws(headers=[("Origin", "https://elsewhere.example")])
    c.close()
    p.finish()
    if os.geteuid() == 0:
        cp = run_bin(wsproxy_bin, ["--config", cfg, "--skip-allow-root"], root_args=False)
        assert cp.returncode == 1 and "refusing to run as root" in cp.stderr, cp
    else:   # not root: allow_root means nothing; the flag is still accepted
        cp = run_bin(wsproxy_bin, ["--config", cfg, "--skip-allow-root", "--http-port", "x"])
        assert cp.returncode == 2 and "--http-port: not a port" in cp.stderr, cp


@pytest.mark.parametrize("typo,want", [("max_conections", "max_connections"),
                                       ("max-conections", "max-connections"),
                                       ("allowed_orgin", "allowed_origin")])
def test_a_misspelt_setting_gets_the_nearest_one(wsproxy_bin, tmp_path, typo, want):
    """Issue 20, item 13: in the file's own spelling ('_' or '-')."""
    cfg = tmp_path / "typo.cnf"
    cfg.write_text("[wsproxy]\n%s = 5\n" % typo)
    cp = run_bin(wsproxy_bin, ["--config", str(cfg), "--socket", "/tmp/x.sock",
                               "--http-port", str(free_port())])
    assert cp.returncode == 2, cp
    assert cp.stderr.splitlines()[0] == \
        "wsproxy: %s:2: unknown setting: %s (did you mean %s?)" % (cfg, typo, want), cp.stderr
