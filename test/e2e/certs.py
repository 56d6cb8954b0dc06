"""Throwaway TLS material for the wss:// end-to-end tests, made at test time
with the openssl CLI (never committed): a CA and a leaf for 127.0.0.1 and
localhost, ECDSA P-256, valid for 2 days (wsproxy warns about the expiry; that
is expected here).

    from e2e.certs import make_certs
    c = make_certs(directory)
    c.ca, c.chain, c.leaf, c.key   # PEM file paths (chain = leaf + CA)
    c.spki                         # base64 SHA-256 of the leaf's SubjectPublicKeyInfo
"""

import base64
import hashlib
import os
import shutil
import subprocess
from collections import namedtuple

Certs = namedtuple("Certs", "ca chain leaf key spki")

EXT = """subjectAltName=IP:127.0.0.1,DNS:localhost
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
"""


def _openssl(*args, cwd, data=None):
    exe = shutil.which("openssl")
    if not exe:
        raise AssertionError("the openssl CLI is not installed (test/deps.sh installs it)")
    cp = subprocess.run([exe] + list(args), cwd=cwd, input=data, capture_output=True,
                        timeout=30)
    if cp.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args),
                                                         cp.stderr.decode(errors="replace")))
    return cp.stdout


def make_certs(d):
    d = str(d)
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=wsproxy e2e test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write(EXT)
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
             cwd=d)
    with open(os.path.join(d, "chain.pem"), "wb") as out:
        for name in ("leaf.pem", "ca.pem"):
            with open(os.path.join(d, name), "rb") as f:
                out.write(f.read())
    pub = _openssl("x509", "-in", "leaf.pem", "-pubkey", "-noout", cwd=d)
    der = _openssl("pkey", "-pubin", "-outform", "DER", cwd=d, data=pub)
    spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
    p = lambda n: os.path.join(d, n)   # noqa: E731
    return Certs(p("ca.pem"), p("chain.pem"), p("leaf.pem"), p("leaf.key"), spki)
