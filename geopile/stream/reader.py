"""One rank's stream of a build: its plan per epoch, and each worker's samples read and checked.

Every sample is checked against its xxh3-64 in the index as it is read (local and S3 alike): a
sample whose bytes changed since the build is set aside like an unreadable one, and a shard with
more than ``max_bad_per_shard`` such samples stops the run (:class:`StreamError`).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from geopile.stream.index import INDEX, StreamError
from geopile.stream.index import fix_hint as _fix
from geopile.stream.plan import (
    Leg,
    StreamConfig,
    blocks_of,
    epoch_order,
    rank_batches,
    sample_refs,
    worker_part,
)
from geopile.stream.storage import LocalStorage, open_storage, storage_for
from geopile.stream.tar import parse_members

log = logging.getLogger(__name__)
AUDIT_BYTES = 32 << 20  # a damaged shard is re-checked whole, this many bytes a read
_warned_unverified: set[str] = set()  # builds already reported as unverified (once a process)


@dataclass
class RawSample:
    """One sample as read: its place in the build and the epoch, its key and its members."""

    index: int  # into the build's samples: with the epoch, it seeds the augmentation
    epoch: int
    key: str
    members: dict[str, bytes | memoryview]  # none when unreadable or failing its xxh3
    error: str = ""  # why ``members`` is empty


class ShardStream:
    """One rank's view of a build: its plan per epoch, and the samples of one worker."""

    def __init__(self, url: str, config: StreamConfig, *, rank: int = 0, world: int = 1,
                 cache_dir: str | Path | None = None, cache_bytes: int = 0) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.url, self.config, self.rank, self.world = url, config, rank, world
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes
        self.storage, self.index = open_storage(url, cache_dir, cache_bytes)
        self.refs = sample_refs(self.index)
        self.block_ids = blocks_of(self.refs, config.block)
        shard_of = np.fromiter((r.shard for r in self.refs), np.int64, len(self.refs))
        self.shard_bounds = np.searchsorted(shard_of, np.arange(len(self.index["shards"]) + 1))
        self.bad: dict[int, int] = {}  # shard -> samples failing their xxh3 (once audited)
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's order
        if config.verify and any(r.xxh3 is None for r in self.refs) \
                and url not in _warned_unverified:
            _warned_unverified.add(url)
            log.warning("%s has no per-sample checksums (written before they existed): its "
                        "samples stream unverified; %s to verify them",
                        self.storage.where(INDEX), _fix(url))

    def __getstate__(self) -> dict[str, Any]:
        # storage objects hold clients and locks: rebuild them in each worker process
        state = self.__dict__.copy()
        state.pop("storage")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # the index travels validated: a worker does not re-read it
        self.storage = storage_for(self.url, self.cache_dir, self.cache_bytes, self.index)

    def batches_per_epoch(self) -> int:
        """Batches this rank delivers in a whole epoch (the same for any number of workers)."""
        return rank_batches(len(self.refs), self.config, self.world)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of the build's samples (the same on every rank and worker)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.block_ids, self.config, epoch))
        return self._order[1]

    def worker_indices(self, leg: Leg, worker: int = 0, workers: int = 1) -> np.ndarray:
        """The samples (indices into ``refs``) that ``worker`` of this rank delivers in ``leg``."""
        part = worker_part(leg.positions(), self.config, self.rank, self.world, worker, workers)
        return self.order(leg.epoch)[part]

    def samples(self, epoch: int, worker: int = 0, workers: int = 1,
                leg: Leg | None = None) -> Iterator[RawSample]:
        """The worker's samples of an epoch (or of what ``leg`` still owes of it)."""
        leg = leg or Leg.whole(epoch, len(self.refs))
        return self.read(self.worker_indices(leg, worker, workers), leg.epoch)

    def _read_group(self, indices: list[int]) -> list[memoryview]:
        """One ranged read over samples of one block; split into per-sample bytes."""
        refs = [self.refs[i] for i in indices]
        name = self.index["shards"][refs[0].shard]["name"]
        lo, hi = min(r.start for r in refs), max(r.end for r in refs)
        data = memoryview(self.storage.read_range(name, lo, hi))  # slices, not copies
        return [data[r.start - lo:r.end - lo] for r in refs]

    def _audit(self, shard: int) -> None:
        """Count the shard's samples that fail their xxh3; too many is a :class:`StreamError`.

        Runs once per shard and process, at the first bad sample met, over the whole shard: the
        verdict is then the same whichever rank, worker or epoch meets the damage first.
        """
        if shard not in self.bad:
            first, stop = int(self.shard_bounds[shard]), int(self.shard_bounds[shard + 1])
            bad, i = 0, first
            while i < stop:
                j = i + 1
                while j < stop and self.refs[j].end - self.refs[i].start <= AUDIT_BYTES:
                    j += 1
                for ref, blob in zip(self.refs[i:j], self._read_group(list(range(i, j))),
                                     strict=True):
                    bad += int(xxhash.xxh3_64_hexdigest(blob) != ref.xxh3)
                i = j
            self.bad[shard] = bad
        meta = self.index["shards"][shard]
        if self.bad[shard] > self.config.max_bad_per_shard:
            raise StreamError(
                f"{self.storage.where(meta['name'])}: {self.bad[shard]} of {len(meta['keys'])} "
                f"samples fail their xxh3 checksum, more than max_bad_per_shard="
                f"{self.config.max_bad_per_shard}: the shard is damaged; {_fix(self.url)}")

    def _unpack(self, i: int, blob: memoryview,
                want: tuple[str, ...] | None) -> tuple[dict[str, bytes | memoryview], str]:
        """A sample's members, or none and why: its bytes changed, or do not parse."""
        ref = self.refs[i]
        checked = self.config.verify and ref.xxh3 is not None
        if checked:
            digest = xxhash.xxh3_64_hexdigest(blob)
            if digest != ref.xxh3:
                self._audit(ref.shard)  # raises when the shard has too many
                return {}, (f"its bytes have xxh3 {digest}, index.json says {ref.xxh3} "
                            f"(changed since the build)")
        try:
            return parse_members(blob, want, trusted=checked), ""
        except (tarfile.TarError, IndexError, EOFError, KeyError) as err:
            return {}, f"unparsable tar member ({err})"

    def read(self, indices: np.ndarray, epoch: int,
             want: tuple[str, ...] | None = None) -> Iterator[RawSample]:
        """The samples ``indices`` in that order (``want``: only up to these members).

        They are read a chunk (``window x block`` samples) at a time: the samples of a chunk
        that share a block come in one ranged read, and the next chunk's reads are in flight
        while this one is consumed. A sample that fails its xxh3 or does not parse comes with
        no members and an ``error`` (the caller substitutes it); a shard with more than
        ``max_bad_per_shard`` failing samples raises :class:`StreamError`.
        """
        size = self.config.window * self.config.block
        chunks = [indices[i:i + size] for i in range(0, len(indices), size)]
        # local files come from the page cache: threads would only add GIL hand-offs
        threads = 0 if isinstance(self.storage, LocalStorage) else self.config.read_ahead
        with ThreadPoolExecutor(max(1, threads)) as pool:

            def submit(chunk: np.ndarray) -> dict[int, tuple[Future, list[int]]]:
                groups: dict[int, list[int]] = {}
                for i in chunk.tolist():
                    groups.setdefault(int(self.block_ids[i]), []).append(i)
                reads = {}
                for members in groups.values():
                    if threads:
                        future = pool.submit(self._read_group, members)
                    else:
                        future = Future()
                        future.set_result(self._read_group(members))
                    reads.update({i: (future, members) for i in members})
                return reads

            ahead = submit(chunks[0]) if chunks else {}
            for c, chunk in enumerate(chunks):
                current, ahead = ahead, (submit(chunks[c + 1]) if c + 1 < len(chunks) else {})
                blobs: dict[int, bytes] = {}
                for i in chunk.tolist():
                    if i not in blobs:
                        future, members = current[i]
                        blobs.update(zip(members, future.result(), strict=True))  # StreamError
                    parsed, error = self._unpack(i, blobs.pop(i), want)
                    if error:
                        shard = self.index["shards"][self.refs[i].shard]["name"]
                        error = f"{self.storage.where(shard)}: {error}"
                    yield RawSample(i, epoch, self.refs[i].key, parsed, error)
