"""``geopile world build|up|down DIR``: the offline world (loopback STAC + S3 + archives)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.common import add_params_arg

NAME = "world"
HELP = "build, start or stop the offline world (loopback STAC + S3 + archives)"
PARAMS = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``build`` / ``up`` / ``down`` and their directory."""
    actions = parser.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="generate the world's archives, COGs and ground "
                               "truth")
    build.add_argument("dir", type=Path, help="world directory (replaced if present)")
    build.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    build.add_argument("--per-class", type=int, default=3, help="images per class (default 3)")
    up = actions.add_parser("up", help="start the servers; writes DIR/world.params.yaml")
    up.add_argument("dir", type=Path)
    down = actions.add_parser("down", help="stop the servers (SIGTERM, then SIGKILL)")
    down.add_argument("dir", type=Path)
    for action in (build, up, down):
        add_params_arg(action)


def run(args: argparse.Namespace, settings: None) -> int:
    """Build, start or stop the world."""
    from pipelines import world as world_stage

    return world_stage.run(args)
