"""What every ``geopile`` command shares: params, logging, the data directory."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopile.params import load_params, path_of
from geopile.urls import install_redaction

if TYPE_CHECKING:
    from geopile.settings import Settings


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
    """Configure logging and load the params named on the command line.

    Every handler is redacted here, once (:func:`geopile.urls.install_redaction`): SAS tokens
    and presigned-URL signatures reach log records through GDAL, botocore and urllib3, and
    ``-v`` would print them all.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction()
    return load_params(args.params or ["params.yaml"])


def data_dir(params: dict[str, Any]) -> Path:
    """The data directory from ``paths.data``."""
    return path_of(params, "data")


def load_settings(params: dict[str, Any], files: Sequence[str | Path] = ()) -> Settings:
    """The typed settings of ``params``, checked against the schema and the task registry."""
    from geopile.settings import check_params
    from pipelines.tasks import TASKS, downstream_sets

    return check_params(params, files, tasks=TASKS, sets={
        name: list(published.files) for name, published in downstream_sets().items()})
