"""A bounded libFuzzer run over the parsers that read untrusted bytes
(test/c/fuzz.c: HTTP parser and handshake, frame decoder in socket-sized
chunks, UTF-8, base64, certificate and key files) and over the --config
file reader, seeded with valid requests, frame streams, PEM files (made with
openssl: EC and RSA, PKCS#8, PKCS#1 and SEC1 keys) and a configuration file.
Any crash, sanitizer report or broken invariant (a configuration error that
does not name the file and line, for one) fails the test.  Run with
/usr/bin/python3 (Debian's pytest)."""
import base64
import os
import struct
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "build", "fuzz")
SECONDS = int(os.environ.get("WSPROXY_FUZZ_SECONDS", "20"))


def masked(op, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    hdr = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def pem_files(tmp):
    """(certificate, key) PEM pairs, as operators write them."""
    out = []
    for name, newkey, conv in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                                ["ec"]),
                               ("rsa", ["-newkey", "rsa:1024"], ["rsa", "-traditional"])):
        cert, key = tmp / (name + ".crt"), tmp / (name + ".key")
        subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "36500", "-subj",
                        "/CN=" + name + ".fuzz.example", "-keyout", str(key), "-out", str(cert)]
                       + newkey, check=True, capture_output=True, timeout=60)
        legacy = subprocess.run(["openssl"] + conv + ["-in", str(key)], check=True,
                                capture_output=True, timeout=60).stdout  # PKCS#1 / SEC1
        out.append((cert.read_bytes(), key.read_bytes()))
        out.append((cert.read_bytes(), legacy))
    return out


def der(pem):
    """The DER of a PEM file's first block, and the block's label."""
    lines = pem.decode().strip().splitlines()
    return base64.b64decode("".join(lines[1:lines.index(lines[0].replace("BEGIN", "END"))])), \
        lines[0][11:-5]


def seeds(pems=()):
    req = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Origin: https://a.example\r\nSec-WebSocket-Protocol: chat, mysql\r\n\r\n")
    frames = (masked(1, "h\u00e9llo".encode()) + masked(1, b"fr", fin=False) +
              masked(9, b"ping") + masked(0, b"ag") + masked(2, bytes(300)) +
              masked(8, b"\x03\xe8bye"))
    yield b"\x00\x00" + req
    yield b"\x00\x00GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    for arg in (0, 5, 64 + 3, 200):
        yield b"\x01" + bytes([arg]) + frames
    yield b"\x02\x00" + "\u00e9\u4e2d\U0001f600".encode()
    yield b"\x02\x00dGhlIHNhbXBsZSBub25jZQ=="
    # Certificate and key: the key file follows a NUL (arg 0/1), or one file
    # holds both (arg 2/3); odd args add the newline the reader adds.
    for i, (cert, key) in enumerate(pems):
        yield b"\x03" + bytes([i % 2]) + cert + b"\x00" + key
        yield b"\x03" + bytes([2 + i % 2]) + key + cert
    yield b"\x03\x01-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    # The same as DER, which the target wraps in PEM (arg bit 2, label arg/8).
    labels = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"]
    for cert, key in pems:
        (cder, _), (kder, label) = der(cert), der(key)
        yield (b"\x03" + bytes([4 + 8 * labels.index(label)]) + struct.pack(">H", len(cder))
               + cder + kder)
    yield (b"\x04\x01# c\nhttp_port = 8080\n[mariadbd]\nport=3306\n[WSProxy]\n"
           b"bind_address = \"127.0.0.1\"\nsocket = '/run/db.sock' # x\n"
           b"allowed_origin = a\\sb\\\"c\nloose-x\nskip-allow-root\nallow_root = on\n"
           b"max_message = 16M\n[engine]\nsubprotocol = mysql\n!include x.cnf\n"
           b"!includedir d\n[broken\n")


def test_fuzz_parsers(tmp_path):
    assert os.path.exists(FUZZ), "build/fuzz is missing: `make test` builds it (clang + libFuzzer)"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, s in enumerate(seeds(pem_files(tmp_path))):
        (corpus / ("seed%d" % i)).write_bytes(s)
    # UBSan's checks recover by default: make a report a failure.
    env = dict(os.environ, UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    r = subprocess.run([FUZZ, "-max_total_time=%d" % SECONDS, "-timeout=10", "-rss_limit_mb=2048",
                        "-print_final_stats=1", str(corpus)], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=SECONDS + 120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "Done" in out and "ERROR" not in out and "runtime error" not in out, out[-4000:]
