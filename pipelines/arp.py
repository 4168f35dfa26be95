"""``geopile arp``: average relative performance of a model against a baseline (the GFM paper's).

ARP is a mean over *datasets* of the relative gain ``(score(M) - score(baseline)) /
score(baseline)``, over the (task, metric) scores both have. Scores of one dataset are averaged
first: BigEarthNet's 10% and 1% subsets (``ben10``, ``ben1``) are one dataset, and SpaceNet2's
PSNR and SSIM are one task. That is how the paper's Table 1 gets 3.31 for GFM from its per-task
table; a flat mean over its nine scores gives 3.17, and the 4.47 of the slides in circulation
comes from an earlier version of the table. A finetuning run's ``metrics.json`` holds
``{"task": ..., "scores": {metric: value, ...}}``; a model's scores are those of every run found
under the directories given. The paper's numbers ride along, so a run is read beside them;
they and each task's dataset come from the task files (:mod:`pipelines.tasks`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geopile.atomic import write_text

Score = tuple[str, str]  # (task, metric)



def paper_scores() -> dict[Score, tuple[float, float]]:
    """The paper's per-task table from the task files: (GFM, its Swin-B ImageNet-22k baseline).

    Higher is better for every one (FACTS.md section 1).
    """
    from pipelines.tasks import TASKS

    return {(t.name, metric): (s.gfm, s.baseline)
            for t in TASKS.values() for metric, s in t.paper.items()}


def dataset_of(task: str) -> str:
    """The dataset a task's scores are averaged under before ARP's mean (unknown: its own)."""
    from pipelines.tasks import TASKS

    return TASKS[task].dataset if task in TASKS else task


@dataclass(frozen=True)
class ArpResult:
    """ARP, the per-score rows and the per-dataset gains it averages."""

    arp: float | None  # None when no score is shared
    rows: list[dict[str, Any]]
    datasets: dict[str, float]  # dataset -> mean relative gain of its scores


def arp(model: dict[Score, float], baseline: dict[Score, float]) -> ArpResult:
    """ARP of ``model`` against ``baseline``: the mean over datasets of their mean gains."""
    rows = []
    gains: dict[str, list[float]] = {}
    for key in sorted(model.keys() & baseline.keys()):
        base = baseline[key]
        # a baseline score of 0 has no relative gain: listed, left out of the mean
        relative = (model[key] - base) / base if base else None
        rows.append({"task": key[0], "metric": key[1], "dataset": dataset_of(key[0]),
                     "model": model[key], "baseline": base, "relative": relative})
        if relative is not None:
            gains.setdefault(dataset_of(key[0]), []).append(relative)
    datasets = {name: sum(g) / len(g) for name, g in sorted(gains.items())}
    value = sum(datasets.values()) / len(datasets) if datasets else None
    return ArpResult(value, rows, datasets)


def from_rows(rows: list[dict[str, Any]]) -> ArpResult:
    """The result again from the rows ``arp.json`` stores (so old files read the same way)."""
    keys = [(r["task"], r["metric"]) for r in rows]
    return arp({k: r["model"] for k, r in zip(keys, rows, strict=True)},
               {k: r["baseline"] for k, r in zip(keys, rows, strict=True)})


def paper_arp() -> ArpResult:
    """The paper's own ARP of GFM against the ImageNet-22k Swin-B: 3.31% over 7 datasets."""
    paper = paper_scores()
    return arp({k: v[0] for k, v in paper.items()}, {k: v[1] for k, v in paper.items()})


def read_scores(paths: list[Path]) -> dict[Score, float]:
    """Scores from ``metrics.json`` files, or from every one under the directories given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob("metrics.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such run directory or metrics file")
    scores: dict[Score, float] = {}
    for file in files:
        data = json.loads(file.read_text())
        if "task" not in data or "scores" not in data:
            continue  # not a finetuning run (a pretraining run's metrics, for instance)
        for metric, value in data["scores"].items():
            key = (data["task"], metric)
            if key in scores:
                raise ValueError(f"{file}: a second score for {key[0]}/{key[1]} "
                                 "(pass one run per task)")
            scores[key] = float(value)
    return scores


def arp_table(result: ArpResult, paper: bool = True,
              labels: tuple[str, str] = ("model", "baseline")) -> str:
    """The per-score table, with the paper's GFM and baseline beside each row."""
    head = f"{'task':<10} {'metric':<8} {labels[0]:>9} {labels[1]:>9} {'rel.':>8}"
    if paper:
        head += f" | {'paper GFM':>9} {'paper base':>10} {'rel.':>8}"
    lines = [head, "-" * len(head)]
    table = paper_scores()
    for r in result.rows:
        gain = "n/a" if r["relative"] is None else f"{r['relative']:+.2%}"
        line = (f"{r['task']:<10} {r['metric']:<8} {r['model']:>9.4g} {r['baseline']:>9.4g} "
                f"{gain:>8}")
        if paper and (r["task"], r["metric"]) in table:
            g, b = table[(r["task"], r["metric"])]
            line += f" | {g:>9.4g} {b:>10.4g} {(g - b) / b:>+8.2%}"
        lines.append(line)
    lines.append(f"ARP {_over(result)}: "
                 + ("n/a (no shared scores)" if result.arp is None else f"{result.arp:+.2%}"))
    if paper:
        shared = [k for k in ((r["task"], r["metric"]) for r in result.rows) if k in table]
        same = arp({k: table[k][0] for k in shared}, {k: table[k][1] for k in shared})
        full = paper_arp()
        if same.arp is not None:
            lines.append(f"paper's ARP over the same scores: {same.arp:+.2%}")
        lines.append(f"paper's ARP {_over(full)} (its Table 1): {full.arp:+.2%}")
    return "\n".join(lines)


def _over(result: ArpResult) -> str:
    """``over 5 datasets (6 scores)``: what a mean was taken over."""
    scores = sum(r["relative"] is not None for r in result.rows)
    return f"over {len(result.datasets)} datasets ({scores} scores)"


def write_arp(result: ArpResult, path: Path) -> None:
    """``arp.json`` (dvc metrics), written atomically."""
    write_text(path, json.dumps({"arp": result.arp, "rows": result.rows,
                                        "datasets": result.datasets,
                                        "paper_arp": paper_arp().arp}, indent=1) + "\n")
