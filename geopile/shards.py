"""GeoPile builds as WebDataset shards: selection, global shuffle, deterministic tar writing, index.

A build is a map ``source -> cap`` (an int, or ``all``), plus the option ``allow_short``. The
curated table holds every clean image with its duplicate ``cluster``; a build keeps exactly one
member of each cluster it touches, the copy of the source earliest in ``curate.priority``, so
no build loses an image because its copy was kept by a source it does not hold
(:func:`select`). Within a source, images are taken in a seeded hash order of their keys, so a
source contributes the same images to every build that caps it alike and holds the same
higher-priority sources. A cap is met exactly or the build stops (:class:`BuildError`), unless
the build says ``allow_short: true``; then the shortfall is recorded in the index and the card.
The selection is shuffled globally with the seed and cut into shards. Writing is reproducible:
members are sorted per sample, with a fixed mtime and owner, so the same curated table and seed
give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import webdataset as wds
import xxhash
from PIL import Image

from geopile.atomic import check_free, disk_error
from geopile.engines import Mapper
from geopile.imagestats import decode
from geopile.payloads import PayloadStore, as_payloads
from geopile.settings import Build, Shard
from geopile.shardstore import LocalStore, ShardStore, prune
from geopile.stream.index import INDEX_VERSION, TAR_BLOCK, validate_index

# what a sample's .json carries (the record's columns minus what is only useful in the table)
JSON_FIELDS = (
    "key", "source", "label", "label_id", "multilabels", "split", "gsd_min", "gsd_max", "width",
    "height", "bands", "format", "entropy_global", "entropy_local", "nodata_fraction", "licence",
    "origin", "stac_item", "asset_href", "window", "crs", "bounds", "year", "state",
)
# the multi-band STAC contract's fields, in the .json only when the record sets them
BAND_FIELDS = ("band_names", "dtype", "band_mean", "band_std", "band_scale", "band_offset",
               "band_nodata", "band_unit", "cloud_fraction", "datetime")
# what the stored numbers mean, per band (records' band_scale, ...): in index.json's summary
# where every record of the build agrees
BAND_MEANING = {"band_scale": "scale", "band_offset": "offset", "band_nodata": "nodata",
                "band_unit": "unit"}


class BuildError(ValueError):
    """A build asks for what the curated table cannot give."""


INDIRECT = "near (indirect)"  # a skipped copy with no direct edge to the member taken


def caps(spec: Build, scale: float = 1.0) -> dict[str, int | None]:
    """``source -> cap`` (``None``: all) after ``cap_scale``."""
    return {source: None if cap == "all" else math.ceil(int(cap) * scale)
            for source, cap in spec.caps.items()}


def source_order(sources: Iterable[str], priority: Sequence[str]) -> list[str]:
    """The build's sources as they claim clusters: ``priority`` order, then the rest by name."""
    sources = set(sources)
    first = [s for s in dict.fromkeys(priority) if s in sources]
    return first + sorted(sources - set(first))


def _edge_kinds(pairs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """Duplicate edges from ``duplicates.json`` as ``(key, key) -> kind``, both directions."""
    kinds: dict[tuple[str, str], str] = {}
    for pair in pairs:
        a, b, kind = pair["a"], pair["b"], str(pair.get("kind", INDIRECT))
        kinds.setdefault((a, b), kind)
        kinds.setdefault((b, a), kind)
    return kinds


def _hash_rank(keys: list[str], seed: int) -> np.ndarray:
    """Positions of ``keys`` in the seeded hash order (the same for a key in every build)."""
    order_keys = np.array([xxhash.xxh3_64_intdigest(k.encode(), seed=seed) for k in keys],
                          dtype=np.uint64)
    return np.argsort(order_keys, kind="stable")


def _upstream(counts: Mapping[str, Any] | None) -> dict[str, int]:
    """The build-independent counts of one source from ``curate.json`` (empty if unknown)."""
    if not counts:
        return {}
    return {"in": int(counts.get("in", 0)),
            "filtered": int(counts.get("low_entropy", 0)) + int(counts.get("nodata", 0)),
            "contaminated": int(counts.get("contaminated", 0))}


@dataclass
class Selection:
    """What a build holds (``table``, in shard order) and what it left out, per source."""

    table: pa.Table
    curation: dict[str, dict[str, Any]]  # source -> counts (see :func:`select`)

    @property
    def shortfall(self) -> dict[str, int]:
        """``source -> images missing from its cap``, for the sources that fall short."""
        return shortfalls(self.curation)


def shortfalls(curation: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """``source -> images missing from its cap`` from per-source counts (a build's curation)."""
    return {s: c["shortfall"] for s, c in curation.items() if c.get("shortfall")}


def shortfall_message(build: str, curation: Mapping[str, Mapping[str, Any]]) -> str:
    """``paper: resisc45 asks 31,500, 31,463 left after curation; ...`` (empty if none)."""
    clauses = [f"{s} asks {curation[s]['asked']:,}, {curation[s]['available']:,} left after "
               "curation" for s in shortfalls(curation)]
    return f"{build}: " + "; ".join(clauses) if clauses else ""


def select(
    curated: pa.Table,
    build: str,
    spec: Build,
    seed: int,
    scale: float = 1.0,
    *,
    priority: Sequence[str] = (),
    pairs: Iterable[Mapping[str, Any]] = (),
    curate_counts: Mapping[str, Mapping[str, Any]] | None = None,
) -> Selection:
    """The build's records in shard order, one per duplicate cluster, and per-source counts.

    Sources claim clusters in :func:`source_order`; each walks its rows in the seeded hash
    order. A row whose cluster is already taken (by an earlier source or an earlier row) is a
    duplicate: ``exact`` when its pixels hash equal the taken member's, else ``near``, counted
    by the kind of their direct edge in ``pairs`` (``near (indirect)`` without one). Any other
    row is *available*; the first ``cap`` of them are selected and take their clusters. An
    available row beyond the cap takes nothing, so a lower-priority copy still stands for it.

    Counts per source: ``curated``, ``exact_duplicate``, ``near_duplicate``, ``near_kinds``,
    ``available``, ``asked`` (the cap or ``all``), ``selected``, ``shortfall``, and from
    ``curate_counts`` (``curate.json``) ``in``, ``filtered`` and ``contaminated``. A source
    that falls short stops the build with :class:`BuildError` unless it allows short.
    """
    wanted = caps(spec, scale)
    allow = spec.allow_short is True
    if "cluster" not in curated.column_names:
        raise BuildError("the curated table has no 'cluster' column (written by an older "
                         "geopile curate): run `geopile curate` again")
    keys = curated["key"].to_pylist()
    sources = curated["source"].to_numpy(zero_copy_only=False)
    clusters = curated["cluster"].to_numpy(zero_copy_only=False)
    pixels = curated["xxh3_pixels"].to_pylist()
    edge_kinds = _edge_kinds(pairs)
    taken: dict[int, int] = {}  # cluster -> row of the member this build holds
    chosen: list[int] = []
    curation: dict[str, dict[str, Any]] = {}
    for source in source_order(wanted, priority):
        rows = np.flatnonzero(sources == source)
        if len(rows) == 0:
            raise BuildError(f"build {build!r} wants {source!r}, which has no curated images")
        cap = wanted[source]
        rows = rows[_hash_rank([keys[i] for i in rows], seed)]
        counts: dict[str, Any] = {**_upstream((curate_counts or {}).get(source)),
                                  "curated": len(rows), "exact_duplicate": 0,
                                  "near_duplicate": 0, "near_kinds": {}, "available": 0}
        picked: list[int] = []
        for row in rows.tolist():
            cluster = int(clusters[row])
            if cluster in taken:
                other = taken[cluster]
                if pixels[row] == pixels[other]:
                    counts["exact_duplicate"] += 1
                else:
                    counts["near_duplicate"] += 1
                    kind = edge_kinds.get((keys[row], keys[other]), INDIRECT)
                    counts["near_kinds"][kind] = counts["near_kinds"].get(kind, 0) + 1
                continue
            counts["available"] += 1
            if cap is None or len(picked) < cap:
                picked.append(row)
                taken[cluster] = row
        counts["near_kinds"] = dict(sorted(counts["near_kinds"].items()))
        counts.update(asked="all" if cap is None else cap, selected=len(picked),
                      shortfall=0 if cap is None else max(0, cap - counts["available"]))
        curation[source] = counts
        chosen += picked
    if not allow and (message := shortfall_message(build, curation)):
        raise BuildError(message)
    table = curated.take(np.asarray(chosen, dtype=np.int64)).sort_by("key")
    order = np.random.default_rng(seed).permutation(table.num_rows)
    return Selection(table.take(order), curation)


def _sample_json(record: Mapping[str, Any]) -> bytes:
    meta = {f: record.get(f) for f in JSON_FIELDS}
    meta["xxh3_pixels"] = record["xxh3_pixels"]
    meta["phash"] = f"{record['phash']:016x}"
    # multi-band fields (the STAC contract) only when set: other sources' JSON stays byte-identical
    for f in BAND_FIELDS:
        if record.get(f) is not None:
            value = record[f]
            meta[f] = ([float(v) for v in value] if f in ("band_mean", "band_std")
                       else [_json_number(v) for v in value] if f in BAND_MEANING else value)
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def is_multiband(record: Mapping[str, Any]) -> bool:
    """Whether a record is kept as its lossless GeoTIFF: not uint8, or more than 4 bands."""
    dtype = record.get("dtype")
    return record["format"] != "jpeg" and (
        (dtype is not None and dtype != "uint8") or (record["bands"] or 0) > 4)


def _json_number(value: Any) -> Any:
    """A value JSON can hold: NaN (float data's nodata) as the string the raster extension uses."""
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def band_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The build's per-band ``mean``/``std`` pooled over its multi-band records, or ``None``.

    Each record's ``band_mean``/``band_std`` is weighted by its valid pixel count
    (``width * height * (1 - nodata_fraction)``), so the pooled values equal numpy's over all
    valid pixels when every band's nodata is the same pixels. Records with other band names are
    counted under ``mixed`` and left out (a loader selects bands by name per sample).
    """
    names: list[str] | None = None
    total = 0.0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None
    mixed = 0
    meaning: dict[str, set[tuple]] = {k: set() for k in BAND_MEANING}
    for r in records:
        if r.get("band_names") is None or r.get("band_mean") is None or r.get("band_std") is None:
            continue
        for field in BAND_MEANING:
            meaning[field].add(tuple(_json_number(v) for v in r.get(field) or ()))
        if names is None:
            names = list(r["band_names"])
            s1, s2 = np.zeros(len(names)), np.zeros(len(names))
        if list(r["band_names"]) != names:
            mixed += 1
            continue
        w = float(r["width"] * r["height"]) * (1.0 - float(r.get("nodata_fraction") or 0.0))
        mean = np.asarray(r["band_mean"], dtype=np.float64)
        std = np.asarray(r["band_std"], dtype=np.float64)
        s1 += w * mean
        s2 += w * (std**2 + mean**2)
        total += w
    if names is None or total <= 0:
        return None
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
    summary: dict[str, Any] = {"names": names, "mean": mean.tolist(), "std": std.tolist(),
                               "weight": "valid_pixels"}
    for field, key in BAND_MEANING.items():  # physical = stored * scale + offset
        (values, *others) = meaning[field] or {()}
        if not others and len(values) == len(names):
            summary[key] = list(values)
    if mixed:
        summary["mixed"] = mixed
    return summary


def encode_sample(record: Mapping[str, Any], payloads: PayloadStore, config: Shard) -> dict:
    """The tar members of one sample.

    JPEG bytes are copied; other images become JPEG, except NAIP's 4 bands when ``naip_bands``
    is 4 and multi-band patches (:func:`is_multiband`: not uint8, or more than 4 bands), whose
    lossless GeoTIFF bytes are copied, never re-encoded. A JPEG with an EXIF orientation
    (``orientation``: a phone's quarter turn) is decoded upright and re-encoded, because most
    readers would otherwise show it as stored, sideways.
    """
    data = payloads.read(record["path"])
    if record["format"] == "jpeg" and not record.get("orientation"):
        ext, payload = "jpg", data
    elif is_multiband(record) or (record["bands"] == 4 and config.naip_bands == 4):
        ext, payload = "tif", data
    else:
        pixels, _ = decode(data)
        rgb = pixels[..., :3] if pixels.ndim == 3 else pixels
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=config.jpeg_quality)
        ext, payload = "jpg", buf.getvalue()
    label = record["label_id"] if record["label_id"] is not None else -1
    return {
        "__key__": record["key"],
        ext: payload,
        "json": _sample_json(record),
        # every sample carries .cls (-1: unlabeled) so that HF datasets sees one feature set
        "cls": str(label).encode(),
    }


def member_bytes(sample: Mapping[str, Any]) -> int:
    """A sample's bytes in a tar: each member's header and its padded payload."""
    size = 0
    for k, v in sample.items():
        if not k.startswith("_"):
            size += TAR_BLOCK + math.ceil(len(v) / TAR_BLOCK) * TAR_BLOCK
    return size


def _digests(path: Path, offsets: list[int]) -> tuple[str, list[str]]:
    """The shard's sha256 and each sample's xxh3-64, from one read of the written file.

    Sample ``i`` covers bytes ``offsets[i]`` up to ``offsets[i + 1]``, the last one up to the
    end of the file (its tar end blocks included): exactly the range the streaming reader reads
    for it (:func:`geopile.stream.sample_refs`), so a sample is checked without reading more.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        try:
            sha256 = hashlib.sha256(view).hexdigest()
            ends = [*offsets[1:], len(data)]
            xxh3 = [xxhash.xxh3_64_hexdigest(view[a:b]) for a, b in zip(offsets, ends,
                                                                           strict=True)]
        finally:
            view.release()
    return sha256, xxh3


class ShardPlanner:
    """Where shards end: at ``max_samples``, or before the sample that would pass ``max_bytes``.

    The one rule: :func:`stream_shards` fills shards by it as it writes, :func:`plan_shards`
    cuts a list of sizes by it for writers that work apart, so both give the same shards.
    """

    def __init__(self, config: Shard) -> None:
        self.config, self.samples, self.used = config, 0, 0

    def opens(self, size: int) -> bool:
        """Take a sample of ``size`` bytes; whether it opens a new shard (not the first)."""
        new = self.samples > 0 and (self.samples >= self.config.max_samples
                                    or self.used + size > self.config.max_bytes)
        if new:
            self.samples, self.used = 0, 0
        self.samples += 1
        self.used += size
        return new


def shard_name(n: int) -> str:
    """The ``n``-th shard's file name."""
    return f"shard-{n:06d}.tar"


def plan_shards(sizes: Sequence[int], config: Shard) -> list[tuple[int, int]]:
    """Shard boundaries ``[(start, end), ...]`` over samples of these member sizes."""
    planner, starts = ShardPlanner(config), [0] if sizes else []
    starts += [i for i, size in enumerate(sizes) if planner.opens(size)]
    return list(zip(starts, [*starts[1:], len(sizes)], strict=True))


class _ShardFile:
    """One shard being written: samples appended to a temp file, then digested and stored."""

    def __init__(self, store: ShardStore, name: str, config: Shard) -> None:
        self.store, self.name = store, name
        self.tmp = store.temp_path(name)
        self.file = open(self.tmp, "wb")  # closed in finish()
        self.sink = wds.TarWriter(self.file, encoder=False, mtime=config.mtime)
        self.keys: list[str] = []
        self.offsets: list[int] = []
        self.used = 0

    def add(self, sample: Mapping[str, Any], size: int) -> None:
        self.offsets.append(self.used)
        self.keys.append(sample["__key__"])
        self.sink.write(sample)
        self.used += size

    def finish(self) -> dict[str, Any]:
        """Close, digest, hand to the store; the shard's index entry."""
        self.sink.close()
        self.file.close()
        sha256, xxh3 = _digests(self.tmp, self.offsets)
        size = self.tmp.stat().st_size
        self.store.put_file(self.tmp, self.name, sha256)
        return {"name": self.name, "samples": len(self.keys), "bytes": size, "sha256": sha256,
                "keys": self.keys, "offsets": self.offsets, "xxh3": xxh3}

    def abort(self) -> None:
        """Drop the temp file (a failed write leaves nothing behind)."""
        for closing in (self.sink.close, self.file.close):
            try:
                closing()
            except (OSError, ValueError):
                pass  # the write already failed: flushing the rest fails the same way
        self.tmp.unlink(missing_ok=True)


def write_shard(records: Sequence[Mapping[str, Any]], payloads: PayloadStore, store: ShardStore,
                name: str, config: Shard) -> dict[str, Any]:
    """Write one whole shard (temp file, then stored); returns its index entry."""
    shard = _ShardFile(store, name, config)
    try:
        for record in records:
            sample = encode_sample(record, payloads, config)
            shard.add(sample, member_bytes(sample))
        return shard.finish()
    except BaseException:
        shard.abort()
        raise


SAMPLE_OVERHEAD = 4 * TAR_BLOCK + 1024  # three member headers, padding and a sample's .json


def estimated_bytes(records: Sequence[Mapping[str, Any]]) -> int:
    """About how many bytes a build's shards take: payloads plus tar and JSON overhead."""
    return sum(int(r.get("nbytes") or 0) + SAMPLE_OVERHEAD for r in records)


def _room_for(store: ShardStore, records: Sequence[Mapping[str, Any]], build: str) -> int:
    """Refuse up front a local build its disk cannot hold; the bytes it needs.

    Shards already there are replaced one by one, so they count as room.
    """
    needed = estimated_bytes(records)
    if isinstance(store, LocalStore):
        there = sum(p.stat().st_size for p in store.root.glob("shard-*.tar") if p.is_file())
        check_free(store.root, max(0, needed - there), f"build {build}'s shards")
    return needed


def stream_shards(records: list[dict[str, Any]], payloads: PayloadStore, store: ShardStore,
                  config: Shard, progress: Callable[[int], Any] | None) -> list[dict]:
    """Fill shards in record order, in this process and one pass (each sample encoded once)."""
    shards: list[dict[str, Any]] = []
    shard: _ShardFile | None = None
    planner = ShardPlanner(config)
    try:
        for record in records:
            sample = encode_sample(record, payloads, config)
            size = member_bytes(sample)
            if planner.opens(size) and shard is not None:
                shards.append(shard.finish())
                shard = None
            if shard is None:
                shard = _ShardFile(store, shard_name(len(shards)), config)
            shard.add(sample, size)
            if progress:
                progress(1)
        if shard:
            shards.append(shard.finish())
            shard = None
    finally:
        if shard is not None:
            shard.abort()
    return shards


def _size_of(shared: tuple[Path, Shard], record: dict[str, Any]) -> int:
    """A sample's tar bytes (encoding converted images: the costly part, in the workers)."""
    payloads, config = shared
    return member_bytes(encode_sample(record, payloads, config))


def _write_planned(shared: tuple[Path, ShardStore, Shard],
                   shard: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One planned shard, written (and stored) by the worker that got it."""
    payloads, store, config = shared
    try:
        return write_shard(shard[1], payloads, store, shard[0], config)
    finally:
        store.close()


def mapped_shards(records: list[dict[str, Any]], payloads: PayloadStore, store: ShardStore,
                  config: Shard, mapper: Mapper,
                  progress: Callable[[int], Any] | None) -> list[dict]:
    """The same shards as :func:`stream_shards`, each written by one of ``mapper``'s workers.

    Boundaries depend on every sample's encoded size, so the sizes come first (workers), the
    shards are planned here by the same rule, then each worker encodes its shards' samples
    again and stores them: into a directory every worker mounts, or S3, which each uploads to
    itself. The workers read ``payloads`` (the payload store).
    """
    sizes = list(mapper.map(_size_of, records, (payloads, config), batches_per_cpu=4))
    bounds = plan_shards(sizes, config)
    planned = [(shard_name(n), records[a:b]) for n, (a, b) in enumerate(bounds)]
    entries = []
    for entry, (a, b) in zip(mapper.map(_write_planned, planned, (payloads, store, config)),
                             bounds, strict=True):
        entries.append(entry)
        if progress:
            progress(b - a)
    return entries


def write_build(
    selection: pa.Table,
    payloads: PayloadStore | Path,
    out: Path | ShardStore,
    build: str,
    seed: int,
    config: Shard,
    progress: Callable[[int], Any] | None = None,
    curation: Mapping[str, Mapping[str, Any]] | None = None,
    mapper: Mapper | None = None,
) -> dict[str, Any]:
    """Write ``shard-NNNNNN.tar`` and ``index.json`` to ``out``; returns the index.

    ``out`` is a directory or a :mod:`geopile.shardstore` store (a shared mount, or S3: each
    shard is uploaded as it is finished, by whichever process wrote it). Samples stream into
    the current shard until it holds ``max_samples`` or the next sample would pass
    ``max_bytes``. Each shard is written under a temporary name and then stored, the old index
    is removed first and the new one comes last, so a killed build leaves only whole shards and
    no index; a rerun writes the build again from the start (same input, same bytes; S3 skips
    the uploads it already holds) and removes what it does not need.

    Per shard the index holds ``name``, ``samples``, ``bytes``, ``sha256`` (the whole file, for
    caches and pushes), ``keys``, ``offsets`` (where each sample's first header starts) and
    ``xxh3`` (hex xxh3-64 of each sample's byte range, checked by the reader on every read; see
    :func:`_digests` for the range). ``curation`` (:attr:`Selection.curation`), when given, is
    stored as the index's ``curation`` block: what curation and deduplication left out of this
    build, per source, and any shortfall. Without ``mapper`` this process writes the shards in
    one pass (:func:`stream_shards`); with one (:class:`geopile.engines.RayMapper`) its workers
    write them (:func:`mapped_shards`), byte for byte the same. ``payloads``: where the records'
    images are (:mod:`geopile.payloads`: a directory, or S3 for nodes that share no disk).
    """
    store = LocalStore(out) if isinstance(out, Path) else out
    payloads = as_payloads(payloads)
    records = selection.to_pylist()
    needed = _room_for(store, records, build)
    try:
        store.prepare()
        store.begin()
        shards = (stream_shards(records, payloads, store, config, progress) if mapper is None
                  else mapped_shards(records, payloads, store, config, mapper, progress))
    except OSError as err:
        where = Path(err.filename) if err.filename else Path(str(store))
        if (failed := disk_error(err, where, needed)) is not None:
            raise failed from err
        raise
    prune(store, (s["name"] for s in shards))
    counts: dict[str, int] = {}
    for record in records:
        counts[record["source"]] = counts.get(record["source"], 0) + 1
    index = {
        "version": INDEX_VERSION,
        "build": build,
        "seed": seed,
        "samples": len(records),
        "sources": dict(sorted(counts.items())),
        "naip_bands": config.naip_bands,
        "shards": shards,
    }
    if (bands := band_summary(records)) is not None:  # multi-band builds: loader normalisation
        index["bands"] = bands
    if curation is not None:
        index["curation"] = {s: dict(c) for s, c in curation.items()}
    validate_index(index, f"the index of build {build}", "this is a bug in GeoPile's writer")
    store.commit(json.dumps(index, indent=1).encode())
    store.close()
    return index
