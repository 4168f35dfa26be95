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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from geopile.engines import LocalMapper, Mapper
from geopile.imagestats import BadImage
from geopile.payloads import LocalPayloads, stage_inputs
from geopile.records import (
    PART_SCHEMA,
    RECORD_SCHEMA,
    REJECT_SCHEMA,
    records_path,
    rejects_path,
    to_table,
    write_table_atomic,
)
from geopile.sources.base import Candidate, Processed, Refused, Source
from geopile.urls import redact

log = logging.getLogger(__name__)

# ``max_error_fraction`` is enforced only once this many candidates have failed in a run: the
# first few failures (one missing tile early on) must not stop a run on a small sample.
MIN_ERRORS_FOR_LIMIT = 20
LAST_ERRORS_SHOWN = 3


# (result, reason, failure): failure is None (read, or turned down on its content),
# "network" (the network or the server) or "input" (the file itself: not a GeoTIFF, a window
# outside it), so that a stop gives the advice that fits. The candidate does not travel back:
# the driver has it (mappers keep the order), and a STAC candidate carries its whole item
# (bench/driver_bytes.py: 7.7 KB of the 8.9 KB of metadata a Sentinel-2 outcome sent).
Outcome = tuple[Processed | None, str | None, str | None]


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


def decide(source: Source, cand: Candidate) -> Outcome:
    """Run one candidate; a bad input becomes a (redacted) reason, never an exception.

    What every engine's workers call (:mod:`geopile.engines`). A payload the source made
    (a NAIP window, a STAC patch) is written to the payload store here, by the worker, under its
    deterministic name; the driver gets the record row alone. A store that cannot be written
    (a full disk, S3 refusing) stops the run: that is no candidate's fault. The last element tells a
    *failure* (the input could not be read: an ``OSError`` such as
    :class:`geopile.cog.CogReadError`, or an unexpected ``ValueError``) from a sample the source
    turned down on its content (:class:`BadImage`); only failures count against
    ``max_error_fraction``.
    """
    try:
        result = source.process(cand)
    except BadImage as err:
        return None, redact(str(err)), None
    except (OSError, ValueError) as err:  # unreadable file or window, odd TIFF tags, ...
        network = isinstance(err, OSError) and getattr(err, "network", True)
        return None, redact(f"{type(err).__name__}: {err}"), "network" if network else "input"
    if result.payload is not None:  # written here, by the worker: only facts go back
        source.ctx.store.write(result.row["path"], result.payload)
        result = Processed(result.row)
    return result, None, None


def _chunks(items: Iterable[Candidate], n: int) -> Iterator[list[Candidate]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


# source params that do not change what ingest decides
_NOT_DECISIVE = {"workers", "enabled", "role", "retries", "max_error_fraction"}


def _over_limit(errors: int, decided: int, limit: float) -> bool:
    return errors >= MIN_ERRORS_FOR_LIMIT and errors > limit * decided


def _too_many_errors(name: str, errors: int, decided: int, limit: float,
                     last: Iterable[str], network: bool) -> IngestError:
    shown = "\n  ".join(last)
    check = (f"Check the network, the credentials or signer (sources.{name}.signer) and that "
             f"the source's URLs are current" if network else
             "The files are not what the catalog says of them (the errors above quote GDAL: a "
             "window outside the file, not a GeoTIFF, ...): no retry will help; check the "
             f"catalog's items (geopile stac inspect {name}) and sources.{name}'s assets")
    return IngestError(
        f"{name}: {errors} of {decided} candidates tried in this run ({errors / decided:.1%}) "
        f"could not be read, more than sources.{name}.max_error_fraction = {limit:g}. "
        f"Last errors:\n  {shown}\n"
        f"{check}, then rerun: what was decided is kept and the failed "
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


def _fingerprint(source: Source) -> str:
    """What a checkpoint was decided under: the decisive params, the seed and the input."""
    ctx = source.ctx
    given = ctx.settings.model_dump(mode="json", exclude_unset=True)
    decisive = {k: v for k, v in given.items() if k not in _NOT_DECISIVE}
    # the input's identity too: a run killed before the archive changed must not resume into
    # records of the new one; and where its payloads went, when not the data directory (a run
    # resumed onto another store would record payloads that store lacks)
    facts: list[Any] = [decisive, ctx.seed, source.input_id]
    if ctx.store != LocalPayloads(ctx.data_dir):
        facts.append(str(ctx.store))
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class _Tally:
    """One run's decisions so far: accepted per stratum, failures, when to stop."""

    name: str
    quotas: Mapping[str, int] | None
    limit: float | None
    accepted: Counter[str] = field(default_factory=Counter)
    failed: list[dict] = field(default_factory=list)  # checkpointed only when the run completes
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_ERRORS_SHOWN))
    decided: int = 0
    network: int = 0  # failures whose cause is the network or the server
    stop: IngestError | None = None

    def surplus(self, cand: Candidate) -> bool:
        """A draw of a stratum filled earlier in its chunk."""
        return self.quotas is not None and self.accepted[cand.stratum] >= self.quotas[cand.stratum]

    def full(self) -> bool:
        """Every stratum has its quota."""
        return self.quotas is not None and all(self.accepted[s] >= q
                                               for s, q in self.quotas.items())

    def fail(self, row: dict[str, Any], key: str, reason: str | None, failure: str) -> None:
        """An unreadable candidate; past ``max_error_fraction`` the run stops."""
        self.failed.append(row)
        self.last_errors.append(f"{key}: {reason}")
        self.network += failure == "network"
        if self.limit is not None and _over_limit(len(self.failed), self.decided, self.limit):
            self.stop = _too_many_errors(self.name, len(self.failed), self.decided, self.limit,
                                         self.last_errors, network=self.network > 0)


def _record(cand: Candidate, outcome: Outcome, source: Source, parts: _Checkpoint,
            tally: _Tally, bar: tqdm) -> None:
    """Checkpoint one decided candidate (its worker wrote its payload already)."""
    result, reason, failure = outcome
    ctx = source.ctx
    tally.decided += 1
    if result is not None:
        parts.add({**result.row, "key": cand.key, "source": ctx.name, "stratum": cand.stratum})
        if tally.quotas is not None:
            tally.accepted[cand.stratum] += 1
        bar.update(1)
        return
    row = {**cand.fields, "key": cand.key, "source": ctx.name, "stratum": cand.stratum,
           "nbytes": None, "reject_reason": reason}
    if failure:
        tally.fail(row, cand.key, reason, failure)
    else:
        parts.add(row)
    if tally.quotas is None:
        bar.update(1)


def ingest(
    source: Source,
    *,
    mapper: Mapper | None = None,
    workers: int = 2,
    chunk_size: int | None = None,
    flush_every: int = 512,
    progress: bool = True,
) -> IngestSummary:
    """Fetch ``source``, decide every candidate, and write its records and rejects atomically.

    The candidates are decided by ``mapper`` (:mod:`geopile.engines`: a pool here, or Ray tasks;
    default a :class:`~geopile.engines.LocalMapper` of ``workers``), a chunk at a time; every
    decision about them stays here, so every byte written is the same whichever mapper ran.
    """
    ctx = source.ctx
    started = time.perf_counter()
    source.fetch()
    quotas = source.quotas()
    if quotas is not None and sum(quotas.values()) < 1:
        # checked by the params schema too; here because this driver deletes raw files
        raise IngestError(f"{ctx.name}: the quotas ask for no image at all ({dict(quotas)}): "
                          f"check sources.{ctx.name}.count; earlier records were left as they are")
    parts = _Checkpoint(ctx.data_dir / "records" / ".parts" / ctx.name, _fingerprint(source))
    tally = _Tally(ctx.name, quotas, source.settings.max_error_fraction)
    if quotas is not None:  # strata already filled by a previous, killed run
        done = parts.table()
        tally.accepted.update(done.filter(pc.is_null(done["reject_reason"]))["stratum"]
                              .to_pylist())
    for row in source.skipped():  # found, never tried: rejects with their reasons
        if row["key"] not in parts.done:
            parts.add({**row, "source": ctx.name, "nbytes": None})
    candidates: Iterable[Candidate] = source.candidates()
    if quotas is None:
        candidates = list(candidates)
        _refuse_shared_keys(ctx.name, candidates)
        _stage(source, candidates)
        total, initial = len(candidates), len(parts.done)
    else:
        total, initial = sum(quotas.values()), sum(tally.accepted.values())
    own = mapper is None
    mapper = mapper or LocalMapper(workers)
    # candidates in flight between two of the driver's barriers: enough for every CPU of a
    # cluster (64 alone would leave 192 of 256 idle); the bytes do not depend on it
    chunk_size = chunk_size or max(64, 4 * mapper.cpus())
    bar = tqdm(total=total, initial=initial, desc=f"ingest {ctx.name}", unit="img",
               disable=not progress)
    try:
        for chunk in _chunks(_todo(candidates, parts.done, quotas, tally.accepted), chunk_size):
            outcomes = mapper.map(decide, chunk, source, io_bound=source.executor == "thread")
            for cand, outcome in zip(chunk, outcomes, strict=False):  # a stop leaves some
                if not tally.surplus(cand):
                    _record(cand, outcome, source, parts, tally, bar)
                if tally.stop is not None:
                    break
                if len(parts.buffer) >= flush_every:
                    parts.flush()
            if tally.stop is not None or tally.full():
                break
    finally:
        if own or tally.stop is not None:
            mapper.close()  # (a stop cancels the rest of the chunk)
    _end_run(tally, parts, ctx)
    bar.close()
    summary = _finish(parts, ctx.data_dir, ctx.name)
    if source.writes_raw_dir:
        _prune(source, records_path(ctx.data_dir, ctx.name))
    summary.seconds = time.perf_counter() - started
    summary.processed_now = tally.decided
    return summary


def _end_run(tally: _Tally, parts: _Checkpoint, ctx: Any) -> None:
    """Keep the failures (a completed run), warn about short strata, refuse emptying output."""
    if tally.stop is None:
        if tally.failed:
            log.warning(
                "%s: %d of %d candidates could not be read (%.1f%%); they are rejects, with their "
                "reasons, in %s", ctx.name, len(tally.failed), tally.decided,
                100 * len(tally.failed) / tally.decided, rejects_path(ctx.data_dir, ctx.name))
        for row in tally.failed:
            parts.add(row)
    parts.flush()
    if tally.stop is not None:
        raise tally.stop
    for stratum, quota in (tally.quotas or {}).items():
        if tally.accepted[stratum] < quota:
            log.warning("%s: stratum %s filled %d of %d (raise max_draws_factor or relax "
                        "max_nodata / min_entropy)", ctx.name, stratum,
                        tally.accepted[stratum], quota)
    _refuse_emptying(parts, ctx.data_dir, ctx.name)


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


def _stage(source: Source, candidates: list[Candidate]) -> None:
    """Put the files ``fetch`` installed here into the payload store, for workers elsewhere."""
    names = [c.path for c in candidates if c.path and not isinstance(c.task, Refused)]
    sent = stage_inputs(source.ctx.store, source.ctx.data_dir, names,
                        progress=source.ctx.progress, desc=f"stage {source.ctx.name}")
    if sent:
        log.info("%s: sent %d of %d input files to %s", source.ctx.name, sent, len(names),
                 source.ctx.store)


def _prune(source: Source, records: Path) -> None:
    """Delete payloads no record points to (a run under other parameters, a surplus draw)."""
    kept = set(pq.read_table(records, columns=["path"])["path"].to_pylist())
    source.ctx.store.prune(f"raw/{source.ctx.name}", kept)


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
