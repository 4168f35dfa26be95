"""What every ``geopile`` command shares: the params arguments, logging, the registries."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopile.params import load_params
from geopile.urls import install_redaction

if TYPE_CHECKING:
    from geopile.engines import RayMapper
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


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """``--engine``/``--ray-address``: override ``ingest.engine``/``ingest.ray_address``."""
    parser.add_argument("--engine", choices=["local", "ray"],
                        help="local pool or Ray tasks (default: ingest.engine)")
    parser.add_argument("--ray-address", help="Ray cluster: auto, host:port, ray://... "
                        "(default: ingest.ray_address; none starts a local one)")


def ray_tasks(settings: Settings, engine: str | None, address: str | None) -> RayMapper | None:
    """Ray tasks under ``ingest.engine: ray`` (or ``--engine ray``); None: this process works."""
    if (engine or settings.ingest.engine) != "ray":
        return None
    from geopile.engines import RayMapper

    return RayMapper(address or settings.ingest.ray_address)


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
    if not args.verbose:  # one line per S3 client ("Found credentials in environment ...")
        logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
    return load_params(args.params or ["params.yaml"])


def checked(params: dict[str, Any], files: Sequence[str | Path] = (), *,
            with_tasks: bool = False) -> Settings:
    """The typed settings of ``params``, validated once (:func:`geopile.settings.check_params`).

    ``with_tasks``: the names that refer to tasks and downstream sets are checked against the
    task registry too (which imports torch: only for the commands that need it).
    """
    from geopile.settings import check_params

    if not with_tasks:
        return check_params(params, files)
    from pipelines.tasks import TASKS, downstream_sets

    return check_params(params, files, tasks=TASKS, sets={
        name: list(published.files) for name, published in downstream_sets().items()})


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

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        if isinstance(name, list):  # argparse checks a bare `nargs="*"` as its empty default
            return all(n in self._names() for n in name)
        return name in self._names()
