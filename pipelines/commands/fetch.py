"""``geopile fetch SET... | --all``: a downstream set, into torchgeo's layout."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import Registry, add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "fetch"
HELP = "download a downstream evaluation set into torchgeo's layout"
DESCRIPTION = (
    "Download (resumed, md5-checked) and safely extract each SET into "
    "paths.data/downstream/SET/torchgeo, the root torchgeo reads; record what was fetched in "
    "paths.data/fetched/SET.json. URLs and md5s: downstream.SET.urls/md5s in params.yaml. UC "
    "Merced comes from `geopile ingest ucmerced` instead.")
PARAMS = "tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sets."""
    parser.add_argument("sets", nargs="*", metavar="SET", choices=Registry("sets"),
                        help="one of %(choices)s")
    parser.add_argument("--all", action="store_true", help="every set in downstream_sets")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch each set, printing its torchgeo root."""
    from geopile.downstream import fetch
    from geopile.params import ParamsError
    from geopile.sources.published import Mirrors
    from pipelines.tasks import downstream_sets

    names = settings.downstream_sets if args.all else args.sets
    if not names:
        raise ParamsError("name at least one set, or pass --all")
    published = downstream_sets()
    for name in names:
        root = fetch(name, published[name], Mirrors.of(settings.downstream.get(name)),
                     settings.paths.data, progress=not args.no_progress)
        print(f"{name}: {root}")
    return 0
