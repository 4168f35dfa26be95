"""Curation's near-duplicate search as cluster tasks: per-task rates, Ray's overhead, 60M projected.

    .venv/bin/python -m bench.curate_cluster [--n 6000000] [--splits 2000] [--per-band 2]

``geopile curate --engine ray`` cuts the crop-hash search into tasks of (band, query slice)
(:func:`geopile.dedup.search_band_part`): each task indexes one band over all n images and
searches every ``splits``-th image's queries; the driver merges the rows. On n random crop
hashes with 1% planted copies (bench/dedup.py's generator) this times, for a sample of tasks
(``--per-band`` slices of each of the 4 bands, each 1/``splits`` of the band's queries):

1. each task in this process (one core): its index build and its queries, so a per-query cost;
2. the same tasks on a loopback Ray cluster of 1 node, then 2 nodes (one CPU each; both on
   this machine's two cores, so no speed-up is claimed): the wall time, the time to put the
   hashes in the object store, and the overhead per task over (1); the rows must be equal;
3. the whole search at 60M images on 64 and 256 CPUs, from those rates: every image's queries
   in every band (the per-query cost scaled linearly with n: bucket occupancy) plus one index
   build per task (two tasks per CPU), plus shipping the hashes to every node over a network
   of ``--gbps`` (10 GbE by default; loopback here cannot measure it). A projection, marked.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from bench.dedup import planted_crop_hashes
from bench.ingest import loopback_ray
from geopile.dedup import CROP_BANDS, CROP_LAYOUTS, _BandSearch, _word_index, search_band_part

RADIUS, TOTAL = 7, 24  # params.yaml's curate.radius / total_radius
BYTES_PER_IMAGE = 19 * 2 * 8  # the crop hashes every task shares


def local_rates(search: _BandSearch, tasks: list[tuple[int, int]]) -> tuple[list, float, float]:
    """Each task in this process: (rows per task, seconds per task, index build seconds)."""
    search_band_part(_BandSearch(search.hashes[:2000], search.word2[:2000], RADIUS, TOTAL,
                                 search.bands, 1), (0, 0))  # compile outside the timing
    start = time.perf_counter()
    _word_index(np.ascontiguousarray(search.hashes[:, 0, 0]), 0, CROP_LAYOUTS[search.bands])
    index_s = time.perf_counter() - start
    rows, seconds = [], []
    for task in tasks:
        start = time.perf_counter()
        rows.append(search_band_part(search, task))
        seconds.append(time.perf_counter() - start)
    return rows, float(np.mean(seconds)), index_s


def ray_run(search: _BandSearch, tasks: list[tuple[int, int]], nodes: int,
            address: str) -> tuple[list, float, float]:
    """The tasks through RayMapper: (rows, put seconds, map seconds after the put)."""
    import ray

    from geopile.engines import RayMapper

    mapper = RayMapper(address)
    start = time.perf_counter()
    ref = ray.put(search)
    put_s = time.perf_counter() - start
    mapper._shared = (search, ref)  # the object just put: time the tasks on their own
    start = time.perf_counter()
    rows = list(mapper.map(search_band_part, tasks, search))
    return rows, put_s, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6_000_000)
    parser.add_argument("--splits", type=int, default=2000, help="query slices a band")
    parser.add_argument("--per-band", type=int, default=2, help="slices timed per band")
    parser.add_argument("--project", type=int, default=60_000_000)
    parser.add_argument("--gbps", type=float, default=10.0, help="network for the projection")
    args = parser.parse_args()
    bands = CROP_BANDS
    start = time.perf_counter()
    hashes, _ = planted_crop_hashes(args.n, RADIUS)
    print(f"{args.n:,} crop hashes ({hashes.nbytes / 2**30:.2f} GiB) made in "
          f"{time.perf_counter() - start:.0f} s")
    search = _BandSearch(hashes, np.ascontiguousarray(hashes[:, 0, 1]), RADIUS, TOTAL, bands,
                         args.splits)
    tasks = [(b, o) for b in range(bands) for o in range(args.per_band)]
    queries = math.ceil(args.n / args.splits)  # images whose queries one task searches
    want, task_s, index_s = local_rates(search, tasks)
    per_query = (task_s - index_s) / queries
    print(f"\nlocal, one core: {len(tasks)} tasks of {queries:,} images' queries each: "
          f"{task_s:.2f} s a task (index build {index_s:.2f} s), "
          f"{per_query * 1e6:.1f} us an image a band")

    import ray

    with loopback_ray("rc") as (address, add_node):
        print(f"\n{'nodes':>5} {'tasks':>5} {'put s':>7} {'tasks s':>8} {'s/task':>7} "
              f"{'overhead/task':>14} rows equal")
        for nodes in (1, 2):
            if nodes == 2:
                add_node()
            got, put_s, map_s = ray_run(search, tasks, nodes, address)
            equal = all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
            per_task = map_s * nodes / len(tasks)  # each node one CPU
            print(f"{nodes:>5} {len(tasks):>5} {put_s:>7.2f} {map_s:>8.2f} {per_task:>7.2f} "
                  f"{per_task - task_s:>+13.2f}s {equal}")
            if not equal:
                raise SystemExit("the Ray tasks' rows differ from the local ones")
            ray.shutdown()

    n, scale = args.project, args.project / args.n
    cost = per_query * scale  # queries probe buckets that hold n / 2^16 images each
    index_n = index_s * scale * math.log(n) / math.log(args.n)
    print(f"\n~ projected, {n:,} images ({n * BYTES_PER_IMAGE / 2**30:.1f} GiB of hashes in each "
          f"node's object store; a task adds {n * 24 / 2**30:.1f} GiB: word 1, its band's "
          f"index; shipped at {args.gbps:g} Gbit/s)")
    print(f"{'CPUs':>5} {'tasks':>6} {'queries h':>10} {'indexes h':>10} {'ship h':>7} "
          f"{'wall h':>7}")
    for cpus in (64, 256):
        tasks_n = 2 * cpus
        query_h = bands * n * cost / cpus / 3600
        index_h = tasks_n * index_n / cpus / 3600
        ship_h = n * BYTES_PER_IMAGE / (args.gbps * 1e9 / 8) / 3600  # nodes load in parallel
        print(f"{cpus:>5} {tasks_n:>6} {query_h:>10.1f} {index_h:>10.2f} {ship_h:>7.2f} "
              f"{query_h + index_h + ship_h:>7.1f}")


if __name__ == "__main__":
    main()
