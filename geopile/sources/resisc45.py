"""NWPU-RESISC45: 45 scene classes x 700 JPEGs, 256 px (CC-BY-NC-4.0)."""

from geopile.sources.base import ImageFolderArchive
from geopile.sources.classes import RESISC45_CLASSES
from geopile.sources.published import PUBLICATIONS


class Resisc45(ImageFolderArchive):
    """``NWPU-RESISC45/<class>/<class>_NNN.jpg``, with torchgeo's train/val/test lists."""

    kind = "resisc45"
    publication = PUBLICATIONS["resisc45"]
    bibtex = """@article{cheng2017resisc45,
  title   = {Remote Sensing Image Scene Classification: Benchmark and State of the Art},
  author  = {Cheng, Gong and Han, Junwei and Lu, Xiaoqiang},
  journal = {Proceedings of the IEEE},
  volume  = {105}, number = {10}, pages = {1865--1883}, year = {2017},
  doi     = {10.1109/JPROC.2017.2675998}
}"""
    classes = RESISC45_CLASSES
    image_root = "NWPU-RESISC45"
    split_files = {"train": "split_train", "val": "split_val", "test": "split_test"}
