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
from geopile.engines import RayMapper
from geopile.params import ParamsError, path_of
from geopile.records import read_records
from geopile.shards import (
    ALLOW_SHORT,
    BuildError,
    ShardConfig,
    select,
    shortfall_message,
    write_build,
)
from geopile.shardstore import LocalStore, ShardStore, open_store
from geopile.writelock import build_lock, write_lock
from pipelines.curate import DUPLICATES, REPORT, curated_path, reports_dir

log = logging.getLogger(__name__)


def shards_dir(params: dict[str, Any]) -> Path:
    """The shard root from ``paths.shards``."""
    return path_of(params, "shards")


def build_names(params: dict[str, Any]) -> list[str]:
    """Builds defined under ``builds:``, in file order."""
    return list(params.get("builds") or {})


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _copy_boundary_plot(params: dict[str, Any], store: ShardStore) -> str | None:
    """Store curate's boundary contact sheet beside the build; its name, or None.

    A copy left from an earlier build is removed when curate drew none this time.
    """
    source = reports_dir(params) / "plots" / BOUNDARY_PLOT
    if not source.exists():
        store.delete(BOUNDARY_PLOT)
        return None
    store.put_bytes(BOUNDARY_PLOT, source.read_bytes())
    return BOUNDARY_PLOT


def destination(params: dict[str, Any], build: str, to: str | None = None) -> ShardStore:
    """Where ``build`` is written: ``paths.shards/BUILD``, or ``TO/BUILD``.

    ``to``: a directory (every Ray node's shared mount) or ``s3://bucket/prefix``.
    """
    if to is None:
        return LocalStore(shards_dir(params) / build)
    return open_store(f"{str(to).rstrip('/')}/{build}")


def check_sources(params: dict[str, Any], build: str, spec: dict[str, Any],
                  curated: set[str] | None = None) -> None:
    """Fail naming the setting when a source of the build is disabled or was never ingested.

    Optional sources (``sentinel2``) are off by default; their build then says how to get them
    rather than that the curated table lacks them. ``curated``: the curated table's sources
    (None: check only that the sources are enabled).
    """
    sources = params.get("sources") or {}
    for source in spec:
        if source == ALLOW_SHORT:
            continue
        block = sources.get(source) or {}
        if not block.get("enabled", True):
            raise BuildError(f"build {build!r} needs sources.{source}, which is disabled: set "
                             f"sources.{source}.enabled: true in params.yaml, then run `geopile "
                             f"ingest {source}` and `geopile curate`")
        if curated is not None and source not in curated:
            raise BuildError(f"build {build!r} needs sources.{source}, which has no curated "
                             f"images: run `geopile ingest {source}` and `geopile curate` "
                             f"(sources.{source} enabled)")


def _shard_writers(params: dict[str, Any], engine: str | None,
                   address: str | None) -> RayMapper | None:
    """Ray tasks under ``ingest.engine: ray`` (or ``--engine ray``); None: this process writes."""
    if (engine or params["ingest"].get("engine") or "local") != "ray":
        return None
    return RayMapper(address or params["ingest"].get("ray_address"))


def run_shard(params: dict[str, Any], build: str, data: Path, *, progress: bool,
              engine: str | None = None, ray_address: str | None = None,
              to: str | None = None) -> dict:
    """Select (one image per duplicate cluster), shuffle and write one build; returns its index.

    ``to``: write to ``TO/BUILD`` instead of ``paths.shards/BUILD`` (:func:`destination`).

    Raises :class:`geopile.shards.BuildError` naming every source that falls short of its cap,
    unless the build allows it (``allow_short: true``). One writer at a time per build.
    """
    builds = params.get("builds") or {}
    if build not in builds:
        raise ParamsError(f"no build {build!r} under 'builds:' (known: {', '.join(builds)})")
    with write_lock(build_lock(shards_dir(params), build), f"build {build}"):
        config = ShardConfig.from_params(params["shard"])
        check_sources(params, build, builds[build])  # a disabled source: say so before anything
        path = curated_path(data)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `geopile curate` first")
        seed = int(params["seed"])
        reports = reports_dir(params)
        report = _read_json(reports / REPORT)
        duplicates = _read_json(reports / DUPLICATES) or {}
        curated = read_records(path)
        check_sources(params, build, builds[build], set(curated["source"].to_pylist()))
        chosen = select(curated, build, builds[build], seed, config.cap_scale,
                        priority=params["curate"]["priority"],
                        pairs=duplicates.get("pairs") or (),
                        curate_counts=(report or {}).get("counts"))
        out = destination(params, build, to)
        with tqdm(total=chosen.table.num_rows, desc=f"shard {build}", unit="img",
                  disable=not progress) as bar:
            index = write_build(chosen.table, data, out, build, seed, config, progress=bar.update,
                                curation=chosen.curation,
                                # the pipeline's one cluster setting (ingest.engine), or the CLI's
                                mapper=_shard_writers(params, engine, ray_address))
        plot = _copy_boundary_plot(params, out)
        out.put_bytes(CARD, render_card(index, params, report, boundary_plot=plot).encode())
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
