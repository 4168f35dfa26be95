"""``geopile summary``: a per-source table of what ingest recorded."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "summary"
HELP = "per-source table of what ingest recorded"
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Only the params."""
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the table of every enabled source."""
    from pipelines import ingest as stage

    print(stage.summary_table(settings.paths.data, stage.enabled_sources(settings)))
    return 0
