"""The README's generated blocks: the builds with what each may be used for, and the demo's figures.

The README quotes numbers a run produced and advice the licences imply; written by hand they
drift (a demo printed ARP +5.42% while the README said +6.25%; it recommended a build holding a
research-only source "for commercial work"). ``python -m pipelines.readme_blocks [--demo DIR]``
rewrites the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``: ``builds`` from
params.yaml and the sources' licences (the dataset card derives the same), ``demo`` from the
files a ``make demo`` workspace holds (its stage times, machine and load, the ablation and ARP).
``tests/test_layout.py`` checks that the builds block is current.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from geopile.atomic import write_text
from geopile.card import build_use
from geopile.params import load_params
from geopile.settings import Settings, check_params
from pipelines.ablation import ablation_table
from pipelines.world import DEMO_TIMES

REPO = Path(__file__).resolve().parents[1]


def builds_block(settings: Settings) -> str:
    """One row per build: its sources and caps, and the use its licences allow."""
    lines = ["| build | sources (images asked) | may be used for |", "|---|---|---|"]
    for name, spec in settings.builds.items():
        caps = ", ".join(f"{s} {c:,}" if isinstance(c, int) else f"{s} {c}"
                         for s, c in spec.caps.items())
        lines.append(f"| `{name}` | {caps} | {build_use(name, settings)} |")
    return "\n".join(lines)


def demo_block(workspace: Path) -> str:
    """The demo's figures from its workspace: stage times, pretraining, ARP and the ablation."""
    settings = check_params(load_params([workspace / "params.yaml"]))
    reports = workspace / settings.paths.reports
    times = json.loads((reports / DEMO_TIMES).read_text())
    built = ("the world built in this run" if times.get("world_built")
             else "the world already built")
    lines = [f"Measured by `make demo` on {times['date']}, {times['machine']} (1-minute load "
             f"{times['load']} at the start): {times['total_s'] / 60:.1f} minutes ({built}, "
             f"the environment already installed), of which `dvc repro` "
             f"{times['repro_s'] / 60:.1f}."]
    if "rerun" in times:
        rerun = times["rerun"]
        lines[0] += (f" The next `make demo` ({rerun['date']}; the world stopped and started "
                     f"again) ran no stage ({rerun['unchanged']} unchanged) and took "
                     f"{rerun['total_s']:.0f} s.")
    lines += ["", "| stage | seconds |", "|---|---:|"]
    lines += [f"| `{name}` | {sec:.0f} |" for name, sec in times["stages"]]
    for build in settings.ablation:
        metrics = workspace / settings.paths.runs / build / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            lines.append("")
            lines.append(f"Pretraining `{build}`: {m['steps']} steps, final loss {m['loss']:.4f} "
                         f"(L_MIM {m['mim']:.4f}, L_feat {m['feat']:.4f}).")
    ablation = reports / "ablation.json"
    if ablation.exists():
        lines += ["", "```", ablation_table(json.loads(ablation.read_text())), "```"]
    return "\n".join(lines)


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin -->\n)(.*?)(<!-- {name}:end -->)", re.S)


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` replaced by ``body``; a missing block is an error."""
    pattern = _pattern(name)
    if not pattern.search(text):
        raise ValueError(f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text)


def block(text: str, name: str) -> str:
    """The body of block ``name`` of ``text``."""
    match = _pattern(name).search(text)
    if match is None:
        raise ValueError(f"README.md has no <!-- {name}:begin --> block")
    return match.group(2).rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's builds block, and its demo block from a demo workspace."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a `make demo` workspace (build/demo)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    settings = check_params(load_params([REPO / "params.yaml"]))
    text = replace_block(text, "builds", builds_block(settings))
    if args.demo:
        text = replace_block(text, "demo", demo_block(args.demo))
    write_text(args.readme, text)
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
