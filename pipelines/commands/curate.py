"""``geopile curate``: deduplicate, decontaminate and profile the records."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_engine_args, add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "curate"
HELP = "deduplicate, decontaminate and profile the records -> data/curated.parquet"
DESCRIPTION = (
    "Cluster exact duplicates (pixel hash) and near copies (crops of up to 10% a side, "
    "rescales, re-encodes, colour changes, mirrors, quarter turns: crop-pyramid hashes within "
    "curate.radius / total_radius, confirmed on aligned pixels at curate.min_correlation), "
    "remove every pretraining image that duplicates an image of curate.eval_sets, apply the "
    "optional entropy/nodata filters, and write data/curated.parquet (with each image's cluster: "
    "every build keeps one per cluster), reports/curate.json (counts, entropy statistics; dvc "
    "metrics), reports/duplicates.json (duplicate edges by edit kind, clusters, contaminated "
    "images) and reports/plots/*.png (entropy histograms and contact sheets per source, and the "
    "pairs either side of the threshold). With --engine ray the near-duplicate search (a task "
    "per band and query slice) and the pixel alignments run on the cluster; the result is the "
    "same as one process's.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The params, and where the search and alignments run."""
    add_params_arg(parser)
    add_engine_args(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Curate, then print the per-source table."""
    from pipelines import curate as stage

    print(stage.curate_table(stage.run_curate(settings, progress=not args.no_progress,
                                                       engine=args.engine,
                                                       ray_address=args.ray_address)))
    return 0
