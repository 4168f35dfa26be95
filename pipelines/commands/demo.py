"""``geopile demo``: what ``make demo`` runs (the world, ``dvc repro``, the tables)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common import add_params_arg

NAME = "demo"
HELP = "build and start the offline world, `dvc repro` the whole pipeline on it, stop it"
DESCRIPTION = (
    "What `make demo` runs: build the offline world (if missing or older than this GeoPile), "
    "start its servers, create a DVC workspace whose params.yaml is --params merged with the "
    "world's overlay (then --overlay), and run this repository's dvc.yaml there with `dvc "
    "repro`: ingest every source, curate, write every build with its card, push `paper` to the "
    "world's S3, pretrain the `tiny` model streaming from there, fetch the downstream sets, "
    "finetune it and a random-init baseline on every task, ARP and the report. Prints the "
    "tables and where the report is, and stops the servers.")
PARAMS = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The world and workspace directories, and overlays."""
    parser.add_argument("--world", type=Path, default=Path("build/world"),
                        help="world directory")
    parser.add_argument("--workspace", type=Path, default=Path("build/demo"),
                        help="DVC workspace for the run (default build/demo)")
    parser.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                        help="params merged after the world's overlay (repeatable), e.g. "
                        "finetune_tasks for all eight tasks")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: None) -> int:
    """The demo, end to end."""
    from pipelines import world as world_stage

    return world_stage.demo(args)
