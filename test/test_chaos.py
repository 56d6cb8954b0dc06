"""A short run of the chaos driver (test/chaos.py, about 20 s) against the
ASan+UBSan build: misbehaving clients (random valid and invalid frames,
chunks down to one byte, resets, half-closes, stalls, wss:// orderings of
Close, close_notify and FIN/RST) in front of an engine that echoes, stalls,
resets or closes early.  Every invariant of the driver must hold; the first
line of the output names the seed (CHAOS_SEED=... replays it).  Longer runs:
`make chaos CHAOS_SECS=N`."""
import os
import subprocess
import sys

from conftest import ROOT


def test_chaos_short_run():
    binary = os.environ.get("CHAOS_BIN") or str(ROOT / "build" / "asan" / "wsproxy")
    assert os.access(binary, os.X_OK), \
        "%s not found: run `make build/asan/wsproxy` first" % binary
    secs = float(os.environ.get("CHAOS_TEST_SECS", "20"))
    cp = subprocess.run([sys.executable, str(ROOT / "test" / "chaos.py"),
                         "--secs", str(secs), "--bin", binary],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=secs + 240)
    print(cp.stdout[-20000:])
    assert cp.returncode == 0, "chaos run failed:\n%s%s" % (cp.stdout[-15000:],
                                                             cp.stderr[-5000:])
