"""Downstream tasks: one contract (dataset splits, classes, metric, the reference's geometry).

A task turns what ``geopile ingest`` fetched (verified by checksum) into the torchgeo dataset
that reads it, so finetuning uses the same bytes curation decontaminated against.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Task:
    """A downstream task and the reference's settings for it."""

    name: str
    num_classes: int
    metric: str  # the key of metrics.json's "scores"
    img_size: int  # the reference's input size ...
    window_size: int  # ... and window
    multilabel: bool
    datasets: Callable[[dict[str, Any]], dict[str, Dataset]]  # params -> split -> dataset


class TorchgeoSamples(Dataset):
    """(image, label) pairs from a torchgeo dataset, through a tensor transform."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[index]
        return self.transform(sample["image"]), sample["label"]


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    os.symlink(target.resolve(), link)


def ucm_root(params: dict[str, Any]) -> Path:
    """A torchgeo ``UCMerced`` root assembled from ingest's verified download and extraction."""
    data = Path((params.get("paths") or {}).get("data", "data"))
    images = data / "raw" / "ucmerced" / "UCMerced_LandUse"
    splits = [data / "downloads" / "ucmerced" / f"uc_merced-{s}.txt"
              for s in ("train", "val", "test")]
    missing = [p for p in (images, *splits) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} missing: run `geopile ingest ucmerced` first")
    root = data / "downstream" / "ucm"
    root.mkdir(parents=True, exist_ok=True)
    _link(images, root / "UCMerced_LandUse")
    for split in splits:
        _link(split, root / split.name)
    return root


def _ucm(params: dict[str, Any]) -> dict[str, Dataset]:
    from torchgeo.datasets import UCMerced

    root = ucm_root(params)
    return {split: UCMerced(str(root), split=split) for split in ("train", "val", "test")}


TASKS: dict[str, Task] = {
    # UC Merced: 21 classes, the torchgeo (In-domain representation learning) splits, top-1
    "ucm": Task("ucm", 21, "top1", 256, 8, False, _ucm),
}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error listing the others."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
