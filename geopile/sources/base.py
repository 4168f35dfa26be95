"""The one contract every source follows, and the shared ImageFolder-archive implementation.

A source knows where its data is published (``fetch``), which images it holds (``candidates``)
and how to turn one candidate into a record row (``process``). The ingest driver
(:mod:`geopile.ingest`) does the rest for every source alike: parallelism, progress, resume,
rejects and atomic output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geopile.download import Fetched, download, extract_archive
from geopile.imagestats import image_stats
from geopile.params import ParamsError
from geopile.records import make_key
from geopile.sources.published import Publication


@dataclass
class IngestContext:
    """What a source may use while ingesting: where data goes and its own parameters."""

    data_dir: Path
    name: str  # the params entry (a folder source may be registered under any name)
    params: dict[str, Any]
    seed: int = 0
    progress: bool = True

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


@dataclass
class Processed:
    """The result of one candidate: record columns, and bytes to store if not on disk yet."""

    row: dict[str, Any]
    payload: bytes | None = None


class Source:
    """Base class: subclasses set the class attributes and override what differs."""

    kind: ClassVar[str]
    publication: ClassVar[Publication | None] = None
    classes: ClassVar[tuple[str, ...]] = ()
    expected_bands: ClassVar[int | None] = 3
    # "process" for CPU-bound decoding of local files, "thread" for network-bound reads.
    executor: ClassVar[str] = "process"
    # True when ingest writes every file under raw_dir (so it may delete what no record uses)
    writes_raw_dir: ClassVar[bool] = False

    def __init__(self, ctx: IngestContext) -> None:
        self.ctx = ctx
        self.params = ctx.params

    # -- facts ------------------------------------------------------------------------------
    @property
    def licence(self) -> str:
        """Licence of the images (params may override, e.g. for a folder source)."""
        if "licence" in self.params:
            return str(self.params["licence"])
        return self.publication.licence if self.publication else "unknown"

    @property
    def gsd_range(self) -> tuple[float | None, float | None]:
        """The dataset's GSD range in metres, used where the per-image GSD is unknown."""
        if "gsd_m" in self.params:
            lo_hi = self.params["gsd_m"]
            lo, hi = (lo_hi, lo_hi) if isinstance(lo_hi, int | float) else lo_hi
            return float(lo), float(hi)
        return self.publication.gsd_m if self.publication else (None, None)

    def quotas(self) -> Mapping[str, int] | None:
        """Accepted images per stratum, for sources that sample; ``None`` takes every candidate."""
        return None

    # -- the contract -----------------------------------------------------------------------
    def fetch(self) -> None:
        """Download, verify and extract the source into ``ctx.raw_dir`` (idempotent)."""
        raise NotImplementedError

    def candidates(self) -> Iterator[Candidate]:
        """Every image the source holds, in a deterministic order."""
        raise NotImplementedError

    def process(self, cand: Candidate) -> Processed:
        """Decode and measure one candidate; raise :class:`BadImage` to reject it."""
        data = (self.ctx.data_dir / cand.path).read_bytes()
        stats = image_stats(data, self.expected_bands)
        lo, hi = self.gsd_range
        row = {"gsd_min": lo, "gsd_max": hi, "licence": self.licence, "path": cand.path}
        row.update(cand.fields)
        row.update(stats.as_row())
        return Processed(row)

    # -- helpers for published files --------------------------------------------------------
    def download_file(self, which: str) -> Fetched:
        """Download one published file, with URL and md5 overridable in params.

        Params ``urls.<which>`` / ``md5s.<which>`` replace the published ones (a mirror, or the
        offline world); ``md5s.<which>: null`` skips the check.
        """
        assert self.publication is not None, "download_file needs a publication"
        published = self.publication.downloads.get(which)
        urls = self.params.get("urls") or {}
        md5s = self.params.get("md5s") or {}
        url = urls.get(which) or (published.url if published else None)
        if url is None:
            raise ParamsError(f"source {self.ctx.name}: no URL for {which!r} (set urls.{which})")
        md5 = md5s[which] if which in md5s else (published.md5 if published else None)
        filename = url.rsplit("/", 1)[-1]
        return download(url, self.ctx.download_dir / filename, md5, progress=self.ctx.progress)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


class ImageFolderArchive(Source):
    """A published archive holding ``<image_root>/<class>/<file>`` (RESISC45, PatternNet, UCM).

    Every file inside a class folder is a candidate, so a stray non-image member is rejected
    with a reason rather than skipped silently; files outside class folders are not images of
    the dataset (licences, readmes) and are ignored.
    """

    image_root: ClassVar[str]
    split_files: ClassVar[dict[str, str]] = {}  # split name -> download key of its list

    def fetch(self) -> None:
        """Download and verify the archive (and split lists), then extract it safely."""
        archive = self.download_file("archive")
        self._origin_sha256 = archive.sha256
        extract_archive(archive.path, self.ctx.raw_dir)
        for which in self.split_files.values():
            self.download_file(which)

    def _split_of(self) -> dict[str, str]:
        split_of: dict[str, str] = {}
        for split, which in self.split_files.items():
            urls = self.params.get("urls") or {}
            url = urls.get(which) or self.publication.downloads[which].url
            listing = self.ctx.download_dir / url.rsplit("/", 1)[-1]
            for line in listing.read_text().splitlines():
                if line.strip():
                    split_of[line.strip()] = split
        return split_of

    def key_for(self, rel: Path) -> str:
        """Sample key of a file (relative to the image root): the file stem is unique."""
        return self._make_key(rel.stem)

    def _make_key(self, *parts: str) -> str:
        return make_key(self.ctx.name, *parts)

    def candidates(self) -> Iterator[Candidate]:
        """Files of each class folder, classes in published order, files sorted by name."""
        root = self.ctx.raw_dir / self.image_root
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is missing: the archive layout is not as published")
        split_of = self._split_of()
        sha = getattr(self, "_origin_sha256", None)
        class_ids = {c: i for i, c in enumerate(self.classes)}
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            label = class_dir.name
            for file in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                rel = file.relative_to(root)
                yield Candidate(
                    key=self.key_for(rel),
                    path=str(file.relative_to(self.ctx.data_dir)),
                    fields={
                        "label": label,
                        "label_id": class_ids.get(label),
                        "split": split_of.get(file.name),
                        "origin": str(file.relative_to(self.ctx.raw_dir)),
                        "origin_sha256": sha,
                    },
                )
