"""UC Merced Land Use: 21 classes x 100 TIFFs, 256 px, 1 ft; the first downstream eval set."""

from geopile.sources.base import ImageFolderArchive
from geopile.sources.classes import UCMERCED_CLASSES
from geopile.sources.published import PUBLICATIONS


class UCMerced(ImageFolderArchive):
    """``UCMerced_LandUse/Images/<class>/<class>NN.tif`` with the train/val/test lists.

    The ``split`` column carries the lists of "In-domain representation learning for remote
    sensing" (the splits torchgeo uses): curation removes look-alikes of the test images.
    """

    kind = "ucmerced"
    publication = PUBLICATIONS["ucmerced"]
    bibtex = """@inproceedings{yang2010ucmerced,
  title     = {Bag-of-Visual-Words and Spatial Extensions for Land-Use Classification},
  author    = {Yang, Yi and Newsam, Shawn},
  booktitle = {Proceedings of the 18th SIGSPATIAL International Conference on Advances in
               Geographic Information Systems},
  pages     = {270--279}, year = {2010},
  doi       = {10.1145/1869790.1869829}
}"""
    classes = UCMERCED_CLASSES
    image_root = "UCMerced_LandUse/Images"
    split_files = {"train": "split_train", "val": "split_val", "test": "split_test"}
