"""``geopile sources --check``: ask every mirror of every file the pipeline would download.

Hosts die (the UC Merced split lists' publisher stopped serving in Nov 2024) and an ingest that
finds out after an hour of downloads wastes the hour. This asks each mirror of each enabled
source and each ``downstream_sets`` entry, all in parallel with a short timeout, whether it
answers (HEAD, else a one-byte ``Range`` GET: some hosts refuse HEAD, and presigned GET URLs
reject it), and prints which mirror a download would use. It cannot check md5s without the
bytes: ingest and fetch do that.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from geopile.downstream import mirrors_of
from geopile.settings import Settings
from geopile.sources import create_source
from geopile.sources.published import Mirrors
from geopile.urls import strip_secrets
from pipelines.tasks import downstream_sets

DEFAULT_TIMEOUT_S = 10.0
WORKERS = 16


@dataclass(frozen=True)
class Wanted:
    """One file the pipeline needs: who needs it, its key, and where it may come from."""

    source: str  # a source name, or ``downstream/<set>``
    file: str
    mirrors: tuple[str, ...]  # URLs (or local paths) in the order a download tries them
    hint: str = ""  # what to set when there is no mirror at all


@dataclass(frozen=True)
class Probe:
    """What one mirror answered."""

    mirror: str  # secrets stripped
    ok: bool
    status: str  # ok, HTTP 404, unreachable, timeout, missing...
    size: int | None = None


def wanted_files(settings: Settings) -> list[Wanted]:
    """Every file of every enabled source and every ``downstream_sets`` entry, with mirrors.

    Each source says what its ``fetch`` reads (:meth:`geopile.sources.base.Source.inputs`):
    published files with their mirrors, a STAC API, or a path the user supplies.
    """
    out: list[Wanted] = []
    for name, block in settings.sources.items():
        if block.enabled is False:
            continue
        source = create_source(name, block, settings.paths.data, progress=False)
        for which, urls in source.inputs().items():
            out.append(Wanted(name, which, tuple(urls), hint=f"set sources.{name}.{which}"))
    sets = downstream_sets()  # the task files' published sets
    for name in settings.downstream_sets:  # the schema checked them against the task files
        mirrors = Mirrors.of(settings.downstream.get(name))
        for which, urls in mirrors_of(sets[name], mirrors).items():
            out.append(Wanted(f"downstream/{name}", which, tuple(urls),
                              hint=f"download it from {sets[name].homepage} and set "
                              f"downstream.{name}.urls.{which}"))
    return out


def _size(resp: requests.Response) -> int | None:
    """The full size from ``Content-Range: bytes 0-0/N``, else ``Content-Length``."""
    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() and resp.status_code == 200 else None


def _error(err: requests.RequestException) -> str:
    if isinstance(err, requests.Timeout):
        return "timeout"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(err, requests.ConnectionError):
        return "unreachable"
    return type(err).__name__


def probe(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Probe:
    """Ask one mirror whether it serves its file: HEAD, then a one-byte Range GET.

    A local path (a user's own download) is looked up on disk instead.
    """
    shown = strip_secrets(url)
    if "://" not in url:
        path = Path(url).expanduser()
        if path.is_file():
            return Probe(shown, True, "ok (local)", path.stat().st_size)
        if path.is_dir():
            return Probe(shown, True, "ok (local folder)")
        return Probe(shown, False, "missing")
    if urlsplit(url).scheme not in ("http", "https"):
        return Probe(shown, False, "not http(s)")
    try:
        head = requests.head(url, allow_redirects=True, timeout=timeout_s)
        if head.status_code < 400:
            return Probe(shown, True, "ok", _size(head))
        # refused or answered otherwise (405, or 403 for a URL presigned for GET): ask a byte
        with requests.get(url, headers={"Range": "bytes=0-0"}, stream=True,
                          allow_redirects=True, timeout=timeout_s) as resp:
            if resp.status_code < 400:
                return Probe(shown, True, "ok", _size(resp))
            return Probe(shown, False, f"HTTP {resp.status_code}")
    except requests.RequestException as err:
        return Probe(shown, False, _error(err))


def check(files: list[Wanted], timeout_s: float = DEFAULT_TIMEOUT_S,
          workers: int = WORKERS) -> list[tuple[Wanted, list[Probe]]]:
    """Probe every mirror of every file in parallel; results in the order of ``files``."""
    urls = list(dict.fromkeys(u for f in files for u in f.mirrors))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        answers = dict(zip(urls, pool.map(lambda u: probe(u, timeout_s), urls), strict=True))
    return [(f, [answers[u] for u in f.mirrors]) for f in files]


def _mb(size: int | None) -> str:
    if size is None:
        return "-"
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} B"


def table(results: list[tuple[Wanted, list[Probe]]]) -> tuple[str, int]:
    """The report and the number of files no mirror serves.

    One row per mirror; ``used`` marks the first that answered (the one a download starts
    with). Mirrors are shown without their query strings.
    """
    rows = [("source", "file", "status", "size", "use", "mirror")]
    unserved = 0
    for wanted, probes in results:
        used = next((p for p in probes if p.ok), None)
        if used is None:
            unserved += 1
        if not probes:
            rows.append((wanted.source, wanted.file, "no mirror", "-", "", wanted.hint))
        for p in probes:
            rows.append((wanted.source, wanted.file, p.status, _mb(p.size),
                         "used" if p is used else "", p.mirror))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
             for r in rows]
    lines.insert(1, "-" * (sum(widths) + 2 * 5 + len("mirror")))
    total = len(results)
    lines.append(f"\n{total} files, {total - unserved} with a mirror that answers"
                 + (f", {unserved} with NONE: downloads of those will fail (set urls.<file> "
                    "to a working copy, or see the hint in the mirror column)" if unserved
                    else ""))
    return "\n".join(lines), unserved


def listing(files: list[Wanted]) -> str:
    """The mirrors each file would be downloaded from, in order, without asking any."""
    lines = []
    for f in files:
        lines.append(f"{f.source} {f.file}:")
        lines += [f"  {i}. {strip_secrets(u)}" for i, u in enumerate(f.mirrors, 1)] or \
            [f"  (none: {f.hint})"]
    return "\n".join(lines)


def run(settings: Settings, *, do_check: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """Print the mirrors (``do_check``: asking each); exit status 1 if a file has none serving."""
    files = wanted_files(settings)
    if not do_check:
        print(listing(files))
        return 0
    report, unserved = table(check(files, timeout_s))
    print(report)
    return 1 if unserved else 0
