"""UC Merced land use: 21 classes, top-1 on torchgeo's published splits.

Protocol: the reference finetunes at 256 px with window 8 and reports top-1 on the test split
of the "In-domain representation learning" lists (train 1,260 / val 420 / test 420), which
torchgeo ships; the best validation epoch is scored. The images and lists are what
``geopile ingest ucmerced`` fetched and verified: the very bytes curation decontaminated
GeoPile against, so the task has no published files of its own.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from geopile.downstream import link
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.classification import ClassificationTask


class UCMerced(ClassificationTask):
    """torchgeo's ``UCMerced`` over ingest's download."""

    def root(self, settings: Settings) -> Path:
        """A torchgeo ``UCMerced`` root assembled from ingest's download and extraction."""
        data = settings.paths.data
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

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / val / test."""
        from torchgeo.datasets import UCMerced as Reader

        root = self.root(settings)
        return {split: Reader(str(root), split=split) for split in ("train", "val", "test")}


TASK = UCMerced(
    name="ucm", dataset="ucm", published=None, img_size=256, window_size=8,
    scores=("top1",), select="top1", paper={"top1": PaperScore(99.0, 99.0)},
    num_classes=21, multilabel=False,  # the world's UC Merced is a source's
    protocol=__doc__.split("\n\n")[1],
)
