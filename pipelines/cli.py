"""The ``geopile`` command line: one sub-command per stage, each a thin shell over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geopile.atomic import disk_error
from geopile.params import ParamsError
from geopile.sources import list_sources
from geopile.urls import redact
from geopile.writelock import set_command
from pipelines.common import add_params_arg, data_dir, setup


class Registry:
    """The task registry's names (``tasks``) or downstream sets (``sets``), read when asked.

    argparse checks a value against it (``in``) and lists it in ``--help`` (iteration) only
    then: the registry imports torch, which the data commands do not need.
    """

    def __init__(self, what: str) -> None:
        self.what = what

    def _names(self) -> list[str]:
        from pipelines.tasks import downstream_sets, list_tasks

        return list_tasks() if self.what == "tasks" else list(downstream_sets())

    def __iter__(self):  # noqa: ANN204 - an iterator of names
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        if isinstance(name, list):  # argparse checks a bare `nargs="*"` as its empty default
            return all(n in self._names() for n in name)
        return name in self._names()

EPILOG = """examples:
  geopile world build build/world && geopile world up build/world
  geopile ingest --params params.yaml --params build/world/world.params.yaml --all
  geopile curate --params params.yaml --params build/world/world.params.yaml
  geopile shard paper --params params.yaml --params build/world/world.params.yaml
  geopile push paper --params params.yaml --params build/world/world.params.yaml
  geopile pretrain paper --params params.yaml --params build/world/world.params.yaml
  torchrun --nproc-per-node 8 -m pipelines.cli pretrain paper --resume
  geopile world down build/world
"""


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    """``--engine``/``--ray-address``: override ``ingest.engine``/``ingest.ray_address``."""
    parser.add_argument("--engine", choices=["local", "ray"],
                        help="local pool or Ray tasks (default: ingest.engine)")
    parser.add_argument("--ray-address", help="Ray cluster: auto, host:port, ray://... "
                        "(default: ingest.ray_address; none starts a local one)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geopile",
        description="Rebuild GeoPile (the GFM pretraining corpus) from its original sources.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    world = sub.add_parser(
        "world", help="build, start or stop the offline world (loopback STAC + S3 + archives)"
    )
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    build = wsub.add_parser("build", help="generate the world's archives, COGs and ground truth")
    build.add_argument("dir", type=Path, help="world directory (replaced if present)")
    build.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    build.add_argument("--per-class", type=int, default=3, help="images per class (default 3)")
    up = wsub.add_parser("up", help="start the servers; writes DIR/world.params.yaml")
    up.add_argument("dir", type=Path)
    down = wsub.add_parser("down", help="stop the servers (SIGTERM, then SIGKILL)")
    down.add_argument("dir", type=Path)
    for p in (build, up, down):
        add_params_arg(p)

    ingest = sub.add_parser(
        "ingest",
        help="download, verify and record sources into data/records/SOURCE.parquet",
        description="Fetch each source (download with resume + checksum, safe extraction, or "
        "STAC search + windowed COG reads for NAIP), decode every image once, and record "
        "hashes, perceptual hash, entropy and provenance. Resumable: rerun after a kill. "
        f"Source types: {', '.join(list_sources())}.",
    )
    ingest.add_argument("sources", nargs="*", help="source names under `sources:` in params")
    ingest.add_argument("--all", action="store_true", help="every enabled source")
    ingest.add_argument("--workers", type=int, help="parallel workers (default from params)")
    _add_engine_args(ingest)
    add_params_arg(ingest)

    summary = sub.add_parser("summary", help="per-source table of what ingest recorded")
    add_params_arg(summary)

    curate = sub.add_parser(
        "curate",
        help="deduplicate, decontaminate and profile the records -> data/curated.parquet",
        description="Cluster exact duplicates (pixel hash) and near copies (crops of up to "
        "10% a side, rescales, re-encodes, colour changes, mirrors, quarter turns: crop-pyramid "
        "hashes within curate.radius / total_radius, confirmed on aligned pixels at "
        "curate.min_correlation), remove every pretraining image that duplicates an image of "
        "curate.eval_sets, apply the optional entropy/nodata filters, and write "
        "data/curated.parquet (with each image's cluster: every build keeps one per cluster), "
        "reports/curate.json (counts, entropy statistics; dvc metrics), "
        "reports/duplicates.json (duplicate edges by edit kind, clusters, contaminated images) "
        "and reports/plots/*.png (entropy histograms and contact sheets per source, and the "
        "pairs either side of the threshold).",
    )
    add_params_arg(curate)

    shard = sub.add_parser(
        "shard",
        help="write a build as WebDataset shards -> shards/BUILD/*.tar + index.json",
        description="Keep one image per duplicate cluster among the build's sources (by "
        "curate.priority), sample each source to its cap exactly (builds: in params; "
        "deterministic for the seed; a source with too few images stops the build unless it "
        "says allow_short: true), shuffle across sources, and write reproducible tar shards "
        "with an index.json (counts, what curation removed per source, per-shard sha256, "
        "sample keys and byte offsets) and a dataset card. --to writes TO/BUILD instead: a "
        "directory every Ray node mounts, or s3://bucket/prefix, each shard uploaded as it is "
        "finished (by the Ray task that wrote it) and index.json last.",
    )
    shard.add_argument("builds", nargs="*", metavar="BUILD", help="build names under `builds:`")
    shard.add_argument("--all", action="store_true", help="every build")
    shard.add_argument("--to", metavar="DIR_OR_S3_URL",
                       help="write TO/BUILD (a shared directory or s3://bucket/prefix; "
                       "default: paths.shards). S3 credentials: boto3's chain, on every node")
    _add_engine_args(shard)
    add_params_arg(shard)

    push = sub.add_parser(
        "push",
        help="upload a build's shards to pretrain.stream.url/BUILD (S3) for streaming",
        description="Upload shards/BUILD (tars, then index.json) to s3://bucket/prefix/BUILD "
        "(--to, default pretrain.stream.url), skipping shards already there with the same "
        "sha256. Credentials: boto3's standard chain; AWS_ENDPOINT_URL for other stores. "
        "With no URL configured there is nothing to do (training reads the local shards).",
    )
    push.add_argument("builds", nargs="+", metavar="BUILD")
    push.add_argument("--to", metavar="S3_URL", help="s3://bucket/prefix (default: "
                      "pretrain.stream.url)")
    add_params_arg(push)

    verify = sub.add_parser(
        "verify",
        help="check a build (yours or a bucket's) against its index: every shard and sample",
        description="Validate BUILD's index.json (shard names, sizes, offsets, counts, "
        "checksums: what GeoPile trusts, see the README's Trust model), check that every shard "
        "is there with its size, then read every byte once: each shard against its sha256, "
        "each sample against its xxh3. BUILD is a build name under paths.shards, a directory "
        "or s3://bucket/prefix/BUILD. Exit status 1 when something is damaged.",
    )
    verify.add_argument("builds", nargs="+", metavar="BUILD",
                        help="a build name, a directory holding index.json, or an s3:// URL")
    add_params_arg(verify)

    pretrain = sub.add_parser(
        "pretrain",
        help="GFM continual pretraining (SimMIM + distillation) on a build's shards",
        description="Train the masked Swin student on BUILD's shards (local, or streamed from "
        "pretrain.stream.url/BUILD on S3) with L = L_MIM + alpha * L_feat against the frozen "
        "teacher (pretrain.teacher: a timm name, or a local checkpoint file). Settings: "
        "`pretrain:` in params.yaml. Under torchrun each process trains one GPU (or CPU "
        "process): torchrun --nproc-per-node N -m pipelines.cli pretrain BUILD. Writes "
        "paths.runs/BUILD/: checkpoints/last.pt, loss.csv + loss.png, metrics.json, "
        "energy.json, tb/ (TensorBoard) and encoder/ (timm and GFM-layout weights).",
    )
    pretrain.add_argument("build", metavar="BUILD")
    pretrain.add_argument("--resume", action="store_true",
                          help="continue from the run's checkpoint if it matches the settings "
                          "and shards (otherwise start afresh)")
    pretrain.add_argument("--steps", type=int, help="optimiser steps (overrides pretrain.steps)")
    pretrain.add_argument("--out", type=Path, help="run directory (default paths.runs/BUILD)")
    pretrain.add_argument("--shards", metavar="DIR_OR_S3_URL",
                          help="read the build from here (a directory or s3://bucket/prefix/"
                          "BUILD holding index.json) instead of pretrain.stream.url / "
                          "paths.shards")
    add_params_arg(pretrain)

    fetch = sub.add_parser(
        "fetch",
        help="download a downstream evaluation set into torchgeo's layout",
        description="Download (resumed, md5-checked) and safely extract each SET into "
        "paths.data/downstream/SET/torchgeo, the root torchgeo reads; record what was fetched in "
        "paths.data/fetched/SET.json. URLs and md5s: downstream.SET.urls/md5s in params.yaml. "
        "UC Merced comes from `geopile ingest ucmerced` instead.",
    )
    fetch.add_argument("sets", nargs="*", metavar="SET", choices=Registry("sets"),
                       help="one of %(choices)s")
    fetch.add_argument("--all", action="store_true", help="every set in downstream_sets")
    add_params_arg(fetch)

    sources = sub.add_parser(
        "sources",
        help="list every mirror of every file to download; --check asks each one",
        description="Every enabled source and every downstream_sets entry: each published "
        "file's mirrors in the order a download tries them (your urls.<file> first, then the "
        "publisher, then re-hosts). --check asks each mirror in parallel (HEAD, else a 1-byte "
        "Range GET) and prints a table: status, size, and which mirror a download would use; "
        "exit status 1 if some file has no mirror that answers. Query strings are never shown.",
    )
    sources.add_argument("--check", action="store_true", help="ask every mirror (network)")
    sources.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for each mirror (default 10)")
    add_params_arg(sources)

    finetune = sub.add_parser(
        "finetune",
        help="finetune a pretrained encoder (or a baseline) on a downstream task",
        description="The reference recipe of TASK's family (finetune: in params.yaml for "
        "classification, trained for epochs; finetune.dense for segmentation, change "
        "detection and super-resolution, trained for iterations) on the task's dataset, "
        "read from what `geopile ingest` or `geopile fetch` verified (fetched on first use). "
        "Each task is one file in pipelines/tasks/ stating its evaluation protocol. ben10 and "
        "ben1 train on a seeded 10%% / 1%% of BigEarthNet's training split, drawn without "
        "replacement and listed in subset.json. --init: a pretraining run directory of ours "
        "(with encoder/), imagenet22k (the baseline) or random. Writes "
        "paths.runs/finetune/TASK/INIT/: metrics.json (the test scores, read by geopile arp), "
        "history.csv, config.json, checkpoints/last.pt and best.pt (best validation score).",
    )
    finetune.add_argument("task", metavar="TASK", choices=Registry("tasks"),
                          help="one of %(choices)s")
    finetune.add_argument("--init", required=True,
                          help="RUN_DIR (ours, e.g. runs/paper), imagenet22k or random")
    length = finetune.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="overrides finetune.epochs (classification)")
    length.add_argument("--iterations", type=int,
                        help="overrides finetune.dense.iterations (dense tasks)")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from the run's last checkpoint")
    finetune.add_argument("--out", type=Path, help="run directory")
    add_params_arg(finetune)

    arp = sub.add_parser(
        "arp",
        help="average relative performance of a model's finetuning runs against a baseline's",
        description="ARP(M) = mean over the (task, metric) scores both have of "
        "(score(M) - score(baseline)) / score(baseline). Scores come from the metrics.json "
        "of finetuning runs under the paths given. The table shows the paper's GFM and "
        "baseline numbers beside each score; with no --model, the paper's own ARP.",
    )
    arp.add_argument("--model", nargs="+", type=Path, default=[], metavar="PATH",
                     help="the model's run directories or metrics.json files")
    arp.add_argument("--baseline", nargs="+", type=Path, default=[], metavar="PATH",
                     help="the baseline's run directories or metrics.json files")
    arp.add_argument("--out", type=Path, help="write the result as JSON here (dvc metrics)")

    report = sub.add_parser(
        "report",
        help="one self-contained HTML page (and a Markdown twin) of the run: curation, "
        "pretraining, ARP",
        description="Reads what the stages wrote (reports/curate.json, duplicates.json, the "
        "plots, runs/BUILD/ metrics, loss curves and energy, reports/arp.json) and writes "
        "OUT.html (images embedded) and OUT.md (images in OUT_files/).",
    )
    report.add_argument("--out", type=Path, help="default: paths.reports/report")
    report.add_argument("--examples", type=int, default=8,
                        help="duplicate and contaminant pairs shown (default 8)")
    add_params_arg(report)

    demo = sub.add_parser(
        "demo",
        help="build and start the offline world, `dvc repro` the whole pipeline on it, stop it",
        description="What `make demo` runs: build the offline world (if missing or older than "
        "this GeoPile), start its servers, create a DVC workspace whose params.yaml is --params "
        "merged with the world's overlay (then --overlay), and run this repository's dvc.yaml "
        "there with `dvc repro`: ingest every source, curate, write every build with its card, "
        "push `paper` to the world's S3, pretrain the `tiny` model streaming from there, fetch "
        "the downstream sets, finetune it and a random-init baseline on every task, ARP and the "
        "report. Prints the tables and where the report is, and stops the servers.",
    )
    demo.add_argument("--world", type=Path, default=Path("build/world"), help="world directory")
    demo.add_argument("--workspace", type=Path, default=Path("build/demo"),
                      help="DVC workspace for the run (default build/demo)")
    demo.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                      help="params merged after the world's overlay (repeatable), e.g. "
                      "finetune_tasks for all eight tasks")

    workspace = sub.add_parser(
        "workspace",
        help="make a DVC workspace that runs dvc.yaml on merged --params files",
        description="Create DIR with a copy of dvc.yaml and a params.yaml merged from the "
        "--params files, and `dvc init` it; then `cd DIR && dvc repro`. This runs the pipeline "
        "on other parameters (the offline world, a mirror, a small build) without editing "
        "params.yaml.",
    )
    workspace.add_argument("dir", type=Path)
    add_params_arg(demo)
    add_params_arg(workspace)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``geopile`` console script."""
    args = _parser().parse_args(argv)
    set_command(" ".join(["geopile", args.command, *_first_name(args)]))
    try:
        return _dispatch(args)
    except (ParamsError, FileNotFoundError, ValueError, RuntimeError) as err:
        # redacted: an error may quote a signed URL (a SAS token, a presigned S3 signature)
        print(f"geopile: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk, wherever it is met: one line, no trace
        failed = disk_error(err, Path(err.filename or "."))
        if failed is None:
            raise
        print(f"geopile: error: {redact(str(failed))}", file=sys.stderr)
        return 2


def _first_name(args: argparse.Namespace) -> list[str]:
    """The first source, build or task a command names, for the locks it leaves."""
    for field in ("sources", "builds", "build", "task", "world_command"):
        value = getattr(args, field, None)
        if value:
            return [value[0] if isinstance(value, list) else str(value)]
    return []


def _dispatch(args: argparse.Namespace) -> int:
    # each command imports only its own stage: DVC runs one process per stage, and torch,
    # timm and friends cost seconds to import
    if args.command in ("world", "demo"):
        from pipelines import world as world_stage

        return world_stage.run(args) if args.command == "world" else world_stage.demo(args)
    if args.command == "arp":
        from pipelines import arp as arp_stage

        if not args.model:
            print("the paper's scores (FACTS.md): GFM against the ImageNet-22k Swin-B")
            print(arp_stage.arp_table(arp_stage.paper_arp(), paper=False,
                                      labels=("GFM", "22k")))
            return 0
        if not args.baseline:
            raise ValueError("--model needs --baseline (the runs to compare against)")
        result = arp_stage.arp(arp_stage.read_scores(args.model),
                               arp_stage.read_scores(args.baseline))
        print(arp_stage.arp_table(result))
        if args.out:
            arp_stage.write_arp(result, args.out)
        return 0
    if args.command == "workspace":
        from pipelines.workspace import make_workspace

        made = make_workspace(args.dir, [Path(f).resolve() for f in args.params or ["params.yaml"]])
        print(f"workspace ready: cd {made} && dvc repro")
        return 0
    params = setup(args)
    # every bad value, by key, before any work; the commands that read tasks also check the
    # names against the task registry (which imports torch: not for the data stages)
    if args.command in ("finetune", "fetch", "sources"):
        from pipelines.common import load_settings as check_params
    else:
        from geopile.settings import check_params
    check_params(params, args.params or ["params.yaml"])
    data = data_dir(params)
    if args.command in ("ingest", "summary"):
        from pipelines import ingest as ingest_stage
    if args.command == "ingest":
        from geopile.schema import too_many_workers

        if args.workers is not None and (args.workers < 1 or too_many_workers(args.workers)):
            why = too_many_workers(args.workers) or "must be 1 or more"
            raise ParamsError(f"--workers: {args.workers} is invalid: {why}")
        names = ingest_stage.enabled_sources(params) if args.all else args.sources
        if not names:
            raise ParamsError("name at least one source, or pass --all")
        ingest_stage.run_ingest(
            params, names, data, workers=args.workers, progress=not args.no_progress,
            engine=args.engine, ray_address=args.ray_address,
        )
        print(ingest_stage.summary_table(data, names))
        return 0
    if args.command == "curate":
        from pipelines import curate as curate_stage

        report = curate_stage.run_curate(params, data, progress=not args.no_progress)
        print(curate_stage.curate_table(report))
        return 0
    if args.command == "shard":
        from pipelines import shard as shard_stage

        names = shard_stage.build_names(params) if args.all else args.builds
        if not names:
            raise ParamsError("name at least one build, or pass --all")
        indexes = [shard_stage.run_shard(params, b, data, progress=not args.no_progress,
                                         engine=args.engine, ray_address=args.ray_address,
                                         to=args.to)
                   for b in names]
        print(shard_stage.shard_table(indexes))
        return 0
    if args.command == "push":
        from geopile.writelock import build_lock, write_lock
        from pipelines.push import push_build
        from pipelines.shard import shards_dir

        base = args.to or ((params.get("pretrain") or {}).get("stream") or {}).get("url")
        if not base:
            print("pretrain.stream.url is not set: nothing to push (training reads local shards)")
            return 0
        for build in args.builds:
            with write_lock(build_lock(shards_dir(params), build), f"build {build}"):
                done = push_build(shards_dir(params) / build, f"{base.rstrip('/')}/{build}",
                                  progress=not args.no_progress)
            print(f"{build}: {done['sent']} shards sent, {done['skipped']} already there "
                  f"-> {done['url']}")
        return 0
    if args.command == "verify":
        from pipelines.shard import shards_dir
        from pipelines.verify import verify_build, verify_table

        damaged = 0
        for build in args.builds:
            where = build if "/" in build or build.startswith("s3://") \
                else str(shards_dir(params) / build)
            result = verify_build(where, progress=not args.no_progress)
            print(verify_table(result))
            damaged += result["damaged"]
        return 1 if damaged else 0
    if args.command == "pretrain":
        from pipelines.pretrain import run_dir, run_pretrain, summary

        out = args.out or run_dir(params, args.build)
        metrics = run_pretrain(params, args.build, resume=args.resume, steps=args.steps,
                               progress=not args.no_progress, out=out, shards=args.shards)
        if metrics:
            print(summary(out))
        return 0
    if args.command == "report":
        from pipelines.curate import reports_dir
        from pipelines.report import build_report

        html_path, md_path = build_report(params, data, args.out or reports_dir(params) / "report",
                                          examples=args.examples)
        print(f"report: {html_path.resolve()}\n        {md_path.resolve()}")
        return 0
    if args.command == "fetch":
        from geopile.downstream import fetch
        from pipelines.tasks import downstream_sets

        names = (params.get("downstream_sets") or []) if args.all else args.sets
        if not names:
            raise ParamsError("name at least one set, or pass --all")
        published = downstream_sets()
        for name in names:
            root = fetch(name, published[name], params, data, progress=not args.no_progress)
            print(f"{name}: {root}")
        return 0
    if args.command == "sources":
        from pipelines.sources_check import run as sources_run

        return sources_run(params, do_check=args.check, timeout_s=args.timeout)
    if args.command == "finetune":
        from pipelines.finetune import run_finetune
        from pipelines.tasks import get_task

        family = get_task(args.task).family
        if (args.epochs and family == "dense") or (args.iterations and family != "dense"):
            unit = "iterations" if family == "dense" else "epochs"
            raise ParamsError(f"{args.task} is a {family} task: its length is in {unit} "
                              f"(--{unit})")
        metrics = run_finetune(params, args.task, args.init, resume=args.resume,
                               length=args.epochs or args.iterations,
                               progress=not args.no_progress, out=args.out)
        if metrics:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics["scores"].items())
            length = (f"{metrics['steps']} iterations" if family == "dense"
                      else f"{metrics['epochs']:g} epochs")
            val = f"best validation {metrics['val']:.2f}" if metrics["val"] is not None \
                else "last checkpoint"
            print(f"{args.task} from {metrics['init']}: test {scores} ({val}, {length})")
        return 0
    if args.command == "summary":
        print(ingest_stage.summary_table(data, ingest_stage.enabled_sources(params)))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
