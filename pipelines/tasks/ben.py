"""BigEarthNet-S2 v1.0, 19 labels, micro average precision, trained on 10% or 1% of train.

Protocol (the reference's, from SeCo): the RGB bands B04, B03, B02, each stretched from its
2nd to 98th percentile over the dataset to 0..255 and truncated; 128 px, window 4; the
BigEarthNet-MM splits (cloud, shadow and seasonal-snow patches left out); micro AP on test of
the best validation epoch. The 10% and 1% subsets are seeded samples of the training split
without replacement (the reference drew with replacement: about 5% repeats). ARP counts the
two as one dataset, as the paper's Table 1 does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.classification import ClassificationTask

_SPLITS = ("https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/raw/"
           "9a5be07346ab0884b2d9517475c27ef9db9b5104/splits")
PUBLISHED = DownstreamSet(
    name="BigEarthNet-S2 v1.0 (19-class nomenclature)",
    licence="CDLA-Permissive-1.0",
    homepage="https://bigearth.net",
    files={
        # 66 GB, 590,326 Sentinel-2 patches; only S2 is fetched (the reference uses RGB)
        "s2": PublishedFile("https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz",
                            "5a64e9ce38deb036a435a7b59494924c",
                            "BigEarthNet-S2-v1.0.tar.gz", archive=True),
        "split_train": PublishedFile(f"{_SPLITS}/train.csv", "623e501b38ab7b12fe44f0083c00986d",
                                     "bigearthnet-train.csv"),
        "split_val": PublishedFile(f"{_SPLITS}/val.csv", "22efe8ed9cbd71fa10742ff7df2b7978",
                                   "bigearthnet-val.csv"),
        "split_test": PublishedFile(f"{_SPLITS}/test.csv", "697fb90677e30571b9ac7699b7e5b432",
                                    "bigearthnet-test.csv"),
    },
)

RGB = ("B04", "B03", "B02")
QUANTILES = {"B04": (27.0, 2332.0), "B03": (61.0, 2001.0), "B02": (50.0, 1862.0)}
_LO = torch.tensor([QUANTILES[b][0] for b in RGB]).view(3, 1, 1)
_HI = torch.tensor([QUANTILES[b][1] for b in RGB]).view(3, 1, 1)


def ben_to_255(image: torch.Tensor) -> torch.Tensor:
    """BigEarthNet reflectances (B04, B03, B02) to the reference's 0..255 values."""
    return ((image - _LO) / (_HI - _LO) * 255).clamp(0, 255).floor()


class BigEarthNet(ClassificationTask):
    """torchgeo's ``BigEarthNet`` (S2, 19 classes), reading only the reference's three bands."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / val / test."""
        from torchgeo.datasets import BigEarthNet as Reader

        class RGBReader(Reader):
            """A quarter of the file reads of all twelve bands."""

            def _load_paths(self, index: int) -> list[str]:
                folder = Path(self.folders[index]["s2"])
                return [str(folder / f"{folder.name}_{band}.tif") for band in RGB]

        root = self.root(settings)
        return {split: RGBReader(str(root), split=split, bands="s2", num_classes=19)
                for split in ("train", "val", "test")}


_COMMON: dict[str, Any] = dict(
    dataset="bigearthnet", published=PUBLISHED, img_size=128, window_size=4,
    scores=("micro_ap",), select="micro_ap", num_classes=19, multilabel=True,
    to_255=ben_to_255, crop_scale=(0.67, 1.0), vflip=True,
    protocol=__doc__.split("\n\n")[1])
BEN10 = BigEarthNet(name="ben10", train_fraction=0.10,
                    paper={"micro_ap": PaperScore(86.3, 85.7)}, **_COMMON)
BEN1 = BigEarthNet(name="ben1", train_fraction=0.01,
                   paper={"micro_ap": PaperScore(80.7, 79.5)}, **_COMMON)
