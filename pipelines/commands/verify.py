"""``geopile verify BUILD|DIR|s3://...``: check a build against its index."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "verify"
HELP = "check a build (yours or a bucket's) against its index: every shard and sample"
DESCRIPTION = (
    "Validate BUILD's index.json (shard names, sizes, offsets, counts, checksums: what GeoPile "
    "trusts, see the README's Trust model), check that every shard is there with its size, then "
    "read every byte once: each shard against its sha256, each sample against its xxh3. BUILD "
    "is a build name under paths.shards, a path with a '/' or s3://bucket/prefix/BUILD. Exit "
    "status 1 when something is damaged.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builds to check."""
    parser.add_argument("builds", nargs="+", metavar="BUILD",
                        help="a build name, a directory holding index.json, or an s3:// URL")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Verify each build; 1 if any is damaged."""
    from pipelines.verify import verify_build, verify_table

    damaged = 0
    for build in args.builds:
        where = build if "/" in build else str(settings.paths.shards / build)
        result = verify_build(where, progress=not args.no_progress)
        print(verify_table(result))
        damaged += result["damaged"]
    return 1 if damaged else 0
