"""Ingest throughput per source on this machine, against a decode-only baseline in the same run.

    .venv/bin/python -m bench.ingest [--per-class 20] [--naip-count 200] [--workers 1]

Builds a fresh offline world, starts it, and for every source times a full ingest (download,
verify, extract, decode, hash, entropy, write) into an empty data directory. Baselines, timed on
the same images in the same run: for labeled sources, PIL decode of the extracted files on one
core (the limit of any ingest that must decode); for NAIP, the same windows read from the local
COG files with rasterio (no HTTP, no hashing).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from geopile.ingest import ingest
from geopile.params import load_params
from geopile.records import records_path
from geopile.sources import create_source
from geopile.world.world import PARAMS_OVERLAY, build_world, world_down, world_up

REPO = Path(__file__).resolve().parents[1]


def decode_baseline(data: Path, paths: list[str]) -> float:
    """Images per second for a bare PIL decode of the files."""
    blobs = [(data / p).read_bytes() for p in paths]
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
    return len(blobs) / (time.perf_counter() - start)


def naip_baseline(world: Path, truth: dict, rows: list[dict]) -> float:
    """Windows per second read straight from the local COGs."""
    tiles = {t["item_id"]: world / t["path"] for t in truth["naip"]["tiles"]}
    start = time.perf_counter()
    for row in rows:
        col, r0, w, h = row["window"]
        with rasterio.open(tiles[row["stac_item"]]) as src:
            src.read(window=Window(col, r0, w, h), out_shape=(4, row["height"], row["width"]),
                     resampling=Resampling.average)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--naip-count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="ingest workers (1 = per core)")
    parser.add_argument("--naip-threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        truth = build_world(world, per_class=args.per_class)
        world_up(world)
        try:
            params = load_params([REPO / "params.yaml", world / PARAMS_OVERLAY])
            params["sources"]["naip"]["count"] = args.naip_count
            rows_out = []
            for name in ["naip", "rsd46", "mlrsnet", "resisc45", "patternnet", "ucmerced"]:
                data = Path(tmp) / f"data-{name}"
                threads = args.naip_threads if name == "naip" else args.workers
                source = create_source(name, params["sources"][name], data, progress=False)
                summary = ingest(source, workers=threads, progress=False)
                records = pq.read_table(records_path(data, name)).to_pylist()
                ours = summary.images / summary.seconds
                if name == "naip":
                    base, what = naip_baseline(world, truth, records), "local rasterio read"
                else:
                    base, what = decode_baseline(data, [r["path"] for r in records]), "PIL decode"
                rows_out.append((name, summary.images, threads, ours, base, what))
        finally:
            world_down(world)
    print(f"\n{'source':<11} {'images':>7} {'workers':>7} {'img/s':>8} {'baseline/s':>10} "
          f"{'ratio':>6}  baseline")
    for name, n, w, ours, base, what in rows_out:
        print(f"{name:<11} {n:>7} {w:>7} {ours:>8.1f} {base:>10.1f} {ours / base:>6.2f}  {what}")
    print("\nimg/s: a whole ingest (download + verify + extract + decode + hashes + entropy + "
          "write) per wall second; NAIP: windows per second over loopback S3 (threads).")


if __name__ == "__main__":
    main()
