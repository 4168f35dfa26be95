"""Curation: what goes into GeoPile. Filters, exact and near duplicates, eval-set decontamination.

Every decision is made on the ingest records (hashes, entropy); pixels are read only to confirm
near-duplicate candidates. All images, pretraining and evaluation alike, form one graph whose
edges are exact duplicates (equal xxh3 of the decoded pixels) and confirmed near duplicates
(perceptual hashes within ``radius`` and grayscale thumbnails correlated above
``min_correlation``). In each connected component:

- if it holds an image of a configured evaluation split, every pretraining image in it is
  removed as ``contaminated``: it is, or nearly is, an image the model will be tested on;
- otherwise one image is kept: the one from the source earliest in ``priority`` (then the
  smallest key), and the others are removed as ``exact_duplicate`` (same pixels as the kept one)
  or ``near_duplicate``.

Two geo-referenced patches (NAIP windows) are never near duplicates of each other: each covers
its own ground, and overlap or a similar-looking field is not a copy. Equal pixels still are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from geopile.dedup import clusters, exact_pairs, near_pairs
from geopile.imagestats import as_rgb, decode

THUMB = 32
REASONS = ("low_entropy", "nodata", "exact_duplicate", "near_duplicate", "contaminated")
ENTROPIES = ("entropy_global", "entropy_local")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class CurateConfig:
    """The ``curate:`` block of params (defaults are the paper build's)."""

    radius: int = 10
    min_correlation: float = 0.9
    priority: tuple[str, ...] = ()
    eval_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    min_entropy: float | None = None
    max_nodata: float | None = None

    @classmethod
    def from_params(cls, block: Mapping[str, Any] | None) -> CurateConfig:
        """Build from the params block, rejecting unknown keys by name."""
        block = dict(block or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(block) - known - {"contact_sheet"}
        if unknown:
            raise ValueError(f"unknown keys under 'curate:': {', '.join(sorted(unknown))}")
        block.pop("contact_sheet", None)
        block["priority"] = tuple(block.get("priority") or ())
        block["eval_sets"] = {k: tuple(v) for k, v in (block.get("eval_sets") or {}).items()}
        return cls(**block)


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


def gray_thumbnail(path: Path, size: int = THUMB) -> np.ndarray:
    """A zero-mean, unit-norm ``size`` x ``size`` grayscale thumbnail, for correlation."""
    img = Image.fromarray(as_rgb(decode(path.read_bytes())[0])).convert("L")
    thumb = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float64).ravel()
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return thumb / norm if norm > 0 else thumb


def _priority_rank(priority: tuple[str, ...], sources: list[str]) -> dict[str, int]:
    rest = sorted(s for s in set(sources) if s not in priority)
    return {s: i for i, s in enumerate([*priority, *rest])}


def _entropy_stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    stats = {"mean": float(values.mean()), "std": float(values.std())}
    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True):
        stats[f"q{int(q * 100):02d}"] = float(v)
    return stats


def curate(
    pretrain: Mapping[str, pa.Table],
    evaluation: Mapping[str, pa.Table],
    data_dir: Path,
    config: CurateConfig,
    progress: Callable[[int], Any] | None = None,
) -> CurateResult:
    """Decide, for every pretraining record, whether it goes into GeoPile and why not."""
    cols = ["key", "source", "split", "xxh3_pixels", "phash", "path", "stac_item",
            "entropy_global", "nodata_fraction"]
    frames = [t.select(cols) for t in pretrain.values()]
    for name, table in evaluation.items():
        splits = config.eval_sets.get(name, ())
        mask = pc.is_in(table["split"], pa.array(list(splits), pa.string()))
        frames.append(table.filter(mask).select(cols))
    every = pa.concat_tables(frames) if frames else pa.table({c: [] for c in cols})
    rows = every.to_pydict()
    n = every.num_rows
    n_pretrain = sum(t.num_rows for t in pretrain.values())
    is_eval = np.arange(n) >= n_pretrain
    reason: dict[int, str] = {}

    entropy = np.asarray(rows["entropy_global"], dtype=np.float64)
    nodata = np.asarray([v or 0.0 for v in rows["nodata_fraction"]], dtype=np.float64)
    for idx in range(n_pretrain):
        if config.min_entropy is not None and entropy[idx] < config.min_entropy:
            reason[idx] = "low_entropy"
        elif config.max_nodata is not None and nodata[idx] > config.max_nodata:
            reason[idx] = "nodata"
    alive = np.asarray([i not in reason for i in range(n)])

    ex_i, ex_j = exact_pairs(rows["xxh3_pixels"])
    hashes = np.asarray(rows["phash"], dtype=np.uint64)
    nr_i, nr_j, _ = near_pairs(hashes, config.radius)
    exact_set = {(min(a, b), max(a, b)) for a, b in zip(ex_i.tolist(), ex_j.tolist(), strict=True)}
    geo = np.asarray([s is not None for s in rows["stac_item"]])
    candidates = [
        (a, b) for a, b in zip(nr_i.tolist(), nr_j.tolist(), strict=True)
        if (a, b) not in exact_set and not (geo[a] and geo[b]) and not (is_eval[a] and is_eval[b])
        and alive[a] and alive[b]
    ]
    thumbs: dict[int, np.ndarray] = {}

    def thumb(idx: int) -> np.ndarray:
        if idx not in thumbs:
            thumbs[idx] = gray_thumbnail(data_dir / rows["path"][idx])
        return thumbs[idx]

    confirmed = []
    for a, b in candidates:
        if float(thumb(a) @ thumb(b)) >= config.min_correlation:
            confirmed.append((a, b))
        if progress:
            progress(1)
    edges = [(a, b) for a, b in exact_set if alive[a] and alive[b]] + confirmed
    label = clusters(n, np.asarray([e[0] for e in edges], np.int64),
                     np.asarray([e[1] for e in edges], np.int64))
    members: dict[int, list[int]] = defaultdict(list)
    for idx in np.flatnonzero(alive):
        members[int(label[idx])].append(int(idx))

    rank = _priority_rank(config.priority, rows["source"])
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
            continue
        keep = min(train, key=lambda i: (rank[rows["source"][i]], rows["key"][i]))
        dropped = []
        for i in sorted(train, key=lambda i: rows["key"][i]):
            if i == keep:
                continue
            same = rows["xxh3_pixels"][i] == rows["xxh3_pixels"][keep]
            reason[i] = "exact_duplicate" if same else "near_duplicate"
            dropped.append({"key": rows["key"][i], "reason": reason[i]})
        cluster_report.append({"kept": rows["key"][keep], "removed": dropped})

    counts: dict[str, dict[str, int]] = {}
    for name, table in pretrain.items():
        counts[name] = {"in": table.num_rows, **{r: 0 for r in REASONS}, "out": 0}
    removed = []
    for idx in range(n_pretrain):
        src = rows["source"][idx]
        if idx in reason:
            counts[src][reason[idx]] += 1
            removed.append({"key": rows["key"][idx], "source": src, "reason": reason[idx]})
        else:
            counts[src]["out"] += 1

    keep_keys = {rows["key"][i] for i in range(n_pretrain) if i not in reason}
    curated = pa.concat_tables(list(pretrain.values())) if pretrain else None
    if curated is not None:
        curated = curated.filter(pc.is_in(curated["key"], pa.array(sorted(keep_keys))))
        curated = curated.sort_by("key")
    stats = {}
    for name in pretrain:
        part = curated.filter(pc.equal(curated["source"], name)) if curated else None
        stats[name] = {
            e: _entropy_stats(np.asarray(part[e].to_numpy(zero_copy_only=False), np.float64))
            for e in ENTROPIES
        } if part is not None else {}
    cluster_report.sort(key=lambda c: c["kept"])
    contaminated.sort(key=lambda c: c["key"])
    removed.sort(key=lambda r: r["key"])
    return CurateResult(curated, removed, cluster_report, contaminated, counts, stats,
                        len(candidates), len(confirmed))


def rgb_thumbnail(path: Path, size: int) -> Image.Image:
    """An RGB thumbnail of a stored image (first three bands), for contact sheets."""
    img = Image.fromarray(as_rgb(decode(path.read_bytes())[0]))
    img.thumbnail((size, size))
    return img

