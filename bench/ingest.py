"""Ingest throughput per source on this machine, against a decode-only baseline in the same run.

    .venv/bin/python -m bench.ingest [--per-class 20] [--naip-count 200] [--workers 1] [--engines]

Builds a fresh offline world, starts it, and for every source times a full ingest (download,
verify, extract, decode, hash, entropy, write) into an empty data directory. Baselines, timed on
the same images in the same run: for labeled sources, PIL decode of the extracted files on one
core (the limit of any ingest that must decode); for NAIP, the same windows read from the local
COG files with rasterio (no HTTP, no hashing).

``--engines`` adds a row per engine and node count for RESISC45 and NAIP: the local pool, then
``ingest.engine: ray`` on a loopback Ray cluster of one and of two nodes (one CPU each) started
here, with img/s and the ratio to the local engine.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

from geopile.ingest import ingest
from geopile.params import load_params
from geopile.records import records_path
from geopile.settings import Settings, check_params
from geopile.sources import create_source
from geopile.world.world import PARAMS_OVERLAY, WORLD_S3, build_world, world_down, world_up

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str]) -> subprocess.Popen:
    """``ray start --block`` (one CPU) in its own process group, stopped by killing the group."""
    ray_bin = Path(sys.executable).parent / "ray"
    return subprocess.Popen(
        [str(ray_bin), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
         "--disable-usage-stats", "--node-manager-port", str(_free_port()),
         "--object-manager-port", str(_free_port()), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_cpus(address: str, n: int) -> None:
    from geopile.engines import wait_for_cpus

    wait_for_cpus(address, n)


@contextmanager
def loopback_ray(prefix: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A one-CPU Ray head on loopback: yields (address, add_node); everything stopped after."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: unix socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = [_ray_node(["--head", "--port", str(port), "--include-dashboard=false",
                        "--ray-client-server-port", str(_free_port()),
                        "--temp-dir", str(temp)])]

    def add_node() -> None:
        procs.append(_ray_node(["--address", address]))
        _wait_cpus(address, len(procs))

    try:
        _wait_cpus(address, 1)
        yield address, add_node
    finally:
        ray.shutdown()
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def engine_rows(settings: Settings, tmp: Path, workers: int, naip_threads: int) -> list[tuple]:
    """(source, engine, nodes, images, img/s) for local, Ray with 1 node, Ray with 2 nodes."""
    rows = []

    def run(engine: str, nodes: int, address: str | None) -> None:
        for name in ["resisc45", "naip"]:
            data = tmp / f"engine-{name}-{engine}-{nodes}"
            threads = naip_threads if name == "naip" else workers
            source = create_source(name, settings.sources[name], data, progress=False)
            from geopile.engines import LocalMapper, RayMapper

            mapper = (RayMapper(address, threads=threads) if engine == "ray"
                      else LocalMapper(threads))
            summary = ingest(source, mapper=mapper, progress=False)
            mapper.close()
            rows.append((name, engine, nodes, summary.images, summary.images / summary.seconds))

    run("local", 1, None)
    with loopback_ray("rb") as (address, add_node):
        run("ray", 1, address)
        add_node()
        run("ray", 2, address)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--naip-count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="ingest workers (1 = per core)")
    parser.add_argument("--naip-threads", type=int, default=4)
    parser.add_argument("--engines", action="store_true",
                        help="also time the local engine against Ray with 1 and 2 nodes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        truth = build_world(world, per_class=args.per_class)
        os.environ[WORLD_S3] = world_up(world)["s3"]  # reads of the world's published hrefs
        try:
            params = load_params([REPO / "params.yaml", world / PARAMS_OVERLAY])
            params["sources"]["naip"]["count"] = args.naip_count
            settings = check_params(params)
            rows_out = []
            for name in ["naip", "rsd46", "mlrsnet", "resisc45", "patternnet", "ucmerced"]:
                data = Path(tmp) / f"data-{name}"
                threads = args.naip_threads if name == "naip" else args.workers
                source = create_source(name, settings.sources[name], data, progress=False)
                summary = ingest(source, workers=threads, progress=False)
                records = pq.read_table(records_path(data, name)).to_pylist()
                ours = summary.images / summary.seconds
                if name == "naip":
                    base, what = naip_baseline(world, truth, records), "local rasterio read"
                else:
                    base, what = decode_baseline(data, [r["path"] for r in records]), "PIL decode"
                rows_out.append((name, summary.images, threads, ours, base, what))
            engines = engine_rows(settings, Path(tmp), args.workers, args.naip_threads) \
                if args.engines else []
        finally:
            world_down(world)
    print(f"\n{'source':<11} {'images':>7} {'workers':>7} {'img/s':>8} {'baseline/s':>10} "
          f"{'ratio':>6}  baseline")
    for name, n, w, ours, base, what in rows_out:
        print(f"{name:<11} {n:>7} {w:>7} {ours:>8.1f} {base:>10.1f} {ours / base:>6.2f}  {what}")
    if engines:
        local = {name: rate for name, engine, _, _, rate in engines if engine == "local"}
        print(f"\n{'source':<11} {'engine':>7} {'nodes':>5} {'images':>7} {'img/s':>8} "
              f"{'x local':>7}")
        for name, engine, nodes, n, rate in engines:
            print(f"{name:<11} {engine:>7} {nodes:>5} {n:>7} {rate:>8.1f} "
                  f"{rate / local[name]:>7.2f}")
    print("\nimg/s: a whole ingest (download + verify + extract + decode + hashes + entropy + "
          "write) per wall second; NAIP: windows per second over loopback S3 (threads).")


if __name__ == "__main__":
    main()
