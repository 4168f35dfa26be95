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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from geopile.sources.classes import (
    MLRSNET_CATEGORIES,
    MLRSNET_LABELS,
    PATTERNNET_CLASSES,
    RESISC45_CLASSES,
    RSD46_CLASSES,
    UCMERCED_CLASSES,
)
from geopile.sources.published import PUBLICATIONS
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
_UCM_ODD_SIZES = {"buildings": (256, 247), "denseresidential": (247, 256)}  # (h, w), as real
_RSD46_ODD_SIZE = (224, 224)  # first image of every fifth RSD46 class

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


class _Corpus:
    """One source being built: members by name, and the source's member-naming pattern."""

    def __init__(self, key: str, classes: tuple[str, ...], pattern: Callable[..., str],
                 first: int, ext: str) -> None:
        self.key, self.classes, self.pattern, self.ext = key, classes, pattern, ext
        self.first = first
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


def _mlrs_labels(category: str, rng: np.random.Generator) -> tuple[int, ...]:
    """1-5 plausible MLRSNet label indices: the category's own label plus kind co-labels."""
    primary = _MLRS_PRIMARY.get(category, category.replace("_", " "))
    others = [x for x in _KIND_LABELS[scene_kind_for(category)] if x != primary]
    picked = rng.permutation(len(others))[: int(rng.integers(0, min(4, len(others)) + 1))]
    names = [primary] + [others[i] for i in sorted(picked)]
    return tuple(sorted(MLRSNET_LABELS.index(x) for x in names))


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
        self.corpora = {
            "resisc45": _Corpus("resisc45", RESISC45_CLASSES,
                                lambda c, n, s: f"NWPU-RESISC45/{c}/{c}_{n:03d}", 1, ".jpg"),
            "patternnet": _Corpus("patternnet", PATTERNNET_CLASSES,
                                  lambda c, n, s: f"PatternNet/images/{c}/{c}{n:03d}", 1, ".jpg"),
            "ucmerced": _Corpus("ucmerced", UCMERCED_CLASSES,
                                lambda c, n, s: f"UCMerced_LandUse/Images/{c}/{c}{n:02d}", 0,
                                ".tif"),
            "mlrsnet": _Corpus("mlrsnet", MLRSNET_CATEGORIES, lambda c, n, s: f"{c}_{n:05d}", 1,
                               ".jpg"),
            "rsd46": _Corpus("rsd46", RSD46_CLASSES,
                             lambda c, n, s: f"RSD46-WHU/{s}/{c}/{n:04d}", 1, ".jpg"),
        }
        self.ucm_splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        self.exact: list[tuple[tuple[str, str], tuple[str, str]]] = []
        self.near: list[tuple[tuple[str, str], tuple[str, str], str]] = []
        self.contaminants: list[tuple[tuple[str, str], tuple[str, str], str]] = []
        self.corrupt: list[tuple[tuple[str, str], str]] = []

    def _rng(self, *key: int) -> np.random.Generator:
        """An independent generator per image, so adding one image never shifts the others."""
        return np.random.default_rng([self.seed, *key])

    def _labels(self, category: str, *key: int) -> tuple[int, ...]:
        """MLRSNet labels for a row, seeded by the row's own key."""
        return _mlrs_labels(category, self._rng(7, *key))

    def render_base(self) -> None:
        """Render every source's own images in its published layout."""
        for si, (key, corpus) in enumerate(self.corpora.items()):
            for ci, cls in enumerate(corpus.classes):
                if key == "ucmerced":
                    self._render_ucm_class(si, ci, cls)
                    continue
                n_train = -(-2 * self.per_class // 3)  # RSD46: ~2:1 train:test
                for i in range(self.per_class):
                    odd = key == "rsd46" and i == 0 and ci % 5 == 2
                    pixels = render_scene(cls, self._rng(si, ci, i), _RSD46_ODD_SIZE if odd
                                          else _SIZE)
                    split = ("train" if i < n_train else "test") if key == "rsd46" else ""
                    labels = self._labels(cls, ci, i) if key == "mlrsnet" else ()
                    corpus.add(cls, _jpeg(pixels), split=split, labels=labels)

    def _render_ucm_class(self, si: int, ci: int, cls: str) -> None:
        """UC Merced: per_class + 2 TIFFs, split 60/20/20; one train image of odd size."""
        n = self.per_class + 2
        names = [self.corpora["ucmerced"].pattern(cls, i, "") + ".tif" for i in range(n)]
        splits = _split_names(names, self._rng(si, ci, 1000))
        odd = splits["train"][0] if cls in _UCM_ODD_SIZES and splits["train"] else ""
        for i, name in enumerate(names):
            size = _UCM_ODD_SIZES[cls] if name == odd else _SIZE
            split = next(s for s, members in splits.items() if name in members)
            data = _encode(render_scene(cls, self._rng(si, ci, i), size), "TIFF")
            self.corpora["ucmerced"].add(cls, data, split=split)
        for s, members in splits.items():
            self.ucm_splits[s] += members

    def _copy_into(self, dst: str, cls: str, data: bytes) -> tuple[str, str]:
        """Store planted bytes as the next member of a class, with plausible MLRSNet labels."""
        corpus = self.corpora[dst]
        labels = ()
        if dst == "mlrsnet":
            labels = self._labels(cls, 500, len(corpus.members))
        return dst, corpus.add(cls, data, split="train" if dst == "rsd46" else "",
                               labels=labels)

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
        ucm = self.corpora["ucmerced"]
        for ucm_cls, dst, dst_cls, op in _CONTAMINANTS:
            name = next(m.name for m in ucm.valid() if m.cls == ucm_cls and m.split == "test")
            data = _transformed(_decode(ucm.members[name].data), op)
            self.contaminants.append((("ucmerced", name), self._copy_into(dst, dst_cls, data),
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
                                      labels=self._labels("mountain", 99)), "not_image")

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


def _zip_bytes(members: dict[str, _Member]) -> bytes:
    """The corpus members as a deterministic zip."""
    return zip_bytes({name: m.data for name, m in members.items()})


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


def _hf_schema() -> pa.Schema:
    """The arrow schema HF ``datasets`` writes for an Image + Sequence(ClassLabel) dataset."""
    features = {"image": {"_type": "Image"},
                "label": {"feature": {"names": list(MLRSNET_LABELS), "_type": "ClassLabel"},
                          "_type": "Sequence"}}
    return pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
         ("label", pa.list_(pa.int64()))],
        metadata={"huggingface": json.dumps({"info": {"features": features}})})


def _write_mlrsnet(writer: WorldWriter, corpus: _Corpus) -> dict[str, str]:
    """Shard the rows (name order) into the three published parquet files.

    Returns:
        Row name -> ground-truth member ``"<parquet file name>#<row index>"``.
    """
    rows = [m for _, m in sorted(corpus.members.items())]
    downloads = [d for _, d in sorted(PUBLICATIONS["mlrsnet"].downloads.items())]
    refs = {}
    for k, dl in enumerate(downloads):
        chunk = rows[len(rows) * k // len(downloads): len(rows) * (k + 1) // len(downloads)]
        table = pa.table({"image": [{"bytes": m.data, "path": m.name} for m in chunk],
                          "label": [list(m.labels) for m in chunk]}, schema=_hf_schema())
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        writer.write_url("mlrsnet", dl.mirrors, buf.getvalue().to_pybytes())
        refs.update({m.name: f"{dl.filename}#{i}" for i, m in enumerate(chunk)})
    return refs


def _write_all(b: _Builder, writer: WorldWriter) -> dict[str, dict]:
    """Write every archive, split file and parquet shard; return per-source summaries."""
    c = b.corpora
    pubs = {k: PUBLICATIONS[k].downloads for k in ("resisc45", "patternnet", "ucmerced")}
    for key in ("resisc45", "patternnet", "ucmerced"):
        members = dict(c[key].members)
        if key == "patternnet":  # the real zip carries extra files outside the class folders
            readme = "PatternNet/readme.txt"
            members[readme] = _Member(readme, b"PatternNet: 38 classes, 800 images each.\n", "")
        writer.write_url(key, pubs[key]["archive"].mirrors, _zip_bytes(members))
    # RESISC45's split is drawn over the whole corpus (3 images per class cannot be 60/20/20).
    resisc_splits = _split_names([m.name for m in c["resisc45"].valid()], b._rng(0, 2000))
    for key, splits in (("resisc45", resisc_splits), ("ucmerced", b.ucm_splits)):
        for s, names in splits.items():
            writer.write_url(key, pubs[key][f"split_{s}"].mirrors, _split_file(names))
    writer.write("rsd46", "user/RSD46-WHU.zip", _zip_bytes(c["rsd46"].members))
    summaries = {k: corpus.summary() for k, corpus in c.items()}
    summaries["resisc45"]["splits"] = {s: len(v) for s, v in resisc_splits.items()}
    summaries["ucmerced"]["splits"] = {s: len(v) for s, v in b.ucm_splits.items()}
    summaries["rsd46"]["splits"] = {
        s: sum(1 for m in c["rsd46"].valid() if m.split == s) for s in ("train", "test")}
    return summaries


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
    summaries = _write_all(b, writer)
    mlrs_refs = _write_mlrsnet(writer, b.corpora["mlrsnet"])

    def ref(r: tuple[str, str]) -> dict[str, str]:
        source, name = r
        return {"source": source, "member": mlrs_refs[name] if source == "mlrsnet" else name}

    return {
        "sources": {k: {"files": dict(sorted(writer.files[k].items())), **summaries[k]}
                    for k in b.corpora},
        "exact_duplicates": [{"a": ref(a), "b": ref(c)} for a, c in b.exact],
        "near_duplicates": [{"a": ref(a), "b": ref(c), "transform": t} for a, c, t in b.near],
        "contaminants": [{"ucm": ref(u), "copy": ref(c), "transform": t}
                         for u, c, t in b.contaminants],
        "corrupt": [{"ref": ref(r), "kind": k} for r, k in b.corrupt],
    }
