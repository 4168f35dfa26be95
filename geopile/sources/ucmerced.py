"""UC Merced Land Use: 21 classes x 100 TIFFs, 256 px, 1 ft; the first downstream eval set.

Every published fact of the corpus is here: its mirrors, md5s, licence, classes and citation.
"""

from geopile.schema import archive_settings
from geopile.sources.base import ImageFolderArchive
from geopile.sources.published import SPLIT_LISTS, TORCHGEO_HUB, Download, Publication, under

# torchgeo's re-host (PR #2433 re-hosted the split lists when their publisher stopped serving)
_HUB = f"{TORCHGEO_HUB}/ucmerced/resolve/7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a"


class UCMerced(ImageFolderArchive):
    """``UCMerced_LandUse/Images/<class>/<class>NN.tif`` with the train/val/test lists.

    The ``split`` column carries the lists of "In-domain representation learning for remote
    sensing" (the splits torchgeo uses): curation removes look-alikes of the test images.
    """

    kind = "ucmerced"
    publication = Publication(
        name="UC Merced Land Use",
        licence="public domain (USGS National Map imagery); cite Yang & Newsam 2010",
        gsd_m=(0.3048, 0.3048),
        homepage="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
        downloads={
            "archive": Download(
                ("http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
                 f"{_HUB}/UCMerced_LandUse.zip"),
                "5b7ec56793786b6dc8a908e8854ac0e4",
            ),
            # the publisher's lists 404 since Nov 2024; torchgeo re-hosts the same bytes
            "split_train": under((SPLIT_LISTS, _HUB), "uc_merced-train.txt",
                                 "f2fb12eb2210cfb53f93f063a35ff374"),
            "split_val": under((SPLIT_LISTS, _HUB), "uc_merced-val.txt",
                               "11ecabfc52782e5ea6a9c7c0d263aca0"),
            "split_test": under((SPLIT_LISTS, _HUB), "uc_merced-test.txt",
                                "046aff88472d8fc07c4678d03749e28d"),
        },
    )
    bibtex = """@inproceedings{yang2010ucmerced,
  title     = {Bag-of-Visual-Words and Spatial Extensions for Land-Use Classification},
  author    = {Yang, Yi and Newsam, Shawn},
  booktitle = {Proceedings of the 18th SIGSPATIAL International Conference on Advances in
               Geographic Information Systems},
  pages     = {270--279}, year = {2010},
  doi       = {10.1145/1869790.1869829}
}"""
    classes = (
        "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
        "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
        "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
        "sparseresidential", "storagetanks", "tenniscourt",
    )
    image_root = "UCMerced_LandUse/Images"
    settings = archive_settings(publication, "UCMerced")
    split_files = {"train": "split_train", "val": "split_val", "test": "split_test"}
