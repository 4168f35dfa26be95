"""Download with resume and checksum, and extract archives without path escapes.

Written here rather than taken from torchgeo/torchvision (``download_url``,
``extract_archive``): those restart an interrupted multi-GB download from byte 0 and extract
``..`` or absolute members after silently rewriting them. GeoPile must resume (HTTP Range),
verify, and refuse a hostile archive with an error that names the member.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests
from tqdm import tqdm

from geopile.urls import strip_secrets

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}
CHUNK = 1 << 16  # small enough that a dropped connection loses little


class ChecksumError(RuntimeError):
    """A file's checksum differs from the published one."""


class DownloadError(RuntimeError):
    """A download failed after all retries."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the extraction directory."""


@dataclass(frozen=True)
class Fetched:
    """A verified local file and its digests (recorded as provenance)."""

    path: Path
    url: str
    md5: str
    sha256: str
    size: int


def file_digests(path: Path) -> tuple[str, str]:
    """MD5 and SHA-256 of a file, read once."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def verify_file(path: Path, url: str, md5: str | None) -> Fetched:
    """Digest ``path``; raise :class:`ChecksumError` naming both sums if ``md5`` differs."""
    got_md5, got_sha = file_digests(path)
    if md5 is not None and got_md5 != md5.lower():
        raise ChecksumError(
            f"checksum mismatch for {path} (from {strip_secrets(url)}): expected md5 {md5}, "
            f"got {got_md5}"
        )
    return Fetched(path, strip_secrets(url), got_md5, got_sha, path.stat().st_size)


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    session: requests.Session | None = None,
    progress: bool = True,
) -> Fetched:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part`` and verifying ``md5``.

    A file already at ``dest`` is only re-verified. Retries with exponential back-off on 429, 5xx
    and dropped connections; a 4xx other than 429 is final.
    """
    dest = Path(dest)
    if dest.exists():
        try:
            return verify_file(dest, url, md5)
        except ChecksumError as err:
            dest.unlink()
            raise ChecksumError(f"{err}; the file was removed, run again to re-download") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    shown = strip_secrets(url)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with http.get(url, headers=headers, stream=True, timeout=timeout_s) as resp:
                if resp.status_code == 416 and have:  # the part file is already complete
                    break
                if resp.status_code in RETRY_STATUS:
                    raise DownloadError(f"HTTP {resp.status_code} for {shown}")
                if resp.status_code >= 400:
                    raise DownloadError(f"HTTP {resp.status_code} for {shown}: not retried")
                if have and resp.status_code != 206:  # server ignored Range: start over
                    have = 0
                mode = "ab" if have else "wb"
                total = int(resp.headers.get("Content-Length", 0)) + have or None
                with (
                    open(part, mode) as fh,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=dest.name,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    for chunk in resp.iter_content(CHUNK):
                        fh.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise requests.ConnectionError(f"connection closed early for {shown}")
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            DownloadError,
        ) as err:
            final = isinstance(err, DownloadError) and "not retried" in str(err)
            if final or attempt == retries:
                raise DownloadError(f"could not download {shown}: {err}") from err
            wait = backoff_s * 2**attempt
            log.warning(
                "download of %s failed (%s); retry %d in %.1fs", shown, err, attempt + 1, wait
            )
            time.sleep(wait)
    try:
        fetched = verify_file(part, url, md5)
    except ChecksumError as err:
        part.unlink()
        raise ChecksumError(
            f"{err}. The download was removed; run again to re-download, or correct the md5 in "
            "your params if the publisher changed the file."
        ) from None
    os.replace(part, dest)
    return Fetched(dest, fetched.url, fetched.md5, fetched.sha256, fetched.size)


def _check_member(archive: Path, name: str, root: Path, dest: Path) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    target = (root / pure).resolve()
    if pure.is_absolute() or ".." in pure.parts or not target.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside {dest}; refusing to extract"
        )


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar archive into ``dest``, atomically and refusing path escapes.

    Every member is checked before anything is written; links and device files are refused too.
    Extraction goes to a temporary sibling that is renamed to ``dest`` at the end, so a killed
    extraction leaves no half-filled ``dest`` behind. An existing ``dest`` is taken as done.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(archive, info.filename, tmp, dest)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link")
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _check_member(archive, member.name, tmp, dest)
                    if not (member.isfile() or member.isdir()):
                        raise UnsafeArchiveError(
                            f"{archive}: member {member.name!r} is a link or device file"
                        )
                tf.extractall(tmp, filter="data")
        else:
            raise ValueError(f"{archive} is neither a zip nor a tar archive")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent extraction that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
