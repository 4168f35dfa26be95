"""``geopile arp``: average relative performance against a baseline, beside the paper."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.common import add_params_arg

if TYPE_CHECKING:
    from geopile.settings import Settings

NAME = "arp"
HELP = "average relative performance of finetuning runs against a baseline (--ablation: per build)"
DESCRIPTION = (
    "ARP(M) = mean over the datasets both have scores for of the mean of "
    "(score(M) - score(baseline)) / score(baseline). --model/--baseline: scores from the "
    "metrics.json of finetuning runs under the paths given, with the paper's GFM and baseline "
    "numbers beside each. --ablation: one row per build of `ablation` (runs/finetune/TASK/BUILD "
    "against the last of finetune_baselines): images, ARP, per-dataset gains, and the paper's "
    "row for the same sources dropped. With neither, the paper's own ARP.")
PARAMS = "settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two sets of runs, or the ablation study; where the result goes."""
    parser.add_argument("--model", nargs="+", type=Path, default=[], metavar="PATH",
                        help="the model's run directories or metrics.json files")
    parser.add_argument("--baseline", nargs="+", type=Path, default=[], metavar="PATH",
                        help="the baseline's run directories or metrics.json files")
    parser.add_argument("--ablation", action="store_true",
                        help="the ablation study: every build of `ablation` against the baseline")
    parser.add_argument("--out", type=Path, help="write the result as JSON here (dvc metrics)")
    add_params_arg(parser)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the table (the paper's alone, with neither ``--model`` nor ``--ablation``)."""
    from pipelines import arp as arp_stage

    if args.ablation:
        from pipelines.ablation import ablation, ablation_table, write_ablation

        study = ablation(settings)
        print(ablation_table(study))
        if args.out:
            write_ablation(study, args.out)
        return 0
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
