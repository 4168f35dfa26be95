"""DSIFN change detection: F1 of the change class.

Protocol: two dates of RGB stacked into one Siamese Swin-UperNet (absolute feature
differences per stage); precision, recall and F1 of change on the published test split
(48 pairs) of the best validation checkpoint, predicted by sliding windows. The published test
masks are ``.tif``, the others ``.png``: pairs are matched by file stem.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.dense import ChangeTask, PairedFolders, split_dir

PUBLISHED = DownstreamSet(
    name="DSIFN change detection (Zhang et al. 2020)",
    licence="research use; cite Zhang et al., ISPRS J. 2020",
    homepage="https://github.com/GeoZcx/A-deeply-supervised-image-fusion-network-for-change-detection-in-remote-sensing-images",
    files={  # shared through a cloud drive: {train,val,test}/{t1,t2,mask}/
        "archive": PublishedFile(None, None, "DSIFN.zip", archive=True),
    },
)


class Dsifn(ChangeTask):
    """``t1``, ``t2`` and ``mask`` (change 255) paired by file stem."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / val / test."""
        root = self.root(settings)
        return {s: PairedFolders(split_dir(root, s, "t1"), ("t1", "t2"), "mask")
                for s in ("train", "val", "test")}


TASK = Dsifn(name="dsifn", dataset="dsifn", published=PUBLISHED, img_size=256, window_size=8,
             num_classes=2, scores=("f1",), select="f1", paper={"f1": PaperScore(71.24, 69.62)},
             protocol=__doc__.split("\n\n")[1])
