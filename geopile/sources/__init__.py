"""The source registry: one entry per kind of source, iterated by the CLI and the tests.

A ``sources.<name>`` block in params picks its kind with ``type:`` (default: the name itself),
so several ``folder`` sources can sit side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geopile.params import ParamsError
from geopile.sources.base import IngestContext, Source
from geopile.sources.folder import FolderSource
from geopile.sources.mlrsnet import MLRSNet
from geopile.sources.naip import Naip
from geopile.sources.patternnet import PatternNet
from geopile.sources.resisc45 import Resisc45
from geopile.sources.rsd46 import RSD46
from geopile.sources.stac import StacSource
from geopile.sources.ucmerced import UCMerced

SOURCES: dict[str, type[Source]] = {
    cls.kind: cls for cls in (Naip, StacSource, RSD46, MLRSNet, Resisc45, PatternNet,
                         UCMerced, FolderSource)
}


def list_sources() -> list[str]:
    """Registered source kinds."""
    return list(SOURCES)


def create_source(
    name: str, params: dict[str, Any], data_dir: Path, *, seed: int = 0, progress: bool = True
) -> Source:
    """Instantiate the source configured as ``sources.<name>`` in ``params``."""
    kind = params.get("type", name)
    if kind not in SOURCES:
        raise ParamsError(f"source {name!r} has type {kind!r}; known types: {', '.join(SOURCES)}")
    ctx = IngestContext(Path(data_dir), name, params, seed=seed, progress=progress)
    return SOURCES[kind](ctx)
