"""``geopile workspace DIR``: a DVC workspace running ``dvc.yaml`` on merged params files."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common import add_params_arg

NAME = "workspace"
HELP = "make a DVC workspace that runs dvc.yaml on merged --params files"
DESCRIPTION = (
    "Create DIR with a copy of dvc.yaml and a params.yaml merged from the --params files, and "
    "`dvc init` it; then `cd DIR && dvc repro`. This runs the pipeline on other parameters "
    "(the offline world, a mirror, a small build) without editing params.yaml.")
PARAMS = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workspace directory."""
    parser.add_argument("dir", type=Path)
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: None) -> int:
    """Make (or refresh) the workspace."""
    from pipelines.workspace import make_workspace

    made = make_workspace(args.dir, [Path(f).resolve() for f in args.params or ["params.yaml"]])
    print(f"workspace ready: cd {made} && dvc repro")
    return 0
