"""The curate stage: ``geopile curate`` -> ``data/curated.parquet`` + ``reports/``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
from PIL import Image
from tqdm import tqdm

from geopile.atomic import write_text
from geopile.curate import curate, rgb_thumbnail
from geopile.params import ParamsError
from geopile.payloads import PayloadStore
from geopile.records import read_records, records_path, write_table_atomic
from geopile.settings import Settings
from geopile.writelock import data_lock, write_lock
from pipelines.common import ray_tasks

log = logging.getLogger(__name__)
CURATED = "curated.parquet"
REPORT = "curate.json"
DUPLICATES = "duplicates.json"
BOUNDARY = "near_duplicate_boundary.png"


def curated_path(data: Path) -> Path:
    """Where curate writes the kept records."""
    return data / CURATED


def sources_by_role(settings: Settings, role: str) -> list[str]:
    """The enabled sources of ``role`` (``pretrain`` or ``eval``), in file order."""
    return [name for name, source in settings.sources.items()
            if source.enabled is not False and (source.role or "pretrain") == role]


def _load(data: Path, names: list[str]) -> dict[str, pa.Table]:
    tables = {}
    for name in names:
        path = records_path(data, name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `geopile ingest {name}` first")
        tables[name] = read_records(path)
    return tables


def _write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=1, sort_keys=False))


def _save_png(fig: Figure, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    os.replace(tmp, path)


def entropy_histogram(table: pa.Table, source: str, path: Path) -> None:
    """Global and local entropy histograms of one source's kept images."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = np.linspace(0, 8, 65)
    for column, name in (("entropy_global", "global (256-bin gray)"),
                         ("entropy_local", "local (mean of 16x16 blocks)")):
        ax.hist(table[column].to_numpy(), bins=bins, alpha=0.6, label=name)
    ax.set(xlabel="entropy (bits)", ylabel="images", title=f"{source}: {table.num_rows} images")
    ax.legend()
    fig.tight_layout()
    _save_png(fig, path)


def contact_sheet(
    table: pa.Table, store: PayloadStore, path: Path, samples: int, thumb: int, seed: int
) -> None:
    """A grid of random kept images, so a person can see what the source looks like."""
    n = min(samples, table.num_rows)
    cols = max(1, min(8, n))
    rows = max(1, -(-n // cols))
    sheet = Image.new("RGB", (cols * thumb, rows * thumb), "white")
    picks = np.random.default_rng(seed).choice(table.num_rows, n, replace=False) if n else []
    paths = table["path"].to_pylist()
    for slot, idx in enumerate(sorted(int(i) for i in picks)):
        img = rgb_thumbnail(store.read(paths[idx]), thumb)
        sheet.paste(img, ((slot % cols) * thumb, (slot // cols) * thumb))
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)


def boundary_sheet(scores: list[dict[str, Any]], threshold: float, store: PayloadStore,
                   paths: dict[str, str], path: Path, pairs: int = 6, thumb: int = 96) -> bool:
    """Near-duplicate candidates closest to the threshold, kept (left) and removed (right).

    Each row shows one pair side by side with its aligned correlation, so a person can judge
    by eye whether ``curate.min_correlation`` sits between copies and look-alikes. Returns
    False (and writes nothing) when there was no candidate.
    """
    below = sorted((s for s in scores if s["score"] < threshold), key=lambda s: -s["score"])
    above = sorted((s for s in scores if s["score"] >= threshold), key=lambda s: s["score"])
    columns = [below[:pairs], above[:pairs]]
    rows = max(len(c) for c in columns)
    if not rows:
        return False
    fig = Figure(figsize=(8, 1.15 * rows + 0.6))
    axes = fig.subplots(rows, 2, squeeze=False)
    titles = (f"just kept (distinct): score < {threshold}",
              f"just removed (copies): >= {threshold}")
    for col, (column, title) in enumerate(zip(columns, titles, strict=True)):
        axes[0][col].set_title(title, fontsize=9)
        for row in range(rows):
            ax = axes[row][col]
            ax.set_axis_off()
            if row >= len(column):
                continue
            pair = column[row]
            left, right = (rgb_thumbnail(store.read(paths[pair[k]]), thumb) for k in ("a", "b"))
            both = Image.new("RGB", (2 * thumb + 4, thumb), "white")
            both.paste(left, (0, 0))
            both.paste(right, (thumb + 4, 0))
            ax.imshow(np.asarray(both))
            ax.text(2 * thumb + 10, thumb / 2, f"{pair['score']:.3f}\n{pair['kind']}",
                    fontsize=7, va="center")
    fig.tight_layout()
    _save_png(fig, path)
    return True


def run_curate(settings: Settings, *, progress: bool, engine: str | None = None,
               ray_address: str | None = None) -> dict[str, Any]:
    """Curate every enabled pretraining source against the configured evaluation sets.

    Under ``ingest.engine: ray`` the near-duplicate search and the alignments are Ray tasks
    reading the images from ``paths.payloads`` (S3 on a cluster whose nodes share no disk).
    """
    data, config = settings.paths.data, settings.curate
    store = settings.paths.payload_store()
    with write_lock(data_lock(data), f"the data directory {data}"):
        pretrain = sources_by_role(settings, "pretrain")
        if not pretrain:
            raise ParamsError("no enabled source with role: pretrain")
        with tqdm(desc="align near-duplicate candidates", unit="pair", disable=not progress) as bar:
            evals = [s for s, splits in config.eval_sets.items() if splits]  # []: none of it
            tables = {**_load(data, pretrain), **_load(data, evals)}
            mapper = ray_tasks(settings, engine, ray_address)
            try:
                result = curate({s: tables[s] for s in pretrain}, {s: tables[s] for s in evals},
                                store, config, progress=bar.update, mapper=mapper)
            finally:
                if mapper is not None:
                    mapper.close()
        write_table_atomic(result.curated, curated_path(data))

        reports = settings.paths.reports
        plots = reports / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        sheet = config.contact_sheet
        for name in pretrain:
            part = result.curated.filter(pc.equal(result.curated["source"], name))
            entropy_histogram(part, name, plots / f"entropy_{name}.png")
            contact_sheet(part, store, plots / f"contact_{name}.png", sheet.samples, sheet.thumb,
                          settings.seed)
        paths = {k: p for t in tables.values()
                 for k, p in zip(t["key"].to_pylist(), t["path"].to_pylist(), strict=True)}
        boundary = plots / BOUNDARY
        if not boundary_sheet(result.near_scores, config.min_correlation, store, paths,
                              boundary):
            boundary.unlink(missing_ok=True)
        totals = {k: sum(c[k] for c in result.counts.values())
                  for k in next(iter(result.counts.values()))}
        report = {
            "counts": {**result.counts, "total": totals},
            "entropy": result.entropy,
            "near_duplicate_candidates": result.candidate_pairs,
            "near_duplicates_confirmed": result.confirmed_pairs,
        }
        _write_json(reports / REPORT, report)
        _write_json(reports / DUPLICATES, {
            "pairs": result.pairs,
            "near_scores": result.near_scores,
            "clusters": result.clusters,
            "contaminated": result.contaminated,
            "removed": result.removed,
        })
        log.info("curated %d of %d images -> %s", totals["out"], totals["in"], curated_path(data))
        return report


def curate_table(report: dict[str, Any]) -> str:
    """Per-source table from ``reports/curate.json``: in, contaminants, filtered, out, entropy.

    ``in dup``: kept images that have a copy; each build keeps one per cluster (its card says
    how many it dropped).
    """
    head = (f"{'source':<12} {'in':>8} {'contam':>7} {'filter':>7} {'out':>8} {'in dup':>7} "
            f"{'entropy':>8}")
    lines = [head, "-" * len(head)]
    for name, c in report["counts"].items():
        stats = report["entropy"].get(name, {}).get("entropy_global") or {}
        mean = f"{stats['mean']:>8.2f}" if "mean" in stats else f"{'':>8}"
        lines.append(
            f"{name:<12} {c['in']:>8} {c['contaminated']:>7} {c['low_entropy'] + c['nodata']:>7} "
            f"{c['out']:>8} {c['clustered']:>7} {mean}"
        )
    return "\n".join(lines)


def read_report(settings: Settings) -> dict[str, Any]:
    """The last ``reports/curate.json``."""
    return json.loads((settings.paths.reports / REPORT).read_text())
