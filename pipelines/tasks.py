"""Downstream tasks: one contract (dataset splits, classes, metric, the reference's geometry).

A task turns verified downloads into the torchgeo dataset that reads them: UC Merced from what
``geopile ingest`` fetched (the bytes curation decontaminated against), the others from
``geopile.downstream.fetch``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from geopile.downstream import fetched_root, link


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
    train_fraction: float = 1.0  # a seeded sample of the training split, without replacement
    to_255: Callable[[torch.Tensor], torch.Tensor] | None = None  # raw values -> 0..255
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range
    vflip: bool = False  # vertical flips too (overhead imagery has no up)


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


class TorchgeoSamples(Dataset):
    """(image, label) pairs from a torchgeo dataset, through a tensor transform."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = read_sample(self.dataset, index)
        return self.transform(sample["image"]), sample["label"]

    def sample_id(self, index: int) -> str:
        """A name for sample ``index`` that survives re-ordering (its file or folder)."""
        ds = self.dataset
        if hasattr(ds, "folders"):  # BigEarthNet
            return Path(ds.folders[index]["s2"]).name
        if hasattr(ds, "samples"):  # torchvision ImageFolder-style (UC Merced)
            return Path(ds.samples[index][0]).name
        return str(index)


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
    link(images, root / "UCMerced_LandUse")
    for split in splits:
        link(split, root / split.name)
    return root


def _ucm(params: dict[str, Any]) -> dict[str, Dataset]:
    from torchgeo.datasets import UCMerced

    root = ucm_root(params)
    return {split: UCMerced(str(root), split=split) for split in ("train", "val", "test")}


# The reference's BigEarthNet input (from SeCo): B04, B03, B02 each stretched from its 2nd to
# 98th percentile over the dataset to 0..255 and truncated to uint8.
BEN_RGB = ("B04", "B03", "B02")
BEN_QUANTILES = {"B04": (27.0, 2332.0), "B03": (61.0, 2001.0), "B02": (50.0, 1862.0)}


_BEN_LO = torch.tensor([BEN_QUANTILES[b][0] for b in BEN_RGB]).view(3, 1, 1)
_BEN_HI = torch.tensor([BEN_QUANTILES[b][1] for b in BEN_RGB]).view(3, 1, 1)


def ben_to_255(image: torch.Tensor) -> torch.Tensor:
    """BigEarthNet reflectances (B04, B03, B02) to the reference's 0..255 values."""
    return ((image - _BEN_LO) / (_BEN_HI - _BEN_LO) * 255).clamp(0, 255).floor()


def _ben(params: dict[str, Any]) -> dict[str, Dataset]:
    from torchgeo.datasets import BigEarthNet

    class BigEarthNetRGB(BigEarthNet):
        """torchgeo's BigEarthNet (S2, 19 classes), reading only the reference's three bands.

        A quarter of the file reads of all twelve.
        """

        def _load_paths(self, index: int) -> list[str]:
            folder = Path(self.folders[index]["s2"])
            return [str(folder / f"{folder.name}_{band}.tif") for band in BEN_RGB]

    data = Path((params.get("paths") or {}).get("data", "data"))
    root = fetched_root("bigearthnet", params, data)
    return {split: BigEarthNetRGB(str(root), split=split, bands="s2", num_classes=19)
            for split in ("train", "val", "test")}


TASKS: dict[str, Task] = {
    # UC Merced: 21 classes, the torchgeo (In-domain representation learning) splits, top-1
    "ucm": Task("ucm", 21, "top1", 256, 8, False, _ucm),
    # BigEarthNet-S2, 19 labels, micro AP; trained on 10% / 1% of the training split
    "ben10": Task("ben10", 19, "micro_ap", 128, 4, True, _ben, train_fraction=0.10,
                  to_255=ben_to_255, crop_scale=(0.67, 1.0), vflip=True),
    "ben1": Task("ben1", 19, "micro_ap", 128, 4, True, _ben, train_fraction=0.01,
                 to_255=ben_to_255, crop_scale=(0.67, 1.0), vflip=True),
}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error listing the others."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None
