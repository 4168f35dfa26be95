"""``geopile world build|up|down`` and ``geopile demo`` (the README's first command)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import chdir
from datetime import UTC, datetime
from pathlib import Path

from geopile.atomic import write_text
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
from pipelines.workspace import dvc, make_workspace, repro


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
        print("its environment (the world's own test credentials; reads of its published hrefs "
              "go to its S3 through GEOPILE_WORLD_S3):")
        for key, value in world_env(endpoints["s3"]).items():
            print(f"export {key}={value}")
        return 0
    stopped = world_down(args.dir)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


DEMO_TIMES = "demo.json"  # the last demo's stage times, machine and load (the README's block)


def machine() -> str:
    """The CPU model and core count, for figures quoted with the machine that made them."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def record_times(path: Path, run: dict) -> None:
    """Write a demo's times to ``path``; a run where no stage ran keeps the last one that ran.

    The README quotes both: what the pipeline costs, and what a rerun with nothing to do costs.
    """
    try:
        last = json.loads(path.read_text())
    except (OSError, ValueError):
        last = {}
    if not run["stages"] and last.get("stages"):
        last["rerun"] = {k: run[k] for k in ("unchanged", "repro_s", "total_s", "load", "date")}
        run = last
    write_text(path, json.dumps(run, indent=1) + "\n")


def demo(args: argparse.Namespace) -> int:
    """Build (if needed) and start the world, ``dvc repro`` every stage in a workspace, stop."""
    from pipelines.ablation import ablation_table
    from pipelines.arp import arp_table, from_rows
    from pipelines.pretrain import run_dir
    from pipelines.pretrain import summary as pretrain_summary

    started = time.perf_counter()
    load = round(os.getloadavg()[0], 2)  # the 1-minute load when the demo began
    world: Path = args.world
    truth = world / "ground_truth.json"
    world_built = (not truth.exists() or not (world / TEACHER_FILE).exists()
                   or json.loads(truth.read_text()).get("version") != WORLD_VERSION)
    if world_built:
        build(world)  # missing, or written by an older GeoPile
    endpoints = world_up(world)
    try:
        files = [*(args.params or ["params.yaml"]), str(world / PARAMS_OVERLAY),
                 *args.overlay]
        workspace = make_workspace(args.workspace, [Path(f).resolve() for f in files])
        env = world_env(endpoints["s3"])
        times = repro(workspace, env=env)
        settings = check_params(load_params([workspace / "params.yaml"]))
        # every build's shards into a DVC remote on the world's S3 (content-addressed; the
        # endpoint and credentials from the environment, AWS_ENDPOINT_URL and friends, so a
        # restarted world on other ports needs no change): what `dvc pull` restores elsewhere
        remote = f"s3://{endpoints['bucket']}/dvc"
        dvc(workspace, "remote", "add", "--force", "--default", "world", remote, capture=True)
        builds = list(settings.builds)
        dvc(workspace, "push", *[f"shard@{b}" for b in builds], env=env)
        with chdir(workspace):
            print("\n" + curate_table(read_report(settings)))
            indexes = [read_index(str(settings.paths.shards / b)) for b in builds]
            print("\n" + shard_table(indexes))
            for build_name in settings.ablation:
                print("\n" + pretrain_summary(run_dir(settings, build_name).resolve()))
            arp_file = settings.paths.reports / "arp.json"
            if arp_file.exists():
                result = json.loads(arp_file.read_text())
                print(f"\nfinetuned on {', '.join(settings.finetune_tasks)}: "
                      f"{settings.ablation[0]} against {settings.finetune_baselines[-1]}")
                print(arp_table(from_rows(result["rows"])))
            study = settings.paths.reports / "ablation.json"
            if study.exists():
                print("\n" + ablation_table(json.loads(study.read_text())))
    finally:
        world_down(world)
    root = workspace.resolve()
    total = time.perf_counter() - started
    print("\n" + times.table())
    print(f"demo total (world up, repro, push, down): {total:.1f} s on {machine()}")
    record_times(root / settings.paths.reports / DEMO_TIMES, {
        "stages": times.ran, "unchanged": len(times.skipped), "repro_s": round(times.seconds, 1),
        "total_s": round(total, 1), "world_built": world_built, "machine": machine(),
        "load": load, "date": datetime.now(UTC).strftime("%Y-%m-%d")})
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
  finetune  {root / 'runs/finetune'}/<task>/<build or baseline>/: metrics.json, history.csv
  ablation  {root / 'reports'}/ablation.json, arp.json
  try       cd {root} && dvc metrics show && dvc plots show""")
    return 0
