"""One training engine for every run: pretraining, classification and dense finetuning.

A caller builds its model, optimiser, scheduler and batches, then hands the engine a ``step``
(one batch in, a dict of scalar losses out, ``loss`` among them) and optionally an
``evaluate`` (the model in, named validation scores out). The engine owns everything else and
reads top to bottom like nanoGPT's ``train.py``: distributed setup, compile and DDP,
autocast, gradient accumulation (``no_sync`` between), clipping, the per-step schedule,
history rows, the best checkpoint by a validation score, atomic checkpoints holding the model,
optimiser, every RNG, the data position, history and energy, and exact resume from them.

Optimisers and schedules come from timm (``create_optimizer_v2``, ``CosineLRScheduler``,
``PolyLRScheduler``): a scheduler is a function of the optimiser step here
(``step_update(step)``), so a resumed or lengthened run lands on the same learning rate
without restoring scheduler state.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from geopile.atomic import replacing, write_text
from geopile.settings import Energy
from pipelines.energy import EnergyMeter, add_energy

log = logging.getLogger(__name__)
LAST, BEST = "checkpoints/last.pt", "checkpoints/best.pt"


# ---------------------------------------------------------------------------------------------
# where this process runs


@dataclass(frozen=True)
class Dist:
    """A process's place: rank, world size, its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group that ``torchrun`` describes (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def seed_everything(seed: int) -> None:
    """torch, numpy and Python's RNGs from one seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rank0_first(where: Dist, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0 first (it downloads and extracts), then on the others."""
    if where.world > 1 and not where.main:
        dist.barrier()
    made = make()
    if where.world > 1 and where.main:
        dist.barrier()
    return made


def autocast(device: torch.device):  # a context manager
    """bf16 autocast on CUDA, float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def fingerprint(**identity: Any) -> str:
    """What a checkpoint must match to be resumed: a digest of ``identity`` (JSON-able)."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: str | Path | None) -> str | None:
    """sha256 of a file (initial weights are part of a run's identity), or None."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests, identical weights."""
    digest = hashlib.sha256()
    for _, param in sorted(module.named_parameters()):
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# data position


class Resumable(Protocol):
    """A source of batches that can say where it is and go back there."""

    def __iter__(self) -> Iterator[Any]:
        """Batches, endlessly."""

    def state_dict(self) -> dict[str, Any]:
        """The position of the next batch."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position."""


# ---------------------------------------------------------------------------------------------
# history


# History columns that measure the machine, not the model: kept out of the history CSV, so that
# a rerun with the same seed writes the same bytes; in speed.csv beside it (and TensorBoard)
VOLATILE = ("images_per_s",)
SPEED = "speed.csv"


class History:
    """A run's history CSV, whose rows also travel in its checkpoint.

    A resumed run rewrites the file whole from the checkpoint's rows: ``dvc repro`` deletes a
    stage's outputs before running it again while its checkpoints persist, so a file only
    appended to would lose the rows before the resume, or not exist at all when the run was
    already complete. The :data:`VOLATILE` columns go to ``speed.csv`` instead.
    """

    def __init__(self, path: Path, header: list[str], rows: list[list[Any]] | None,
                 write: bool) -> None:
        self.path, self.header, self.rows, self.write = path, header, list(rows or []), write
        self.files = {path: [i for i, k in enumerate(header) if k not in VOLATILE],
                      path.with_name(SPEED): [i for i, k in enumerate(header)
                                              if k == "step" or k in VOLATILE]}
        if write:
            for file, columns in self.files.items():
                write_text(file, self._csv([[r[i] for i in columns]
                                            for r in [header, *self.rows]]))

    @staticmethod
    def _csv(rows: list[list[Any]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def add(self, row: dict[str, Any]) -> None:
        """Record one row (every process keeps the rows; the main one writes them)."""
        values = [row.get(key) for key in self.header]
        self.rows.append(values)
        if self.write:
            for file, columns in self.files.items():
                with file.open("a", newline="") as f:
                    f.write(self._csv([[values[i] for i in columns]]))

    def last(self) -> dict[str, Any]:
        """The newest row by column (what a resumed, already finished run reports)."""
        return dict(zip(self.header, self.rows[-1], strict=True)) if self.rows else {}


# ---------------------------------------------------------------------------------------------
# one step (also what bench.train_step times)


def forward_backward(trainable: nn.Module, step: Callable[[nn.Module, Any], dict[str, Any]],
                     batch: Any, device: torch.device, accumulate: int = 1) -> dict[str, Any]:
    """The caller's step under autocast, and the backward of its ``loss`` / ``accumulate``."""
    with autocast(device):
        out = step(trainable, batch)
    (out["loss"] / accumulate).backward()
    return out


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   clip: float | None) -> None:
    """Clip the gradient norm (if asked), step, and free the gradients."""
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Loop:
    """How long a run is and how often it logs, evaluates and saves (in optimiser steps)."""

    steps: int
    steps_per_epoch: int
    log_every: int
    checkpoint_every: int
    eval_every: int | None = None  # None: no validation
    accumulate: int = 1
    clip_grad: float | None = None
    images_per_step: int = 0  # the global batch, for images/s
    select: str | None = None  # the validation score that picks best.pt (higher is better)


@dataclass
class Run:
    """A model being trained, and everything needed to stop and continue it exactly."""

    root: Path
    where: Dist
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler: step_update(step) sets the lrs of that step
    batches: Resumable
    loop: Loop
    stamp: str  # fingerprint(): a checkpoint of other settings is not resumed
    columns: list[str]  # what ``step`` returns, in history order (``loss`` first)
    history_name: str = "history.csv"
    desc: str = "train"  # the progress bar's label
    tag: str = "train"  # TensorBoard's scalar prefix (tb/ in the run directory)
    progress: bool = True
    compile: bool = False  # torch.compile the model (CUDA only: on CPU it costs more)
    energy: Energy | None = None  # measure this run's energy (rank 0's machine)
    step: int = 0
    best: float | None = None
    history: History | None = None
    rows: list[list[Any]] | None = None  # a resumed checkpoint's history
    energy_before: dict[str, Any] | None = None  # a resumed run's energy so far
    energy_used: dict[str, Any] | None = None  # kWh and CO2e of the whole run, after fit

    def resume(self) -> bool:
        """Load ``checkpoints/last.pt`` if it matches this run; True when it did."""
        path = self.root / LAST
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.stamp:
            if self.where.main:
                log.warning("%s was written for other settings or inputs: starting afresh", path)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        self.step, self.best = state["step"], state["best"]
        self.energy_before = state.get("energy")
        self.rows = state["history"]
        if self.where.main:
            log.info("resuming %s at step %d of %d", path, self.step, self.loop.steps)
        return True

    def save(self, meter: EnergyMeter | None) -> None:
        """Write ``checkpoints/last.pt`` atomically (rank 0)."""
        if not self.where.main:
            return
        energy = add_energy(self.energy_before, meter.snapshot() if meter else None)
        atomic_torch_save({"model": self.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(),
                           "data": self.batches.state_dict(), "rng": _rng_state(),
                           "step": self.step, "best": self.best, "fingerprint": self.stamp,
                           "history": self.history.rows, "energy": energy}, self.root / LAST)

    def fit(self, step: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
            evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
            after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train to ``loop.steps``; returns the last history row (losses, lr, scores).

        ``after_step(step)`` runs after each optimiser step (audit traces).
        """
        loop, where, model = self.loop, self.where, self.model
        header = ["step", "epoch", *self.columns, "lr", "images_per_s"]
        if evaluate is not None and loop.select:
            header.append("val")  # the validation score ``loop.select`` (dvc plots: y: val)
        self.history = History(self.root / self.history_name, header,
                               self.rows, where.main)
        self.scheduler.step_update(self.step)

        trainable = self._trainable()
        meter = EnergyMeter(self.energy) if self.energy is not None and where.main else None
        if meter:
            meter.start()
        bar = tqdm(total=loop.steps, initial=self.step, unit="step", desc=self.desc,
                   disable=not (self.progress and where.main), dynamic_ncols=True)
        board = None
        if where.main:
            from torch.utils.tensorboard import SummaryWriter

            board = SummaryWriter(str(self.root / "tb"), purge_step=self.step or None)

        sums = torch.zeros(len(self.columns), device=where.device)
        logged, micro, tic = 0, 0, time.perf_counter()
        batches = iter(self.batches)
        model.train()
        while self.step < loop.steps:
            # forward and backward, the gradients synchronised on the last micro-batch only
            micro += 1
            sync = micro % loop.accumulate == 0
            context = trainable.no_sync() if where.world > 1 and not sync else nullcontext()
            with context:
                out = forward_backward(trainable, step, next(batches), where.device,
                                       loop.accumulate)
            sums += torch.stack([out[k].detach().float() for k in self.columns]) / loop.accumulate
            if not sync:
                continue
            # the optimiser step, then the learning rate of the next one
            optimizer_step(model, self.optimizer, loop.clip_grad)
            self.step += 1
            logged += 1
            self.scheduler.step_update(self.step)
            bar.update(1)
            if after_step is not None:
                after_step(self.step)
            # a history row: the interval's mean losses (over ranks), then validation
            done = self.step == loop.steps
            evaluating = evaluate is not None and (done or self.step % loop.eval_every == 0)
            if self.step % loop.log_every == 0 or evaluating or done:
                means = self._log(sums, logged, time.perf_counter() - tic,
                                  evaluate if evaluating else None, board)
                bar.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
                sums.zero_()
                logged, tic = 0, time.perf_counter()
            if self.step % loop.checkpoint_every == 0 or evaluating or done:
                self.save(meter)
                if where.main and not self.progress:  # no bar: a line per checkpoint
                    log.info("%s: step %d/%d, %s", self.desc, self.step, loop.steps, ", ".join(
                        f"{k} {v:.4f}" for k, v in self.history.last().items()
                        if k not in ("step", "epoch") and isinstance(v, float)))
        bar.close()
        if board:
            board.close()
        self.energy_used = add_energy(self.energy_before, meter.stop() if meter else None)
        self._check_replicas()
        return self.history.last()

    def _trainable(self) -> nn.Module:
        """The model as the steps run it: compiled on CUDA, wrapped for DDP over ranks."""
        where, trainable = self.where, self.model
        if self.compile and where.device.type == "cuda":
            trainable = torch.compile(trainable)
        if where.world > 1:
            trainable = DistributedDataParallel(
                trainable, device_ids=[where.device.index] if where.device.type == "cuda" else None)
        return trainable

    def _log(self, sums: torch.Tensor, steps: int, seconds: float,
             evaluate: Callable[[nn.Module], dict[str, float]] | None,
             board: Any) -> dict[str, float]:
        """A history row: the interval's mean losses (over ranks), then validation; the means.

        ``sums`` (the interval's summed losses) is reduced over ranks in place.
        """
        loop, where = self.loop, self.where
        if where.world > 1:
            dist.all_reduce(sums)
            sums /= where.world
        means = dict(zip(self.columns, (sums / steps).tolist(), strict=True))
        row = {"step": self.step, "epoch": _epoch(self.step, loop.steps_per_epoch),
               **means, "lr": self.optimizer.param_groups[-1]["lr"],
               "images_per_s": steps * loop.images_per_step / seconds}
        if evaluate is not None:
            row["val"] = self._validate(evaluate)
        self.history.add(row)
        for key, value in row.items():
            if board and key not in ("step", "epoch") and isinstance(value, float):
                board.add_scalar(f"{self.tag}/{key}", value, self.step)
        return means

    def _validate(self, evaluate: Callable[[nn.Module], dict[str, float]]) -> float | None:
        """The validation score ``loop.select``; a new best writes ``checkpoints/best.pt``."""
        scores = evaluate(self.model)
        self.model.train()
        score = scores.get(self.loop.select) if self.loop.select else None
        if score is not None and (self.best is None or score > self.best):
            self.best = score
            if self.where.main:
                atomic_torch_save({"model": self.model.state_dict(), "step": self.step,
                                   "val": score}, self.root / BEST)
        return score

    def load_best(self) -> None:
        """Put the best validation checkpoint's weights back (if this run recorded one).

        A ``best.pt`` without a recorded best is another run's (other settings): left alone.
        """
        path = self.root / BEST
        if self.best is not None and path.exists():
            self.model.load_state_dict(torch.load(path, map_location="cpu",
                                                  weights_only=False)["model"])

    def _check_replicas(self) -> None:
        """Under DDP, fail if the processes ended with different weights.

        DDP keeps replicas equal; a silent divergence would taint every score.
        """
        if self.where.world > 1:
            digests: list[Any] = [None] * self.where.world
            dist.all_gather_object(digests, weights_digest(self.model))
            if len(set(digests)) != 1:
                raise RuntimeError(f"the {self.where.world} processes ended with different "
                                   f"weights ({digests}); the run is not valid")
            dist.barrier()


def _epoch(step: int, per_epoch: int) -> float | int:
    epoch = round(step / per_epoch, 3)
    return int(epoch) if epoch == int(epoch) else epoch


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename it into place.

    The temp name is fixed: torch writes the file's name into the archive, so a PID in it would
    make two saves of the same state differ.
    """
    with replacing(path, tmp=path.with_name(f".{path.name}.tmp")) as tmp:
        torch.save(obj, tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A run's JSON output (config, metrics), atomically."""
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")
