"""The source registry: one entry per kind of source, iterated by the CLI and the tests.

A ``sources.<name>`` block in params picks its kind with ``type:`` (default: the name itself),
so several ``folder`` sources can sit side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geopile.params import ParamsError
from geopile.payloads import PayloadStore
from geopile.schema import SourceSettings
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


def create_source(name: str, settings: SourceSettings, data_dir: Path, *, seed: int = 0,
                  progress: bool = True, payloads: PayloadStore | None = None) -> Source:
    """The source configured as ``sources.<name>`` (its typed block, ``Settings.sources``).

    ``payloads``: where its images are written and read (``paths.payloads``; None: under
    ``data_dir``).
    """
    kind = settings.type or name
    if kind not in SOURCES:
        raise ParamsError(f"source {name!r} has type {kind!r}; known types: {', '.join(SOURCES)}")
    ctx = IngestContext(Path(data_dir), name, settings, seed=seed, progress=progress,
                        payloads=payloads)
    return SOURCES[kind](ctx)


def source_settings(name: str, block: Mapping[str, Any]) -> SourceSettings:
    """One ``sources.<name>`` block typed by its kind's model, for a script holding just it.

    The CLI validates the whole params file once instead (:func:`geopile.settings.check_params`,
    with every problem named); this raises pydantic's own error.
    """
    kind = block.get("type", name)
    if kind not in SOURCES:
        raise ParamsError(f"source {name!r} has type {kind!r}; known types: {', '.join(SOURCES)}")
    return SOURCES[kind].settings.model_validate({**block, "type": kind})
