"""Onera Satellite Change Detection (OSCD): F1 of the change class, Sentinel-2 RGB.

Protocol: the 14 training and 10 test cities; both dates' B04, B03, B02 with BigEarthNet's
percentile stretch (the same Sentinel-2 bands), stacked into one Siamese Swin-UperNet;
precision, recall and F1 of change on test. OSCD publishes no validation split, so the last
checkpoint is scored, as in the reference.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.ben import ben_to_255
from pipelines.tasks.dense import ChangeTask

PUBLISHED = DownstreamSet(
    name="Onera Satellite Change Detection (OSCD)",
    licence="CC-BY-NC-SA-4.0",
    homepage="https://rcdaudt.github.io/oscd/",
    files={  # torchgeo's URLs and md5s
        "images": PublishedFile("https://partage.imt.fr/index.php/s/gKRaWgRnLMfwMGo/download",
                                "c50d4a2941da64e03a47ac4dec63d915",
                                "Onera Satellite Change Detection dataset - Images.zip",
                                archive=True),
        "train_labels": PublishedFile(
            "https://partage.mines-telecom.fr/index.php/s/2D6n03k58ygBSpu/download",
            "4d2965af8170c705ebad3d6ee71b6990",
            "Onera Satellite Change Detection dataset - Train Labels.zip", archive=True),
        "test_labels": PublishedFile(
            "https://partage.imt.fr/index.php/s/gpStKn4Mpgfnr63/download",
            "8177d437793c522653c442aa4e66c617",
            "Onera Satellite Change Detection dataset - Test Labels.zip", archive=True),
    },
)


class Oscd(ChangeTask):
    """torchgeo's ``OSCD`` reading the RGB bands of both dates."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / test."""
        from torchgeo.datasets import OSCD

        root = self.root(settings)
        return {s: OSCD(str(root), split=s, bands=OSCD.rgb_bands) for s in ("train", "test")}

    def sample(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two dates (2, 3, H, W) as six bands, and the change mask."""
        image = s["image"]
        return image.reshape(-1, *image.shape[-2:]), s["mask"].reshape(image.shape[-2:]).long()

    def to_255(self, image: torch.Tensor) -> torch.Tensor:
        """Both dates with the BigEarthNet stretch."""
        return torch.cat([ben_to_255(date) for date in image.split(3)])


TASK = Oscd(name="oscd", dataset="oscd", published=PUBLISHED, img_size=256, window_size=8,
            num_classes=2, scores=("f1",), select="f1", paper={"f1": PaperScore(59.82, 52.35)},
            protocol=__doc__.split("\n\n")[1])
