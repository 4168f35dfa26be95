"""``geopile ingest SOURCE... | --all``: fetch, verify and record sources."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from geopile.sources import list_sources
from pipelines.common import add_engine_args, add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "ingest"
HELP = "download, verify and record sources into data/records/SOURCE.parquet"
DESCRIPTION = (
    "Fetch each source (download with resume + checksum, safe extraction, or STAC search + "
    "windowed COG reads for NAIP), decode every image once, and record hashes, perceptual hash, "
    f"entropy and provenance. Resumable: rerun after a kill. Source types: "
    f"{', '.join(list_sources())}.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sources, the workers and the engine."""
    parser.add_argument("sources", nargs="*", help="source names under `sources:` in params")
    parser.add_argument("--all", action="store_true", help="every enabled source")
    parser.add_argument("--workers", type=int, help="parallel workers (default from params)")
    add_engine_args(parser)
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Ingest, then print what was recorded."""
    from geopile.params import ParamsError
    from geopile.schema import too_many_workers
    from pipelines import ingest as stage

    if args.workers is not None and (args.workers < 1 or too_many_workers(args.workers)):
        why = too_many_workers(args.workers) or "must be 1 or more"
        raise ParamsError(f"--workers: {args.workers} is invalid: {why}")
    names = stage.enabled_sources(settings) if args.all else args.sources
    if not names:
        raise ParamsError("name at least one source, or pass --all")
    stage.run_ingest(settings, names, workers=args.workers, progress=not args.no_progress,
                     engine=args.engine, ray_address=args.ray_address)
    print(stage.summary_table(settings.paths.data, names))
    return 0
