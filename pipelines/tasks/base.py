"""The downstream-task contract: what one task file declares, and what a family of tasks does.

A task file declares data and small methods: its published files (a
:class:`~geopile.downstream.DownstreamSet`: URLs with mirrors, md5s, licence), how its splits
are read, the reference's input size and window, the scores it reports and the paper's values
for them (ARP groups them by ``dataset``), its evaluation protocol and where that comes from, and
what a kind of task does on
the training engine (its head, loss, step, evaluation and recipe) lives in its family:
:mod:`pipelines.tasks.classification` or :mod:`pipelines.tasks.dense`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, fetched_root
from geopile.settings import Finetune, Settings
from geopile.sources.published import Mirrors
from pipelines.encoders import Init
from pipelines.engine import Dist, Loop, Resumable


@dataclass(frozen=True)
class PaperScore:
    """One score of the paper's per-task table: GFM's and its ImageNet-22k Swin-B baseline's."""

    gfm: float
    baseline: float


@dataclass
class Prepared:
    """What a family hands the training engine for one task and init."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Resumable
    loop: Loop
    columns: list[str]  # what ``step`` returns, ``loss`` first
    step: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
    evaluate: Callable[[nn.Module, str], dict[str, float]]  # (model, split) -> scores
    identity: dict[str, Any]  # the recipe and geometry a checkpoint must match
    config: dict[str, Any]  # what config.json records beyond the common keys
    files: dict[str, Any] = field(default_factory=dict)  # extra JSON outputs by file name


@dataclass(frozen=True, kw_only=True)
class Task:
    """A downstream task: the facts of one task file."""

    name: str  # the CLI's and metrics.json's name
    dataset: str  # ARP averages a dataset's scores first (BigEarthNet 10% and 1% are one)
    published: DownstreamSet | None  # fetched by `geopile fetch`; None: an ingest source's
    img_size: int  # the reference's input (or crop) size ...
    window_size: int  # ... and Swin window
    scores: tuple[str, ...]  # metrics.json "scores", entered into ARP
    select: str  # the validation score that picks the checkpoint scored on test
    paper: dict[str, PaperScore]  # metric -> the paper's scores
    protocol: str  # how it is evaluated, and where that protocol comes from
    family: ClassVar[str] = ""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """The task's datasets by split (``train``, ``test``, ``val`` where published)."""
        raise NotImplementedError

    def root(self, settings: Settings) -> Path:
        """The verified, extracted published files (fetched on first use)."""
        assert self.published is not None
        return fetched_root(self.dataset, self.published,
                            Mirrors.of(settings.downstream.get(self.dataset)), settings.paths.data)

    def geometry(self, settings: Finetune) -> tuple[int, int]:
        """(input size, window): the task's, or ``finetune.tasks.NAME``'s overrides."""
        override = settings.tasks.get(self.name)
        img = override.img_size if override and override.img_size else self.img_size
        window = override.window_size if override and override.window_size else self.window_size
        return img, window

    def prepare(self, settings: Finetune, splits: dict[str, Dataset], init: Init, where: Dist,
                seed: int, length: int | None) -> Prepared:
        """Model (``init``'s encoder and a head), data, optimiser, schedule, step, evaluation.

        ``length`` overrides the recipe's epochs or iterations.
        """
        raise NotImplementedError


def read_sample(dataset: Dataset, index: int) -> dict[str, torch.Tensor]:
    """``dataset[index]`` with rasterio kept off AWS.

    With AWS credentials in the environment (S3 streaming, the demo) every bare
    ``rasterio.open`` builds a boto3 session: about 17 ms a file, logged each time. These files
    are local.
    """
    import rasterio
    from rasterio.session import DummySession

    with rasterio.Env(session=DummySession()):
        return dataset[index]
