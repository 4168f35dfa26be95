"""PatternNet: 38 classes x 800 JPEGs, 256 px (CC-BY-4.0). Every published fact here."""

from geopile.schema import archive_settings
from geopile.sources.base import ImageFolderArchive
from geopile.sources.published import TORCHGEO_HUB, Download, Publication

_HUB = f"{TORCHGEO_HUB}/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0"


class PatternNet(ImageFolderArchive):
    """``PatternNet/images/<class>/<class>NNN.jpg``; the archive's other files are ignored."""

    kind = "patternnet"
    publication = Publication(
        name="PatternNet",
        licence="CC-BY-4.0",
        gsd_m=(0.06, 4.69),
        homepage="https://sites.google.com/view/zhouwx/dataset",
        # the publisher shares it through Google Drive (no plain download URL): torchgeo's only
        downloads={
            "archive": Download(f"{_HUB}/PatternNet.zip", "96d54b3224c5350a98d55d5a7e6984ad"),
        },
    )
    bibtex = """@article{zhou2018patternnet,
  title   = {PatternNet: A Benchmark Dataset for Performance Evaluation of Remote Sensing Image
             Retrieval},
  author  = {Zhou, Weixun and Newsam, Shawn and Li, Congmin and Shao, Zhenfeng},
  journal = {ISPRS Journal of Photogrammetry and Remote Sensing},
  volume  = {145}, pages = {197--209}, year = {2018},
  doi     = {10.1016/j.isprsjprs.2018.01.004}
}"""
    classes = (
        "airplane", "baseball_field", "basketball_court", "beach", "bridge", "cemetery",
        "chaparral", "christmas_tree_farm", "closed_road", "coastal_mansion", "crosswalk",
        "dense_residential", "ferry_terminal", "football_field", "forest", "freeway", "golf_course",
        "harbor", "intersection", "mobile_home_park", "nursing_home", "oil_gas_field", "oil_well",
        "overpass", "parking_lot", "parking_space", "railway", "river", "runway", "runway_marking",
        "shipping_yard", "solar_panel", "sparse_residential", "storage_tank", "swimming_pool",
        "tennis_court", "transformer_station", "wastewater_treatment_plant",
    )
    image_root = "PatternNet/images"
    settings = archive_settings(publication, "PatternNet")
