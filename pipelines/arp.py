"""``geopile arp``: average relative performance of a model against a baseline (the GFM paper's).

``ARP(M) = mean over scores of (score(M) - score(baseline)) / score(baseline)`` (FACTS.md
section 1), over the (task, metric) scores both have. A finetuning run's ``metrics.json`` holds
``{"task": ..., "scores": {metric: value, ...}}``; a model's scores are those of every run found
under the directories given. The paper's numbers ride along, so a run is read beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common import atomic_write_text

Score = tuple[str, str]  # (task, metric)

# The paper's scores (FACTS.md section 1): GFM and its Swin-B ImageNet-22k baseline. Higher is
# better for every one. The paper gives Vaihingen one number without naming the metric in our
# notes; it is filed under mIoU, the segmentation metric of that table.
PAPER: dict[Score, tuple[float, float]] = {
    ("oscd", "f1"): (59.82, 52.35),
    ("dsifn", "f1"): (71.24, 69.62),
    ("ucm", "top1"): (99.0, 99.0),
    ("ben10", "micro_ap"): (86.3, 85.7),
    ("ben1", "micro_ap"): (80.7, 79.5),
    ("whu", "iou"): (90.7, 90.4),
    ("vaihingen", "miou"): (75.3, 74.7),
    ("sn2", "psnr"): (22.599, 21.655),
    ("sn2", "ssim"): (0.638, 0.612),
}


@dataclass(frozen=True)
class ArpResult:
    """ARP and the per-score rows it averages."""

    arp: float | None  # None when no score is shared
    rows: list[dict[str, Any]]


def arp(model: dict[Score, float], baseline: dict[Score, float]) -> ArpResult:
    """ARP of ``model`` against ``baseline`` over the scores both have."""
    rows = []
    for key in sorted(model.keys() & baseline.keys()):
        base = baseline[key]
        # a baseline score of 0 has no relative gain: listed, left out of the mean
        relative = (model[key] - base) / base if base else None
        rows.append({"task": key[0], "metric": key[1], "model": model[key], "baseline": base,
                     "relative": relative})
    gains = [r["relative"] for r in rows if r["relative"] is not None]
    return ArpResult(sum(gains) / len(gains) if gains else None, rows)


def paper_arp() -> ArpResult:
    """The paper's own ARP of GFM against the ImageNet-22k Swin-B, over its nine scores."""
    return arp({k: v[0] for k, v in PAPER.items()}, {k: v[1] for k, v in PAPER.items()})


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
    for r in result.rows:
        gain = "n/a" if r["relative"] is None else f"{r['relative']:+.2%}"
        line = (f"{r['task']:<10} {r['metric']:<8} {r['model']:>9.4g} {r['baseline']:>9.4g} "
                f"{gain:>8}")
        if paper and (r["task"], r["metric"]) in PAPER:
            g, b = PAPER[(r["task"], r["metric"])]
            line += f" | {g:>9.4g} {b:>10.4g} {(g - b) / b:>+8.2%}"
        lines.append(line)
    counted = sum(r["relative"] is not None for r in result.rows)
    value = "n/a (no shared scores)" if result.arp is None else f"{result.arp:+.2%}"
    lines.append(f"ARP over {counted} scores: {value}")
    if paper:
        shared = [k for k in ((r["task"], r["metric"]) for r in result.rows) if k in PAPER]
        same = arp({k: PAPER[k][0] for k in shared}, {k: PAPER[k][1] for k in shared})
        full = paper_arp()
        if same.arp is not None:
            lines.append(f"paper's ARP over the same scores: {same.arp:+.2%}")
        lines.append(f"paper's ARP over all {len(full.rows)} scores: {full.arp:+.2%}")
    return "\n".join(lines)


def write_arp(result: ArpResult, path: Path) -> None:
    """``arp.json`` (dvc metrics), written atomically."""
    atomic_write_text(path, json.dumps({"arp": result.arp, "rows": result.rows,
                                        "paper_arp": paper_arp().arp}, indent=1) + "\n")
