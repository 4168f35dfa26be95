"""Where each labeled corpus is published: mirrors, checksums, licences, GSD ranges.

One table so that the source modules, the offline world (which mirrors these URLs on loopback)
and the dataset card read the same facts. Checksums are the publishers' (via torchgeo's mirrors).
Every file is an ordered tuple of mirrors, the publisher first where it serves the file as
published, then the re-hosts (torchgeo's on the Hugging Face hub) that carry the same bytes:
hosts die (the UC Merced split lists' publisher stopped serving in Nov 2024, google-research
issue #2287), and one md5 verifies whichever mirror answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from geopile.download import url_filename
from geopile.params import ParamsError


@dataclass(frozen=True, init=False)
class Download:
    """One published file: its mirrors in the order to try them, its MD5 and its local name."""

    mirrors: tuple[str, ...]
    md5: str | None = None
    name: str | None = None  # local file name; default: the last path segment of the first mirror

    def __init__(self, mirrors: str | Sequence[str], md5: str | None = None,
                 name: str | None = None) -> None:
        found = (mirrors,) if isinstance(mirrors, str) else tuple(mirrors)
        if not found:
            raise ValueError("a Download needs at least one mirror URL")
        object.__setattr__(self, "mirrors", found)
        object.__setattr__(self, "md5", md5)
        object.__setattr__(self, "name", name)

    @property
    def url(self) -> str:
        """The first mirror (the publisher's URL where it still serves the file)."""
        return self.mirrors[0]

    @property
    def filename(self) -> str:
        """The name the download gets locally: never taken from a query string."""
        return self.name or url_filename(self.url)


@dataclass(frozen=True)
class Publication:
    """The published facts of one corpus."""

    name: str
    licence: str
    gsd_m: tuple[float, float]
    homepage: str
    downloads: dict[str, Download] = field(default_factory=dict)


def rehost(url: str, mirror_root: str) -> str:
    """Where a mirror of the web laid out as ``<root>/<host>/<path>`` keeps ``url``.

    The offline world serves every published URL so (``geopile.world.corpora.mirror_path``);
    a site-wide cache could do the same.
    """
    parts = urlsplit(url)
    return f"{mirror_root.rstrip('/')}/{parts.netloc}{parts.path}"


def mirror_urls(published: Download | None, block: Mapping[str, Any], which: str,
                where: str = "") -> list[str]:
    """The URLs to try for file ``which``, in order, from a params block over the table.

    ``urls.<which>`` (one URL or a list: the user's own mirrors) come first, then the published
    mirrors. With ``mirror_root`` set the published mirrors are replaced by their copies under
    it (see :func:`rehost`), so nothing past that root is asked (the offline world).

    Args:
        published: The table's entry, if the file is published.
        block: The ``sources.<name>`` or ``downstream.<name>`` params block.
        which: The file's key (``archive``, ``split_train``...).
        where: The block's params path, for error messages (``sources.ucmerced``).

    Raises:
        ParamsError: If ``urls.<which>`` is neither a string nor a list of strings.
    """
    user = (block.get("urls") or {}).get(which)
    own = [user] if isinstance(user, str) else user
    if own is None:
        own = []
    if not isinstance(own, list) or not all(isinstance(u, str) and u for u in own):
        raise ParamsError(f"{where or 'params'}.urls.{which} must be a URL or a list of URLs, "
                          f"not {user!r}")
    listed = list(published.mirrors) if published else []
    root = block.get("mirror_root")
    if root:
        listed = [rehost(u, str(root)) for u in listed]
    return list(dict.fromkeys(own + listed))


def local_name(published: Download | None, block: Mapping[str, Any], which: str) -> str:
    """The local file name of ``which``: the published name, else the user URL's path end."""
    if published is not None:
        return published.filename
    urls = mirror_urls(None, block, which)
    name = url_filename(urls[0]) if urls else ""
    return name or which


# torchgeo's re-hosts on the Hugging Face hub, pinned to a revision (microsoft/torchgeo
# torchgeo/datasets/{ucmerced,resisc45,patternnet}.py; PR #2433 re-hosted the UC Merced lists).
_TG = "https://hf.co/datasets/torchgeo"
_RESISC = "https://hf.co/datasets/isaaccorley/resisc45/resolve/883edc0eee77b2c84225472f10f126e3ed83fa6e"
_RESISC_OLD = f"{_TG}/resisc45/resolve/a826b44d938a883185f11ebe3d512d38b464312f"  # redirects
_PATTERN = f"{_TG}/PatternNet/resolve/2dbd901b00e301967a5c5146b25454f5d3455ad0"
_UCM = f"{_TG}/ucmerced/resolve/7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a"
# "In-domain representation learning for remote sensing" (the split lists' publisher): gone
_RSR = "https://storage.googleapis.com/remote_sensing_representations"
_MLRS = "https://huggingface.co/datasets/jonathan-roberts1/MLRSNet/resolve/main/data"


def _under(base: tuple[str, ...], name: str, md5: str) -> Download:
    """The file ``name`` under each mirror base, in order."""
    return Download(tuple(f"{b}/{name}" for b in base), md5)


PUBLICATIONS: dict[str, Publication] = {
    "resisc45": Publication(
        name="NWPU-RESISC45",
        licence="CC-BY-NC-4.0",
        gsd_m=(0.2, 30.0),
        homepage="https://doi.org/10.1109/jproc.2017.2675998",
        downloads={
            # the publisher's own archive is a RAR (another md5): only the zip re-hosts serve it
            "archive": _under((_RESISC, _RESISC_OLD), "NWPU-RESISC45.zip",
                              "75206b2e16446591afa88e2628744886"),
            "split_train": _under((_RSR, _RESISC, _RESISC_OLD), "resisc45-train.txt",
                                  "b5a4c05a37de15e4ca886696a85c403e"),
            "split_val": _under((_RSR, _RESISC, _RESISC_OLD), "resisc45-val.txt",
                                "a0770cee4c5ca20b8c32bbd61e114805"),
            "split_test": _under((_RSR, _RESISC, _RESISC_OLD), "resisc45-test.txt",
                                 "3dda9e4988b47eb1de9f07993653eb08"),
        },
    ),
    "patternnet": Publication(
        name="PatternNet",
        licence="CC-BY-4.0",
        gsd_m=(0.06, 4.69),
        homepage="https://sites.google.com/view/zhouwx/dataset",
        # the publisher shares it through Google Drive (no plain download URL): torchgeo's only
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
                ("http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip",
                 f"{_UCM}/UCMerced_LandUse.zip"),
                "5b7ec56793786b6dc8a908e8854ac0e4",
            ),
            # the publisher's lists 404 since Nov 2024; torchgeo re-hosts the same bytes
            "split_train": _under((_RSR, _UCM), "uc_merced-train.txt",
                                  "f2fb12eb2210cfb53f93f063a35ff374"),
            "split_val": _under((_RSR, _UCM), "uc_merced-val.txt",
                                "11ecabfc52782e5ea6a9c7c0d263aca0"),
            "split_test": _under((_RSR, _UCM), "uc_merced-test.txt",
                                 "046aff88472d8fc07c4678d03749e28d"),
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
