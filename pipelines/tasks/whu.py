"""WHU Building Dataset, aerial imagery: building IoU.

Protocol: the paper follows mmsegmentation's Swin-UperNet recipe on the published 512 px tiles
(train 4,736 / val 1,036 / test 2,416); the building class's IoU on test of the best validation
checkpoint, predicted by mmseg's sliding windows.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.dense import PairedFolders, SegmentationTask, split_dir

PUBLISHED = DownstreamSet(
    name="WHU Building Dataset, aerial imagery (cropped 512 px tiles)",
    licence="research use; cite Ji, Wei & Lu 2019",
    homepage="http://gpcv.whu.edu.cn/data/building_dataset.html",
    files={  # the publisher's page links a zip with {train,val,test}/{image,label}/*.tif
        "archive": PublishedFile(None, None, "whu-aerial.zip", archive=True),
    },
)


class Whu(SegmentationTask):
    """Images and building masks (255) paired by file name."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / val / test."""
        root = self.root(settings)
        return {s: PairedFolders(split_dir(root, s, "image"), ("image",), "label")
                for s in ("train", "val", "test")}


TASK = Whu(name="whu", dataset="whu", published=PUBLISHED, img_size=512, window_size=8,
           num_classes=2, scores=("iou",), select="iou", paper={"iou": PaperScore(90.7, 90.4)},
           protocol=__doc__.split("\n\n")[1])
