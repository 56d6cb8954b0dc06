"""Run inside a private network namespace (test_tls_netns.py starts it with
`unshare -n`): loopback up, TCP send buffers of 4 KiB, then wsproxy over
wss:// with a certificate chain larger than that, and one TLS client.
Prints one line: "ok <seconds> <proxy cpu seconds>" or "fail <why>".
Usage: netns_tls.py WSPROXY CHAIN KEY ENGINE_SOCKET"""
import os
import socket
import ssl
import subprocess
import sys
import time

wsproxy, chain, key, engine = sys.argv[1:5]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/tcp_wmem", "w") as f:
    f.write("4096 4096 4096")
port = 18443
p = subprocess.Popen([wsproxy, "--https-port", str(port), "--bind", "127.0.0.1",
                      "--socket", engine, "--cert", chain, "--key", key,
                      "--handshake-timeout", "5000"]
                     + (["--allow-root"] if os.geteuid() == 0 else []),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or p.poll() is not None:
                print("fail proxy did not start")
                sys.exit(0)
            time.sleep(0.05)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(8)
    s.connect(("127.0.0.1", port))
    t0 = time.monotonic()
    try:
        t = ctx.wrap_socket(s)
    except (OSError, ssl.SSLError) as e:
        print("fail handshake: %s" % e)
        sys.exit(0)
    took = time.monotonic() - t0
    t.close()
    with open("/proc/%d/stat" % p.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    print("ok %.3f %.3f" % (took, cpu))
finally:
    p.terminate()
    p.wait(10)
