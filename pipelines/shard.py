"""The shard stage: ``geopile shard BUILD`` -> ``shards/BUILD/``.

It holds the ``*.tar`` shards, ``index.json``, the dataset card ``README.md`` and, when curate
drew one, ``near_duplicate_boundary.png`` (the pairs either side of the correlation threshold,
which the card shows). Duplicate clusters are resolved here, per build
(:func:`geopile.shards.select`), from ``curated.parquet`` and ``reports/duplicates.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from geopile.card import BOUNDARY_PLOT, CARD, render_card
from geopile.params import ParamsError
from geopile.records import read_records
from geopile.settings import Settings
from geopile.shards import (
    BuildError,
    select,
    shortfall_message,
    write_build,
)
from geopile.shardstore import LocalStore, ShardStore, open_store
from geopile.writelock import build_lock, write_lock
from pipelines.common import ray_tasks
from pipelines.curate import DUPLICATES, REPORT, curated_path

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _copy_boundary_plot(settings: Settings, store: ShardStore) -> str | None:
    """Store curate's boundary contact sheet beside the build; its name, or None.

    A copy left from an earlier build is removed when curate drew none this time.
    """
    source = settings.paths.reports / "plots" / BOUNDARY_PLOT
    if not source.exists():
        store.delete(BOUNDARY_PLOT)
        return None
    store.put_bytes(BOUNDARY_PLOT, source.read_bytes())
    return BOUNDARY_PLOT


def destination(settings: Settings, build: str, to: str | None = None) -> ShardStore:
    """Where ``build`` is written: ``paths.shards/BUILD``, or ``TO/BUILD``.

    ``to``: a directory (every Ray node's shared mount) or ``s3://bucket/prefix``.
    """
    if to is None:
        return LocalStore(settings.paths.shards / build)
    return open_store(f"{str(to).rstrip('/')}/{build}")


def check_sources(settings: Settings, build: str, curated: set[str] | None = None) -> None:
    """Fail naming the setting when a source of the build is disabled or was never ingested.

    Optional sources (``sentinel2``) are off by default; their build then says how to get them
    rather than that the curated table lacks them. ``curated``: the curated table's sources
    (None: check only that the sources are enabled).
    """
    for source in settings.builds[build].caps:
        if settings.sources[source].enabled is False:
            raise BuildError(f"build {build!r} needs sources.{source}, which is disabled: set "
                             f"sources.{source}.enabled: true in params.yaml, then run `geopile "
                             f"ingest {source}` and `geopile curate`")
        if curated is not None and source not in curated:
            raise BuildError(f"build {build!r} needs sources.{source}, which has no curated "
                             f"images: run `geopile ingest {source}` and `geopile curate` "
                             f"(sources.{source} enabled)")


def run_shard(settings: Settings, build: str, *, progress: bool, engine: str | None = None,
              ray_address: str | None = None, to: str | None = None) -> dict:
    """Select (one image per duplicate cluster), shuffle and write one build; returns its index.

    ``to``: write to ``TO/BUILD`` instead of ``paths.shards/BUILD`` (:func:`destination`).

    Raises :class:`geopile.shards.BuildError` naming every source that falls short of its cap,
    unless the build allows it (``allow_short: true``). One writer at a time per build.
    """
    if build not in settings.builds:
        raise ParamsError(f"no build {build!r} under 'builds:' "
                          f"(known: {', '.join(settings.builds)})")
    data, reports, config = settings.paths.data, settings.paths.reports, settings.shard
    with write_lock(build_lock(settings.paths.shards, build), f"build {build}"):
        check_sources(settings, build)  # a disabled source: say so before anything
        path = curated_path(data)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `geopile curate` first")
        report = _read_json(reports / REPORT)
        duplicates = _read_json(reports / DUPLICATES) or {}
        curated = read_records(path)
        check_sources(settings, build, set(curated["source"].to_pylist()))
        chosen = select(curated, build, settings.builds[build], settings.seed, config.cap_scale,
                        priority=settings.curate.priority,
                        pairs=duplicates.get("pairs") or (),
                        curate_counts=(report or {}).get("counts"))
        out = destination(settings, build, to)
        with tqdm(total=chosen.table.num_rows, desc=f"shard {build}", unit="img",
                  disable=not progress) as bar:
            index = write_build(chosen.table, settings.paths.payload_store(), out, build,
                                settings.seed, config,
                                progress=bar.update, curation=chosen.curation,
                                # the pipeline's one cluster setting (ingest.engine), or the CLI's
                                mapper=ray_tasks(settings, engine, ray_address))
        plot = _copy_boundary_plot(settings, out)
        out.put_bytes(CARD, render_card(index, settings, report, boundary_plot=plot).encode())
        if chosen.shortfall:
            log.warning("%s (allow_short: true, written as is)",
                        shortfall_message(build, chosen.curation))
        log.info("%s: %d samples in %d shards -> %s", build, index["samples"],
                 len(index["shards"]), out)
        return index


def shard_table(indexes: list[dict]) -> str:
    """Per-build table: samples per source, shards, bytes."""
    sources = sorted({s for ix in indexes for s in ix["sources"]})
    head = f"{'build':<22}" + "".join(f"{s:>11}" for s in sources) + f"{'total':>9}{'shards':>7}"
    lines = [head, "-" * len(head)]
    for ix in indexes:
        counts = "".join(f"{ix['sources'].get(s, 0):>11}" for s in sources)
        lines.append(f"{ix['build']:<22}{counts}{ix['samples']:>9}{len(ix['shards']):>7}")
    return "\n".join(lines)
