"""Where each labeled corpus is published: URLs, checksums, licences, GSD ranges.

One table so that the source modules, the offline world (which mirrors these URLs on loopback)
and the dataset card read the same facts. Checksums are the publishers' (via torchgeo's mirrors).
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Download:
    """One published file: its URL and, where the publisher gives one, its MD5."""

    url: str
    md5: str | None = None

    @property
    def filename(self) -> str:
        """The file name at the end of the URL."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Publication:
    """The published facts of one corpus."""

    name: str
    licence: str
    gsd_m: tuple[float, float]
    homepage: str
    downloads: dict[str, Download] = field(default_factory=dict)


_TG = "https://hf.co/datasets/torchgeo"
_RESISC = f"{_TG}/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f"
_PATTERN = f"{_TG}/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0"
_UCM_SPLITS = "https://storage.googleapis.com/remote_sensing_representations"
_MLRS = "https://huggingface.co/datasets/jonathan-roberts1/MLRSNet/resolve/main/data"

PUBLICATIONS: dict[str, Publication] = {
    "resisc45": Publication(
        name="NWPU-RESISC45",
        licence="CC-BY-NC-4.0",
        gsd_m=(0.2, 30.0),
        homepage="https://doi.org/10.1109/jproc.2017.2675998",
        downloads={
            "archive": Download(f"{_RESISC}/NWPU-RESISC45.zip", "75206b2e16446591afa88e2628744886"),
            "split_train": Download(
                f"{_RESISC}/resisc45-train.txt", "b5a4c05a37de15e4ca886696a85c403e"
            ),
            "split_val": Download(
                f"{_RESISC}/resisc45-val.txt", "a0770cee4c5ca20b8c32bbd61e114805"
            ),
            "split_test": Download(
                f"{_RESISC}/resisc45-test.txt", "3dda9e4988b47eb1de9f07993653eb08"
            ),
        },
    ),
    "patternnet": Publication(
        name="PatternNet",
        licence="CC-BY-4.0",
        gsd_m=(0.06, 4.69),
        homepage="https://sites.google.com/view/zhouwx/dataset",
        downloads={
            "archive": Download(f"{_PATTERN}/PatternNet.zip", "96d54b3224c5350a98d55d5a7e6984ad"),
        },
    ),
    "ucmerced": Publication(
        name="UC Merced Land Use",
        licence="public domain (USGS National Map imagery); cite Yang & Newsam 2010",
        gsd_m=(0.3048, 0.3048),
        homepage="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
        downloads={
            "archive": Download(
                "https://huggingface.co/datasets/torchgeo/ucmerced/resolve/main/UCMerced_LandUse.zip",
                "5b7ec56793786b6dc8a908e8854ac0e4",
            ),
            "split_train": Download(
                f"{_UCM_SPLITS}/uc_merced-train.txt", "f2fb12eb2210cfb53f93f063a35ff374"
            ),
            "split_val": Download(
                f"{_UCM_SPLITS}/uc_merced-val.txt", "11ecabfc52782e5ea6a9c7c0d263aca0"
            ),
            "split_test": Download(
                f"{_UCM_SPLITS}/uc_merced-test.txt", "046aff88472d8fc07c4678d03749e28d"
            ),
        },
    ),
    "mlrsnet": Publication(
        name="MLRSNet",
        licence="CC-BY-4.0",
        gsd_m=(0.1, 10.0),
        homepage="https://doi.org/10.17632/7j9bv9vwsx",
        # The HF-hub parquet mirror (jonathan-roberts1/MLRSNet); the hub publishes no MD5, so the
        # files are fetched unchecked and their sha256 is recorded instead.
        downloads={
            "parquet_0": Download(f"{_MLRS}/train-00000-of-00003-3e09d55e5ab3594b.parquet"),
            "parquet_1": Download(f"{_MLRS}/train-00001-of-00003-62a64e1c22f11cc7.parquet"),
            "parquet_2": Download(f"{_MLRS}/train-00002-of-00003-210f510f7a0418bf.parquet"),
        },
    ),
    "rsd46": Publication(
        name="RSD46-WHU",
        licence="research use only (no licence published by RSIA-LIESMARS-WHU)",
        gsd_m=(0.5, 2.0),
        homepage="https://github.com/RSIA-LIESMARS-WHU/RSD46-WHU",
        downloads={},  # no public URL: the user supplies the archive (see rsd46.py)
    ),
}
