"""What every ``geopile`` command shares: params, logging, the data directory."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from geopile.params import load_params


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` (repeatable; later files are deep-merged over earlier ones)."""
    parser.add_argument(
        "--params",
        action="append",
        metavar="FILE",
        help="parameter file (default: params.yaml); repeat to overlay, e.g. "
        "--params params.yaml --params build/world/world.params.yaml",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Configure logging and load the params named on the command line."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return load_params(args.params or ["params.yaml"])


def data_dir(params: dict[str, Any]) -> Path:
    """The data directory from ``paths.data``."""
    return Path((params.get("paths") or {}).get("data", "data"))
