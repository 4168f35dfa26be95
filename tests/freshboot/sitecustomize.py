"""Make every Python process of the test run look like it runs on a machine booted a minute ago.

``make test`` (hence CI) puts this folder first on ``PYTHONPATH``, so the interpreter imports it
before anything else, in pytest and in every subprocess it starts (the CLI, torchrun, DVC stages).
``time.monotonic`` counts from boot on Linux: code that treats a timestamp of 0 as "long ago"
works on a long-running dev machine and fails on a fresh cloud VM (issue 15, item 1). Shifting
the clock so it reads ``GEOPILE_FAKE_UPTIME_S`` seconds at start-up makes that class of bug fail
here, on every machine, whatever its real uptime. The clock still only moves forward.
"""

import os
import time

_UPTIME_S = float(os.environ.get("GEOPILE_FAKE_UPTIME_S") or 0)
if _UPTIME_S > 0 and not getattr(time, "_geopile_fresh_boot", False):
    _real, _real_ns = time.monotonic, time.monotonic_ns
    _OFFSET_NS = max(0, _real_ns() - int(_UPTIME_S * 1e9))

    def monotonic() -> float:
        """Seconds since a boot ``GEOPILE_FAKE_UPTIME_S`` before this process started."""
        return (_real_ns() - _OFFSET_NS) / 1e9

    def monotonic_ns() -> int:
        """Nanoseconds, as :func:`monotonic`."""
        return _real_ns() - _OFFSET_NS

    time.monotonic, time.monotonic_ns = monotonic, monotonic_ns
    time._geopile_fresh_boot = True
