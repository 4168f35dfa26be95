"""``geopile shard BUILD... | --all``: write builds as WebDataset shards."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_engine_args, add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "shard"
HELP = "write a build as WebDataset shards -> shards/BUILD/*.tar + index.json"
DESCRIPTION = (
    "Keep one image per duplicate cluster among the build's sources (by curate.priority), "
    "sample each source to its cap exactly (builds: in params; deterministic for the seed; a "
    "source with too few images stops the build unless it says allow_short: true), shuffle "
    "across sources, and write reproducible tar shards with an index.json (counts, what "
    "curation removed per source, per-shard sha256, sample keys and byte offsets) and a dataset "
    "card. --to writes TO/BUILD instead: a directory every Ray node mounts, or "
    "s3://bucket/prefix, each shard uploaded as it is finished (by the Ray task that wrote it) "
    "and index.json last.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builds, where they go, and the engine."""
    parser.add_argument("builds", nargs="*", metavar="BUILD", help="build names under `builds:`")
    parser.add_argument("--all", action="store_true", help="every build")
    parser.add_argument("--to", metavar="DIR_OR_S3_URL",
                        help="write TO/BUILD (a shared directory or s3://bucket/prefix; "
                        "default: paths.shards). S3 credentials: boto3's chain, on every node")
    add_engine_args(parser)
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write each build, then print their table."""
    from geopile.params import ParamsError
    from pipelines import shard as stage

    names = list(settings.builds) if args.all else args.builds
    if not names:
        raise ParamsError("name at least one build, or pass --all")
    indexes = [stage.run_shard(settings, b, progress=not args.no_progress, engine=args.engine,
                               ray_address=args.ray_address, to=args.to) for b in names]
    print(stage.shard_table(indexes))
    return 0
