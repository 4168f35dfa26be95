"""``geopile world build|up|down`` and ``geopile demo`` (the README's first command)."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import chdir
from pathlib import Path

from geopile.params import load_params
from geopile.settings import check_params
from geopile.stream import read_index
from geopile.world.downstream import FIXTURES
from geopile.world.world import (
    PARAMS_OVERLAY,
    TEACHER_FILE,
    WORLD_VERSION,
    build_world,
    world_down,
    world_env,
    world_up,
)
from pipelines.curate import curate_table, read_report
from pipelines.shard import shard_table
from pipelines.workspace import dvc, make_workspace


def build(world: Path, seed: int = 0, per_class: int = 3) -> dict:
    """The world's data (geopile) and its stand-in teacher checkpoint (a tiny Swin)."""
    from pipelines.tasks import TASKS
    from pipelines.world_teacher import make_world_teacher

    # every task's published set and the fixture that makes its copy (BigEarthNet once)
    sets = {t.dataset: (t.published, FIXTURES[t.dataset]) for t in TASKS.values()
            if t.published is not None}
    truth = build_world(world, seed=seed, per_class=per_class, downstream=sets)
    make_world_teacher(world, seed=seed)
    return truth


def run(args: argparse.Namespace) -> int:
    """Dispatch a ``world`` action."""
    if args.world_command == "build":
        started = time.perf_counter()
        truth = build(args.dir, seed=args.seed, per_class=args.per_class)
        counts = {k: v["valid_images"] for k, v in truth["sources"].items()}
        print(f"built the offline world in {args.dir} in {time.perf_counter() - started:.1f}s: "
              f"{counts}, {len(truth['naip']['tiles'])} NAIP tiles, teacher {TEACHER_FILE}")
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
    """Build (if needed) and start the world, ``dvc repro`` every stage in a workspace, stop."""
    from pipelines.arp import arp_table, from_rows
    from pipelines.pretrain import run_dir
    from pipelines.pretrain import summary as pretrain_summary

    world: Path = args.world
    truth = world / "ground_truth.json"
    if (not truth.exists() or not (world / TEACHER_FILE).exists()
            or json.loads(truth.read_text()).get("version") != WORLD_VERSION):
        build(world)  # missing, or written by an older GeoPile
    endpoints = world_up(world)
    try:
        files = [*(args.params or ["params.yaml"]), str(world / PARAMS_OVERLAY),
                 *args.overlay]
        workspace = make_workspace(args.workspace, [Path(f).resolve() for f in files])
        env = world_env(endpoints["s3"])
        dvc(workspace, "repro", env=env)
        settings = check_params(load_params([workspace / "params.yaml"]))
        # every build's shards into a DVC remote on the world's S3 (content-addressed, the
        # credentials from the environment): what `dvc pull` restores on another machine
        remote = f"s3://{endpoints['bucket']}/dvc"
        dvc(workspace, "remote", "add", "--force", "--default", "world", remote, capture=True)
        dvc(workspace, "remote", "modify", "world", "endpointurl", endpoints["s3"], capture=True)
        builds = list(settings.builds)
        dvc(workspace, "push", *[f"shard@{b}" for b in builds], env=env)
        with chdir(workspace):
            print("\n" + curate_table(read_report(settings)))
            indexes = [read_index(str(settings.paths.shards / b)) for b in builds]
            print("\n" + shard_table(indexes))
            for build_name in settings.pretrain_builds:
                print("\n" + pretrain_summary(run_dir(settings, build_name).resolve()))
            arp_file = settings.paths.reports / "arp.json"
            if arp_file.exists():
                result = json.loads(arp_file.read_text())
                print(f"\nfinetuned on {', '.join(settings.finetune_tasks)}: ours "
                      f"({settings.finetune.pretrained}) against "
                      f"{settings.finetune_inits[-1]}")
                print(arp_table(from_rows(result["rows"])))
    finally:
        world_down(world)
    root = workspace.resolve()
    print(f"\ndvc push  the shards of {len(builds)} builds -> {remote} on the world's S3 (the "
          "workspace's default DVC remote)")
    report = root / settings.paths.reports / "report.html"
    if report.exists():
        print(f"\nreport    {report}  (open it in a browser; Markdown: report.md)")
    print(f"""
results (a DVC workspace running this repository's dvc.yaml on the offline world):
  records   {root / 'data/records'}/<source>.parquet
  curated   {root / 'data/curated.parquet'}
  reports   {root / 'reports'}/curate.json, duplicates.json, plots/*.png
  shards    {root / 'shards'}/<build>/*.tar + index.json
  runs      {root / 'runs'}/<build>/: loss.png, metrics.json, energy.json, encoder/, tb/
  finetune  {root / 'runs/finetune'}/<task>/<init>/: metrics.json, history.csv; reports/arp.json
  try       cd {root} && dvc metrics show && dvc plots show""")
    return 0
