"""The ingest stage: ``geopile ingest SOURCE...`` and its per-source summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from geopile.ingest import IngestSummary, ingest
from geopile.params import ParamsError, source_params
from geopile.records import read_records, records_path, rejects_path
from geopile.sources import create_source


def enabled_sources(params: dict[str, Any]) -> list[str]:
    """Sources configured and enabled in params, in file order."""
    return [n for n, p in (params.get("sources") or {}).items() if (p or {}).get("enabled", True)]


def run_ingest(
    params: dict[str, Any], names: list[str], data: Path, *, workers: int | None, progress: bool
) -> list[IngestSummary]:
    """Ingest each named source in turn."""
    summaries = []
    for name in names:
        sp = source_params(params, name)
        if not sp.get("enabled", True):
            raise ParamsError(f"source {name!r} is disabled (sources.{name}.enabled: false)")
        default_workers = (params.get("ingest") or {}).get("workers", 2)
        n_workers = workers or int(sp.get("workers") or default_workers)
        source = create_source(name, sp, data, seed=int(params.get("seed", 0)), progress=progress)
        summaries.append(ingest(source, workers=n_workers, progress=progress))
    return summaries


def summary_table(data: Path, names: list[str]) -> str:
    """A per-source table of what ingest recorded: images, rejects, classes, entropy, bytes."""
    head = f"{'source':<12} {'images':>8} {'rejects':>8} {'classes':>8} {'entropy':>8} {'MB':>8}"
    lines = [head, "-" * len(head)]
    for name in names:
        path = records_path(data, name)
        if not path.exists():
            lines.append(f"{name:<12} {'(not ingested)':>26}")
            continue
        table = read_records(path)
        rejects = read_records(rejects_path(data, name)).num_rows
        classes = len(set(table["label"].drop_null().to_pylist()))
        entropy = pc.mean(table["entropy_global"]).as_py() or 0.0
        mb = (pc.sum(table["nbytes"]).as_py() or 0) / 1e6
        lines.append(
            f"{name:<12} {table.num_rows:>8} {rejects:>8} {classes:>8} {entropy:>8.2f} {mb:>8.1f}"
        )
    return "\n".join(lines)
