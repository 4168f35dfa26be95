"""``geopile pretrain BUILD``: GFM continual pretraining on a build's shards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "pretrain"
HELP = "GFM continual pretraining (SimMIM + distillation) on a build's shards"
DESCRIPTION = (
    "Train the masked Swin student on BUILD's shards (local, or streamed from "
    "pretrain.stream.url/BUILD on S3) with L = L_MIM + alpha * L_feat against the frozen "
    "teacher (pretrain.teacher: a timm name, or a local checkpoint file). Settings: `pretrain:` "
    "in params.yaml. Under torchrun each process trains one GPU (or CPU process): torchrun "
    "--nproc-per-node N -m pipelines.cli pretrain BUILD. Writes paths.runs/BUILD/: "
    "checkpoints/last.pt, loss.csv + loss.png, metrics.json, energy.json, tb/ (TensorBoard) and "
    "encoder/ (timm and GFM-layout weights).")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The build, the run's length and where it reads and writes."""
    parser.add_argument("build", metavar="BUILD")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's checkpoint if it matches the settings and "
                        "shards (otherwise start afresh)")
    parser.add_argument("--steps", type=int, help="optimiser steps (overrides pretrain.steps)")
    parser.add_argument("--out", type=Path, help="run directory (default paths.runs/BUILD)")
    parser.add_argument("--shards", metavar="DIR_OR_S3_URL",
                        help="read the build from here (a directory or s3://bucket/prefix/BUILD "
                        "holding index.json) instead of pretrain.stream.url / paths.shards")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Pretrain, then print the run's summary (rank 0)."""
    from pipelines.pretrain import run_dir, run_pretrain, summary

    out = args.out or run_dir(settings, args.build)
    metrics = run_pretrain(settings, args.build, resume=args.resume, steps=args.steps,
                           progress=not args.no_progress, out=out, shards=args.shards)
    if metrics:
        print(summary(out))
    return 0
