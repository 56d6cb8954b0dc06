"""Opt-in Prometheus metrics: with --metrics-path a plain GET on that path
answers the text exposition format 0.0.4 to the clients --metrics-allow
lists (default loopback), 403 to others.  Checked with promtool on real
scrapes, and with a real Prometheus server (Debian's `prometheus`) started
on 127.0.0.1 that scrapes the proxy and answers through its query API."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import (OP_BIN, WSClient, _die_with_us, free_port, frame,
                      port_accepts, run_bin, wait_until, ws_request)

PROM_TYPES = {"counter", "gauge", "histogram"}


def scrape(p, path="/metrics", host=None):
    """GET path from the proxy: (status, content type, body text)."""
    host = host or p.host
    url = "http://%s:%d%s" % ("[%s]" % host if ":" in host else host, p.port, path)
    try:
        with urllib.request.urlopen(url, timeout=p.t(10)) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def parse(text):
    """{'name{labels}': float}, checking that every sample's family was
    declared with HELP and TYPE first."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in PROM_TYPES, line
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        assert m, "bad sample line %r" % line
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in types or base in types, "no TYPE for %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def promtool_check(text):
    cp = subprocess.run(["promtool", "check", "metrics"], input=text,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0 and not cp.stdout.strip() and not cp.stderr.strip(), \
        "promtool check metrics:\n%s%s" % (cp.stdout, cp.stderr)


def test_scrape_counts_what_happened(proxy):
    p = proxy("--metrics-path", "/metrics", "--allowed-origin", "https://ok.example")
    status, ctype, text = scrape(p)
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    promtool_check(text)
    m = parse(text)
    assert m["wsproxy_up"] == 1 and m['wsproxy_state{state="running"}'] == 1
    assert m["wsproxy_connections_open"] == 0          # the scrape is not counted
    assert m["wsproxy_handshake_duration_seconds_count"] == 0

    # Traffic: two WebSockets relaying, one refused by Origin, one failed
    # for a protocol violation (an unmasked frame: 1002), one TCP reset.
    a, b = p.ws(), p.ws()
    a.echo(b"x" * 1000)
    b.echo(b"y" * 24)
    bad = p.ws()
    bad.send(frame(OP_BIN, b"unmasked", mask=False))
    bad.expect_close(1002)
    gone = p.ws()
    gone.abort()
    refused = WSClient(p.port, timeout=p.t(10))
    refused.handshake(headers=[("Origin", "https://evil.example")], expect=403)
    a.close(1000)
    wait_until(lambda: parse(scrape(p)[2])["wsproxy_connections_open"] == 1, p.t(5),
               what="three connections to end")
    text = scrape(p)[2]
    promtool_check(text)
    m = parse(text)
    assert m["wsproxy_connections_open"] == 1                  # b
    assert m['wsproxy_bytes_total{direction="to_engine"}'] == 1024
    assert m['wsproxy_bytes_total{direction="to_client"}'] == 1024
    assert m['wsproxy_refused_total{status="403"}'] == 1
    assert m['wsproxy_closes_total{code="1000"}'] == 1
    assert m['wsproxy_closes_total{code="1002"}'] == 1
    assert m['wsproxy_closes_total{code="1006"}'] == 1
    assert m["wsproxy_protocol_errors_total"] == 1
    assert m["wsproxy_tls_failures_total"] == 0
    assert m["wsproxy_handshake_duration_seconds_count"] == 4
    assert m['wsproxy_handshake_duration_seconds_bucket{le="+Inf"}'] == 4
    assert m['wsproxy_handshake_duration_seconds_bucket{le="10.000"}'] == 4
    assert m["wsproxy_connections_total"] >= 7
    b.close()


def test_metrics_off_by_default(proxy):
    p = proxy()
    assert scrape(p)[0] == 400


def test_only_allowed_clients(proxy):
    # Default: loopback, IPv4 and IPv6.
    p = proxy("--metrics-path", "/m")
    assert scrape(p, "/m")[0] == 200
    assert scrape(p, "/m?name[]=wsproxy_up")[0] == 200   # a query string is fine
    assert scrape(p, "/m/x")[0] == 400
    p6 = proxy("--metrics-path", "/m", bind="::1")
    assert scrape(p6, "/m")[0] == 200
    # A list that leaves the client out: 403, counted and logged.
    q = proxy("--metrics-path", "/metrics", "--metrics-allow", "10.0.0.0/8",
              "--metrics-allow", "::1/128, 192.0.2.7")
    status, _, body = scrape(q)
    assert status == 403 and "wsproxy_" not in body, body
    q.wait_log(r"refused 403: metrics: client address not in metrics_allow")
    # Prefix lengths are honoured bit by bit.
    for allow, want in (("127.0.0.1/32", 200), ("127.0.0.2/31", 403),
                        ("127.0.0.0/31", 200), ("0.0.0.0/0", 200),
                        ("126.255.255.255/8", 403), ("::/0", 403)):
        r = proxy("--metrics-path", "/metrics", "--metrics-allow", allow)
        assert scrape(r)[0] == want, allow


def test_websocket_on_the_metrics_path_still_upgrades(proxy):
    """Only a plain GET is a scrape: an upgrade request on that path is a
    WebSocket like any other."""
    p = proxy("--metrics-path", "/metrics")
    c = p.ws(path="/metrics")
    c.echo(b"relayed")
    c.close()


def test_metrics_settings_in_the_config_file(proxy, engine, tmp_path):
    e = engine("echo")
    port = free_port()
    cfg = tmp_path / "wsproxy.conf"
    cfg.write_text("[wsproxy]\nhttp_port = %d\nbind_address = 127.0.0.1\n"
                   "socket_path = %s\nmetrics_path = /stats\n"
                   "metrics_allow = 10.1.0.0/16\n" % (port, e.path))
    p = proxy("--config", cfg, raw=True, port=port, engine=e)
    assert scrape(p, "/stats")[0] == 403
    cfg.write_text(cfg.read_text().replace("10.1.0.0/16", "127.0.0.1, ::1"))
    p.signal(signal.SIGHUP)
    wait_until(lambda: scrape(p, "/stats")[0] == 200, p.t(5),
               what="the reloaded metrics_allow to let loopback in")
    p.wait_log(r"metrics_path=/stats metrics_allow=127\.0\.0\.1, ::1")


BAD_ALLOW = "not an IPv4 or IPv6 address or CIDR block: "


@pytest.mark.parametrize("args, message", [
    (["--metrics-path", "metrics"], "--metrics-path: must start with '/': metrics"),
    (["--metrics-path", "/m", "--metrics-allow", "10.0.0.0/33"], BAD_ALLOW + "10.0.0.0/33"),
    (["--metrics-path", "/m", "--metrics-allow", "::1, localhost"], BAD_ALLOW + "localhost"),
    (["--metrics-path", "/m", "--metrics-allow", "::1/"], BAD_ALLOW + "::1/"),
])
def test_bad_metrics_settings_refused(wsproxy_bin, args, message):
    """A configuration error, exit 2 as for every bad value (issue 20, item
    16: they exited 1, as a failed start does)."""
    cp = run_bin(wsproxy_bin, ["--http-port", str(free_port()), "--bind", "127.0.0.1",
                               "--socket", "/tmp/x.sock"] + args)
    assert cp.returncode == 2, cp
    assert cp.stderr.startswith("wsproxy: ") and message in cp.stderr, cp.stderr


# ---------------------------------------------------------------------------
# a real Prometheus server
# ---------------------------------------------------------------------------

class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping one target every second."""

    def __init__(self, workdir, target):
        exe = shutil.which("prometheus")
        if not exe:
            pytest.fail("prometheus not installed (Debian package prometheus; "
                        "test/deps.sh installs it)")
        self.port = free_port()
        conf = os.path.join(workdir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: wsproxy\n"
                    "    metrics_path: /metrics\n"
                    "    static_configs:\n      - targets: ['%s']\n" % target)
        self.log = open(os.path.join(workdir, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            [exe, "--config.file=" + conf,
             "--storage.tsdb.path=" + os.path.join(workdir, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.port,
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_us)

    def query(self, expr):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (
            self.port, urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return [(res["metric"], float(res["value"][1]))
                for res in answer["data"]["result"]]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def test_prometheus_scrapes_the_proxy(proxy, tmp_path):
    p = proxy("--metrics-path", "/metrics")
    clients = [p.ws() for _ in range(3)]
    for i, c in enumerate(clients):
        c.echo(b"client %d" % i)
    prom = Prometheus(str(tmp_path), "127.0.0.1:%d" % p.port)
    try:
        wait_until(lambda: port_accepts(prom.port), 60, step=0.2,
                   what="prometheus to listen")

        def seen(expr, want):
            res = prom.query(expr)
            return len(res) == 1 and res[0][1] == want
        wait_until(lambda: seen("wsproxy_connections_open", 3), 60, step=0.5,
                   what="prometheus to report the 3 connections the test holds")
        assert seen('up{job="wsproxy"}', 1)
        res = prom.query("wsproxy_connections_open")
        assert res[0][0]["job"] == "wsproxy"
        assert res[0][0]["instance"] == "127.0.0.1:%d" % p.port
        assert seen("wsproxy_handshake_duration_seconds_count", 3)
        for c in clients:
            c.close()
        wait_until(lambda: seen("wsproxy_connections_open", 0), 30, step=0.5,
                   what="prometheus to see the connections gone")
        assert seen('wsproxy_closes_total{code="1000"}', 3)
    finally:
        prom.stop()
    assert p.alive()
