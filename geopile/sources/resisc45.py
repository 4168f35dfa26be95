"""NWPU-RESISC45: 45 scene classes x 700 JPEGs, 256 px (CC-BY-NC-4.0); all its published facts."""

from geopile.schema import archive_settings
from geopile.sources.base import ImageFolderArchive
from geopile.sources.published import SPLIT_LISTS, TORCHGEO_HUB, Publication, under

# The publisher's own archive is a RAR (another md5): only the zip re-hosts serve this one.
# isaaccorley's hub copy is torchgeo's current re-host; the older torchgeo one redirects to it.
_HUB = ("https://hf.co/datasets/isaaccorley/resisc45/resolve/"
        "883edc0eee77b2c84225472f10f126e3ed83fa6e")
_HUB_OLD = f"{TORCHGEO_HUB}/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f"


class Resisc45(ImageFolderArchive):
    """``NWPU-RESISC45/<class>/<class>_NNN.jpg``, with torchgeo's train/val/test lists."""

    kind = "resisc45"
    publication = Publication(
        name="NWPU-RESISC45",
        licence="CC-BY-NC-4.0",
        gsd_m=(0.2, 30.0),
        homepage="https://doi.org/10.1109/jproc.2017.2675998",
        downloads={
            "archive": under((_HUB, _HUB_OLD), "NWPU-RESISC45.zip",
                             "75206b2e16446591afa88e2628744886"),
            "split_train": under((SPLIT_LISTS, _HUB, _HUB_OLD), "resisc45-train.txt",
                                 "b5a4c05a37de15e4ca886696a85c403e"),
            "split_val": under((SPLIT_LISTS, _HUB, _HUB_OLD), "resisc45-val.txt",
                               "a0770cee4c5ca20b8c32bbd61e114805"),
            "split_test": under((SPLIT_LISTS, _HUB, _HUB_OLD), "resisc45-test.txt",
                                "3dda9e4988b47eb1de9f07993653eb08"),
        },
    )
    bibtex = """@article{cheng2017resisc45,
  title   = {Remote Sensing Image Scene Classification: Benchmark and State of the Art},
  author  = {Cheng, Gong and Han, Junwei and Lu, Xiaoqiang},
  journal = {Proceedings of the IEEE},
  volume  = {105}, number = {10}, pages = {1865--1883}, year = {2017},
  doi     = {10.1109/JPROC.2017.2675998}
}"""
    classes = (
        "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge",
        "chaparral", "church", "circular_farmland", "cloud", "commercial_area", "dense_residential",
        "desert", "forest", "freeway", "golf_course", "ground_track_field", "harbor",
        "industrial_area", "intersection", "island", "lake", "meadow", "medium_residential",
        "mobile_home_park", "mountain", "overpass", "palace", "parking_lot", "railway",
        "railway_station", "rectangular_farmland", "river", "roundabout", "runway", "sea_ice",
        "ship", "snowberg", "sparse_residential", "stadium", "storage_tank", "tennis_court",
        "terrace", "thermal_power_station", "wetland",
    )
    image_root = "NWPU-RESISC45"
    settings = archive_settings(publication, "Resisc45")
    split_files = {"train": "split_train", "val": "split_val", "test": "split_test"}
