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


def _given(block: Any) -> dict[str, Any]:
    """What a settings block sets (a model's set fields, or a mapping), not its defaults."""
    if block is None:
        return {}
    if hasattr(block, "model_dump"):
        return block.model_dump(exclude_unset=True)
    return dict(block)


@dataclass(frozen=True)
class Mirrors:
    """What a params block says about its published files, over what the publisher says.

    ``urls``: your own mirrors per file (a URL, a path or a list), tried first; ``md5s``: the md5
    to check per file (``null``: no check); ``root``: a copy of the web laid out as
    ``<root>/<host>/<path>`` (the offline world), which replaces the published mirrors.
    """

    urls: Mapping[str, str | list[str]] = field(default_factory=dict)
    md5s: Mapping[str, str | None] = field(default_factory=dict)
    root: str | None = None

    @classmethod
    def of(cls, block: Any) -> Mirrors:
        """From a ``sources.NAME`` or ``downstream.SET`` settings block (what it sets)."""
        return cls(_given(getattr(block, "urls", None)), _given(getattr(block, "md5s", None)),
                   getattr(block, "mirror_root", None))

    def urls_for(self, published: Download | None, which: str) -> list[str]:
        """The URLs to try for file ``which``, in order: yours, then the published mirrors.

        With ``root`` set the published mirrors are replaced by their copies under it (see
        :func:`rehost`), so nothing past that root is asked (the offline world).
        """
        own = self.urls.get(which) or []
        listed = list(published.mirrors) if published else []
        if self.root:
            listed = [rehost(u, str(self.root)) for u in listed]
        return list(dict.fromkeys(([own] if isinstance(own, str) else list(own)) + listed))

    def md5_for(self, published: Download | None, which: str) -> str | None:
        """The md5 to check ``which`` by: yours if set (``null``: none), else the publisher's."""
        if which in self.md5s:
            return self.md5s[which]
        return published.md5 if published else None

    def local_name(self, published: Download | None, which: str) -> str:
        """The local file name of ``which``: the published name, else the user URL's path end."""
        if published is not None:
            return published.filename
        urls = self.urls_for(None, which)
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
