"""MLRSNet: 109,161 images, 46 scene categories, 60 multi-labels, 0.1-10 m (CC-BY-4.0).

Read from the HF-hub parquet mirror (``jonathan-roberts1/MLRSNet``) with pyarrow rather than the
``datasets`` library: the files are plain Parquet, and fetching them through the shared
downloader gives resume and a recorded sha256 like every other source. The Mendeley release packs
one RAR per category, which needs a non-Python unrar; point a ``folder`` source at an extracted
copy instead if that is what you have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from geopile.download import Fetched
from geopile.records import make_key, to_table
from geopile.schema import Omit, archive_settings
from geopile.sources.base import Candidate, Source
from geopile.sources.published import Download, Publication
from geopile.staging import EXTRACTED, install_dir, raw_is_current

log = logging.getLogger(__name__)
_HUB = "https://huggingface.co/datasets/jonathan-roberts1/MLRSNet/resolve/main/data"
# 46 scene categories: the folder / archive names of the Mendeley release (the misspelling
# "swimmimg_pool" is the publisher's); the file names in the parquet mirror start with them.
CATEGORIES: tuple[str, ...] = (
    "airplane", "airport", "bareland", "baseball_diamond", "basketball_court", "beach", "bridge",
    "chaparral", "cloud", "commercial_area", "dense_residential_area", "desert", "eroded_farmland",
    "farmland", "forest", "freeway", "golf_course", "ground_track_field", "harbor&port",
    "industrial_area", "intersection", "island", "lake", "meadow", "mobile_home_park", "mountain",
    "overpass", "park", "parking_lot", "parkway", "railway", "railway_station", "river",
    "roundabout", "shipping_yard", "snowberg", "sparse_residential_area", "stadium",
    "storage_tank", "swimmimg_pool", "tennis_court", "terrace", "transmission_tower",
    "vegetable_greenhouse", "wetland", "wind_turbine",
)
# 60 multi-label names, as HF's ClassLabel feature lists them
LABELS: tuple[str, ...] = (
    "airplane", "airport", "bare soil", "baseball diamond", "basketball court", "beach", "bridge",
    "buildings", "cars", "chaparral", "cloud", "containers", "crosswalk", "dense residential area",
    "desert", "dock", "factory", "field", "football field", "forest", "freeway", "golf course",
    "grass", "greenhouse", "gully", "harbor", "intersection", "island", "lake", "mobile home",
    "mountain", "overpass", "park", "parking lot", "parkway", "pavement", "railway",
    "railway station", "river", "road", "roundabout", "runway", "sand", "sea", "ships", "snow",
    "snowberg", "sparse residential area", "stadium", "swimming pool", "tanks", "tennis court",
    "terrace", "track", "trail", "transmission tower", "trees", "water", "wetland", "wind turbine",
)
_INDEX = "index.parquet"
_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("path", pa.string()),
        ("origin", pa.string()),
        ("origin_sha256", pa.string()),
        ("label", pa.string()),
        ("label_id", pa.int32()),
        ("multilabels", pa.list_(pa.string())),
        ("multilabel_ids", pa.list_(pa.int32())),
    ]
)


def label_names(schema: pa.Schema) -> tuple[str, ...]:
    """The multi-label names from HF's feature metadata, else the published list."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        features = json.loads(meta).get("info", {}).get("features", {})
        names = (features.get("label") or {}).get("feature", {}).get("names")
        if names:
            return tuple(names)
    return LABELS


def category_of(name: str) -> str | None:
    """Scene category from a file name such as ``harbor&port_00012.jpg`` (longest match)."""
    stem = Path(name).stem
    matches = [c for c in CATEGORIES if stem.startswith(c + "_")]
    return max(matches, key=len) if matches else None


def _labels(labels: list, names: tuple[str, ...]) -> tuple[list[str], list[int | None]]:
    """Label names and ids from HF ``ClassLabel`` ints (or plain strings in other mirrors)."""
    if all(isinstance(i, int) for i in labels):
        return [names[i] for i in labels], list(labels)
    strings = [str(n) for n in labels]
    return strings, [names.index(n) if n in names else None for n in strings]


class MLRSNet(Source):
    """Parquet rows ``image: {bytes, path}``, ``label: list<int>`` unpacked to files once."""

    kind = "mlrsnet"
    publication = Publication(
        name="MLRSNet",
        licence="CC-BY-4.0",
        gsd_m=(0.1, 10.0),
        homepage="https://doi.org/10.17632/7j9bv9vwsx",
        # The HF-hub parquet mirror; the hub publishes no MD5, so the files are fetched
        # unchecked and their sha256 is recorded instead.
        downloads={
            "parquet_0": Download(f"{_HUB}/train-00000-of-00003-3e09d55e5ab3594b.parquet"),
            "parquet_1": Download(f"{_HUB}/train-00001-of-00003-62a64e1c22f11cc7.parquet"),
            "parquet_2": Download(f"{_HUB}/train-00002-of-00003-210f510f7a0418bf.parquet"),
        },
    )
    bibtex = """@article{qi2020mlrsnet,
  title   = {MLRSNet: A Multi-label High Spatial Resolution Remote Sensing Dataset for Semantic
             Scene Understanding},
  author  = {Qi, Xiaoman and Zhu, Panpan and Wang, Yuebin and Zhang, Liqiang and Peng, Junhuan
             and Wu, Mengfan and Chen, Jialong and Zhao, Xudong and Zang, Ning and
             Mathiopoulos, P. Takis},
  journal = {ISPRS Journal of Photogrammetry and Remote Sensing},
  volume  = {169}, pages = {337--350}, year = {2020},
  doi     = {10.1016/j.isprsjprs.2020.09.020}
}"""
    classes = CATEGORIES
    multilabels = LABELS
    settings = archive_settings(publication, "MLRSNet", require_category=(Omit[bool], Field(
        None, description="false: rows without a scene category are rejects, not a stop")))

    @property
    def require_category(self) -> bool:
        """Whether a row without a scene category stops the ingest (params, default true)."""
        return self.settings.require_category is not False

    def fetch(self) -> None:
        """Download the parquet files and unpack their images, once per version of the files.

        The unpacking is keyed by the files' sha256s (staged in ``extracted/<name>-<hash>``,
        then swapped into ``raw/<name>`` with that stamp), so changed parquet files are never
        read through an earlier unpacking.
        """
        files = [self.download_file(w) for w in sorted(self.publication.downloads)]
        key = "".join(f.sha256 for f in files) + f"require_category={self.require_category}"
        digest = self.input_id = hashlib.sha256(key.encode()).hexdigest()
        if raw_is_current(self.ctx, digest):
            return
        dest = self.ctx.data_dir / EXTRACTED / f"{self.ctx.name}-{digest[:16]}"
        if not (dest / _INDEX).is_file():
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self._unpack(files, tmp)
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        install_dir(self.ctx, dest, digest)

    def _category(self, fetched: Fetched, row_no: int, path: str | None) -> str | None:
        """The scene category of one row, from ``image.path``; refuses to guess silently."""
        fix = (f"Use the jonathan-roberts1/MLRSNet parquet files (their image.path holds the file "
               f"name), or set sources.{self.ctx.name}.require_category: false to ingest without "
               "scene categories (label empty; the multi-labels are kept)")
        if not path:
            if self.require_category:
                raise ValueError(
                    f"{fetched.path} row {row_no}: column image.path is empty, and MLRSNet's "
                    "scene category comes only from the image file name (such as "
                    f"airplane_00001.jpg): every label would be None. {fix}")
            return None
        category = category_of(path)
        if category is None and self.require_category:
            raise ValueError(
                f"{fetched.path} row {row_no}: image.path {path!r} starts with no MLRSNet "
                "category (expected <category>_<number>.jpg, categories as in "
                f"geopile/sources/mlrsnet.py). {fix}")
        return category

    def _unpack(self, files: list[Fetched], tmp: Path) -> None:
        """Write every row's image under ``tmp/images/<category>/`` and the index beside it."""
        rows: list[dict] = []
        used: set[str] = set()
        for fetched in files:
            pf = pq.ParquetFile(fetched.path)
            names = label_names(pf.schema_arrow)
            row_no = missing = 0
            for batch in pf.iter_batches(batch_size=256, columns=["image", "label"]):
                for image, labels in zip(
                    batch.column("image").to_pylist(),
                    batch.column("label").to_pylist(),
                    strict=True,
                ):
                    image = image or {}
                    category = self._category(fetched, row_no, image.get("path"))
                    missing += not image.get("path")
                    name = Path(image.get("path") or f"{fetched.path.stem}_{row_no}.jpg").name
                    key = make_key(self.ctx.name, Path(name).stem)
                    if key in used:  # the hub's file names are unique; a mirror's may not be
                        key = make_key(self.ctx.name, Path(name).stem, str(row_no))
                    used.add(key)
                    stored = key.split("/", 1)[1] + (Path(name).suffix or ".jpg")
                    rel = Path("images") / (category or "unknown") / stored
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / rel).write_bytes(image.get("bytes") or b"")
                    label_list, label_ids = _labels(labels or [], names)
                    rows.append(
                        {
                            "key": key,
                            "path": str(rel),
                            "origin": f"{fetched.path.name}#{row_no}",
                            "origin_sha256": fetched.sha256,
                            "label": category,
                            "label_id": CATEGORIES.index(category) if category else None,
                            "multilabels": label_list,
                            "multilabel_ids": label_ids,
                        }
                    )
                    row_no += 1
            if missing:
                log.warning("%s: %d of %d rows have no image.path: their scene category is left "
                            "empty (require_category: false)", fetched.path.name, missing, row_no)
        tmp.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(rows, _INDEX_SCHEMA), tmp / _INDEX)

    def candidates(self) -> Iterator[Candidate]:
        """One candidate per parquet row, in file and row order."""
        index = pq.read_table(self.ctx.raw_dir / _INDEX).to_pylist()
        prefix = self.ctx.raw_dir.relative_to(self.ctx.data_dir)
        for row in index:
            path = str(prefix / row.pop("path"))
            yield Candidate(key=row.pop("key"), path=path, fields=row)
