"""MLRSNet: 109,161 images, 46 scene categories, 60 multi-labels, 0.1-10 m (CC-BY-4.0).

Read from the HF-hub parquet mirror (``jonathan-roberts1/MLRSNet``) with pyarrow rather than the
``datasets`` library: the files are plain Parquet, and fetching them through the shared
downloader gives resume and a recorded sha256 like every other source. The Mendeley release packs
one RAR per category, which needs a non-Python unrar; point a ``folder`` source at an extracted
copy instead if that is what you have.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from geopile.records import make_key, to_table
from geopile.sources.base import Candidate, Source
from geopile.sources.classes import MLRSNET_CATEGORIES, MLRSNET_LABELS
from geopile.sources.published import PUBLICATIONS

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
    return MLRSNET_LABELS


def category_of(name: str) -> str | None:
    """Scene category from a file name such as ``harbor&port_00012.jpg`` (longest match)."""
    stem = Path(name).stem
    matches = [c for c in MLRSNET_CATEGORIES if stem.startswith(c + "_")]
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
    publication = PUBLICATIONS["mlrsnet"]
    classes = MLRSNET_CATEGORIES

    def fetch(self) -> None:
        """Download the parquet files and unpack their images to ``raw/`` (atomically)."""
        files = [self.download_file(w) for w in sorted(self.publication.downloads)]
        if (self.ctx.raw_dir / _INDEX).exists():
            return
        tmp = self.ctx.raw_dir.with_name(f".{self.ctx.raw_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        rows: list[dict] = []
        used: set[str] = set()
        for fetched in files:
            pf = pq.ParquetFile(fetched.path)
            names = label_names(pf.schema_arrow)
            row_no = 0
            for batch in pf.iter_batches(batch_size=256, columns=["image", "label"]):
                for image, labels in zip(
                    batch.column("image").to_pylist(),
                    batch.column("label").to_pylist(),
                    strict=True,
                ):
                    image = image or {}
                    name = Path(image.get("path") or f"{fetched.path.stem}_{row_no}.jpg").name
                    category = category_of(name)
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
                            "label_id": MLRSNET_CATEGORIES.index(category) if category else None,
                            "multilabels": label_list,
                            "multilabel_ids": label_ids,
                        }
                    )
                    row_no += 1
        pq.write_table(to_table(rows, _INDEX_SCHEMA), tmp / _INDEX)
        shutil.rmtree(self.ctx.raw_dir, ignore_errors=True)
        self.ctx.raw_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, self.ctx.raw_dir)

    def candidates(self) -> Iterator[Candidate]:
        """One candidate per parquet row, in file and row order."""
        index = pq.read_table(self.ctx.raw_dir / _INDEX).to_pylist()
        prefix = self.ctx.raw_dir.relative_to(self.ctx.data_dir)
        for row in index:
            path = str(prefix / row.pop("path"))
            yield Candidate(key=row.pop("key"), path=path, fields=row)
