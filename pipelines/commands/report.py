"""``geopile report``: one self-contained HTML page (and a Markdown twin) of the run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "report"
HELP = ("one self-contained HTML page (and a Markdown twin) of the run: curation, pretraining, "
        "ARP")
DESCRIPTION = (
    "Reads what the stages wrote (reports/curate.json, duplicates.json, the plots, runs/BUILD/ "
    "metrics, loss curves and energy, reports/arp.json) and writes OUT.html (images embedded) "
    "and OUT.md (images in OUT_files/).")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the page goes, and how many examples it shows."""
    parser.add_argument("--out", type=Path, help="default: paths.reports/report")
    parser.add_argument("--examples", type=int, default=8,
                        help="duplicate and contaminant pairs shown (default 8)")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write the page."""
    from pipelines.report import build_report

    html_path, md_path = build_report(settings, args.out or settings.paths.reports / "report",
                                      examples=args.examples)
    print(f"report: {html_path.resolve()}\n        {md_path.resolve()}")
    return 0
