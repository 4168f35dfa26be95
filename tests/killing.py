"""Kill a child run in the middle of its work, the way a user's Ctrl-C or the OOM killer would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_once(script: str, args: list[str], folder: Path, pattern: str, count: int) -> None:
    """Run ``python -c script args``; SIGKILL its process group once ``folder`` holds
    ``count`` files matching ``pattern``. Fails if it finishes first."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(folder.glob(pattern))) < count:
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
