"""The ablation study: ARP of every build of ``ablation`` against the baseline, beside the paper.

Each build of ``ablation`` is pretrained and every task is finetuned from it
(``runs/finetune/<task>/<build>``); each baseline once per task (``runs/finetune/<task>/<init>``).
A build's row: its images (its ``index.json``), ARP against the last baseline over the tasks
both have, the per-dataset gains ARP averages, and the paper's row for the same sources dropped
(relative to the first build of ``ablation``, the paper's GeoPile), with its image count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geopile.atomic import write_text
from geopile.settings import Settings
from geopile.stream import read_index
from pipelines.arp import arp, read_scores

# The GFM paper's source ablation (its ablation table; ARP in % against ImageNet-22k, images
# from FACTS.md section 2), by the sources a build lacks relative to GeoPile.
CURATED = frozenset({"rsd46", "mlrsnet", "resisc45", "patternnet"})
PAPER_ABLATION: dict[frozenset[str], tuple[str, float, int]] = {
    frozenset(): ("GeoPile", 3.31, 560_954),
    frozenset({"rsd46"}): ("w/o RSD46-WHU", 2.87, 444_061),
    frozenset({"mlrsnet"}): ("w/o MLRSNet", 3.30, 451_793),
    frozenset({"resisc45"}): ("w/o RESISC45", 2.72, 529_454),
    frozenset({"patternnet"}): ("w/o PatternNet", 2.98, 557_554),
    CURATED: ("w/o curated datasets", 1.62, 300_000),
    frozenset({"naip"}): ("w/o NAIP", 2.65, 260_954),
}


def _runs(settings: Settings, init: str) -> list[Path]:
    """The finetuning runs of one init (a build or a baseline) that finished, one per task."""
    root = settings.paths.runs / "finetune"
    return [root / task / init / "metrics.json" for task in settings.finetune_tasks
            if (root / task / init / "metrics.json").exists()]


def _images(settings: Settings, build: str) -> int | None:
    folder = settings.paths.shards / build
    return read_index(str(folder))["samples"] if (folder / "index.json").exists() else None


def ablation(settings: Settings) -> dict[str, Any]:
    """Every build's row (see the module); builds without finished runs have ``arp`` None."""
    baseline = settings.finetune_baselines[-1]
    base = read_scores(_runs(settings, baseline))
    reference = set(settings.builds[settings.ablation[0]].caps)
    rows = []
    for build in settings.ablation:
        result = arp(read_scores(_runs(settings, build)), base)
        sources = set(settings.builds[build].caps)
        dropped = frozenset(reference - sources) if sources <= reference else None
        paper = PAPER_ABLATION.get(dropped) if dropped is not None else None
        rows.append({
            "build": build, "images": _images(settings, build), "arp": result.arp,
            "datasets": result.datasets,
            "scores": sum(r["relative"] is not None for r in result.rows),
            "dropped": sorted(dropped) if dropped is not None else None,
            "paper": None if paper is None else {"row": paper[0], "arp": paper[1] / 100,
                                                 "images": paper[2]}})
    return {"baseline": baseline, "tasks": list(settings.finetune_tasks), "builds": rows}


def ablation_table(study: dict[str, Any]) -> str:
    """The study as a text table: one row per build, the paper's beside it."""
    datasets = list(dict.fromkeys(d for row in study["builds"] for d in row["datasets"]))
    head = (f"{'build':<22} {'images':>8} {'ARP':>8} "
            + " ".join(f"{d[:9]:>9}" for d in datasets)
            + f" | {'paper':<21} {'ARP':>7} {'images':>9}")
    lines = [f"ablation: ARP of each build against {study['baseline']}, over the datasets "
             "both were finetuned on (each dataset's scores averaged first)", head,
             "-" * len(head)]
    for row in study["builds"]:
        gains = " ".join(f"{row['datasets'][d]:>+9.2%}" if d in row["datasets"] else
                         f"{'-':>9}" for d in datasets)
        value = "n/a" if row["arp"] is None else f"{row['arp']:+.2%}"
        images = "-" if row["images"] is None else f"{row['images']:,}"
        paper = row["paper"]
        theirs = (f"{paper['row']:<21} {paper['arp']:>+7.2%} {paper['images']:>9,}" if paper
                  else f"{'(not in the paper)':<21} {'':>7} {'':>9}")
        lines.append(f"{row['build']:<22} {images:>8} {value:>8} {gains} | {theirs}")
    lines.append("the paper's ARP is against an ImageNet-22k Swin-B after 100 epochs on the full "
                 "sets; its image counts are its GeoPile's (FACTS.md)")
    return "\n".join(lines)


def write_ablation(study: dict[str, Any], path: Path) -> None:
    """``reports/ablation.json`` (dvc metrics), written atomically."""
    write_text(path, json.dumps(study, indent=1) + "\n")
