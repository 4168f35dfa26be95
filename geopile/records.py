"""The record table: one row per ingested image, the contract between ingest and every later stage.

Hashes and entropy are computed once, at ingest, and stored here; curation and every shard build
read them instead of decoding images again. The schema is versioned in the Parquet metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from geopile.atomic import replacing

SCHEMA_VERSION = "1"
_META = {b"geopile.records.version": SCHEMA_VERSION.encode()}

def _list(item: pa.DataType) -> pa.DataType:
    # Parquet names list items "element"; naming them so here keeps the schema equal on round trip.
    return pa.list_(pa.field("element", item))


RECORD_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),  # "<source>/<name>", no dot in the last part
    pa.field("source", pa.string(), nullable=False),
    pa.field("label", pa.string()),  # scene class (folder) name; null for NAIP
    pa.field("label_id", pa.int32()),  # index into the source's published class list
    pa.field("multilabels", _list(pa.string())),  # MLRSNet's multi-labels, else null
    pa.field("multilabel_ids", _list(pa.int32())),
    pa.field("split", pa.string()),  # the publisher's split where it has one (train/val/test)
    pa.field("gsd_min", pa.float32()),  # metres; equal to gsd_max where known per image
    pa.field("gsd_max", pa.float32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("bands", pa.int32()),
    pa.field("format", pa.string()),  # jpeg / tiff / png as decoded, not as named
    pa.field("nbytes", pa.int64()),
    pa.field("xxh3_bytes", pa.string()),  # xxh3-128 of the stored bytes, hex
    pa.field("xxh3_pixels", pa.string()),  # xxh3-128 of the decoded pixels and their shape
    pa.field("phash", pa.uint64()),  # 64-bit DCT perceptual hash (imagehash.phash)
    # [word1, word2] DCT-sign hashes of the image and 18 crops (imagestats.crop_hashes)
    pa.field("crop_hashes", _list(pa.uint64())),
    pa.field("entropy_global", pa.float32()),  # bits: 256-bin grayscale Shannon entropy
    pa.field("entropy_local", pa.float32()),  # bits: mean of a disk-windowed entropy
    pa.field("nodata_fraction", pa.float32()),
    pa.field("licence", pa.string()),
    pa.field("path", pa.string()),  # the original bytes, relative to the data directory
    pa.field("origin", pa.string()),  # archive member, parquet file#row, or URL without token
    pa.field("origin_sha256", pa.string()),  # sha256 of the downloaded archive / file
    # NAIP provenance (null elsewhere)
    pa.field("stac_item", pa.string()),
    pa.field("asset_href", pa.string()),  # unsigned: never a SAS token
    pa.field("window", _list(pa.int64())),  # col_off, row_off, width, height in the tile
    pa.field("crs", pa.string()),
    pa.field("bounds", _list(pa.float64())),  # left, bottom, right, top in crs
    pa.field("year", pa.string()),
    pa.field("state", pa.string()),
    # multi-band STAC patches (sources of type stac, e.g. Sentinel-2 L2A); null elsewhere
    pa.field("band_names", _list(pa.string())),  # the GeoTIFF's band descriptions, in order
    pa.field("dtype", pa.string()),  # stored pixel type: uint8 / uint16
    pa.field("band_mean", _list(pa.float32())),  # per band over valid (non-nodata) pixels
    pa.field("band_std", _list(pa.float32())),
    # what the stored numbers mean, per band, as the catalog publishes it (raster:bands):
    # physical = stored * scale + offset (null: not published); nodata as the file says
    pa.field("band_scale", _list(pa.float64())),
    pa.field("band_offset", _list(pa.float64())),
    pa.field("band_nodata", _list(pa.float64())),
    pa.field("band_unit", _list(pa.string())),
    pa.field("cloud_fraction", pa.float32()),  # share of SCL pixels in cloud classes
    pa.field("datetime", pa.string()),  # the STAC item's datetime
    # the EXIF orientation (2-8) applied to the pixels at decode; null: upright as stored
    pa.field("orientation", pa.int8()),
]
RECORD_SCHEMA = pa.schema(RECORD_FIELDS, metadata=_META)
REJECT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string()),
        pa.field("nbytes", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
    ],
    metadata=_META,
)
# Resume checkpoints hold both kinds of outcome in one table.
PART_SCHEMA = pa.schema(
    [*RECORD_FIELDS, pa.field("reject_reason", pa.string()), pa.field("stratum", pa.string())],
    metadata=_META,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(source: str, *parts: str) -> str:
    """A sample key safe for tar members and HF ``datasets``: no dots, spaces or slashes in parts.

    webdataset and ``datasets`` split member names at the first dot of the base name, so a dot in
    a key silently merges samples (FACTS.md §7).
    """
    name = "_".join(safe for p in parts if (safe := _UNSAFE.sub("_", p).strip("_")))
    if not name:
        raise ValueError(f"cannot make a key for source {source!r} from {parts!r}")
    return f"{source}/{name}"


def file_key(source: str, parts: Sequence[str], original: str) -> str:
    """:func:`make_key` of a file's name ``parts``, kept unique when making them safe loses text.

    ``a b.jpg``, ``a_b.jpg``, ``a.b.jpg``, ``ü.jpg`` and ``é.jpg`` would all become ``a_b`` or
    nothing: when a part is not safe already (letters, digits, ``_`` and ``-``), the key ends in
    ``_`` and the first 8 hex digits of the xxh3-64 of ``original`` (the file's path under its
    root, UTF-8). The rule depends on the file alone, so a key never changes when other files
    come or go, and names that are safe already keep the key they always had.
    """
    if all(_UNSAFE.sub("_", p).strip("_") == p for p in parts):
        return make_key(source, *parts)
    tag = xxhash.xxh3_64_hexdigest(original.encode("utf-8", "surrogateescape"))[:8]
    return make_key(source, *parts, tag)


def records_path(data_dir: Path, source: str) -> Path:
    """Where a source's records live."""
    return Path(data_dir) / "records" / f"{source}.parquet"


def rejects_path(data_dir: Path, source: str) -> Path:
    """Where a source's rejected inputs are listed."""
    return Path(data_dir) / "records" / f"{source}.rejects.parquet"


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet to a temporary name, then rename: readers never see half a file."""
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) to a table of ``schema``; missing columns become null."""
    rows = list(rows)
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def read_records(path: Path) -> pa.Table:
    """Read a record table, refusing one written under another schema version."""
    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(b"geopile.records.version", b"?").decode()
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has record schema version {version}, this GeoPile reads {SCHEMA_VERSION}; "
            "re-run `geopile ingest` for that source"
        )
    for name in ("crop_hashes", "orientation", "band_scale", "band_offset", "band_nodata",
                 "band_unit"):  # ingested before the column (null: unknown)
        if name not in table.column_names:  # curate fills crop_hashes
            field = RECORD_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table
