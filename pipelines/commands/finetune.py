"""``geopile finetune TASK --init ...``: one downstream task, from one encoder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common import Registry, add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "finetune"
HELP = "finetune a pretrained encoder (or a baseline) on a downstream task"
DESCRIPTION = (
    "The reference recipe of TASK's family (finetune: in params.yaml for classification, "
    "trained for epochs; finetune.dense for segmentation, change detection and "
    "super-resolution, trained for iterations) on the task's dataset, read from what `geopile "
    "ingest` or `geopile fetch` verified (fetched on first use). Each task is one file in "
    "pipelines/tasks/ stating its evaluation protocol. ben10 and ben1 train on a seeded 10%% / "
    "1%% of BigEarthNet's training split, drawn without replacement and listed in subset.json. "
    "--init: a pretraining run directory of ours (with encoder/), imagenet22k (the baseline) or "
    "random. Writes paths.runs/finetune/TASK/INIT/: metrics.json (the test scores, read by "
    "geopile arp), history.csv, config.json, checkpoints/last.pt and best.pt (best validation "
    "score).")
PARAMS = "tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The task, the init, the run's length and where it goes."""
    parser.add_argument("task", metavar="TASK", choices=Registry("tasks"),
                        help="one of %(choices)s")
    parser.add_argument("--init", required=True,
                        help="RUN_DIR (ours, e.g. runs/paper), imagenet22k or random")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="overrides finetune.epochs (classification)")
    length.add_argument("--iterations", type=int,
                        help="overrides finetune.dense.iterations (dense tasks)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run's last checkpoint")
    parser.add_argument("--out", type=Path, help="run directory")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Finetune, then print the test scores (rank 0)."""
    from geopile.params import ParamsError
    from pipelines.finetune import run_finetune
    from pipelines.tasks import get_task

    family = get_task(args.task).family
    if (args.epochs and family == "dense") or (args.iterations and family != "dense"):
        unit = "iterations" if family == "dense" else "epochs"
        raise ParamsError(f"{args.task} is a {family} task: its length is in {unit} (--{unit})")
    metrics = run_finetune(settings, args.task, args.init, resume=args.resume,
                           length=args.epochs or args.iterations,
                           progress=not args.no_progress, out=args.out)
    if metrics:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics["scores"].items())
        length = (f"{metrics['steps']} iterations" if family == "dense"
                  else f"{metrics['epochs']:g} epochs")
        val = (f"best validation {metrics['val']:.2f}" if metrics["val"] is not None
               else "last checkpoint")
        print(f"{args.task} from {metrics['init']}: test {scores} ({val}, {length})")
    return 0
