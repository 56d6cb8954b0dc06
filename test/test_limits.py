"""SPEC section 7 under resource exhaustion: when the proxy runs out of file
descriptors it neither crashes nor spins; connections wait or get 502, the
condition is logged (not once per retry), and service resumes once
descriptors are free.  Run with /usr/bin/python3 (Debian's pytest)."""
import re
import socket
import subprocess
import time

from conftest import WSClient, cpu_seconds, ws_request, new_key, wait_until


def test_out_of_descriptors_waits_and_recovers(proxy, engine):
    e = engine("echo")
    p = proxy(engine=e)
    # A low descriptor limit on the running proxy: about a dozen WebSockets.
    subprocess.run(["prlimit", "--pid", str(p.proc.pid), "--nofile=32:32"], check=True,
                   timeout=10)
    clients, answers = [], {}
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(ws_request(key=new_key()))
        clients.append(s)
    time.sleep(0.5)  # let the proxy answer what it can
    for s in clients:
        s.settimeout(0.05)
        try:
            head = s.recv(64)
        except socket.timeout:
            head = b"(waiting)"
        key = head[:12] if head.startswith(b"HTTP/1.1") else head
        answers[key] = answers.get(key, 0) + 1
    # Each client was upgraded, told 502 (no descriptor for its engine
    # connection), or waits in the listen queue; which of them gets what
    # depends on the order the loop accepts and connects in.
    assert set(answers) <= {b"HTTP/1.1 101", b"HTTP/1.1 502", b"(waiting)"}, answers
    assert answers.get(b"(waiting)", 0) + answers.get(b"HTTP/1.1 502", 0) >= 10, answers
    # Exhausted, the loop backs off instead of spinning on accept.
    cpu0 = cpu_seconds(p.proc.pid)
    time.sleep(1.5)
    assert cpu_seconds(p.proc.pid) - cpu0 < 0.3
    # EMFILE in glibc's words or musl's (the static musl build runs this too)
    emfile = r"accept: (Too many open files|No file descriptors available)"
    p.wait_log(emfile + "; new connections wait")
    assert len([l for l in p.log().splitlines() if re.search(emfile, l)]) <= 2
    for s in clients:
        s.close()
    # Descriptors come back: a new WebSocket works end to end.
    def works():
        try:
            c = p.ws()
        except Exception:
            return False
        try:
            c.echo(b"after exhaustion")
            return True
        finally:
            c.close()
    wait_until(works, p.t(15), step=0.2, what="service after exhaustion")
    assert p.alive()


def test_refusals_over_per_ip_limit_do_not_stall_the_listener(proxy, engine):
    """One address far over its per-IP limit: its lingering 503s must not
    stop the listener for everyone else (issue 17, item 8: a handshake from
    another address took 5.7 s behind 400 held sockets)."""
    e = engine("echo")
    p = proxy("--max-connections", "16", "--max-connections-per-ip", "1", engine=e)
    # The one 127.0.0.1 may have, once wait_ready's probe is gone.
    first = []
    def upgraded():
        c = WSClient(p.port, timeout=p.t(10))
        if c.handshake(expect=None).status == 101:
            first.append(c)
            return True
        c.sock.close()
        return False
    wait_until(upgraded, p.t(5), step=0.1, what="a first WebSocket")
    first = first[0]
    held = []
    try:
        for _ in range(400):           # idle: they never send a request
            held.append(socket.create_connection(("127.0.0.1", p.port), timeout=5))
        time.sleep(0.3)
        t0 = time.monotonic()
        c = WSClient.__new__(WSClient)
        c.port, c.timeout, c.buf, c.response = p.port, p.t(10), b"", None
        c.sock = socket.create_connection(("127.0.0.1", p.port), timeout=p.t(10),
                                          source_address=("127.0.0.2", 0))
        c.handshake()
        took = time.monotonic() - t0
        c.echo(b"from another address")
        c.close()
        # 5.7 s before; the bound leaves room for a loaded machine
        assert took < p.t(1.5), "a handshake from 127.0.0.2 took %.2f s" % took
    finally:
        for s in held:
            s.close()
    first.echo(b"still served")
    first.close()
