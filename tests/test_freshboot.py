"""The suite runs as on a freshly booted machine (``make test``; tests/freshboot/)."""

import os
import subprocess
import sys

import pytest

UPTIME = float(os.environ.get("GEOPILE_FAKE_UPTIME_S") or 0)


@pytest.mark.skipif(not UPTIME, reason="run through `make test` (GEOPILE_FAKE_UPTIME_S unset)")
def test_every_process_starts_with_a_fresh_boot_clock():
    """A child of the test run reads ~the simulated uptime, far below a long-running machine's."""
    out = subprocess.run([sys.executable, "-c", "import time; print(time.monotonic())"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert UPTIME <= float(out.stdout) < UPTIME + 30
