"""Archives staged into ``data/raw/<name>``: checked before extraction, keyed by their hash.

An archive is extracted into ``data/extracted/<name>-<sha256 prefix>`` and then swapped into
``raw/<name>`` (two renames), stamped with the input it holds, so a changed archive is never read
through an older extraction and a kill leaves no mix of two inputs. Sizes are checked before
anything is written (:func:`check_archive`); escaping paths, links and devices are refused by
:func:`geopile.download.extract_archive`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Protocol

from geopile.download import UnsafeArchiveError, extract_archive

log = logging.getLogger(__name__)


class Place(Protocol):
    """Where a source keeps its files (a :class:`geopile.sources.base.IngestContext`)."""

    data_dir: Path
    name: str

    @property
    def raw_dir(self) -> Path:
        """``data_dir/raw/name``."""


EXTRACTED = "extracted"  # data/extracted/<name>-<sha256[:16]>: an archive staged before its swap
INPUT_STAMP = ".geopile-input"  # in raw/<name>: the sha256 (or id) of the input it holds
MAX_MEMBER_BYTES = 1 << 30  # per archive member, declared uncompressed (images are far smaller)


def check_archive(archive: Path, dest_parent: Path) -> None:
    """Refuse an archive whose declared sizes make it a bomb, before anything is extracted.

    ``extract_archive`` refuses escaping paths, links and device files; this adds the sizes: a
    member declaring more than :data:`MAX_MEMBER_BYTES` uncompressed (zipfile stops at the
    declared size, so a lie in the header cannot write more than it declares), and a total
    larger than the free space where it would be extracted.

    Raises:
        UnsafeArchiveError: Naming the archive and the member, or the total and the free space.
    """
    sizes: list[tuple[str, int]] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            sizes = [(i.filename, i.file_size) for i in zf.infolist()]
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            sizes = [(m.name, m.size) for m in tf]
    for name, size in sizes:
        if size > MAX_MEMBER_BYTES:
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} declares {size:,} bytes uncompressed, over the "
                f"limit of {MAX_MEMBER_BYTES:,} per member (a zip bomb, or not an image "
                "archive); refusing to extract")
    total = sum(size for _, size in sizes)
    dest_parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest_parent).free
    if total > free:
        raise UnsafeArchiveError(
            f"{archive} unpacks to {total:,} bytes but {dest_parent} has {free:,} bytes free; "
            "free some space or point paths.data at a larger disk")


def install_archive(ctx: Place, archive: Path, sha256: str) -> Path:
    """Make ``raw_dir`` the extraction of ``archive``, unless it already is (by its sha256).

    A changed archive (new hash) is extracted afresh, into ``extracted/<name>-<hash>``, and then
    swapped in (:func:`install_dir`); an unchanged one costs one stamp read. Returns ``raw_dir``.
    """
    if raw_is_current(ctx, sha256):
        return ctx.raw_dir
    staging = ctx.data_dir / EXTRACTED / f"{ctx.name}-{sha256[:16]}"
    if not staging.is_dir():
        check_archive(archive, staging.parent)
        extract_archive(archive, staging)
    install_dir(ctx, staging, sha256)
    return ctx.raw_dir


def raw_is_current(ctx: Place, input_id: str) -> bool:
    """Whether ``raw_dir`` holds the files of the input ``input_id`` (its stamp says so)."""
    stamp = ctx.raw_dir / INPUT_STAMP
    return (not ctx.raw_dir.is_symlink() and stamp.is_file()
            and stamp.read_text().strip() == input_id)


def install_dir(ctx: Place, staging: Path, input_id: str) -> None:
    """Move a complete ``staging`` directory to ``raw_dir``, stamped with ``input_id``.

    ``raw/<name>`` stays a real directory, because it is what DVC tracks and restores (a link
    into an untracked folder would not survive ``dvc pull``). The swap is two renames: a kill
    between them leaves no ``raw/<name>`` at all, never a mix of two inputs, and the next run
    moves the same staging directory in. Leftovers are removed afterwards.
    """
    tmp = staging / f".{INPUT_STAMP}.tmp"
    tmp.write_text(input_id + "\n")
    os.replace(tmp, staging / INPUT_STAMP)
    raw = ctx.raw_dir
    raw.parent.mkdir(parents=True, exist_ok=True)
    old = raw.with_name(f".{raw.name}.old-{os.getpid()}")
    if raw.is_symlink():
        raw.unlink()
    elif raw.exists():
        os.replace(raw, old)
    os.replace(staging, raw)
    shutil.rmtree(old, ignore_errors=True)
    _remove_leftovers(ctx)


def point_raw_dir(ctx: Place, target: Path) -> None:
    """Make ``raw_dir`` a symlink to a user's own directory, replacing what was there atomically.

    Only for a folder source given as a directory: its files stay where the user keeps them.
    A directory that GeoPile extracted there before is moved aside and removed.
    """
    raw = ctx.raw_dir
    raw.parent.mkdir(parents=True, exist_ok=True)
    link = str(Path(target).resolve())
    if not (raw.is_symlink() and os.readlink(raw) == link):
        tmp = raw.with_name(f".{raw.name}.link-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(link, target_is_directory=True)
        if raw.is_dir() and not raw.is_symlink():
            old = raw.with_name(f".{raw.name}.old-{os.getpid()}")
            os.replace(raw, old)
            os.replace(tmp, raw)
            shutil.rmtree(old)
        else:
            os.replace(tmp, raw)
    _remove_leftovers(ctx)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_leftovers(ctx: Place) -> None:
    """Delete what earlier or killed runs of this source left beside ``raw_dir``.

    In ``extracted/``: ``<name>-<hash>`` staging directories (another version of the input, or
    one a kill stopped before its swap) and ``.<name>-<hash>.tmp-<pid>`` extractions whose
    process died; beside ``raw/<name>``: ``.<name>.old-<pid>`` directories of a killed swap.
    A running process's temporaries are left alone.
    """
    name = re.escape(ctx.name)
    staged = re.compile(name + r"-[0-9a-f]{16}")
    partial = re.compile(r"\." + name + r"-[0-9a-f]{16}\.tmp-(\d+)")
    moved = re.compile(r"\." + name + r"\.(?:old|link)-(\d+)")
    places = [(ctx.data_dir / EXTRACTED, (staged, partial)), (ctx.raw_dir.parent, (moved,))]
    for folder, patterns in places:
        for old in sorted(folder.iterdir()) if folder.is_dir() else ():
            match = next((m for p in patterns if (m := p.fullmatch(old.name))), None)
            if match is None or (match.groups() and _pid_alive(int(match.group(1)))):
                continue
            log.info("%s: removing %s (left by an earlier or killed run)", ctx.name, old)
            if old.is_symlink() or old.is_file():
                old.unlink(missing_ok=True)
            else:
                shutil.rmtree(old, ignore_errors=True)
