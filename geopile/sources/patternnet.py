"""PatternNet: 38 classes x 800 JPEGs, 256 px (CC-BY-4.0)."""

from geopile.sources.base import ImageFolderArchive
from geopile.sources.classes import PATTERNNET_CLASSES
from geopile.sources.published import PUBLICATIONS


class PatternNet(ImageFolderArchive):
    """``PatternNet/images/<class>/<class>NNN.jpg``; the archive's other files are ignored."""

    kind = "patternnet"
    publication = PUBLICATIONS["patternnet"]
    classes = PATTERNNET_CLASSES
    image_root = "PatternNet/images"
