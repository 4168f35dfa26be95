"""The shape of a corpus's published facts, and how params turn its mirrors into URLs to try.

The facts themselves live with each source (``geopile/sources/resisc45.py`` holds RESISC45's
``publication``), so the source, the offline world (which mirrors those URLs on loopback) and
the dataset card read the same ones. Every file is an ordered tuple of mirrors, the publisher
first where it serves the file as published, then the re-hosts that carry the same bytes: hosts
die, and one md5 verifies whichever mirror answered.
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
    """The URLs to try for file ``which``, in order, from a params block over the published ones.

    ``urls.<which>`` (one URL or a list: the user's own mirrors) come first, then the published
    mirrors. With ``mirror_root`` set the published mirrors are replaced by their copies under
    it (see :func:`rehost`), so nothing past that root is asked (the offline world).

    Args:
        published: The source's entry for the file, if the file is published.
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


# Hosts that serve files of several corpora (each source's file names its own re-host):
# torchgeo's re-hosts on the Hugging Face hub (microsoft/torchgeo torchgeo/datasets/*.py), and
# the publisher of the train/val/test lists of "In-domain representation learning for remote
# sensing", gone since Nov 2024 (google-research issue #2287) but listed first, as published.
TORCHGEO_HUB = "https://hf.co/datasets/torchgeo"
SPLIT_LISTS = "https://storage.googleapis.com/remote_sensing_representations"


def under(bases: Sequence[str], name: str, md5: str | None) -> Download:
    """The file ``name`` under each mirror base, in order (one md5 verifies them all)."""
    return Download(tuple(f"{b}/{name}" for b in bases), md5)
