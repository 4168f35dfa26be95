"""PatternNet: 38 classes x 800 JPEGs, 256 px (CC-BY-4.0)."""

from geopile.sources.base import ImageFolderArchive
from geopile.sources.classes import PATTERNNET_CLASSES
from geopile.sources.published import PUBLICATIONS


class PatternNet(ImageFolderArchive):
    """``PatternNet/images/<class>/<class>NNN.jpg``; the archive's other files are ignored."""

    kind = "patternnet"
    publication = PUBLICATIONS["patternnet"]
    bibtex = """@article{zhou2018patternnet,
  title   = {PatternNet: A Benchmark Dataset for Performance Evaluation of Remote Sensing Image
             Retrieval},
  author  = {Zhou, Weixun and Newsam, Shawn and Li, Congmin and Shao, Zhenfeng},
  journal = {ISPRS Journal of Photogrammetry and Remote Sensing},
  volume  = {145}, pages = {197--209}, year = {2018},
  doi     = {10.1016/j.isprsjprs.2018.01.004}
}"""
    classes = PATTERNNET_CLASSES
    image_root = "PatternNet/images"
