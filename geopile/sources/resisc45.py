"""NWPU-RESISC45: 45 scene classes x 700 JPEGs, 256 px (CC-BY-NC-4.0)."""

from geopile.sources.base import ImageFolderArchive
from geopile.sources.classes import RESISC45_CLASSES
from geopile.sources.published import PUBLICATIONS


class Resisc45(ImageFolderArchive):
    """``NWPU-RESISC45/<class>/<class>_NNN.jpg``, with torchgeo's train/val/test lists."""

    kind = "resisc45"
    publication = PUBLICATIONS["resisc45"]
    classes = RESISC45_CLASSES
    image_root = "NWPU-RESISC45"
    split_files = {"train": "split_train", "val": "split_val", "test": "split_test"}
