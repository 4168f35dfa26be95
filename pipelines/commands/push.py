"""``geopile push BUILD...``: publish builds where training streams them from (S3)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "push"
HELP = "upload a build's shards to pretrain.stream.url/BUILD (S3) for streaming"
DESCRIPTION = (
    "Check shards/BUILD against its index (every shard's sha256), then upload it to "
    "s3://bucket/prefix/BUILD (--to, default pretrain.stream.url): the index removed first, the "
    "tars (skipping objects whose S3 checksum says they hold these bytes), the card, index.json "
    "last. Credentials: boto3's standard chain; AWS_ENDPOINT_URL for other stores. With no URL "
    "configured there is nothing to do (training reads the local shards).")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The builds and where they go."""
    parser.add_argument("builds", nargs="+", metavar="BUILD")
    parser.add_argument("--to", metavar="S3_URL", help="s3://bucket/prefix (default: "
                        "pretrain.stream.url)")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Push each build, one writer at a time per build."""
    from geopile.writelock import build_lock, write_lock
    from pipelines.push import push_build

    base = args.to or settings.pretrain.stream.url
    if not base:
        print("pretrain.stream.url is not set: nothing to push (training reads local shards)")
        return 0
    for build in args.builds:
        with write_lock(build_lock(settings.paths.shards, build), f"build {build}"):
            done = push_build(settings.paths.shards / build, f"{base.rstrip('/')}/{build}",
                              progress=not args.no_progress)
        print(f"{build}: {done['sent']} shards sent, {done['skipped']} already there "
              f"-> {done['url']}")
    return 0
