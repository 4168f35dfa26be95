"""``geopile world build|up|down`` and ``geopile demo`` (the README's first command)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from geopile.world.world import PARAMS_OVERLAY, build_world, world_down, world_up
from pipelines.common import data_dir, setup
from pipelines.ingest import enabled_sources, run_ingest, summary_table


def run(args: argparse.Namespace) -> int:
    """Dispatch a ``world`` action."""
    if args.world_command == "build":
        started = time.perf_counter()
        truth = build_world(args.dir, seed=args.seed, per_class=args.per_class)
        counts = {k: v["valid_images"] for k, v in truth["sources"].items()}
        print(f"built the offline world in {args.dir} in {time.perf_counter() - started:.1f}s: "
              f"{counts}, {len(truth['naip']['tiles'])} NAIP tiles")
        return 0
    if args.world_command == "up":
        endpoints = world_up(args.dir)
        print(f"S3 {endpoints['s3']}  STAC {endpoints['stac']}")
        print(f"params overlay: {args.dir / PARAMS_OVERLAY}")
        return 0
    stopped = world_down(args.dir)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """Build (if needed) and start the world, ingest every enabled source, summarise, stop."""
    world: Path = args.world
    if not (world / "ground_truth.json").exists():
        build_world(world)
    world_up(world)
    try:
        args.params = [*(args.params or ["params.yaml"]), str(world / PARAMS_OVERLAY)]
        params = setup(args)
        names = enabled_sources(params)
        data = data_dir(params)
        run_ingest(params, names, data, workers=None, progress=not args.no_progress)
        print(summary_table(data, names))
        print(f"\nrecords: {data / 'records'}/<source>.parquet (rejects beside them)")
    finally:
        world_down(world)
    return 0
