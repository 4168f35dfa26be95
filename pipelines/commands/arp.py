"""``geopile arp --model RUNS --baseline RUNS``: average relative performance, beside the paper."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "arp"
HELP = "average relative performance of a model's finetuning runs against a baseline's"
DESCRIPTION = (
    "ARP(M) = mean over the (task, metric) scores both have of "
    "(score(M) - score(baseline)) / score(baseline). Scores come from the metrics.json of "
    "finetuning runs under the paths given. The table shows the paper's GFM and baseline "
    "numbers beside each score; with no --model, the paper's own ARP.")
PARAMS = "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two sets of runs, and where the result goes."""
    parser.add_argument("--model", nargs="+", type=Path, default=[], metavar="PATH",
                        help="the model's run directories or metrics.json files")
    parser.add_argument("--baseline", nargs="+", type=Path, default=[], metavar="PATH",
                        help="the baseline's run directories or metrics.json files")
    parser.add_argument("--out", type=Path, help="write the result as JSON here (dvc metrics)")


def run(args: argparse.Namespace, settings: None) -> int:
    """Print the ARP table (the paper's alone, without ``--model``)."""
    from pipelines import arp as arp_stage

    if not args.model:
        print("the paper's scores (FACTS.md): GFM against the ImageNet-22k Swin-B")
        print(arp_stage.arp_table(arp_stage.paper_arp(), paper=False, labels=("GFM", "22k")))
        return 0
    if not args.baseline:
        raise ValueError("--model needs --baseline (the runs to compare against)")
    result = arp_stage.arp(arp_stage.read_scores(args.model),
                           arp_stage.read_scores(args.baseline))
    print(arp_stage.arp_table(result))
    if args.out:
        arp_stage.write_arp(result, args.out)
    return 0
