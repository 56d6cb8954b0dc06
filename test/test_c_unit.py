"""Runs the C unit tests (test/unit.c) as pytest cases: every case in the
plain build and in the ASan+UBSan build, plus the header-only link test and
the exported-symbol check.  Run through /usr/bin/python3 (Debian's pytest)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"plain": "build/unit", "asan": "build/asan/unit"}
ENV = dict(os.environ,
           ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
           UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")


def _cases():
    exe = os.path.join(ROOT, UNITS["plain"])
    if not os.path.exists(exe):
        raise RuntimeError(f"{exe} is missing: run `make test`, which builds it")
    out = subprocess.run([exe, "--list"], check=True, capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.parametrize("build", sorted(UNITS))
@pytest.mark.parametrize("case", _cases())
def test_unit(build, case):
    r = subprocess.run([os.path.join(ROOT, UNITS[build]), case], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"{case} ({build}):\n{r.stdout}{r.stderr}"
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["restart_semantics", "failed_stays_failed",
                                  "cycles_leave_nothing", "stop_races_every_call",
                                  "restart_same_port_other_address"])
def test_unit_threads_under_tsan(case):
    """API calls from the test thread against several loop threads, under
    ThreadSanitizer (every ws_proxy_* call is documented thread-safe)."""
    exe = os.path.join(ROOT, "build/tsan/unit")
    assert os.path.exists(exe), "build/tsan/unit is missing: run `make test`, which builds it"
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", WSPROXY_CYCLES="100")
    r = subprocess.run([exe, case], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stdout + r.stderr


def test_header_is_self_contained():
    r = subprocess.run([os.path.join(ROOT, "build/header_test")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "header test: ok" in r.stdout, r.stdout + r.stderr


def test_only_prefixed_symbols_exported():
    r = subprocess.run(["make", "-s", "check-symbols"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unknown_case_name_is_an_error():
    """Issue 20, item 14: `build/unit nosuchcase` said "0 passed, 0 failed"
    and exited 0, so a typo passed."""
    exe = os.path.join(ROOT, UNITS["plain"])
    known = _cases()[0]
    r = subprocess.run([exe, known, "nosuchcase"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == "", r.stdout          # nothing ran
    assert "nosuchcase" in r.stderr and "--list" in r.stderr, r.stderr
    r = subprocess.run([exe, known], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.endswith("1 passed, 0 failed\n"), r.stdout
