"""Downstream evaluation sets: the published-file types, and ``fetch`` into torchgeo's layout.

A task file (``pipelines/tasks/<task>.py``) declares its set's files as a :class:`DownstreamSet`.
UC Merced is an ingest source (curation decontaminates against it); the other downstream sets are
only fetched: downloaded with resume and checksum, extracted safely, and laid out under
``DATA/downstream/<name>`` exactly as the torchgeo dataset that reads them expects. URLs and md5s
are overridable per set in ``params.yaml: downstream.<name>.urls/md5s`` (a mirror, the offline
world), as for the ingest sources. A file may have several mirrors; they are tried in order and
the first that serves the published md5 is used (:func:`geopile.download.download_first`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopile.atomic import write_text
from geopile.download import download_first, extract_archive, verify_file
from geopile.params import ParamsError
from geopile.sources.published import Mirrors
from geopile.urls import strip_secrets


@dataclass(frozen=True, init=False)
class PublishedFile:
    """One published file: its mirrors in order, MD5 (the publisher's, via torchgeo), local name.

    No mirror (``url`` None) where the publisher hands files out by request or through a web
    form: the user downloads them and sets ``downstream.<set>.urls.<key>`` to the local path.
    """

    mirrors: tuple[str, ...]
    md5: str | None
    filename: str  # the name the download gets (torchgeo's name for it)
    archive: bool = False  # extracted, its top-level entries linked into the root

    def __init__(self, mirrors: str | Sequence[str] | None, md5: str | None, filename: str,
                 archive: bool = False) -> None:
        found = () if mirrors is None else (mirrors,) if isinstance(mirrors, str) else mirrors
        object.__setattr__(self, "mirrors", tuple(found))
        object.__setattr__(self, "md5", md5)
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "archive", archive)

    @property
    def url(self) -> str | None:
        """The first mirror (the publisher's), or None if the file has no public URL."""
        return self.mirrors[0] if self.mirrors else None


@dataclass(frozen=True)
class DownstreamSet:
    """The published facts of one downstream set."""

    name: str
    licence: str
    homepage: str
    files: dict[str, PublishedFile] = field(default_factory=dict)


def link(target: Path, name: Path) -> None:
    """Point the symlink ``name`` at ``target`` (replacing a stale link)."""
    if name.is_symlink() or name.exists():
        if name.resolve() == target.resolve():
            return
        name.unlink()
    os.symlink(target.resolve(), name)


def downstream_root(data: Path, name: str) -> Path:
    """Where the torchgeo layout of ``name`` is assembled.

    It links into ``downloads`` and ``extracted`` beside it, all under ``DATA/downstream/<name>``
    and apart from ingest's ``raw`` and ``downloads``, which curation depends on.
    """
    return Path(data) / "downstream" / name / "torchgeo"


def manifest_path(data: Path, name: str) -> Path:
    """The record of what ``fetch`` got for ``name`` (a dvc output: finetuning depends on it)."""
    return Path(data) / "fetched" / f"{name}.json"


def _wanted(published: DownstreamSet,
            mirrors: Mirrors) -> dict[str, tuple[PublishedFile, list[str], str | None]]:
    """Each file of a set: (its table entry, mirrors or a local path, md5), yours first.

    The mirrors are ``downstream.<name>.urls.<file>`` (a URL, a list of them, or a local path)
    followed by the published ones (see :class:`geopile.sources.published.Mirrors`).
    """
    return {which: (item, mirrors.urls_for(item, which), mirrors.md5_for(item, which))
            for which, item in published.files.items()}


def mirrors_of(published: DownstreamSet, mirrors: Mirrors) -> dict[str, list[str]]:
    """Each file of a set and the URLs (or local path) it would be fetched from."""
    return {which: urls for which, (_, urls, _) in _wanted(published, mirrors).items()}


def fetched_root(name: str, published: DownstreamSet, mirrors: Mirrors, data: Path) -> Path:
    """The torchgeo root of ``name``, fetching only if no fetch of the same files is recorded.

    Finetuning calls this on every run (and every rank): re-hashing a 66 GB archive each time
    would cost minutes, and ``geopile fetch`` (the dvc stage) has verified it already.
    """
    record_path, root = manifest_path(data, name), downstream_root(data, name)
    if record_path.is_file() and root.is_dir():
        record = json.loads(record_path.read_text())["files"]
        if all(which in record and record[which]["url"] in {strip_secrets(u) for u in urls}
               and md5 in (None, record[which]["md5"])
               for which, (_, urls, md5) in _wanted(published, mirrors).items()):
            return root
    return fetch(name, published, mirrors, data, progress=False)


def fetch(name: str, published: DownstreamSet, mirrors: Mirrors, data: Path, *,
          progress: bool = True) -> Path:
    """Download, verify and extract the set ``name``; returns its torchgeo root (idempotent).

    Downloads go to ``DATA/downstream/<name>/downloads`` (resumed, checked), archives are
    extracted to ``.../extracted`` (atomically, refusing path escapes), and the torchgeo root
    ``.../torchgeo`` holds links to both.
    ``DATA/fetched/<name>.json`` records each file's URL (secrets stripped), md5 and sha256.
    """
    data = Path(data)
    root = downstream_root(data, name)
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"name": published.name, "licence": published.licence,
                              "root": str(root), "files": {}}
    for which, (item, urls, md5) in _wanted(published, mirrors).items():
        if not urls:
            raise ParamsError(
                f"{name}: {item.filename} has no public URL ({published.homepage} hands it "
                f"out); download it and set downstream.{name}.urls.{which} to its path")
        if "://" not in urls[0]:  # a file the user downloaded: checked in place
            if not Path(urls[0]).is_file():
                raise FileNotFoundError(f"downstream.{name}.urls.{which}: {urls[0]} not found")
            got = verify_file(Path(urls[0]), urls[0], md5)
        else:
            got = download_first(urls, root.parent / "downloads" / item.filename, md5,
                                 progress=progress)
        record["files"][which] = {"url": got.url, "md5": got.md5, "sha256": got.sha256,
                                  "size": got.size}
        if item.archive:
            extracted = extract_archive(got.path, root.parent / "extracted" / which)
            for entry in sorted(extracted.iterdir()):
                link(entry, root / entry.name)
        else:
            link(got.path, root / item.filename)
    write_text(manifest_path(data, name), json.dumps(record, indent=1, sort_keys=True) + "\n")
    return root
