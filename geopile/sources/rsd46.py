"""RSD46-WHU: 46 classes, about 117k images, 0.5-2 m; no public URL, so the user supplies it.

Every published fact of the corpus is here: licence, classes, citation and where to ask for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from geopile.download import verify_file
from geopile.schema import Gsd, Md5, Omit, SourceSettings, Text
from geopile.sources.base import Candidate, ImageFolderArchive
from geopile.sources.published import Publication
from geopile.staging import install_archive

HOW_TO_GET = (
    "RSD46-WHU has no public download URL. Request it from RSIA-LIESMARS-WHU "
    "(https://github.com/RSIA-LIESMARS-WHU/RSD46-WHU lists the Baidu Pan / Google Drive links), "
    "pack it as a zip or tar with <split>/<class>/<image> under one top folder, and set "
    "sources.rsd46.archive: /path/to/RSD46-WHU.zip in your params file."
)


class Rsd46Settings(SourceSettings):
    """``sources.rsd46``: a user-supplied archive (no public URL)."""

    archive: str | None = Field(description="path of your RSD46-WHU zip or tar")
    md5: Md5 = Field(None, description="checks the archive when given")
    image_root: Omit[Text] = Field(None, description="top folder inside the archive")
    gsd_m: Omit[Gsd] = Field(None, description="GSD range")


class RSD46(ImageFolderArchive):
    """``RSD46-WHU/<train|test>/<class>/<NNNN>.jpg`` from a user-supplied archive.

    The split folder is kept as the ``split`` column; class names contain spaces, so keys are
    ``rsd46/<split>_<class>_<file>`` with unsafe characters replaced.
    """

    kind = "rsd46"
    settings = Rsd46Settings
    publication = Publication(
        name="RSD46-WHU",
        licence="research use only (no licence published by RSIA-LIESMARS-WHU)",
        gsd_m=(0.5, 2.0),
        homepage="https://github.com/RSIA-LIESMARS-WHU/RSD46-WHU",
        downloads={},  # no public URL: the user supplies the archive (HOW_TO_GET)
    )
    user_input = "archive"
    split_folders = ("train", "test")
    # the publisher asks for both papers
    bibtex = """@article{long2017rsd46,
  title   = {Accurate Object Localization in Remote Sensing Images Based on Convolutional Neural
             Networks},
  author  = {Long, Yang and Gong, Yiping and Xiao, Zhifeng and Liu, Qing},
  journal = {IEEE Transactions on Geoscience and Remote Sensing},
  volume  = {55}, number = {5}, pages = {2486--2498}, year = {2017},
  doi     = {10.1109/TGRS.2016.2645610}
}
@article{xiao2017rsd46,
  title   = {High-Resolution Remote Sensing Image Retrieval Based on CNNs from a Dimensional
             Perspective},
  author  = {Xiao, Zhifeng and Long, Yang and Li, Deren and Wei, Chunshan and Tang, Gefu and
             Liu, Junyi},
  journal = {Remote Sensing},
  volume  = {9}, number = {7}, pages = {725}, year = {2017},
  doi     = {10.3390/rs9070725}
}"""
    # as listed on the dataset's HF-hub mirror (jonathan-roberts1/RSD46-WHU)
    classes = (
        "Airplane", "Airport", "Artificial dense forest land", "Artificial sparse forest land",
        "Bare land", "Basketball court", "Blue structured factory building", "Building",
        "Construction site", "Cross river bridge", "Crossroads", "Dense tall building", "Dock",
        "Fish pond", "Footbridge", "Graff", "Grassland", "Low scattered building",
        "Lrregular farmland", "Medium density scattered building",
        "Medium density structured building", "Natural dense forest land",
        "Natural sparse forest land", "Oiltank", "Overpass", "Parking lot", "Plasticgreenhouse",
        "Playground", "Railway", "Red structured factory building", "Refinery", "Regular farmland",
        "Scattered blue roof factory building", "Scattered red roof factory building",
        "Sewage plant-type-one", "Sewage plant-type-two", "Ship", "Solar power station",
        "Sparse residential area", "Square", "Steelworks", "Storage land", "Tennis court",
        "Thermal power plant", "Vegetable plot", "Water",
    )

    @property
    def image_root(self) -> str:  # type: ignore[override]
        """Top folder of the extracted archive (params ``image_root``, default ``RSD46-WHU``)."""
        return self.settings.image_root or "RSD46-WHU"

    def fetch(self) -> None:
        """Verify (if an md5 is given) and extract the user's archive, keyed by its hash."""
        archive = self.settings.archive
        if not archive:
            raise FileNotFoundError(HOW_TO_GET)
        path = Path(archive).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist. {HOW_TO_GET}")
        fetched = verify_file(path, str(path), self.settings.md5)
        self._origin_sha256 = self.input_id = fetched.sha256
        install_archive(self.ctx, path, fetched.sha256)

    def candidates(self) -> Iterator[Candidate]:
        """Files of ``<split>/<class>/``, sorted."""
        root = self.ctx.raw_dir / self.image_root
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is missing: expected <split>/<class>/ inside it")
        class_ids = {c: i for i, c in enumerate(self.classes)}
        for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                for file in sorted(p for p in class_dir.iterdir() if p.is_file()):
                    yield Candidate(
                        key=self._make_key(split_dir.name, class_dir.name, file.stem),
                        path=str(file.relative_to(self.ctx.data_dir)),
                        fields={
                            "label": class_dir.name,
                            "label_id": class_ids.get(class_dir.name),
                            "split": split_dir.name,
                            "origin": str(file.relative_to(self.ctx.raw_dir)),
                            "origin_sha256": self._origin_sha256,
                        },
                    )
