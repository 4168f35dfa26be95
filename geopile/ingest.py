"""Ingest driver: candidates in, record table out; parallel, resumable, every reject kept.

Outcomes are checkpointed to ``records/.parts/<source>/part-NNNNNN.parquet`` as they come; a
killed run skips every key already decided and, since candidates come in a fixed order and
sampling quotas are filled in that order, ends with the same records as an uninterrupted run.

A candidate that cannot be read (an ``OSError``: a 404 tile, corrupt bytes after retries, a
dropped connection) is a reject with its reason, like one the source turns down on content
(:class:`BadImage`). Such failures are checkpointed only when the run completes, so a killed or
stopped run retries them. When more than ``max_error_fraction`` of a run's candidates fail (a
source parameter; none set, no limit), the fault is systemic (credentials, network, a moved
store) and the run stops with :class:`IngestError`, naming the last errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from geopile.atomic import write_bytes
from geopile.imagestats import BadImage
from geopile.records import (
    PART_SCHEMA,
    RECORD_SCHEMA,
    REJECT_SCHEMA,
    records_path,
    rejects_path,
    to_table,
    write_table_atomic,
)
from geopile.sources.base import Candidate, Processed, Source
from geopile.urls import redact

log = logging.getLogger(__name__)

# ``max_error_fraction`` is enforced only once this many candidates have failed in a run: the
# first few failures (one missing tile early on) must not stop a run on a small sample.
MIN_ERRORS_FOR_LIMIT = 20
LAST_ERRORS_SHOWN = 3


class IngestError(RuntimeError):
    """Too many of a source's candidates could not be read: a systemic fault, not bad samples."""


@dataclass
class IngestSummary:
    """What one ingest produced, for the CLI's table and the benchmark."""

    source: str
    images: int
    rejects: int
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    processed_now: int = 0  # candidates decided in this run (not resumed from a checkpoint)

    @property
    def rate(self) -> float:
        """Candidates decided per second in this run."""
        return self.processed_now / self.seconds if self.seconds else 0.0


_WORKER: Source | None = None


def _init_worker(source: Source) -> None:
    global _WORKER
    _WORKER = source


def _decide(cand: Candidate) -> tuple[Candidate, Processed | None, str | None, bool]:
    """Run one candidate; a bad input becomes a (redacted) reason, never an exception.

    The last element tells a *failure* (the input could not be read: an ``OSError`` such as
    :class:`geopile.cog.CogReadError`, or an unexpected ``ValueError``) from a sample the source
    turned down on its content (:class:`BadImage`); only failures count against
    ``max_error_fraction``.
    """
    assert _WORKER is not None
    try:
        return cand, _WORKER.process(cand), None, False
    except BadImage as err:
        return cand, None, redact(str(err)), False
    except (OSError, ValueError) as err:  # unreadable file or window, odd TIFF tags, ...
        return cand, None, redact(f"{type(err).__name__}: {err}"), True


def _chunks(items: Iterable[Candidate], n: int) -> Iterator[list[Candidate]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


# source params that do not change what ingest decides
_NOT_DECISIVE = {"workers", "enabled", "role", "retries", "max_error_fraction"}


def _error_limit(source: Source) -> float | None:
    """``max_error_fraction`` of the source's params (validated by the schema); None: no limit."""
    value = source.ctx.params.get("max_error_fraction")
    return None if value is None else float(value)


def _over_limit(errors: int, decided: int, limit: float) -> bool:
    return errors >= MIN_ERRORS_FOR_LIMIT and errors > limit * decided


def _too_many_errors(name: str, errors: int, decided: int, limit: float,
                     last: Iterable[str]) -> IngestError:
    shown = "\n  ".join(last)
    return IngestError(
        f"{name}: {errors} of {decided} candidates tried in this run ({errors / decided:.1%}) "
        f"could not be read, more than sources.{name}.max_error_fraction = {limit:g}. "
        f"Last errors:\n  {shown}\n"
        f"Check the network, the credentials or signer (sources.{name}.signer for NAIP) and that "
        f"the source's URLs are current, then rerun: what was decided is kept and the failed "
        f"candidates are retried. To accept more failures, raise "
        f"sources.{name}.max_error_fraction."
    )


class _Checkpoint:
    """Outcomes decided so far, and the part files they are flushed to."""

    def __init__(self, parts_dir: Path, fingerprint: str) -> None:
        self.dir = parts_dir
        # parts decided under other parameters are not this run's: start over
        stamp = parts_dir / "params.sha256"
        if parts_dir.is_dir() and (not stamp.exists() or stamp.read_text() != fingerprint):
            shutil.rmtree(parts_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
        existing = sorted(self.dir.glob("part-*.parquet"))
        self.next_part = len(existing)
        self.done: set[str] = set()
        for part in existing:
            self.done.update(pq.read_table(part, columns=["key"])["key"].to_pylist())
        self.buffer: list[dict] = []

    def add(self, row: dict) -> None:
        self.done.add(row["key"])
        self.buffer.append(row)

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"part-{self.next_part:06d}.parquet"
        write_table_atomic(to_table(self.buffer, PART_SCHEMA), self.dir / name)
        self.next_part += 1
        self.buffer = []

    def table(self) -> pa.Table:
        parts = sorted(self.dir.glob("part-*.parquet"))
        if not parts:
            return PART_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(p, schema=PART_SCHEMA) for p in parts])


def ingest(
    source: Source,
    *,
    workers: int = 2,
    chunk_size: int = 64,
    flush_every: int = 512,
    progress: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
) -> IngestSummary:
    """Fetch ``source``, decide every candidate, and write its records and rejects atomically.

    ``engine="ray"`` decides the candidates as Ray tasks on the cluster at ``ray_address``
    (:class:`geopile.cluster.RayMapper`); everything else, and so every byte written, stays as
    with the local pool.
    """
    ctx = source.ctx
    started = time.perf_counter()
    source.fetch()
    decisive = {k: v for k, v in ctx.params.items() if k not in _NOT_DECISIVE}
    fingerprint = hashlib.sha256(
        # the input's identity too: a run killed before the archive changed must not resume
        # into records of the new one
        json.dumps([decisive, ctx.seed, source.input_id], sort_keys=True, default=str).encode()
    ).hexdigest()
    quotas = source.quotas()
    if quotas is not None and sum(quotas.values()) < 1:
        # checked by the params schema too; here because this driver deletes raw files
        raise IngestError(f"{ctx.name}: the quotas ask for no image at all ({dict(quotas)}): "
                          f"check sources.{ctx.name}.count; earlier records were left as they are")
    parts = _Checkpoint(ctx.data_dir / "records" / ".parts" / ctx.name, fingerprint)
    accepted: Counter[str] = Counter()
    if quotas is not None:  # strata already filled by a previous, killed run
        done = parts.table()
        kept = done.filter(pc.is_null(done["reject_reason"]))
        accepted.update(kept["stratum"].to_pylist())
    candidates: Iterable[Candidate] = source.candidates()
    if quotas is None:
        candidates = list(candidates)
        _refuse_shared_keys(ctx.name, candidates)
        total, initial = len(candidates), len(parts.done)
    else:
        total, initial = sum(quotas.values()), sum(accepted.values())
    pool_cls: type[Executor] = (
        ThreadPoolExecutor if source.executor == "thread" else ProcessPoolExecutor
    )
    pool_kw = (
        {} if source.executor == "thread" else {"initializer": _init_worker, "initargs": (source,)}
    )
    _init_worker(source)  # threads share this module's global
    limit = _error_limit(source)
    decided_now = 0
    failed: list[dict] = []  # checkpointed only when the run completes: a rerun retries them
    last_errors: deque[str] = deque(maxlen=LAST_ERRORS_SHOWN)
    stop: IngestError | None = None
    bar = tqdm(
        total=total, initial=initial, desc=f"ingest {ctx.name}", unit="img", disable=not progress
    )
    if engine == "ray":
        from geopile.cluster import RayMapper

        mapper = RayMapper(source, ray_address, threads=max(1, workers))
        pool_cls, pool_kw, workers = ThreadPoolExecutor, {}, 1  # the pool below stays idle
    with pool_cls(max_workers=max(1, workers), **pool_kw) as pool:
        map_ordered = mapper.map if engine == "ray" else lambda c: pool.map(_decide, c)
        for chunk in _chunks(_todo(candidates, parts.done, quotas, accepted), chunk_size):
            for cand, result, reason, unreadable in map_ordered(chunk):
                if quotas is not None:
                    if accepted[cand.stratum] >= quotas[cand.stratum]:
                        continue  # a surplus draw of a stratum filled earlier in this chunk
                decided_now += 1
                if result is not None:
                    if result.payload is not None:
                        write_bytes(ctx.data_dir / result.row["path"], result.payload)
                    parts.add(
                        {**result.row, "key": cand.key, "source": ctx.name, "stratum": cand.stratum}
                    )
                    if quotas is not None:
                        accepted[cand.stratum] += 1
                    bar.update(1)
                else:
                    row = {
                        **cand.fields,
                        "key": cand.key,
                        "source": ctx.name,
                        "stratum": cand.stratum,
                        "nbytes": None,
                        "reject_reason": reason,
                    }
                    if unreadable:
                        failed.append(row)
                        last_errors.append(f"{cand.key}: {reason}")
                        if limit is not None and _over_limit(len(failed), decided_now, limit):
                            stop = _too_many_errors(
                                ctx.name, len(failed), decided_now, limit, last_errors
                            )
                            break
                    else:
                        parts.add(row)
                    if quotas is None:
                        bar.update(1)
                if len(parts.buffer) >= flush_every:
                    parts.flush()
            if stop is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # not the rest of the chunk
                break
            if quotas is not None and all(accepted[s] >= q for s, q in quotas.items()):
                break
    if stop is None:
        if failed:
            log.warning(
                "%s: %d of %d candidates could not be read (%.1f%%); they are rejects, with their "
                "reasons, in %s",
                ctx.name, len(failed), decided_now, 100 * len(failed) / decided_now,
                rejects_path(ctx.data_dir, ctx.name),
            )
        for row in failed:
            parts.add(row)
    parts.flush()
    bar.close()
    if stop is not None:
        raise stop
    if quotas is not None:
        for stratum, quota in quotas.items():
            if accepted[stratum] < quota:
                log.warning(
                    "%s: stratum %s filled %d of %d (raise max_draws_factor or relax "
                    "max_nodata / min_entropy)",
                    ctx.name,
                    stratum,
                    accepted[stratum],
                    quota,
                )
    _refuse_emptying(parts, ctx.data_dir, ctx.name)
    summary = _finish(parts, ctx.data_dir, ctx.name)
    if source.writes_raw_dir:
        _prune(ctx.raw_dir, ctx.data_dir, records_path(ctx.data_dir, ctx.name))
    summary.seconds = time.perf_counter() - started
    summary.processed_now = decided_now
    return summary


def _refuse_shared_keys(name: str, candidates: list[Candidate]) -> None:
    """Stop before any work when two inputs would share a key: one would be lost silently."""
    seen: dict[str, Candidate] = {}
    shared: list[str] = []
    for cand in candidates:
        if cand.key in seen:
            first = seen[cand.key]
            shared.append(f"{cand.key}: {first.fields.get('origin') or first.path} and "
                          f"{cand.fields.get('origin') or cand.path}")
        else:
            seen[cand.key] = cand
    if shared:
        listed = "; ".join(shared[:10]) + (f"; and {len(shared) - 10} more" if len(shared) > 10
                                           else "")
        raise IngestError(f"{name}: {len(shared)} inputs share a sample key with another, so "
                          f"their images would be lost: {listed}; rename them (keys come from "
                          "file names, see README 'What ingest records')")


def _todo(
    candidates: Iterable[Candidate],
    done: set[str],
    quotas: dict[str, int] | None,
    accepted: Counter,
) -> Iterator[Candidate]:
    for cand in candidates:
        if cand.key in done:
            continue
        if quotas is not None and accepted[cand.stratum] >= quotas[cand.stratum]:
            continue
        yield cand


def _prune(raw_dir: Path, data_dir: Path, records: Path) -> None:
    """Delete payloads no record points to (left by a run under other parameters)."""
    kept = {data_dir / p for p in pq.read_table(records, columns=["path"])["path"].to_pylist()}
    for path in sorted(raw_dir.rglob("*"), reverse=True):
        if path.is_file() and path not in kept:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _refuse_emptying(parts: _Checkpoint, data_dir: Path, name: str) -> None:
    """Stop before a run that kept nothing replaces earlier records (and prunes their files).

    No valid setting keeps zero images; a run that does is a mistake (a filter that rejects
    everything, an input that changed to nothing), and overwriting would destroy earlier output.
    """
    done = parts.table()
    kept = done.filter(pc.is_null(done["reject_reason"])).num_rows if done.num_rows else 0
    earlier = records_path(data_dir, name)
    if kept == 0 and earlier.exists() and pq.read_metadata(earlier).num_rows > 0:
        raise IngestError(
            f"{name}: this run kept no image ({done.num_rows} rejected), but {earlier} holds "
            f"{pq.read_metadata(earlier).num_rows} records from an earlier run: refusing to "
            "replace them. Check the source's parameters and input; to start over on purpose, "
            f"delete {earlier} first")


def _finish(parts: _Checkpoint, data_dir: Path, name: str) -> IngestSummary:
    """Sort the decided outcomes by key, split records from rejects, write both, drop parts."""
    table = parts.table()
    table = table.sort_by("key")
    is_reject = pc.invert(pc.is_null(table["reject_reason"]))
    records = table.filter(pc.invert(is_reject)).select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
    rejects = table.filter(is_reject)
    rejects = pa.table(
        {
            "key": rejects["key"],
            "source": rejects["source"],
            "origin": rejects["origin"],
            "nbytes": rejects["nbytes"],
            "reason": rejects["reject_reason"],
        },
        schema=REJECT_SCHEMA,
    )
    write_table_atomic(records, records_path(data_dir, name))
    write_table_atomic(rejects, rejects_path(data_dir, name))
    shutil.rmtree(parts.dir)
    reasons = Counter(r.split(":")[0] for r in rejects["reason"].to_pylist())
    return IngestSummary(name, records.num_rows, rejects.num_rows, dict(reasons))
