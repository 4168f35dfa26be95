"""The one contract every source follows, and the shared ImageFolder-archive implementation.

A source knows where its data is published (``fetch``), which images it holds (``candidates``)
and how to turn one candidate into a record row (``process``). The ingest driver
(:mod:`geopile.ingest`) does the rest for every source alike: parallelism, progress, resume,
rejects and atomic output.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geopile.download import (
    Fetched,
    download_first,
    recorded_source,
)
from geopile.imagestats import BadImage, image_stats
from geopile.params import ParamsError
from geopile.payloads import LocalPayloads, PayloadStore
from geopile.records import file_key, make_key
from geopile.schema import SourceSettings
from geopile.sources.published import Mirrors, Publication
from geopile.staging import install_archive
from geopile.urls import strip_secrets

log = logging.getLogger(__name__)


@dataclass
class IngestContext:
    """What a source may use while ingesting: where data goes and its own parameters."""

    data_dir: Path
    name: str  # the params entry (a folder source may be registered under any name)
    settings: SourceSettings  # its block of params, typed by the source's own model
    seed: int = 0
    progress: bool = True
    # where payloads are read and written by whichever process decides a candidate
    # (:mod:`geopile.payloads`); None: the data directory
    payloads: PayloadStore | None = None

    def __post_init__(self) -> None:
        if self.payloads is None:
            self.payloads = LocalPayloads(self.data_dir)

    @property
    def store(self) -> PayloadStore:
        """The payload store (never None once constructed)."""
        assert self.payloads is not None
        return self.payloads

    @property
    def raw_dir(self) -> Path:
        """Where this source's original files are kept (the record ``path`` is relative to it)."""
        return self.data_dir / "raw" / self.name

    @property
    def download_dir(self) -> Path:
        """Where published archives are downloaded to."""
        return self.data_dir / "downloads" / self.name


@dataclass
class Candidate:
    """One image to ingest: its key, where its bytes are, and what is known before decoding.

    Picklable on purpose: candidates travel to worker processes.
    """

    key: str
    path: str | None = None  # relative to the data dir, for images already on disk
    fields: dict[str, Any] = field(default_factory=dict)  # record columns known up front
    stratum: str | None = None  # for sources sampled with a quota per stratum (NAIP)
    task: Any = None  # source-specific work item (NAIP: the window to read)


@dataclass(frozen=True)
class Refused:
    """A candidate turned down before any byte is read: its reject reason (a FIFO, a link out)."""

    reason: str


@dataclass
class Processed:
    """The result of one candidate: record columns, and bytes to store if not on disk yet."""

    row: dict[str, Any]
    payload: bytes | None = None


class Source:
    """Base class: subclasses set the class attributes and override what differs."""

    kind: ClassVar[str]
    # its params block's model, declared in the source's own file (geopile.schema's types)
    settings: ClassVar[type[SourceSettings]] = SourceSettings
    # The published facts, all set in the source's own file: files (mirrors, md5s), licence,
    # GSD range, homepage; citation; class names in the publisher's order; multi-label names.
    publication: ClassVar[Publication | None] = None
    bibtex: ClassVar[str | None] = None  # how the publisher asks to be cited
    classes: ClassVar[tuple[str, ...]] = ()
    multilabels: ClassVar[tuple[str, ...]] = ()  # for images carrying several labels (MLRSNet)
    split_files: ClassVar[dict[str, str]] = {}  # split name -> download key of its list
    # split folders as published, ``<split>/<class>/<image>`` (RSD46-WHU's train and test)
    split_folders: ClassVar[tuple[str, ...]] = ()
    # the params key naming a file or folder the user supplies (no public download)
    user_input: ClassVar[str | None] = None
    expected_bands: ClassVar[int | None] = 3
    # "process" for CPU-bound decoding of local files, "thread" for network-bound reads.
    executor: ClassVar[str] = "process"
    # True when ingest writes every file under raw_dir (so it may delete what no record uses)
    writes_raw_dir: ClassVar[bool] = False
    # What identifies the input ``fetch`` read (an archive's sha256, a folder's path), set by
    # ``fetch``: a checkpoint made from another input must not be resumed.
    input_id: str | None = None

    def __init__(self, ctx: IngestContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.mirrors = Mirrors.of(ctx.settings)

    # -- facts ------------------------------------------------------------------------------
    @property
    def licence(self) -> str:
        """Licence of the images (params may override, e.g. for a folder source)."""
        if self.settings.licence:
            return self.settings.licence
        return self.publication.licence if self.publication else "unknown"

    @property
    def citation(self) -> str:
        """How to cite the images: params ``citation`` (a folder's), else the publisher's BibTeX."""
        if self.settings.citation:
            return self.settings.citation.strip()
        return self.bibtex.strip() if self.bibtex else "unknown"

    def origin_lines(self) -> list[str]:
        """Where the images were read from, one line per file, for the dataset card.

        Params ``origin`` (or ``homepage``) wins; else, per published file, the mirror it was
        downloaded from (recorded beside the download) or, before any download, the first one
        to try, with its md5. Secrets are stripped: the card is published.
        """
        given = self.settings.origin or self.settings.homepage
        if given:
            return [strip_secrets(given)]
        if self.publication is None:
            return [f"unknown (set sources.{self.ctx.name}.origin)"]
        lines = []
        for which, published in self.publication.downloads.items():
            used = recorded_source(
                self.ctx.download_dir / self.mirrors.local_name(published, which))
            url = used or self.mirrors.urls_for(published, which)[0]
            md5 = self.mirrors.md5_for(published, which)
            lines.append(f"{strip_secrets(url)} (md5 {md5})" if md5
                         else f"{strip_secrets(url)} (no published md5)")
        return lines or [f"{self.publication.homepage} (no public download: supplied by the user)"]

    @property
    def gsd_range(self) -> tuple[float | None, float | None]:
        """The dataset's GSD range in metres, used where the per-image GSD is unknown."""
        lo_hi = getattr(self.settings, "gsd_m", None)
        if lo_hi is not None:
            lo, hi = (lo_hi, lo_hi) if isinstance(lo_hi, int | float) else (lo_hi[0], lo_hi[-1])
            return float(lo), float(hi)
        return self.publication.gsd_m if self.publication else (None, None)

    def inputs(self) -> dict[str, list[str]]:
        """What ``fetch`` reads, per file: the URLs (or local paths) it tries, in order.

        Published files list their mirrors as a download would try them; a file the user
        supplies (``user_input``) lists its path, or nothing while params do not set it.
        ``geopile sources`` asks each of them before an ingest depends on it.
        """
        if self.user_input is not None:
            given = getattr(self.settings, self.user_input, None)
            return {self.user_input: [str(given)] if given else []}
        downloads = self.publication.downloads if self.publication else {}
        return {which: self.mirrors.urls_for(published, which)
                for which, published in downloads.items()}

    def quotas(self) -> Mapping[str, int] | None:
        """Accepted images per stratum, for sources that sample; ``None`` takes every candidate."""
        return None

    def skipped(self) -> list[dict[str, Any]]:
        """Inputs found but never candidates (a STAC item without an asset asked for).

        As reject rows: ``key``, ``origin``, ``reject_reason``, ``stratum``; called after
        :meth:`fetch`.
        """
        return []

    # -- the contract -----------------------------------------------------------------------
    def fetch(self) -> None:
        """Download, verify and extract the source into ``ctx.raw_dir`` (idempotent)."""
        raise NotImplementedError

    def candidates(self) -> Iterator[Candidate]:
        """Every image the source holds, in a deterministic order."""
        raise NotImplementedError

    def process(self, cand: Candidate) -> Processed:
        """Decode and measure one candidate; raise :class:`BadImage` to reject it."""
        if isinstance(cand.task, Refused):
            raise BadImage(cand.task.reason)
        data = self.ctx.store.read(cand.path)  # staged there by the driver (ingest)
        stats = image_stats(data, self.expected_bands)
        lo, hi = self.gsd_range
        row = {"gsd_min": lo, "gsd_max": hi, "licence": self.licence, "path": cand.path}
        row.update(cand.fields)
        row.update(stats.as_row())
        return Processed(row)

    # -- helpers for published files --------------------------------------------------------
    def download_file(self, which: str) -> Fetched:
        """Download one published file from the first of its mirrors that serves its md5.

        Params ``urls.<which>`` (a URL or a list: your own mirrors) are tried before the
        published mirrors; ``mirror_root`` swaps the published ones for their copies under it
        (the offline world). ``md5s.<which>`` replaces the published md5 (``null`` skips the
        check). The local name is the published file name, never a URL's query; the returned
        ``Fetched.url`` is the mirror actually used.
        """
        if self.publication is None:
            raise TypeError(f"{type(self).__name__}.download_file needs a publication")
        published = self.publication.downloads.get(which)
        urls = self.mirrors.urls_for(published, which)
        if not urls:
            raise ParamsError(f"source {self.ctx.name}: no URL for {which!r} (set urls.{which})")
        dest = self.ctx.download_dir / self.mirrors.local_name(published, which)
        return download_first(urls, dest, self.mirrors.md5_for(published, which),
                              progress=self.ctx.progress)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


class ImageFolderArchive(Source):
    """A published archive holding ``<image_root>/<class>/<file>`` (RESISC45, PatternNet, UCM).

    Every file inside a class folder is a candidate, so a stray non-image member is rejected
    with a reason rather than skipped silently; files outside class folders are not images of
    the dataset (licences, readmes) and are ignored.
    """

    image_root: ClassVar[str]

    def fetch(self) -> None:
        """Download and verify the archive (and split lists), then extract it safely.

        The extraction is keyed by the archive's sha256 (see :func:`install_archive`), so a
        changed archive is never read through an older extraction.
        """
        archive = self.download_file("archive")
        self._origin_sha256 = self.input_id = archive.sha256
        install_archive(self.ctx, archive.path, archive.sha256)
        for which in self.split_files.values():
            self.download_file(which)

    def _split_of(self) -> dict[str, str]:
        split_of: dict[str, str] = {}
        for split, which in self.split_files.items():
            published = self.publication.downloads.get(which)  # type: ignore[union-attr]
            listing = self.ctx.download_dir / self.mirrors.local_name(published, which)
            for line in listing.read_text().splitlines():
                if line.strip():
                    split_of[line.strip()] = split
        return split_of

    def key_parts(self, rel: Path) -> tuple[str, ...]:
        """What names a file (relative to the image root) in its key: its stem, unique here."""
        return (rel.stem,)

    def key_for(self, rel: Path, extension: bool = False) -> str:
        """Sample key of a file (relative to the image root), see :func:`file_key`.

        ``extension``: with the file's extension too (two files that differ only in it).
        """
        parts = self.key_parts(rel)
        if extension and rel.suffix:
            parts = (*parts, rel.suffix[1:])
        return file_key(self.ctx.name, parts, rel.as_posix())

    def _make_key(self, *parts: str) -> str:
        return make_key(self.ctx.name, *parts)

    def class_dirs(self, root: Path) -> list[Path]:
        """The class folders: real directories of the image root (a link to one is a reject)."""
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())

    def candidates(self) -> Iterator[Candidate]:
        """Files of each class folder, classes in published order, files sorted by name.

        Entries that are not images one can read safely are rejects with a reason (see
        :func:`folder_entries`); keys are unique (:meth:`key_for`, then :func:`unique_keys`).
        """
        root = self.ctx.raw_dir / self.image_root
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is missing: the archive layout is not as published")
        split_of = self._split_of()
        sha = getattr(self, "_origin_sha256", None)
        class_ids = {c: i for i, c in enumerate(self.classes)}
        boundary = self.ctx.raw_dir.resolve()
        # links where class folders belong are rejects; plain files there are not images
        entries = [(p, folder_refusal(p, boundary)) for p in sorted(root.iterdir())
                   if p.is_symlink() and (p.is_dir() or not p.exists())]
        for class_dir in self.class_dirs(root):
            entries += folder_entries(class_dir, boundary)
        rels = [file.relative_to(root) for file, _ in entries]
        keys = unique_keys(rels, self.key_for)
        for (file, refused), rel, key in zip(entries, rels, keys, strict=True):
            label = rel.parts[0] if len(rel.parts) > 1 else None
            yield Candidate(
                key=key,
                path=str(file.relative_to(self.ctx.data_dir)),
                fields={
                    "label": label,
                    "label_id": class_ids.get(label),
                    "split": split_of.get(file.name),
                    "origin": str(file.relative_to(self.ctx.raw_dir)),
                    "origin_sha256": sha,
                },
                task=None if refused is None else Refused(refused),
            )


def unique_keys(rels: list[Path], key_for: Any) -> list[str]:
    """Each file's key; files that differ only in extension (``img.jpg``, ``img.png``) get it.

    A key still shared after that (``img_jpg.jpg`` beside those two) stops the ingest, naming
    the files (:func:`geopile.ingest.ingest` refuses shared keys for every source).
    """
    keys = [key_for(rel) for rel in rels]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                keys[i] = key_for(rels[i], extension=True)
    return keys


def folder_refusal(path: Path, boundary: Path) -> str | None:
    """Why ``path`` is not read as an image (None: it is a regular file to read).

    Links are followed only to regular files inside ``boundary`` (the folder the user named):
    a link out of it, to a folder (which could loop or read files twice), to nothing, or round
    in a loop is a reject, as are FIFOs, sockets and devices (never opened: a FIFO would block).
    """
    try:
        info = path.stat()  # follows links
    except FileNotFoundError:
        return f"dangling symlink: points to {os.readlink(path)}, which does not exist"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop: the link leads back to itself"
        raise
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(boundary):
            return f"symlink out of the folder: to {target}, not followed"
        if stat.S_ISDIR(info.st_mode):
            return f"symlink to a folder: to {target}, not followed (it could loop)"
    if stat.S_ISREG(info.st_mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "not a file")
    return f"not a regular file: {kind}, not read"


def folder_entries(folder: Path, boundary: Path) -> list[tuple[Path, str | None]]:
    """Every entry below ``folder`` but its sub-folders, sorted, each with its refusal.

    Sub-folders are walked without following links (a link is an entry like a file).
    """
    out: list[tuple[Path, str | None]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            out += folder_entries(entry, boundary)
        else:
            out.append((entry, folder_refusal(entry, boundary)))
    return out
