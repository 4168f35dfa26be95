"""Near-duplicate search over 64-bit perceptual hashes: multi-index hashing vs brute force.

    .venv/bin/python -m bench.dedup [--radius 10] [--sizes 60000 200000 600000]

Random 64-bit hashes with 1% planted near duplicates (0..radius+2 bits flipped). For each
size: GeoPile's search (geopile.dedup.near_pairs) and, in the same run, the brute-force
reference (faiss IndexBinaryFlat range search, exact), with wall time, peak memory of each
and recall of ours against the reference. Target: >= 3x faster at recall 1.0, <= 2 GiB.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import faiss
import numpy as np

from geopile.dedup import near_pairs


def planted_hashes(n: int, radius: int, seed: int = 0) -> np.ndarray:
    """``n`` random hashes, 1% of them near copies of others."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    k = n // 100
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    flips = rng.integers(0, radius + 3, k)
    for s, d, f in zip(src, dst, flips, strict=True):
        bits = rng.choice(64, size=f, replace=False)
        hashes[d] = hashes[s] ^ np.uint64(sum(1 << int(b) for b in bits))
    return hashes


def reference(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    """Exact pairs by faiss brute force (range search is strict: radius + 1)."""
    index = faiss.IndexBinaryFlat(64)
    codes = hashes.view(np.uint8).reshape(-1, 8)
    index.add(codes)
    lims, _, ids = index.range_search(codes, radius + 1)
    q = np.repeat(np.arange(len(hashes)), np.diff(lims.astype(np.int64)))
    keep = ids > q
    return set(zip(q[keep].tolist(), ids[keep].tolist(), strict=True))


def _child(method: str, n: int, radius: int, conn) -> None:  # noqa: ANN001
    hashes = planted_hashes(n, radius)
    if method == "ours":
        near_pairs(planted_hashes(2000, radius), radius)  # compile outside the timing
    start = time.perf_counter()
    if method == "ours":
        i, j, _ = near_pairs(hashes, radius)
        pairs = np.stack([i, j], 1)
    else:
        pairs = np.asarray(sorted(reference(hashes, radius)), dtype=np.int64).reshape(-1, 2)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    conn.send((pairs, seconds, peak))
    conn.close()


def run(method: str, n: int, radius: int) -> tuple[set[tuple[int, int]], float, float]:
    """(pairs, seconds, peak RSS GiB) of one search in a fresh process (spawned, not forked)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(method, n, radius, child))
    proc.start()
    pairs, seconds, peak = parent.recv()
    proc.join()
    return set(map(tuple, pairs.tolist())), seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--radius", type=int, default=10, help="Hamming radius (params default)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 200_000, 600_000])
    args = parser.parse_args()
    print(f"radius {args.radius}; each search in its own process, on every core; "
          "peak = that process's maximum RSS (interpreter and libraries included)")
    print(f"{'hashes':>8} {'ours s':>8} {'ours GiB':>9} {'faiss s':>8} {'faiss GiB':>10} "
          f"{'speed-up':>9} {'pairs':>7} {'recall':>7}")
    for n in args.sizes:
        got, ours_s, ours_gb = run("ours", n, args.radius)
        ref, ref_s, ref_gb = run("faiss", n, args.radius)
        recall = len(got & ref) / len(ref) if ref else 1.0
        extra = len(got - ref)
        print(f"{n:>8} {ours_s:>8.2f} {ours_gb:>9.2f} {ref_s:>8.2f} {ref_gb:>10.2f} "
              f"{ref_s / ours_s:>8.1f}x {len(ref):>7} {recall:>7.4f}"
              + (f"  ({extra} pairs beyond the radius!)" if extra else ""))


if __name__ == "__main__":
    main()
