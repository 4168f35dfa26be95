"""What the benchmarks share: an offline world's JPEG corpora, ingested into a data dir."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from geopile.ingest import ingest
from geopile.params import load_params
from geopile.records import read_records, records_path
from geopile.settings import Shard, check_params
from geopile.sources import create_source
from geopile.world.world import PARAMS_OVERLAY, WORLD_S3, build_world, world_down, world_up

REPO = Path(__file__).resolve().parents[1]
JPEG_SOURCES = ["rsd46", "mlrsnet", "resisc45", "patternnet"]


def shard_config(**changes: object) -> Shard:
    """params.yaml's ``shard`` block (the only defaults), with ``changes``."""
    config = Shard.model_validate(load_params([REPO / "params.yaml"])["shard"])
    return config.model_copy(update=changes)


@contextmanager
def running_world(root: Path, per_class: int):
    """A freshly built world under ``root``, up for the block; yields (dir, endpoints)."""
    world = root / "world"
    build_world(world, per_class=per_class)
    endpoints = world_up(world)
    os.environ[WORLD_S3] = endpoints["s3"]  # this process reads the world's published hrefs
    try:
        yield world, endpoints
    finally:
        world_down(world)


def ingest_jpegs(world: Path, data: Path) -> pa.Table:
    """Ingest the world's four JPEG corpora into ``data``; their records, concatenated."""
    settings = check_params(load_params([REPO / "params.yaml", world / PARAMS_OVERLAY]))
    for name in JPEG_SOURCES:
        source = create_source(name, settings.sources[name], data, progress=False)
        ingest(source, workers=2, progress=False)
    return pa.concat_tables([read_records(records_path(data, n)) for n in JPEG_SOURCES])
