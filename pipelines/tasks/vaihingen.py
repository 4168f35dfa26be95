"""ISPRS 2D Semantic Labeling Vaihingen: mIoU over six classes, on the boundary-eroded labels.

Protocol: mmsegmentation's, which the paper's segmentation recipe comes from: the 16 labelled
training areas and the 17 others as test (torchgeo's and mmseg's split), IRRG tiles, six
classes (clutter included), scored on the boundary-eroded ground truth
(``..._ground_truth_eroded_COMPLETE.zip``: pixels within 3 px of a class boundary are black and
count for nothing, as ISPRS scores the benchmark), trained on it as mmseg does, predicted by
sliding 512 px windows at stride 341. ``finetune.tasks.vaihingen.ground_truth: full`` uses the
complete labels instead. Vaihingen has no validation split: the last checkpoint is scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.dense import IGNORE, SegmentationTask

PUBLISHED = DownstreamSet(
    name="ISPRS 2D Semantic Labeling Vaihingen",
    licence="ISPRS benchmark terms: research use, cite the benchmark; no redistribution",
    homepage="https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx",
    files={  # handed out by ISPRS on request: no public URL (md5s: torchgeo's)
        "images": PublishedFile(None, "462b8dca7b6fa9eaf729840f0cdfc7f3",
                                "ISPRS_semantic_labeling_Vaihingen.zip", archive=True),
        "labels": PublishedFile(None, "4802dd6326e2727a352fb735be450277",
                                "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
                                archive=True),
        "labels_eroded": PublishedFile(
            None, None, "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
            archive=True),
    },
)


def eroded_name(name: str) -> str:
    """The eroded label of tile ``name``: ``top_mosaic_09cm_area1_noBoundary.tif``."""
    return name.replace(".tif", "_noBoundary.tif")


class Vaihingen(SegmentationTask):
    """torchgeo's ``Vaihingen2D`` splits and images, with the eroded or the complete labels."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / test."""
        override = settings.finetune.tasks.get(self.name)
        truth = (override.ground_truth if override else None) or "eroded"  # (the schema checked)
        root = self.root(settings)
        return {s: VaihingenTiles(root, s, eroded=truth == "eroded") for s in ("train", "test")}


class VaihingenTiles(Dataset):
    """IRRG tiles and labels; black (eroded boundary) pixels are ``IGNORE``."""

    def __init__(self, root: Path, split: str, eroded: bool) -> None:
        from torchgeo.datasets import Vaihingen2D

        self.colours = np.array(Vaihingen2D.colormap, np.uint8)
        self.pairs = []
        for name in Vaihingen2D.splits[split]:
            image = root / Vaihingen2D.image_root / name
            label = root / (eroded_name(name) if eroded else name)
            if image.exists() and label.exists():
                self.pairs.append((image, label))
        if not self.pairs:
            kind = "eroded " if eroded else ""
            raise FileNotFoundError(f"{root}: no {split} tiles with {kind}labels "
                                    "(is this the published archive?)")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as img:
            image = torch.from_numpy(np.array(img.convert("RGB")).transpose(2, 0, 1)).float()
        with Image.open(label_path) as img:
            rgb = np.array(img.convert("RGB"))
        mask = np.full(rgb.shape[:2], IGNORE, np.int64)
        for i, colour in enumerate(self.colours):
            mask[(rgb == colour).all(-1)] = i
        return {"image": image, "mask": torch.from_numpy(mask)}


TASK = Vaihingen(name="vaihingen", dataset="vaihingen", published=PUBLISHED, img_size=512,
                 window_size=8, num_classes=6, scores=("miou",), select="miou",
                 paper={"miou": PaperScore(75.3, 74.7)},
                 protocol=__doc__.split("\n\n")[1])
