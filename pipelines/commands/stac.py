"""``geopile stac inspect SOURCE``: a dry run of a STAC source against its catalog."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "stac"
HELP = "inspect a STAC source: items per stratum, each asset's grid and values, what is skipped"
DESCRIPTION = (
    "geopile stac inspect SOURCE searches the source's catalog as ingest would and reads no "
    "pixel: items per stratum and their quotas; for each kind of item, every asset's grid as "
    "GeoPile will read it (pixel size, shape, and whether it came from the asset's proj:*, the "
    "item's, or raster:bands spatial_resolution; a gsd alone is never used), its pixel type, "
    "nodata, scale, offset, unit and common name; and the items that would be skipped, with why "
    "(a missing asset, no grid, a grid in degrees without target_gsd: native, a GSD not in "
    "sources.naip.gsds). Exit status 1 if nothing could be sampled.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``inspect SOURCE`` and how many example items per kind of grid."""
    parser.add_argument("action", choices=["inspect"], help="what to do (inspect: a dry run)")
    parser.add_argument("source", metavar="SOURCE", help="a source of type stac or naip")
    parser.add_argument("--examples", type=int, default=1,
                        help="items shown per distinct set of grids (default 1)")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Search, print the report; 1 if no item can be sampled."""
    from geopile.params import ParamsError
    from geopile.sources import create_source
    from geopile.sources.stac import StacSource
    from geopile.stac import StacError
    from pipelines.stac_inspect import inspect

    if args.source not in settings.sources:
        raise ParamsError(f"no source {args.source!r} under sources: (known: "
                          f"{', '.join(settings.sources)})")
    source = create_source(args.source, settings.sources[args.source], settings.paths.data,
                           seed=settings.seed, progress=False)
    if not isinstance(source, StacSource):
        raise ParamsError(f"sources.{args.source} is of type {source.kind}: inspect reads STAC "
                          "sources (type stac or naip)")
    try:
        print(inspect(source, args.examples))
    except StacError as err:
        print(f"geopile stac inspect: {err}")
        return 1
    return 0
