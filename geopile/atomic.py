"""Writes that land whole under their final name or leave nothing; disk errors in one line.

Every output goes to a temp name beside its final one and is renamed into place; a write that
fails (a full disk, a read-only mount, a quota) removes its temp file and raises
:class:`DiskError`, which names the path, the bytes it needed and the bytes free there. A leaf
module: the standard library only.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# the errors that mean "this disk cannot take the write", not "this code is wrong"
DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


class DiskError(RuntimeError):
    """A write failed because of the disk (full, read-only, quota), not the data."""


def free_bytes(path: Path) -> int | None:
    """Bytes free to this process on ``path``'s file system (its nearest existing parent)."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def disk_error(err: OSError, path: Path, needed: int | None = None) -> DiskError | None:
    """A :class:`DiskError` for ``err`` if the disk caused it (else None), in one line."""
    why = DISK_ERRNOS.get(err.errno or -1)
    if why is None:
        return None
    free = free_bytes(path)
    need = f"needs {needed:,} bytes, " if needed is not None else ""
    have = f"{free:,} free" if free is not None else "free space unknown"
    fix = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "make it writable")
    return DiskError(f"cannot write {path}: {why} ({need}{have}); {fix} or point the setting "
                     "at another disk, then run the same command again")


def check_free(path: Path, needed: int, what: str) -> None:
    """Refuse up front when ``path``'s disk has less than ``needed`` bytes free."""
    free = free_bytes(path)
    if free is not None and needed > free:
        raise DiskError(f"cannot write {what} to {path}: it needs about {needed:,} bytes, "
                        f"{free:,} are free; free some space or point the setting at another "
                        "disk, then run the same command again")


def temp_name(path: Path) -> Path:
    """The temp name beside ``path`` that this process writes before renaming."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replacing(path: Path, needed: int | None = None, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temp path; on success rename it to ``path``, on any failure remove it.

    A disk failure (:data:`DISK_ERRNOS`) becomes a one-line :class:`DiskError` naming ``path``
    and ``needed`` bytes.
    """
    path = Path(path)
    tmp = tmp or temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if (failed := disk_error(err, path, needed)) is not None:
            raise failed from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path``, whole or not at all."""
    with replacing(path, len(data)) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path``, whole or not at all."""
    write_bytes(path, text.encode())


def write_with(path: Path, write: Callable[[BinaryIO], object], needed: int | None = None) -> None:
    """Call ``write(file)`` on a temp file, then rename it to ``path`` (whole or not at all)."""
    with replacing(path, needed) as tmp, open(tmp, "wb") as f:
        write(f)
