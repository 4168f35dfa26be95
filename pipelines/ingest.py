"""The ingest stage: ``geopile ingest SOURCE...`` and its per-source summary table."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from geopile.engines import LocalMapper, RayMapper
from geopile.ingest import IngestSummary, ingest
from geopile.params import ParamsError
from geopile.records import (
    RECORD_SCHEMA,
    REJECT_SCHEMA,
    read_records,
    records_path,
    rejects_path,
    write_table_atomic,
)
from geopile.settings import Settings
from geopile.sources import create_source
from geopile.writelock import data_lock, write_lock

log = logging.getLogger(__name__)


def enabled_sources(settings: Settings) -> list[str]:
    """Sources configured and enabled, in file order."""
    return [n for n, source in settings.sources.items() if source.enabled is not False]


def run_ingest(settings: Settings, names: list[str], *, workers: int | None = None,
               progress: bool, engine: str | None = None,
               ray_address: str | None = None) -> list[IngestSummary]:
    """Ingest each named source in turn; ``engine``/``ray_address`` override ``ingest:``.

    One ingest at a time writes the data directory (:func:`geopile.writelock.write_lock`).
    """
    unknown = [n for n in names if n not in settings.sources]
    if unknown:  # before any write
        raise ParamsError(f"no source {unknown[0]!r} under 'sources:' in the params "
                          f"(known: {', '.join(settings.sources)})")
    data = settings.paths.data
    engine = engine or settings.ingest.engine
    ray_address = ray_address or settings.ingest.ray_address
    summaries = []
    with write_lock(data_lock(data), f"the data directory {data}"):
        for name in names:
            source_settings = settings.sources[name]
            if source_settings.enabled is False:
                _write_empty(data, name)
                continue
            n_workers = workers or source_settings.workers or settings.ingest.workers
            source = create_source(name, source_settings, data, seed=settings.seed,
                                   progress=progress, payloads=settings.paths.payload_store())
            # the cluster (ingest.engine: ray) or a pool here: the driver is the same
            mapper = (RayMapper(ray_address, threads=n_workers) if engine == "ray"
                      else LocalMapper(n_workers))
            try:
                summaries.append(ingest(source, mapper=mapper, progress=progress))
            finally:
                mapper.close()
    return summaries


def _write_empty(data: Path, name: str) -> None:
    """Empty outputs for a disabled source, so a pipeline over every configured source runs."""
    log.warning("%s is disabled (sources.%s.enabled: false): writing no records", name, name)
    write_table_atomic(RECORD_SCHEMA.empty_table(), records_path(data, name))
    write_table_atomic(REJECT_SCHEMA.empty_table(), rejects_path(data, name))
    raw = data / "raw" / name
    if raw.is_symlink() and not raw.exists():  # its extraction was removed: relink empty
        raw.unlink()
    raw.mkdir(parents=True, exist_ok=True)


def summary_table(data: Path, names: list[str]) -> str:
    """A per-source table of what ingest recorded: images, rejects, classes, entropy, bytes.

    Below it, each source's rejects by reason (numbers and URLs folded, so that the reasons
    group): what a filter turned down, what could not be read, and the items skipped.
    """
    head = f"{'source':<12} {'images':>8} {'rejects':>8} {'classes':>8} {'entropy':>8} {'MB':>8}"
    lines = [head, "-" * len(head)]
    reasons: dict[str, Counter[str]] = {}
    for name in names:
        path = records_path(data, name)
        if not path.exists():
            lines.append(f"{name:<12} {'(not ingested)':>26}")
            continue
        table = read_records(path)
        rejects = read_records(rejects_path(data, name))
        classes = len(set(table["label"].drop_null().to_pylist()))
        entropy = pc.mean(table["entropy_global"]).as_py() or 0.0
        mb = (pc.sum(table["nbytes"]).as_py() or 0) / 1e6
        lines.append(f"{name:<12} {table.num_rows:>8} {rejects.num_rows:>8} {classes:>8} "
                     f"{entropy:>8.2f} {mb:>8.1f}")
        if rejects.num_rows:
            reasons[name] = Counter(reason_kind(r) for r in rejects["reason"].to_pylist())
    for name, counts in reasons.items():
        lines.append(f"\n{name} rejects by reason:")
        lines += [f"  {n:>8}  {reason}" for reason, n in counts.most_common()]
    return "\n".join(lines)


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])")  # not B04, lwir11


def reason_kind(reason: str, width: int = 90) -> str:
    """A reject reason with its URLs and numbers folded (``<url>``, ``#``), for counting."""
    folded = _NUMBER.sub("#", _URL.sub("<url>", reason))
    return folded if len(folded) <= width else folded[:width - 3] + "..."
