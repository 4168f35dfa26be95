"""The shard stage: ``geopile shard BUILD`` -> ``shards/BUILD/``.

It holds the ``*.tar`` shards, ``index.json`` and the dataset card ``README.md``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from geopile.card import CARD, render_card
from geopile.params import ParamsError
from geopile.records import read_records
from geopile.shards import ShardConfig, select, write_build
from pipelines.common import atomic_write_text
from pipelines.curate import REPORT, curated_path, reports_dir

log = logging.getLogger(__name__)


def shards_dir(params: dict[str, Any]) -> Path:
    """The shard root from ``paths.shards``."""
    return Path((params.get("paths") or {}).get("shards", "shards"))


def build_names(params: dict[str, Any]) -> list[str]:
    """Builds defined under ``builds:``, in file order."""
    return list(params.get("builds") or {})


def run_shard(params: dict[str, Any], build: str, data: Path, *, progress: bool) -> dict:
    """Select, shuffle and write one build; returns its index."""
    builds = params.get("builds") or {}
    if build not in builds:
        raise ParamsError(f"no build {build!r} under 'builds:' (known: {', '.join(builds)})")
    config = ShardConfig.from_params(params.get("shard"))
    path = curated_path(data)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `geopile curate` first")
    seed = int(params.get("seed", 0))
    selection = select(read_records(path), build, builds[build], seed, config.cap_scale)
    out = shards_dir(params) / build
    with tqdm(total=selection.num_rows, desc=f"shard {build}", unit="img",
              disable=not progress) as bar:
        index = write_build(selection, data, out, build, seed, config, progress=bar.update)
    report = reports_dir(params) / REPORT
    card = render_card(index, params, json.loads(report.read_text()) if report.exists() else None)
    atomic_write_text(out / CARD, card)
    log.info("%s: %d samples in %d shards -> %s", build, index["samples"],
             len(index["shards"]), out)
    return index


def shard_table(indexes: list[dict]) -> str:
    """Per-build table: samples per source, shards, bytes."""
    sources = sorted({s for ix in indexes for s in ix["sources"]})
    head = f"{'build':<22}" + "".join(f"{s:>11}" for s in sources) + f"{'total':>9}{'shards':>7}"
    lines = [head, "-" * len(head)]
    for ix in indexes:
        counts = "".join(f"{ix['sources'].get(s, 0):>11}" for s in sources)
        lines.append(f"{ix['build']:<22}{counts}{ix['samples']:>9}{len(ix['shards']):>7}")
    return "\n".join(lines)
