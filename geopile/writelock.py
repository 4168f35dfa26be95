"""One writer at a time: a lock per data directory (ingest, curate) and per build (shard, push).

A second writer stops at once with :class:`LockedError`, naming the holder (command, host, pid
and since when). The lock is an ``flock`` on a small file, which the kernel releases when its
holder dies however it dies, so a lock left by a killed process is simply taken over (and the
takeover logged); the file itself stays, holding the last holder's line. ``flock`` also works
between hosts on NFSv4 and Lustre mounts; on file systems without it, the lock is this host's.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geopile.atomic import disk_error

log = logging.getLogger(__name__)
MAX_HOLDER_BYTES = 4096
_command: list[str] = []  # what this process is, as the CLI names it (set_command)


def set_command(command: str) -> None:
    """Name this process's work in the locks and markers it leaves (``geopile shard full``)."""
    _command[:] = [command]


def _this_command() -> str:
    if _command:
        return _command[0]
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]])[:120] if sys.argv else "python"


class LockedError(RuntimeError):
    """Another process holds the lock: this writer stopped before doing anything."""


def holder_line(command: str | None = None) -> bytes:
    """Who writes (this process): the command, host, pid and since when, as one JSON line.

    The same line marks a build being published (:mod:`geopile.shardstore`).
    """
    return json.dumps({
        "command": command or _this_command(),
        "host": socket.gethostname(), "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }).encode()


def describe_holder(data: bytes | str) -> str:
    """A :func:`holder_line` in words (cut short: a marker on S3 is anyone's input)."""
    try:
        holder = json.loads(data)
        return (f"`{str(holder['command'])[:80]}` (pid {str(holder['pid'])[:12]} on host "
                f"{str(holder['host'])[:80]}, since {str(holder['since'])[:40]})")
    except (ValueError, TypeError, KeyError):
        return "another process"


@contextmanager
def write_lock(path: Path, what: str, command: str | None = None) -> Iterator[None]:
    """Hold the lock at ``path`` (created if missing) while writing ``what``.

    Raises:
        LockedError: naming ``what`` and the holder, when another process holds it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:  # a read-only or full disk: say so in one line
        if (failed := disk_error(err, path, len(holder_line(command)))) is not None:
            raise failed from err
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.pread(fd, MAX_HOLDER_BYTES, 0)
            raise LockedError(
                f"{what} is being written by {describe_holder(held)}: wait for it to finish, "
                f"or stop it; only one writer at a time (lock: {path})") from None
        earlier = os.pread(fd, MAX_HOLDER_BYTES, 0).strip()
        if earlier:
            log.warning("%s: taking over the lock of %s, which ended without releasing it "
                        "(killed?)", what, describe_holder(earlier))
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line(command), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: nothing to take over
    finally:
        os.close(fd)  # releases the flock


def data_lock(data_dir: Path) -> Path:
    """The lock of a data directory (ingest and curate write there)."""
    return Path(data_dir) / ".geopile.lock"


def build_lock(shards_root: Path, build: str) -> Path:
    """The lock of one build (shard and push), beside the builds, outside DVC's outputs."""
    return Path(shards_root) / ".locks" / f"{build}.lock"
