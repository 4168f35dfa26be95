"""Download with resume, checksum and mirror fall-through; extract archives without path escapes.

Written here rather than taken from torchgeo/torchvision (``download_url``,
``extract_archive``): those restart an interrupted multi-GB download from byte 0, know one URL
per file, and extract ``..`` or absolute members after silently rewriting them. GeoPile must
resume (HTTP Range), verify, fall through to the next mirror when a host dies (the UC Merced
split lists' publisher stopped serving in Nov 2024), and refuse a hostile archive with an error
that names the member.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from geopile.urls import redact, strip_secrets

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}
RETRY_AFTER_STATUS = {429, 503}  # the statuses whose Retry-After header is honoured
CHUNK = 1 << 16  # small enough that a dropped connection loses little
SOURCE_SUFFIX = ".url"  # beside a download: the mirror it came from (secrets stripped)


class ChecksumError(RuntimeError):
    """A file's checksum differs from the published one."""

    def __init__(self, message: str, expected: str = "", got: str = "") -> None:
        super().__init__(message)
        self.expected, self.got = expected, got


class DownloadError(RuntimeError):
    """A download failed after all retries (or every mirror failed)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message  # short, for the per-mirror lines of download_first


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


class _HTTPStatus(Exception):
    """An error status from the server (internal: turned into a retry or a DownloadError)."""

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


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
            f"got {got_md5}", expected=md5, got=got_md5)
    return Fetched(path, strip_secrets(url), got_md5, got_sha, path.stat().st_size)


def url_filename(url: str) -> str:
    """The last segment of a URL's path: a safe local name (never the query, which may be a key)."""
    return PurePosixPath(urlsplit(url).path).name


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP-date).

    None if absent or unreadable (the caller backs off as usual); a date already past asks for
    no wait.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 60.0,
    retry_after_cap_s: float = 60.0,
    session: requests.Session | None = None,
    progress: bool = True,
) -> Fetched:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part`` and verifying ``md5``.

    A file already at ``dest`` is only re-verified. Retries on 429, 5xx and dropped
    connections: after the server's ``Retry-After`` on 429/503 (capped at
    ``retry_after_cap_s``), else with exponential back-off; any other 4xx is final. Messages
    never show the URL's query. For a file with several mirrors use :func:`download_first`.
    """
    dest = Path(dest)
    if dest.exists():
        try:
            return verify_file(dest, url, md5)
        except ChecksumError as err:
            dest.unlink()
            raise ChecksumError(f"{err}; the file was removed, run again to re-download",
                                err.expected, err.got) from None
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
                if resp.status_code >= 400:
                    raise _HTTPStatus(resp.status_code, resp.headers.get("Retry-After"))
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
                    raise requests.ConnectionError("connection closed before the end of the body")
            break
        except _HTTPStatus as err:
            if err.status not in RETRY_STATUS:
                raise DownloadError(f"could not download {shown}: HTTP {err.status} (not retried)",
                                    reason=f"HTTP {err.status}") from None
            if attempt == retries:
                raise DownloadError(
                    f"could not download {shown}: HTTP {err.status} after {retries} retries",
                    reason=f"HTTP {err.status} after {retries} retries") from None
            asked = retry_after_s(err.retry_after) if err.status in RETRY_AFTER_STATUS else None
            wait = backoff_s * 2**attempt if asked is None else min(asked, retry_after_cap_s)
            why = f"HTTP {err.status}" + ("" if asked is None else
                                          f", Retry-After {err.retry_after.strip()}")
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as err:
            why = redact(str(err))
            if attempt == retries:
                raise DownloadError(
                    f"could not download {shown}: {why} (after {retries} retries)",
                    reason=f"connection failed after {retries} retries: {why}") from None
            wait = backoff_s * 2**attempt
        log.info("download of %s failed (%s); retry %d of %d in %.1fs", shown, why,
                 attempt + 1, retries, wait)
        time.sleep(wait)
    try:
        fetched = verify_file(part, url, md5)
    except ChecksumError as err:
        part.unlink()
        raise ChecksumError(
            f"{err}. The download was removed; run again to re-download, or correct the md5 in "
            "your params if the publisher changed the file.", err.expected, err.got
        ) from None
    os.replace(part, dest)
    return Fetched(dest, fetched.url, fetched.md5, fetched.sha256, fetched.size)


def recorded_source(dest: Path) -> str | None:
    """The mirror an earlier run fetched ``dest`` from, if it recorded one (secrets stripped)."""
    record = dest.with_name(dest.name + SOURCE_SUFFIX)
    try:
        return record.read_text().strip() or None
    except OSError:
        return None


def _record_source(dest: Path, url: str) -> None:
    """Write the mirror ``dest`` came from beside it (atomically; secrets stripped)."""
    record = dest.with_name(dest.name + SOURCE_SUFFIX)
    tmp = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    tmp.write_text(strip_secrets(url) + "\n")
    os.replace(tmp, record)


def download_first(
    urls: Sequence[str],
    dest: Path,
    md5: str | None = None,
    **options: Any,
) -> Fetched:
    """Fetch one published file from the first of its mirrors that serves it with ``md5``.

    Mirrors are tried in order (duplicates once). A mirror is given up on after a final status
    (404, 410, 403, any 4xx), a 429/5xx or dropped connection that outlasts ``retries``, or
    bytes with the wrong md5 (removed at once); each is one warning naming the mirror (query
    stripped) and why. A partial ``dest.part`` is resumed by the next mirror (same file, same
    md5); a resumed download whose md5 fails is restarted from byte 0 once before the mirror
    is blamed. ``Fetched.url`` is the mirror actually used, also recorded in
    ``dest`` + ``.url`` so that a later run, finding ``dest`` verified on disk, reports it too.

    ``options`` are :func:`download`'s (retries, back-off, timeouts, session, progress).

    Raises:
        DownloadError: Every mirror failed; the message lists each with its failure.
        ValueError: ``urls`` is empty.
    """
    mirrors = list(dict.fromkeys(u for u in urls if u))
    dest = Path(dest)
    if not mirrors:
        raise ValueError(f"no URL to download {dest.name} from (give at least one mirror)")
    if dest.exists():
        try:
            fetched = verify_file(dest, mirrors[0], md5)
        except ChecksumError as err:
            log.warning("%s on disk has md5 %s, not %s: removed, downloading it again",
                        dest, err.got, err.expected)
            dest.unlink()
        else:
            return replace(fetched, url=recorded_source(dest) or fetched.url)
    part = dest.with_name(dest.name + ".part")

    def fetch(url: str) -> Fetched:
        return download(url, dest, md5, **options)

    failures: list[tuple[str, str]] = []
    for i, url in enumerate(mirrors):
        shown = strip_secrets(url)
        try:
            if urlsplit(url).scheme not in ("http", "https"):
                raise DownloadError(f"{shown} is not an http(s) URL",
                                    reason="not an http(s) URL")
            resumed = part.exists()
            try:
                got = fetch(url)
            except ChecksumError:
                if not resumed:
                    raise
                log.info("resumed %s from %s failed its md5: downloading it from byte 0",
                         dest.name, shown)
                got = fetch(url)
        except ChecksumError as err:
            why = f"wrong md5 {err.got} (expected {err.expected}); its bytes were removed"
        except DownloadError as err:
            why = redact(err.reason)
        else:
            _record_source(dest, url)
            return replace(got, url=shown)
        failures.append((shown, why))
        if i + 1 < len(mirrors):
            log.warning("mirror %s of %s failed (%s); trying the next mirror, %s",
                        shown, dest.name, why, strip_secrets(mirrors[i + 1]))
    listing = "\n".join(f"  {url}: {why}" for url, why in failures)
    raise DownloadError(
        f"could not download {dest.name}: every mirror failed:\n{listing}\n"
        "Check the network, run `geopile sources --check` to see which mirrors answer, or "
        "put a working copy first with the params' urls.<file> (a URL, or a list of URLs).",
        reason="every mirror failed")


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
