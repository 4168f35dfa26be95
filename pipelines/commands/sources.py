"""``geopile sources [--check]``: every mirror of every file to download."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "sources"
HELP = "list every mirror of every file to download; --check asks each one"
DESCRIPTION = (
    "Every enabled source and every downstream_sets entry: each published file's mirrors in "
    "the order a download tries them (your urls.<file> first, then the publisher, then "
    "re-hosts). --check asks each mirror in parallel (HEAD, else a 1-byte Range GET) and prints "
    "a table: status, size, and which mirror a download would use; exit status 1 if some file "
    "has no mirror that answers. Query strings are never shown.")
PARAMS = "tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Whether to ask the mirrors, and how long to wait."""
    parser.add_argument("--check", action="store_true", help="ask every mirror (network)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each mirror (default 10)")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """List (or check) the mirrors."""
    from pipelines.sources_check import run as sources_run

    return sources_run(settings, do_check=args.check, timeout_s=args.timeout)
