"""Offline-world copies of the published labeled corpora, with planted test cases.

Ingest, deduplication and decontamination are tested against archives that must look like the
real downloads: the same URLs (each live mirror of a published file mirrored to a file by
``mirror_path``; mirrors dead in the real world, ``DEAD_MIRRORS``, stay dead), archive
layouts, member naming patterns, class folders, split files and HF-hub parquet schema. Into
these miniatures we plant the cases the pipeline has to catch (exact and near duplicates within
and across sources, copies of UC Merced *test* images inside pretraining sources, corrupt
members) and return the ground truth, so tests can score the pipeline exactly. Everything is a
pure function of ``seed``: zip members are sorted with fixed timestamps and JPEG/TIFF/PNG/parquet
encoders are run with fixed settings, so two builds are byte-identical.
"""

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from geopile.sources.base import Source
from geopile.sources.mlrsnet import MLRSNet
from geopile.sources.patternnet import PatternNet
from geopile.sources.resisc45 import Resisc45
from geopile.sources.rsd46 import RSD46
from geopile.sources.ucmerced import UCMerced
from geopile.world.scenes import render_scene, scene_kind_for

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_QUALITY = 90  # the published JPEGs are roughly this quality
_SIZE = (256, 256)

# Planted test cases. A source image is always the first image of its (source, class), and each
# (source, class) is a source at most once, so planted relations never chain into pairs the
# ground truth does not list. Transforms: ("jpeg_requality", q), ("resize", via, final),
# ("crop", border) then back to 256, ("brightness", delta), ("reencode",) = JPEG q95.
_EXACT = (  # (source, class) copied byte for byte to (source, class)
    ("resisc45", "airplane", "resisc45", "airplane"),
    ("resisc45", "church", "resisc45", "palace"),  # RESISC45 really has cross-class copies
    ("resisc45", "forest", "patternnet", "forest"),
    ("resisc45", "harbor", "mlrsnet", "harbor&port"),
    ("patternnet", "runway", "patternnet", "runway"),
    ("patternnet", "storage_tank", "rsd46", "Oiltank"),
    ("mlrsnet", "desert", "mlrsnet", "desert"),
)
_NEAR = (  # (source, class) -> (source, class) through a transform
    ("resisc45", "beach", "resisc45", "beach", ("jpeg_requality", 70)),
    ("patternnet", "parking_lot", "mlrsnet", "parking_lot", ("jpeg_requality", 75)),
    ("patternnet", "bridge", "patternnet", "bridge", ("resize", 240, 256)),
    ("resisc45", "railway", "rsd46", "Railway", ("resize", 224, 224)),  # RSD46 sizes vary
    ("mlrsnet", "snowberg", "mlrsnet", "snowberg", ("crop", 8)),
    ("rsd46", "Cross river bridge", "resisc45", "bridge", ("crop", 8)),
    ("rsd46", "Water", "rsd46", "Water", ("brightness", 15)),
    ("resisc45", "golf_course", "patternnet", "golf_course", ("brightness", -12)),
)
EVAL_SET = "ucmerced"  # the corpus whose test images are planted in the others
_CONTAMINANTS = (  # first UC Merced *test* image of a class -> (source, class)
    ("airplane", "resisc45", "airplane", ("reencode",)),
    ("beach", "patternnet", "beach", ("reencode",)),
    ("forest", "mlrsnet", "forest", ("reencode",)),
    ("storagetanks", "rsd46", "Oiltank", ("reencode",)),
    ("river", "resisc45", "river", ("crop", 10)),
    ("tenniscourt", "patternnet", "tennis_court", ("resize", 224, 256)),
    ("harbor", "mlrsnet", "harbor&port", ("brightness", -15)),
    ("parkinglot", "rsd46", "Parking lot", ("jpeg_requality", 75)),
)

# MLRSNet multi-labels: the category's own label first, then co-occurring labels by scene kind.
_MLRS_PRIMARY = {
    "bareland": "bare soil", "commercial_area": "buildings", "eroded_farmland": "gully",
    "farmland": "field", "ground_track_field": "track", "harbor&port": "harbor",
    "industrial_area": "factory", "meadow": "grass", "mobile_home_park": "mobile home",
    "shipping_yard": "containers", "storage_tank": "tanks", "swimmimg_pool": "swimming pool",
    "vegetable_greenhouse": "greenhouse",
}
_KIND_LABELS = {
    "field": ("field", "road", "trees", "bare soil"), "pivot": ("field", "bare soil", "road"),
    "road": ("road", "cars", "pavement", "grass", "trees"),
    "roof": ("buildings", "trees", "road", "cars", "grass"),
    "urban": ("buildings", "road", "cars", "pavement"), "water": ("water", "trees", "grass"),
    "shore": ("water", "sand", "sea", "trees", "buildings"),
    "river": ("water", "trees", "grass", "field"), "forest": ("trees", "grass", "road"),
    "grass": ("grass", "trees", "bare soil"), "bare": ("bare soil", "trees", "grass"),
    "sand": ("sand", "bare soil"), "snow": ("snow", "water", "cloud"),
    "court": ("grass", "trees", "buildings", "pavement", "road"),
    "tank": ("tanks", "pavement", "road", "buildings", "bare soil"),
    "object": ("pavement", "water", "grass", "road"),
}


# Published mirrors that no longer serve in the real world. The world writes nothing there, so
# they answer 404 on loopback too and every run falls through to the next mirror, as it must on
# the internet (issue 15: the split lists' publisher, gone since Nov 2024).
DEAD_MIRRORS = ("https://storage.googleapis.com/remote_sensing_representations/",)


def live_mirrors(mirrors: Sequence[str]) -> list[str]:
    """The mirrors of a published file that the world serves (all but ``DEAD_MIRRORS``).

    Raises:
        ValueError: If none is left (the world could not serve the file at all).
    """
    live = [u for u in mirrors if not u.startswith(DEAD_MIRRORS)]
    if not live:
        raise ValueError(f"every mirror of {list(mirrors)} is dead: the world cannot serve it")
    return live


def mirror_path(url: str) -> str:
    """Map a published URL to its path under the offline world's ``http/`` directory.

    The scheme is dropped and host plus path kept, so a loopback server rooted at ``http/``
    serves ``http://127.0.0.1:PORT/<mirror_path(url)>`` for the real ``url``.

    Args:
        url: An ``http(s)://host/path`` URL without query or fragment.

    Returns:
        ``host/path``, e.g. ``hf.co/datasets/torchgeo/resisc45/resolve/<rev>/NWPU-RESISC45.zip``.

    Raises:
        ValueError: If the URL is not http(s) or carries a query or fragment (the mapping would
            not be one-to-one).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not a mirrorable URL: {url!r}")
    return parts.netloc + parts.path


def _jpeg(pixels: np.ndarray, quality: int = _QUALITY) -> bytes:
    """Encode pixels (RGB or greyscale) as JPEG with fixed settings."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode pixels losslessly as ``TIFF`` (uncompressed, as UC Merced) or ``PNG``."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    """Decode stored bytes back to RGB pixels (what a consumer of the archive sees)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _transformed(pixels: np.ndarray, op: tuple) -> bytes:
    """Apply a near-duplicate transform and encode the result as JPEG."""
    kind = op[0]
    if kind == "reencode":
        return _jpeg(pixels, 95)
    if kind == "jpeg_requality":
        return _jpeg(pixels, op[1])
    img = Image.fromarray(pixels)
    if kind == "resize":
        img = img.resize((op[1], op[1]), Image.Resampling.BICUBIC)
        img = img.resize((op[2], op[2]), Image.Resampling.BICUBIC)
    elif kind == "crop":
        b = op[1]
        img = img.crop((b, b, img.width - b, img.height - b)).resize(
            _SIZE, Image.Resampling.BICUBIC)
    elif kind == "brightness":
        img = Image.fromarray(np.clip(pixels.astype(np.int16) + op[1], 0, 255).astype(np.uint8))
    else:
        raise ValueError(f"unknown transform {op!r}")
    return _jpeg(np.asarray(img))


@dataclass
class _Member:
    """One archive member (or MLRSNet row) under construction."""

    name: str
    data: bytes
    cls: str  # class folder (MLRSNet: category)
    split: str = ""  # RSD46 split folder or UC Merced split, where the source has one
    bad: str = ""  # corruption kind; empty for a valid 3-band image
    labels: tuple[int, ...] = ()  # MLRSNet multi-label indices


def _tiff(pixels: np.ndarray) -> bytes:
    return _encode(pixels, "TIFF")


@dataclass(frozen=True)
class Layout:
    """How the world lays out one corpus as its publisher does, and what it renders into it.

    The corpus's facts (classes, files and mirrors, split lists or split folders, multi-label
    names) come from its source class; what is here is what the real archives look like.
    """

    source: type[Source]
    member: Callable[[str, int, str], str]  # (class, number, split) -> name without suffix
    first: int = 1  # the number of a class's first image
    ext: str = ".jpg"
    encode: Callable[[np.ndarray], bytes] = _jpeg
    # class -> (h, w) of its first image (of its first train image in the eval set): the
    # real corpora are not all 256 x 256
    odd_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # the eval set: per_class + 2 images a class, split per class, so each class has test
    # images to leak; other split lists are drawn over the whole corpus
    eval_set: bool = False
    packing: str = "zip"  # "zip": one archive (published, or the user's); "parquet": shards
    extra: Mapping[str, bytes] = field(default_factory=dict)  # files beside the class folders


LAYOUTS: dict[str, Layout] = {layout.source.kind: layout for layout in (  # in render order
    Layout(Resisc45, lambda c, n, s: f"NWPU-RESISC45/{c}/{c}_{n:03d}"),
    Layout(PatternNet, lambda c, n, s: f"PatternNet/images/{c}/{c}{n:03d}",
           extra={"PatternNet/readme.txt": b"PatternNet: 38 classes, 800 images each.\n"}),
    Layout(UCMerced, lambda c, n, s: f"UCMerced_LandUse/Images/{c}/{c}{n:02d}", first=0,
           ext=".tif", encode=_tiff, eval_set=True,
           odd_sizes={"buildings": (256, 247), "denseresidential": (247, 256)}),
    Layout(MLRSNet, lambda c, n, s: f"{c}_{n:05d}", packing="parquet"),
    Layout(RSD46, lambda c, n, s: f"RSD46-WHU/{s}/{c}/{n:04d}",  # sizes vary
           odd_sizes=dict.fromkeys(RSD46.classes[2::5], (224, 224))),
)}


def user_archive(source: type[Source]) -> str:
    """Where the world keeps a corpus with no public URL, as a user's own download."""
    return f"user/{source.publication.name}.zip"  # type: ignore[union-attr]


class _Corpus:
    """One source being built: members by name, named as its layout says."""

    def __init__(self, key: str, layout: Layout) -> None:
        self.key, self.layout, self.source = key, layout, layout.source
        self.classes = layout.source.classes
        self.pattern, self.first, self.ext = layout.member, layout.first, layout.ext
        self.members: dict[str, _Member] = {}
        self._next: dict[str, int] = {}

    def add(self, cls: str, data: bytes, split: str = "", bad: str = "", ext: str = "",
            labels: tuple[int, ...] = ()) -> str:
        """Store data under the class's next name in the source's numbering; return the name."""
        n = self._next.get(cls, self.first)
        self._next[cls] = n + 1
        name = self.pattern(cls, n, split) + (ext or self.ext)
        self.members[name] = _Member(name, data, cls, split, bad, labels)
        return name

    def first_of(self, cls: str) -> str:
        """Name of the first image of a class (the one planted relations copy from)."""
        return self.pattern(cls, self.first, "train") + self.ext

    def valid(self) -> list[_Member]:
        """The decodable 3-band image members, in name order."""
        return [m for _, m in sorted(self.members.items()) if not m.bad]

    def summary(self) -> dict:
        """Counts for the ground truth: valid images, rejects and valid images per class."""
        per_class = dict.fromkeys(self.classes, 0)
        for m in self.valid():
            per_class[m.cls] += 1
        return {"valid_images": sum(per_class.values()),
                "rejects": sum(1 for m in self.members.values() if m.bad),
                "classes": len(self.classes), "per_class": per_class}


def _mlrs_labels(category: str, names: Sequence[str], rng: np.random.Generator
                 ) -> tuple[int, ...]:
    """1-5 plausible MLRSNet label indices: the category's own label plus kind co-labels."""
    primary = _MLRS_PRIMARY.get(category, category.replace("_", " "))
    others = [x for x in _KIND_LABELS[scene_kind_for(category)] if x != primary]
    picked = rng.permutation(len(others))[: int(rng.integers(0, min(4, len(others)) + 1))]
    picked_names = [primary] + [others[i] for i in sorted(picked)]
    return tuple(sorted(names.index(x) for x in picked_names))


def _split_counts(n: int) -> tuple[int, int, int]:
    """Roughly 60/20/20 (train, val, test), keeping at least one val and test image from 3 up."""
    test = max(1, round(0.2 * n)) if n >= 2 else 0
    val = max(1, round(0.2 * n)) if n >= 3 else 0
    return n - val - test, val, test


def _split_names(names: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Assign names to train/val/test by a seeded permutation; each list is sorted."""
    order = [names[i] for i in rng.permutation(len(names))]
    n_train, n_val, _ = _split_counts(len(names))
    cut = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:]}
    return {k: sorted(v) for k, v in cut.items()}


class _Builder:
    """Renders the five corpora, plants the test cases and records them."""

    def __init__(self, seed: int, per_class: int) -> None:
        self.seed, self.per_class = seed, per_class
        self.corpora = {key: _Corpus(key, layout) for key, layout in LAYOUTS.items()}
        # the eval set's split lists, drawn class by class
        self.listed: dict[str, dict[str, list[str]]] = {
            key: {"train": [], "val": [], "test": []}
            for key, layout in LAYOUTS.items() if layout.eval_set}
        self.exact: list[tuple[tuple[str, str], tuple[str, str]]] = []
        self.near: list[tuple[tuple[str, str], tuple[str, str], str]] = []
        self.contaminants: list[tuple[tuple[str, str], tuple[str, str], str]] = []
        self.corrupt: list[tuple[tuple[str, str], str]] = []

    def _rng(self, *key: int) -> np.random.Generator:
        """An independent generator per image, so adding one image never shifts the others."""
        return np.random.default_rng([self.seed, *key])

    def _labels(self, corpus: _Corpus, category: str, *key: int) -> tuple[int, ...]:
        """Multi-labels for a row of a multi-label corpus (else none), seeded by its key."""
        names = corpus.source.multilabels
        return _mlrs_labels(category, names, self._rng(7, *key)) if names else ()

    def render_base(self) -> None:
        """Render every source's own images in its published layout."""
        for si, corpus in enumerate(self.corpora.values()):
            folders = corpus.source.split_folders  # <split>/<class>/: ~2:1, first to last
            for ci, cls in enumerate(corpus.classes):
                if corpus.layout.eval_set:
                    self._render_listed_class(si, ci, corpus, cls)
                    continue
                n_train = -(-2 * self.per_class // 3)
                for i in range(self.per_class):
                    size = corpus.layout.odd_sizes.get(cls, _SIZE) if i == 0 else _SIZE
                    pixels = render_scene(cls, self._rng(si, ci, i), size)
                    split = (folders[0] if i < n_train else folders[-1]) if folders else ""
                    labels = self._labels(corpus, cls, ci, i)
                    corpus.add(cls, corpus.layout.encode(pixels), split=split, labels=labels)

    def _render_listed_class(self, si: int, ci: int, corpus: _Corpus, cls: str) -> None:
        """The eval set: per_class + 2 images, split 60/20/20; one train image of odd size."""
        n = self.per_class + 2
        names = [corpus.pattern(cls, corpus.first + i, "") + corpus.ext for i in range(n)]
        splits = _split_names(names, self._rng(si, ci, 1000))
        odd_size = corpus.layout.odd_sizes.get(cls)
        odd = splits["train"][0] if odd_size and splits["train"] else ""
        for i, name in enumerate(names):
            size = odd_size if name == odd else _SIZE
            split = next(s for s, members in splits.items() if name in members)
            data = corpus.layout.encode(render_scene(cls, self._rng(si, ci, i), size))
            corpus.add(cls, data, split=split)
        for s, members in splits.items():
            self.listed[corpus.key][s] += members

    def _copy_into(self, dst: str, cls: str, data: bytes) -> tuple[str, str]:
        """Store planted bytes as the next member of a class (a split folder's first split)."""
        corpus = self.corpora[dst]
        labels = self._labels(corpus, cls, 500, len(corpus.members))
        folders = corpus.source.split_folders
        return dst, corpus.add(cls, data, split=folders[0] if folders else "", labels=labels)

    def plant_duplicates(self) -> None:
        """Plant exact and near duplicates from the plan tables."""
        used = set()
        for src, src_cls, dst, dst_cls, *op in _EXACT + _NEAR:
            assert (src, src_cls) not in used, "a planted source image must be used once"
            used.add((src, src_cls))
            name = self.corpora[src].first_of(src_cls)
            data = self.corpora[src].members[name].data
            if not op:
                self.exact.append(((src, name), self._copy_into(dst, dst_cls, data)))
                continue
            copy = self._copy_into(dst, dst_cls, _transformed(_decode(data), op[0]))
            self.near.append(((src, name), copy, op[0][0]))

    def plant_contaminants(self) -> None:
        """Copy UC Merced test-split images into the pretraining sources."""
        ucm = self.corpora[EVAL_SET]
        for ucm_cls, dst, dst_cls, op in _CONTAMINANTS:
            name = next(m.name for m in ucm.valid() if m.cls == ucm_cls and m.split == "test")
            data = _transformed(_decode(ucm.members[name].data), op)
            self.contaminants.append(((EVAL_SET, name), self._copy_into(dst, dst_cls, data),
                                      op[0]))

    def plant_corrupt(self) -> None:
        """Add members that ingest must reject, named like their neighbours."""
        rng = self._rng(99)
        good = _jpeg(render_scene("beach", rng))
        resisc = self.corpora["resisc45"]
        self._bad("resisc45", resisc.add("beach", good[: len(good) // 2], bad="truncated"),
                  "truncated")
        thumbs = "NWPU-RESISC45/airport/Thumbs.db"  # Windows' thumbnail cache, an OLE file
        ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + rng.bytes(4088)
        resisc.members[thumbs] = _Member(thumbs, ole, "airport", bad="not_image")
        self._bad("resisc45", thumbs, "not_image")
        self._bad("patternnet", self.corpora["patternnet"].add("bridge", b"", bad="empty"),
                  "empty")
        rsd = self.corpora["rsd46"]
        grey = np.asarray(Image.fromarray(render_scene("Bare land", rng)).convert("L"))
        self._bad("rsd46", rsd.add("Bare land", _jpeg(grey), "train", "wrong_bands"),
                  "wrong_bands")
        rgba = np.dstack([render_scene("Building", rng), np.full(_SIZE, 255, np.uint8)])
        self._bad("rsd46", rsd.add("Building", _encode(rgba, "PNG"), "train", "wrong_bands",
                                   ext=".png"), "wrong_bands")
        html = b"<html><body><h1>404 Not Found</h1></body></html>\n"  # a botched scrape
        mlrs = self.corpora["mlrsnet"]
        self._bad("mlrsnet", mlrs.add("mountain", html, bad="not_image",
                                      labels=self._labels(mlrs, "mountain", 99)), "not_image")

    def _bad(self, source: str, name: str, kind: str) -> None:
        """Record a corrupt member."""
        self.corrupt.append(((source, name), kind))


class WorldWriter:
    """Writes files under the world directory and records their checksums."""

    def __init__(self, world_dir: Path) -> None:
        self.world_dir = world_dir
        self.files: dict[str, dict[str, dict]] = {}

    def write(self, source: str, rel: str, data: bytes) -> None:
        """Write one file (``rel`` relative to the world directory) and hash it."""
        path = self.world_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files.setdefault(source, {})[rel] = {
            "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data)}

    def write_url(self, source: str, mirrors: str | Sequence[str], data: bytes) -> None:
        """Write a published file at the mirror path of each of its live mirrors."""
        for url in live_mirrors([mirrors] if isinstance(mirrors, str) else mirrors):
            self.write(source, f"http/{mirror_path(url)}", data)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A deterministic zip: sorted names, directory entries, fixed timestamps and modes."""
    names = set(members)
    for name in members:
        parts = name.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(names):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system = 3  # Unix, whatever the build host
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, members[name])
    return buf.getvalue()


def _split_file(names: list[str]) -> bytes:
    """A split file: one image file name (no folders) per line."""
    return "".join(f"{n.rsplit('/', 1)[-1]}\n" for n in sorted(names)).encode()


def _hf_schema(labels: Sequence[str]) -> pa.Schema:
    """The arrow schema HF ``datasets`` writes for an Image + Sequence(ClassLabel) dataset."""
    features = {"image": {"_type": "Image"},
                "label": {"feature": {"names": list(labels), "_type": "ClassLabel"},
                          "_type": "Sequence"}}
    return pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
         ("label", pa.list_(pa.int64()))],
        metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _write_parquet(writer: WorldWriter, corpus: _Corpus) -> dict[tuple[str, str], str]:
    """Shard the rows (name order) into the corpus's published parquet files.

    Returns:
        ``(source, row name)`` -> ground-truth member ``"<parquet file name>#<row index>"``.
    """
    rows = [m for _, m in sorted(corpus.members.items())]
    downloads = [d for _, d in sorted(corpus.source.publication.downloads.items())]
    schema = _hf_schema(corpus.source.multilabels)
    refs = {}
    for k, dl in enumerate(downloads):
        chunk = rows[len(rows) * k // len(downloads): len(rows) * (k + 1) // len(downloads)]
        table = pa.table({"image": [{"bytes": m.data, "path": m.name} for m in chunk],
                          "label": [list(m.labels) for m in chunk]}, schema=schema)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        writer.write_url(corpus.key, dl.mirrors, buf.getvalue().to_pybytes())
        refs.update({(corpus.key, m.name): f"{dl.filename}#{i}" for i, m in enumerate(chunk)})
    return refs


def _write_zip(b: _Builder, writer: WorldWriter, corpus: _Corpus) -> dict[str, int]:
    """Write a corpus's archive and split lists; returns its images per split (if split)."""
    source, downloads = corpus.source, corpus.source.publication.downloads
    members = {**{n: m.data for n, m in corpus.members.items()}, **corpus.layout.extra}
    if "archive" in downloads:
        writer.write_url(corpus.key, downloads["archive"].mirrors, zip_bytes(members))
    else:  # no public URL
        writer.write(corpus.key, user_archive(source), zip_bytes(members))
    if source.split_files:
        # over the whole corpus outside the eval set (3 images a class cannot be 60/20/20)
        splits = b.listed[corpus.key] if corpus.layout.eval_set else _split_names(
            [m.name for m in corpus.valid()], b._rng(0, 2000))
        for s, names in splits.items():
            writer.write_url(corpus.key, downloads[source.split_files[s]].mirrors,
                             _split_file(names))
        return {s: len(v) for s, v in splits.items()}
    return {s: sum(1 for m in corpus.valid() if m.split == s) for s in source.split_folders}


def build_corpora(world_dir: Path, seed: int = 0, per_class: int = 3) -> dict:
    """Write the offline copies of the five labeled corpora and return their ground truth.

    Published files go to ``world_dir/http/<mirror_path(url)>`` for each live mirror ``url``
    (dead ones, ``DEAD_MIRRORS``, get nothing) (RESISC45 and PatternNet zips
    and RESISC45 split files, the UC Merced zip and split files, the three MLRSNet parquet
    shards); RSD46-WHU, which has no public URL, goes to ``world_dir/user/RSD46-WHU.zip``.
    Nothing else is written.

    Args:
        world_dir: Root of the offline world.
        seed: Fixes every byte written.
        per_class: Images rendered per class (UC Merced gets two more, so its test split has
            images to leak); planted copies and corrupt members come on top.

    Returns:
        Ground truth: ``sources`` (per source: ``files`` with md5/sha256/size of each file
        written, keyed by path relative to ``world_dir``; ``valid_images``; ``rejects``;
        ``classes``; ``per_class`` valid images; ``splits`` counts for RESISC45, UC Merced and
        RSD46), plus ``exact_duplicates``, ``near_duplicates``, ``contaminants`` and
        ``corrupt``, whose members are ``{"source", "member"}`` refs (zip member paths, or
        ``"<parquet file name>#<row>"`` for MLRSNet).

    Raises:
        ValueError: If ``per_class`` is below 1.
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    b = _Builder(seed, per_class)
    b.render_base()
    b.plant_duplicates()
    b.plant_contaminants()
    b.plant_corrupt()
    writer = WorldWriter(Path(world_dir))
    summaries, refs = {}, {}
    for key, corpus in b.corpora.items():
        summaries[key] = corpus.summary()
        if corpus.layout.packing == "parquet":
            refs.update(_write_parquet(writer, corpus))
        elif splits := _write_zip(b, writer, corpus):
            summaries[key]["splits"] = splits

    def ref(r: tuple[str, str]) -> dict[str, str]:
        return {"source": r[0], "member": refs.get(r, r[1])}

    return {
        "sources": {k: {"files": dict(sorted(writer.files[k].items())), **summaries[k]}
                    for k in b.corpora},
        "exact_duplicates": [{"a": ref(a), "b": ref(c)} for a, c in b.exact],
        "near_duplicates": [{"a": ref(a), "b": ref(c), "transform": t} for a, c, t in b.near],
        "contaminants": [{"ucm": ref(u), "copy": ref(c), "transform": t}
                         for u, c, t in b.contaminants],
        "corrupt": [{"ref": ref(r), "kind": k} for r, k in b.corrupt],
    }
