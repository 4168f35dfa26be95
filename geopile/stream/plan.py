"""The epoch plan: which samples each rank and worker delivers, from the index alone.

No byte is read here. The order depends on the seed and the epoch, never on how many ranks or
workers read it, so a checkpoint's per-worker counts say exactly what was delivered
(:func:`undelivered`) and a resume with another layout deals out the rest (see the package).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: its shard, its byte range there, its key, its bytes' xxh3."""

    shard: int
    start: int
    end: int
    key: str
    xxh3: str | None = None  # hex xxh3-64 of bytes start..end; None: the index predates them


@dataclass(frozen=True)
class StreamConfig:
    """How to cut and shuffle an epoch."""

    seed: int = 0
    # 64 x 16 pools 1,024 samples as 16 x 64 did, in a quarter of the requests: from S3 each
    # costs about 0.9 ms of the reading core, a fifth of a 64-sample block's decoding
    # (bench/loader.py: (c)/(b) 0.83 with 16 x 64 and 4 threads, 0.94 with 64 x 16 and 8)
    block: int = 64  # samples per ranged read
    window: int = 16  # blocks pooled and shuffled together
    batch_size: int = 1
    remainder: str = "drop"  # or "pad"
    read_ahead: int = 8  # block reads in flight per worker (S3)
    verify: bool = True  # check every sample against its xxh3 in the index
    max_bad_per_shard: int = 3  # more samples of one shard failing their xxh3 stop the run

    def __post_init__(self) -> None:
        if self.remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {self.remainder!r}")
        if min(self.block, self.window, self.batch_size) < 1:
            raise ValueError("block, window and batch_size must be at least 1")
        if self.max_bad_per_shard < 0:
            raise ValueError(f"max_bad_per_shard must be 0 or more, got {self.max_bad_per_shard}")

def sample_refs(index: dict[str, Any]) -> list[SampleRef]:
    """Every sample of the build with its byte range and checksum, in shard order.

    A sample ends where the next begins; the last one of a shard runs to the end of the file
    (the tar's end blocks are harmless: parsing stops at them). This range is also what the
    writer hashed into the index's ``xxh3`` (:func:`geopile.shards.write_build`), so the reader
    checks exactly the bytes it reads.
    """
    refs = []
    for s, shard in enumerate(index["shards"]):
        ends = [*shard["offsets"][1:], shard["bytes"]]
        hashes = shard.get("xxh3") or [None] * len(shard["keys"])
        for key, start, end, digest in zip(shard["keys"], shard["offsets"], ends, hashes,
                                           strict=True):
            refs.append(SampleRef(s, start, end, key, digest))
    return refs


def blocks_of(refs: list[SampleRef], block: int) -> np.ndarray:
    """Block id per sample: runs of ``block`` consecutive samples of one shard."""
    ids = np.empty(len(refs), np.int64)
    current, start = -1, 0
    for i, ref in enumerate(refs):
        if i == 0 or ref.shard != refs[start].shard or i - start == block:
            current, start = current + 1, i
        ids[i] = current
    return ids


def epoch_order(block_ids: np.ndarray, config: StreamConfig, epoch: int) -> np.ndarray:
    """Sample indices for an epoch: blocks permuted, then samples permuted within windows."""
    rng = np.random.default_rng([config.seed, epoch])
    n_blocks = int(block_ids[-1]) + 1 if len(block_ids) else 0
    bounds = np.searchsorted(block_ids, np.arange(n_blocks + 1))
    perm = rng.permutation(n_blocks)
    out = []
    for w in range(0, n_blocks, config.window):
        pooled = np.concatenate([np.arange(bounds[b], bounds[b + 1])
                                 for b in perm[w:w + config.window]])
        out.append(pooled[rng.permutation(len(pooled))])
    return np.concatenate(out) if out else np.empty(0, np.int64)


Spans = tuple[tuple[int, int], ...]  # [start, end) runs of positions in an epoch's order


@dataclass(frozen=True)
class Leg:
    """What an epoch still owes, as runs of positions in its order (the whole order at first).

    A leg is dealt out for one layout (world size, workers); a resume with another layout
    starts a new leg from the positions the old one had not delivered (:func:`undelivered`).
    This is the whole of the elastic resume: the order never depends on the layout, so the
    positions delivered, and therefore those owed, are known from the per-worker counts alone.
    """

    epoch: int
    spans: Spans

    @classmethod
    def whole(cls, epoch: int, samples: int) -> Leg:
        """A fresh epoch of ``samples`` samples."""
        return cls(epoch, ((0, samples),) if samples else ())

    def positions(self) -> np.ndarray:
        """The owed positions, in order."""
        if not self.spans:
            return np.empty(0, np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.spans])


def spans_of(positions: np.ndarray) -> Spans:
    """Runs of consecutive positions (the compact form a checkpoint stores)."""
    if not len(positions):
        return ()
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(positions)]])
    return tuple((int(positions[a]), int(positions[b - 1]) + 1)
                 for a, b in zip(starts, ends, strict=True))


def rank_batches(owed: int, config: StreamConfig, world: int) -> int:
    """Batches per rank for ``owed`` samples: ranks get equal counts, whatever the workers.

    ``drop`` leaves out fewer than ``world x batch_size`` samples (the last of the order);
    ``pad`` wraps round to the leg's first samples instead.
    """
    unit = world * config.batch_size
    return owed // unit if config.remainder == "drop" else -(-owed // unit)


def rank_part(positions: np.ndarray, config: StreamConfig, rank: int, world: int) -> np.ndarray:
    """The rank's contiguous share of a leg's positions (whole blocks: few reads)."""
    per_rank = rank_batches(len(positions), config, world) * config.batch_size
    dealt = np.resize(positions, per_rank * world) if len(positions) else positions
    return dealt[rank * per_rank:(rank + 1) * per_rank]


def worker_batches(batches: int, worker: int, workers: int) -> range:
    """The batches (of a rank's share) that ``worker`` delivers: a contiguous run of them.

    Runs differ by at most one batch; torch's DataLoader takes the workers' batches in turn, and
    the trainer counts them per worker, so what was delivered is known for any interleaving.
    """
    k = max(1, workers)
    return range(worker * batches // k, (worker + 1) * batches // k)


def worker_part(positions: np.ndarray, config: StreamConfig, rank: int, world: int,
                worker: int, workers: int) -> np.ndarray:
    """The positions ``worker`` of ``rank`` delivers in a leg, in its delivery order."""
    mine = rank_part(positions, config, rank, world)
    run = worker_batches(len(mine) // config.batch_size, worker, workers)
    return mine[run.start * config.batch_size:run.stop * config.batch_size]


def undelivered(leg: Leg, config: StreamConfig, world: int, workers: int,
                taken: list[int]) -> Leg:
    """The rest of ``leg`` after every rank took ``taken[k]`` batches from worker ``k``.

    All ranks deal identical runs to their workers, so one rank's counts are every rank's.
    What the leg left out (the remainder under ``drop``) is owed too; padding repeats are not.
    """
    positions = leg.positions()
    delivered = []
    for rank in range(world):
        for worker, count in enumerate(taken):
            part = worker_part(positions, config, rank, world, worker, workers)
            delivered.append(part[:count * config.batch_size])
    done = np.concatenate(delivered) if delivered else np.empty(0, np.int64)
    return Leg(leg.epoch, spans_of(positions[~np.isin(positions, done)]))
