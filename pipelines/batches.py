"""Where a run's batches come from, resumably: the engine's :class:`~pipelines.engine.Resumable`.

:class:`EpochBatches` (classification: one seeded permutation per epoch, as torch's
``RandomSampler``), :class:`StreamBatches` (dense tasks: one stream of permutations, as
mmsegmentation's ``InfiniteSampler``) and :class:`Endless` (the GeoPile stream's own loader,
epoch after epoch). Each says where the next batch comes from and goes back there.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.engine import Dist


class EpochBatches:
    """Endless batches of a map-style dataset: one seeded permutation per epoch, resumable.

    Each epoch draws ``torch.randperm`` from one persistent generator, as torch's
    ``RandomSampler`` does (so a single process sees exactly its order), and each rank takes
    every ``world``-th index of it, ``len // world`` each; batches that do not fill up are
    dropped. The position is (the generator's state when the epoch began, the epoch, the
    batches of it consumed): enough to rebuild the epoch and skip what was trained on, so a
    resumed run sees the same batches as one never stopped. Counted by consumed batches, not
    by the sampler, which the ``DataLoader`` runs ahead of the training loop.
    """

    def __init__(self, dataset: Dataset, batch_size: int, where: Dist, seed: int,
                 workers: int = 0) -> None:
        self.dataset, self.batch_size, self.where = dataset, batch_size, where
        self.workers = workers
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.consumed = 0, 0
        self.epoch_start = self.generator.get_state()
        if len(self) < 1:
            raise ValueError(f"{len(dataset)} training samples make no batch of {batch_size} on "
                             f"each of {where.world} processes: use a smaller batch_size")

    def __len__(self) -> int:
        """Batches per epoch on each rank."""
        return len(self.dataset) // self.where.world // self.batch_size

    def _indices(self) -> list[int]:
        self.generator.set_state(self.epoch_start)
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        # RandomSampler draws a second permutation at the end of every pass (for the remainder
        # of num_samples, empty here): drawn too, a single process sees torch's very order
        torch.randperm(len(self.dataset), generator=self.generator)
        share = len(order) // self.where.world
        return order[self.where.rank::self.where.world][:share]

    def __iter__(self) -> Iterator[Any]:
        while True:
            mine = self._indices()[:len(self) * self.batch_size]
            skip = self.consumed * self.batch_size
            if skip < len(mine):  # (a run saved at an epoch's end resumes with the next)
                loader = DataLoader(self.dataset, batch_size=self.batch_size,
                                    sampler=mine[skip:], num_workers=self.workers)
                for batch in loader:
                    self.consumed += 1
                    yield batch
            self.epoch, self.consumed = self.epoch + 1, 0
            self.epoch_start = self.generator.get_state()

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from."""
        return {"generator": self.epoch_start, "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of a run with the same dataset, batch and world size)."""
        self.epoch_start, self.epoch = state["generator"], state["epoch"]
        self.consumed = state["consumed"]


class StreamBatches:
    """Endless batches from one stream of permutations, as mmseg's ``InfiniteSampler`` draws.

    Stream position ``k`` is image ``perm(k // n)[k % n]``, each permutation seeded by (seed,
    pass); rank ``r`` takes positions ``r, r + world, ...``, and a batch may span two passes,
    so no image is dropped however few there are (OSCD trains on 14 with batches of 8). The
    dataset receives ``(position, index)`` and seeds its augmentations with the position, and
    the loader's workers are seeded apart from the global RNG: the position (samples consumed
    on this rank) is the whole state, and a resumed run is exact with any number of workers.
    """

    def __init__(self, dataset: Dataset, batch_size: int, where: Dist, seed: int,
                 workers: int = 0) -> None:
        self.dataset, self.batch_size, self.where = dataset, batch_size, where
        self.workers, self.seed, self.consumed = workers, seed, 0

    def __len__(self) -> int:
        """Batches per pass over the images on each rank (at least one)."""
        return max(1, len(self.dataset) // (self.where.world * self.batch_size))

    def _positions(self, start: int) -> Iterator[tuple[int, int]]:
        n, world, rank = len(self.dataset), self.where.world, self.where.rank
        cached: tuple[int, list[int]] = (-1, [])
        for mine in count(start):
            k = mine * world + rank
            if k // n != cached[0]:
                order = torch.Generator().manual_seed(self.seed * 1_000_003 + k // n)
                cached = (k // n, torch.randperm(n, generator=order).tolist())
            yield k, cached[1][k % n]

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(self.dataset, batch_size=self.batch_size,
                            sampler=self._positions(self.consumed),
                            num_workers=self.workers,
                            generator=torch.Generator().manual_seed(self.seed))
        for batch in loader:
            self.consumed += self.batch_size
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Samples consumed on this rank."""
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state["consumed"]`` samples."""
        self.consumed = state["consumed"]


class Endless:
    """A resumable loader that ends each epoch (the GeoPile stream) as endless batches."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield from self.loader

    def state_dict(self) -> dict[str, Any]:
        """The loader's own position."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the loader from ``state``."""
        self.loader.load_state_dict(state)
