"""Curation: what may go into GeoPile. Filters, exact and near duplicates, eval-set decontamination.

Every decision is made on the ingest records (hashes, entropy); pixels are read only to confirm
near-duplicate candidates. All images, pretraining and evaluation alike, form one graph whose
edges are exact duplicates (equal xxh3 of the decoded pixels) and confirmed near copies: a crop
of one image, under one of the eight symmetries of the square, hashes within ``radius`` /
``total_radius`` bits of the other (:func:`geopile.dedup.crop_pairs`) and, aligned on pixels,
correlates at least ``min_correlation`` with it (:mod:`geopile.align`). In each component:

- if it holds an image of a configured evaluation split, every pretraining image in it is
  removed as ``contaminated``: it is, or nearly is, an image the model will be tested on;
- otherwise all its members stay, sharing a ``cluster`` id, and each build keeps exactly one of
  them among its own sources, by ``priority`` (:func:`geopile.shards.select`): which copy
  survives depends on the build, so that no build loses an image to a copy it does not hold.

Two geo-referenced patches (NAIP windows) are never near duplicates of each other: each covers
its own ground, and overlap or a similar-looking field is not a copy. Equal pixels still are.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from geopile.align import Match, align, edit_kind, working_image
from geopile.dedup import clusters, crop_pairs, exact_pairs
from geopile.imagestats import CROP_BOXES, as_rgb, crop_hashes, luma, stored_preview
from geopile.payloads import PayloadStore, as_payloads
from geopile.settings import Curate

if TYPE_CHECKING:
    from geopile.engines import Mapper

log = logging.getLogger(__name__)
REASONS = ("low_entropy", "nodata", "contaminated")
ENTROPIES = ("entropy_global", "entropy_local")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class CurateResult:
    """Kept records, and the decision for every image that was considered."""

    curated: pa.Table
    removed: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    contaminated: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    entropy: dict[str, dict[str, dict[str, float]]]
    candidate_pairs: int
    confirmed_pairs: int
    pairs: list[dict[str, Any]]  # duplicate edges: a, b, kind ("exact" or the edit), score
    near_scores: list[dict[str, Any]]  # every aligned candidate, duplicate or not (boundary)


def _entropy_stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    stats = {"mean": float(values.mean()), "std": float(values.std())}
    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
        stats[f"q{int(q * 100):02d}"] = float(v)
    return stats


def _grey(data: bytes) -> np.ndarray:
    """The stored image's luma, as hashes and alignment see it (of its rgb_preview)."""
    return luma(stored_preview(data))


def _crop_hashes(column: pa.ChunkedArray, paths: list[str], store: PayloadStore) -> np.ndarray:
    """The (n, boxes, 2) crop-pyramid hashes; records ingested before they existed: hashed now.

    Read from the column's buffers, not as Python ints (about 1.5 KB a record): this array
    (304 bytes a record) is all the near-duplicate search holds besides one band's index.
    """
    n, width = len(column), 2 * len(CROP_BOXES)
    out = np.zeros((n, len(CROP_BOXES), 2), np.uint64)
    flat = out.reshape(n, width)
    missing = column.null_count if not pa.types.is_null(column.type) else n
    if missing:
        log.warning("%d records have no crop hashes (ingested by an earlier GeoPile): hashing "
                    "them now from their stored images, about 2-3 ms each", missing)
    row = 0
    for chunk in column.chunks:
        valid = np.zeros(len(chunk), bool)
        if not pa.types.is_null(chunk.type):
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            values = pc.list_flatten(chunk).to_numpy(zero_copy_only=False)
            if values.size != valid.sum() * width:
                raise ValueError(f"records column crop_hashes: expected {width} words per "
                                 f"record, got {values.size} for {valid.sum()} records")
            flat[row:row + len(chunk)][valid] = values.reshape(-1, width)
        for k in np.flatnonzero(~valid):
            flat[row + k] = crop_hashes(_grey(store.read(paths[row + k])))
        row += len(chunk)
    return out


def _rotated(table: pa.Table) -> int:
    """How many of a source's images were stored sideways and turned upright by their EXIF."""
    if "orientation" not in table.column_names:
        return 0
    return table.num_rows - table["orientation"].null_count


@dataclass
class _Pool:
    """Every image curation weighs: the pretraining rows first, then the eval splits' rows."""

    every: pa.Table
    rows: dict[str, list[Any]]  # every column but the crop hashes (read as numpy)
    n_pretrain: int

    @property
    def n(self) -> int:
        return self.every.num_rows

    @property
    def is_eval(self) -> np.ndarray:
        return np.arange(self.n) >= self.n_pretrain


def _pool(pretrain: Mapping[str, pa.Table], evaluation: Mapping[str, pa.Table],
          config: Curate) -> _Pool:
    cols = ["key", "source", "split", "xxh3_pixels", "crop_hashes", "path", "stac_item",
            "entropy_global", "nodata_fraction"]
    frames = [t.select(cols) for t in pretrain.values()]
    for name, table in evaluation.items():
        splits = config.eval_sets.get(name, ())
        mask = pc.is_in(table["split"], pa.array(list(splits), pa.string()))
        frames.append(table.filter(mask).select(cols))
    every = pa.concat_tables(frames) if frames else pa.table({c: [] for c in cols})
    return _Pool(every, every.drop_columns(["crop_hashes"]).to_pydict(),
                 sum(t.num_rows for t in pretrain.values()))


def _filtered(pool: _Pool, config: Curate) -> dict[int, str]:
    """Pretraining images the filters remove, with why (``low_entropy`` or ``nodata``)."""
    reason: dict[int, str] = {}
    entropy = np.asarray(pool.rows["entropy_global"], dtype=np.float64)
    nodata = np.asarray([v or 0.0 for v in pool.rows["nodata_fraction"]], dtype=np.float64)
    for idx in range(pool.n_pretrain):
        if config.min_entropy is not None and entropy[idx] < config.min_entropy:
            reason[idx] = "low_entropy"
        elif config.max_nodata is not None and nodata[idx] > config.max_nodata:
            reason[idx] = "nodata"
    return reason


def _aligned_candidates(pool: _Pool, alive: np.ndarray, exact: set[tuple[int, int]],
                        store: PayloadStore, config: Curate,
                        progress: Callable[[int], Any] | None,
                        mapper: Mapper | None = None,
                        ) -> tuple[int, dict[tuple[int, int], tuple[int, int, Match]]]:
    """Near-copy candidates by crop hashes, each pair aligned on pixels; (count, best match).

    Skipped: pairs already exact, two geo-referenced patches, two eval images, and any image
    a filter removed. ``mapper``: the search and the alignments as tasks (a pool, a Ray
    cluster); this process then only merges what they return.
    """
    rows = pool.rows
    found = crop_pairs(_crop_hashes(pool.every["crop_hashes"], rows["path"], store),
                       config.radius, config.total_radius, mapper=mapper)  # sharded by band
    geo = np.asarray([s is not None for s in rows["stac_item"]])
    is_eval = pool.is_eval
    candidates = sorted(
        (a, b, c, s) for a, b, c, s, _ in found.tolist()
        if (min(a, b), max(a, b)) not in exact and not (geo[a] and geo[b])
        and not (is_eval[a] and is_eval[b]) and alive[a] and alive[b]
    )  # by their first image: an aligning process finds it in its cache
    job = _AlignJob(store, config.min_correlation + 0.05)
    paths, pixels = rows["path"], rows["xxh3_pixels"]
    items = [(c, s, paths[a], paths[b], pixels[a], pixels[b]) for a, b, c, s in candidates]
    matches = (mapper.map(align_candidate, items, job, batches_per_cpu=4) if mapper is not None
               else (align_candidate(job, item) for item in items))
    best: dict[tuple[int, int], tuple[int, int, Match]] = {}
    for (a, b, _, _), match in zip(candidates, matches, strict=True):
        pair = (min(a, b), max(a, b))
        if pair not in best or match.correlation > best[pair][2].correlation:
            best[pair] = (a, b, match)
        if progress:
            progress(1)
    _working_cached.cache_clear()  # this process's images (up to 256 MB) are not needed again
    return len(candidates), best


@dataclass(frozen=True)
class _AlignJob:
    """What every alignment shares: where the images are, and when a match is good enough."""

    store: PayloadStore
    enough: float


def align_candidate(job: _AlignJob, item: tuple[int, int, str, str, int, int]) -> Match:
    """Align one candidate on pixels (a task's unit).

    ``item``: ``(crop, symmetry, path_a, path_b, pixels_a, pixels_b)``, ``pixels_*`` being the
    records' ``xxh3_pixels``.
    """
    crop, symmetry, path_a, path_b, pixels_a, pixels_b = item
    return align(_working_cached(job.store, path_a, pixels_a),
                 _working_cached(job.store, path_b, pixels_b), symmetry, CROP_BOXES[crop],
                 enough=job.enough)


# 64 KB each: at most 256 MB in each aligning process. Keyed by the record's pixel digest too:
# a process lives on across runs (a Ray worker), and other pixels under the same name are
# read again.
@lru_cache(maxsize=4096)
def _working_cached(store: PayloadStore, name: str, pixels: int) -> Any:
    return working_image(_grey(store.read(name)))


def _decontaminate(pool: _Pool, label: np.ndarray, alive: np.ndarray, reason: dict[int, str],
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mark every pretraining image in a component with an eval image ``contaminated``.

    Returns the report's clusters (components of several pretraining images, kept) and its
    contaminated images (with the eval images they match).
    """
    rows, is_eval = pool.rows, pool.is_eval
    members: dict[int, list[int]] = defaultdict(list)
    for idx in np.flatnonzero(alive):
        members[int(label[idx])].append(int(idx))
    cluster_report, contaminated = [], []
    for group in members.values():
        if len(group) < 2:
            continue
        evals = [i for i in group if is_eval[i]]
        train = [i for i in group if not is_eval[i]]
        if evals:
            for i in train:
                reason[i] = "contaminated"
                contaminated.append({"key": rows["key"][i], "source": rows["source"][i],
                                     "matches": sorted(rows["key"][e] for e in evals)})
        elif len(train) > 1:
            cluster_report.append({"members": sorted(rows["key"][i] for i in train)})
    cluster_report.sort(key=lambda c: c["members"][0])
    contaminated.sort(key=lambda c: c["key"])
    return cluster_report, contaminated


def _counts(pretrain: Mapping[str, pa.Table], pool: _Pool, reason: dict[int, str],
            label: np.ndarray, alive: np.ndarray,
            ) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """Per-source counts (in, each reason, clustered, out, exif_rotated) and the removed list."""
    rows, n = pool.rows, pool.n
    counts: dict[str, dict[str, int]] = {}
    for name, table in pretrain.items():
        counts[name] = {"in": table.num_rows, **{r: 0 for r in REASONS}, "clustered": 0,
                        "out": 0, "exif_rotated": _rotated(table)}
    removed = []
    sizes = np.bincount(label[alive & ~pool.is_eval], minlength=n) if n else np.zeros(0, np.int64)
    for idx in range(pool.n_pretrain):
        src = rows["source"][idx]
        if idx in reason:
            counts[src][reason[idx]] += 1
            removed.append({"key": rows["key"][idx], "source": src, "reason": reason[idx]})
        else:
            counts[src]["out"] += 1
            counts[src]["clustered"] += int(sizes[label[idx]] > 1)
    removed.sort(key=lambda r: r["key"])
    return counts, removed


def _kept(pretrain: Mapping[str, pa.Table], pool: _Pool, reason: dict[int, str],
          label: np.ndarray) -> pa.Table | None:
    """The pretraining records no reason removed, by key, each with its ``cluster`` id."""
    keep = [i for i in range(pool.n_pretrain) if i not in reason]
    cluster_of = dict(zip((pool.rows["key"][i] for i in keep), (int(label[i]) for i in keep),
                          strict=True))
    if not pretrain:
        return None
    curated = pa.concat_tables(list(pretrain.values()))
    curated = curated.filter(pc.is_in(curated["key"], pa.array(sorted(cluster_of), pa.string())))
    curated = curated.sort_by("key")
    return curated.append_column(
        "cluster", pa.array([cluster_of[k] for k in curated["key"].to_pylist()], pa.int64()))


def curate(
    pretrain: Mapping[str, pa.Table],
    evaluation: Mapping[str, pa.Table],
    payloads: PayloadStore | Path,
    config: Curate,
    progress: Callable[[int], Any] | None = None,
    mapper: Mapper | None = None,
) -> CurateResult:
    """Filter, cluster duplicates and decontaminate every pretraining record.

    Duplicates are not resolved here: every member of a clean cluster stays in the curated
    table with its ``cluster`` id, and each build keeps one of each cluster among its own
    sources (:func:`geopile.shards.select`). ``mapper``: the near-duplicate search and the
    pixel alignments run as its tasks; every decision is still taken here, in the same order,
    so the result is the same. ``payloads``: where the images are (a store, or the data
    directory), read only for the candidates' alignments and records without crop hashes.
    """
    pool = _pool(pretrain, evaluation, config)
    rows, n = pool.rows, pool.n
    reason = _filtered(pool, config)
    alive = np.asarray([i not in reason for i in range(n)])

    ex_i, ex_j = exact_pairs(rows["xxh3_pixels"])
    exact_set = {(min(a, b), max(a, b)) for a, b in zip(ex_i.tolist(), ex_j.tolist(), strict=True)}
    n_candidates, best = _aligned_candidates(pool, alive, exact_set, as_payloads(payloads),
                                              config, progress, mapper)
    pairs = [{"a": rows["key"][a], "b": rows["key"][b], "kind": "exact", "score": 1.0}
             for a, b in sorted(exact_set)]
    aligned = sorted(best)  # unordered pairs, each with its best alignment
    near_scores = [{"a": rows["key"][a], "b": rows["key"][b], "kind": edit_kind(match),
                    "score": round(match.correlation, 4), "margins": list(match.margins)}
                   for a, b, match in (best[pair] for pair in aligned)]
    passed = [best[pair][2].correlation >= config.min_correlation for pair in aligned]
    confirmed = [pair for pair, ok in zip(aligned, passed, strict=True) if ok]
    pairs += [score for score, ok in zip(near_scores, passed, strict=True) if ok]
    edges = [(a, b) for a, b in exact_set if alive[a] and alive[b]] + confirmed
    label = clusters(n, np.asarray([e[0] for e in edges], np.int64),
                     np.asarray([e[1] for e in edges], np.int64))

    cluster_report, contaminated = _decontaminate(pool, label, alive, reason)
    counts, removed = _counts(pretrain, pool, reason, label, alive)
    curated = _kept(pretrain, pool, reason, label)
    stats = {}
    for name in pretrain:
        part = curated.filter(pc.equal(curated["source"], name)) if curated else None
        stats[name] = {
            e: _entropy_stats(np.asarray(part[e].to_numpy(zero_copy_only=False), np.float64))
            for e in ENTROPIES
        } if part is not None else {}
    return CurateResult(curated, removed, cluster_report, contaminated, counts, stats,
                        n_candidates, len(confirmed), pairs, near_scores)


def rgb_thumbnail(data: bytes, size: int) -> Image.Image:
    """An RGB thumbnail of a stored image's bytes (its rgb_preview), for contact sheets."""
    img = Image.fromarray(as_rgb(stored_preview(data)))
    img.thumbnail((size, size))
    return img

