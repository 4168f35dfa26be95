"""Near-duplicate search at GeoPile's scale: the pHash baseline, and the crop-robust stage.

    .venv/bin/python -m bench.dedup [--radius 10] [--sizes 60000 200000 600000]

Part 1 (the earlier pHash search, kept as the baseline): random 64-bit hashes with 1% planted
near duplicates (0..radius+2 bits flipped). For each size: multi-index hashing
(geopile.dedup.near_pairs) and, in the same run, the brute-force reference (faiss
IndexBinaryFlat range search, exact), with wall time, peak memory and recall against it.

Part 2 (what curate runs now): crop-pyramid hashes, 19 crop boxes x 2 words per image, random, with
1% planted copies (a symmetry of a crop of another image, plus 0..radius+2 flipped bits). For
each size: geopile.dedup.crop_pairs' time and peak memory and its recall of the planted copies
that are within the radii (1.0: the search is exact). Then, on real tiles (the Landsat set of
bench/neardup_set.py), the per-image descriptor cost (computed once, at ingest) and the cost
of aligning one candidate pair on pixels, which give the whole stage for 600k images:
search + candidates x alignment. Target: under 10 minutes on 2 cores.

Part 3 (how far one process goes): the crop search at 600k, 2M and 6M random crop hashes in
both band layouts (geopile.dedup.CROP_LAYOUTS), sharded by band as curate runs it. Each band's
index is built for real over all n images; the queries of a systematic sample of images
(--sample images, in three interleaved parts whose spread is shown) are timed and scaled to all
images (random hashes make every query cost alike), marked "~". 60M is projected from a per-query
cost fitted on those rows (a + b n: probes are fixed, bucket occupancy grows with n), and its
memory from one band index of 60M entries built for real plus the bytes per image.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from geopile.dedup import (
    CROP_BANDS,
    CROP_LAYOUTS,
    FLIP_H,
    FLIP_V,
    PERM_TABLES,
    _symmetry,
    _word_index,
    crop_band_rows,
    crop_pairs,
    near_pairs,
)
from geopile.imagestats import CROP_BOXES


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


def _child(method: str, n: int, radius: int, conn) -> None:
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


def planted_crop_hashes(n: int, radius: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """(n, boxes, 2) random crop hashes, 1% of images a symmetry of a crop of another, perturbed."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n, len(CROP_BOXES), 2), dtype=np.uint64)
    planted = []
    ends = rng.permutation(n)[: 2 * (n // 100)].reshape(-1, 2)  # no image in two plants
    for i, j in ends.tolist():
        c, s, flips = int(rng.integers(0, len(CROP_BOXES))), int(rng.integers(0, 8)), int(
            rng.integers(0, radius + 3))
        noise = sum(1 << int(b) for b in rng.choice(63, size=flips, replace=False))
        for w in range(2):
            hashes[j, 0, w] = _symmetry(hashes[i, c, w], s, PERM_TABLES[w], FLIP_H[w], FLIP_V[w])
        hashes[j, 0, 0] ^= np.uint64(noise)
        planted.append((i, j, flips))
    return hashes, planted


def _crop_child(n: int, radius: int, total: int, conn) -> None:
    crop_pairs(planted_crop_hashes(2000, radius)[0], radius, total)  # compile outside the timing
    hashes, planted = planted_crop_hashes(n, radius)
    start = time.perf_counter()
    rows = crop_pairs(hashes, radius, total)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    found = {(int(i), int(j)) for i, j in rows[:, :2]}
    within = [(i, j) for i, j, flips in planted if flips <= radius]
    recall = sum((i, j) in found for i, j in within) / max(1, len(within))
    conn.send((seconds, peak, len(rows), recall))
    conn.close()


def run_crop(n: int, radius: int, total: int) -> tuple[float, float, int, float]:
    """(seconds, peak RSS GiB, candidate rows, recall of planted copies within the radius)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_crop_child, args=(n, radius, total, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def real_costs(images: Path, radius: int, total: int, limit: int = 300) -> dict[str, float]:
    """Milliseconds: per image, crop hashes and pHash; per candidate pair, decode both + align.

    ``align``: the set's own candidates (mostly planted copies, as curate meets them; curate
    stops refining a pair once it clearly passes); ``align_distinct``: unrelated pairs, which
    are refined in full.
    """
    import imagehash
    from PIL import Image

    from geopile.align import align, working_image
    from geopile.imagestats import crop_hashes, decode, luma

    enough = 0.95  # curate: min_correlation (0.9) + 0.05
    files = sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
    pixels = [luma(decode(p.read_bytes())[0]) for p in files]
    start = time.perf_counter()
    hashes = np.asarray([crop_hashes(g) for g in pixels], np.uint64).reshape(len(files), -1, 2)
    hash_ms = (time.perf_counter() - start) / len(files) * 1e3
    start = time.perf_counter()
    for g in pixels[:limit]:
        imagehash.phash(Image.fromarray(g))
    phash_ms = (time.perf_counter() - start) / min(limit, len(files)) * 1e3

    def timed(pairs: list[tuple[int, int, int, int]]) -> float:
        start = time.perf_counter()
        for a, b, c, s in pairs:
            wa, wb = (working_image(luma(decode(files[k].read_bytes())[0])) for k in (a, b))
            align(wa, wb, s, CROP_BOXES[c], enough=enough)
        return (time.perf_counter() - start) / max(1, len(pairs)) * 1e3

    candidates = [tuple(r[:4]) for r in crop_pairs(hashes, radius, total).tolist()][:limit]
    distinct = [(a, a + 1, 7, 5) for a in range(0, min(limit, len(files) - 1), 2)]
    return {"hash": hash_ms, "phash": phash_ms, "align": timed(candidates),
            "align_distinct": timed(distinct), "candidates": len(candidates)}


def _scale_child(n: int, bands: int, radius: int, total: int, sample: int, conn) -> None:
    warm = np.random.default_rng(1).integers(0, 2**63, size=(3000, len(CROP_BOXES), 2),
                                             dtype=np.uint64)
    crop_pairs(warm, radius, total, bands=bands)  # compile outside the timing
    hashes = np.random.default_rng(0).integers(0, 2**63, size=(n, len(CROP_BOXES), 2),
                                               dtype=np.uint64)
    word2 = np.ascontiguousarray(hashes[:, 0, 1])
    workers = mp.cpu_count()
    start = time.perf_counter()
    for band in range(bands):  # index only: one query per band
        crop_band_rows(hashes, word2, radius, total, bands, band, workers, step=n)
    build = time.perf_counter() - start
    step = max(1, n // sample)
    parts, rows = [], 0
    for offset in range(3):  # three interleaved samples: their spread shows the noise
        start = time.perf_counter()
        for band in range(bands):
            got = crop_band_rows(hashes, word2, radius, total, bands, band, workers,
                                 step=3 * step, offset=offset * step)
            rows += len(got)
        query = time.perf_counter() - start - build
        parts.append(build + query * 3 * step)  # all images' queries, this part scaled up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    conn.send((build, parts, rows * step, peak, step))
    conn.close()


def _index_child(n: int, bits: int, conn) -> None:
    words = np.random.default_rng(0).integers(0, 2**63, size=n, dtype=np.uint64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    index = _word_index(words, 0, bits)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    conn.send((seconds, peak, peak - before, sum(a.nbytes for a in index)))
    conn.close()


def _spawned(target, *args):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def scaling(sizes: list[int], radius: int, total: int, sample: int, project: int) -> None:
    """Part 3: the crop search's time and memory by n and layout, and the projection."""
    boxes = len(CROP_BOXES)
    print(f"scaling (one process, {mp.cpu_count()} cores, sharded by band): search s = index "
          f"builds + all queries, '~' = queries of a {sample}-image sample scaled up "
          "(min..max over 3 interleaved parts); GiB = peak RSS incl. the hashes "
          f"({boxes * 2 * 8} B/image); candidates scaled likewise; * = crop_pairs' default layout")
    print(f"{'images':>10} {'layout':>7} {'search s':>10} {'spread s':>15} {'build s':>8} "
          f"{'GiB':>6} {'candidates':>11} {'load':>5}")
    fits: dict[int, list[tuple[int, float, float]]] = {b: [] for b in CROP_LAYOUTS}
    for n in sizes:
        for bands, bits in CROP_LAYOUTS.items():
            build, parts, cands, peak, step = _spawned(_scale_child, n, bands, radius, total,
                                                       sample)
            est = float(np.mean(parts))
            fits[bands].append((n, (est - build) / (n * boxes * 8), build / n))
            mark = "~" if step > 1 else " "
            pick = "*" if bands == CROP_BANDS else " "
            print(f"{n:>10} {bands}x{bits:<2}{pick:>2} {mark}{est:>9.0f} "
                  f"{min(parts):>7.0f}..{max(parts):<6.0f} {build:>8.1f} {peak:>6.2f} "
                  f"{mark}{cands:>10} {os.getloadavg()[0]:>5.1f}")  # others share the cores
    index_s, index_peak, index_delta, index_bytes = _spawned(_index_child, project, 16)
    word_b, index_b = 8, index_bytes / project
    hashes_gb = project * boxes * 2 * 8 / 2**30
    for bands, bits in CROP_LAYOUTS.items():
        ns, per_query, per_image = map(np.asarray, zip(*fits[bands], strict=True))
        b, a = np.polyfit(ns, per_query, 1)  # seconds per query = a + b n
        queries = project * boxes * 8 * (a + b * project)
        build = bands * float(np.mean(per_image)) * project
        print(f"{project:>10} {bands}x{bits:<2}{'*' if bands == CROP_BANDS else ' ':>2} "
              f"P{queries + build:>9.0f} (= {project * boxes * 8:.2e} queries x "
              f"({a * 1e6:.2f} + {b * 1e12:.3f}e-6 n) us + {build:.0f} s index builds)")
    word_gb, held_gb = word_b * project / 2**30, index_delta + word_b * project / 2**30
    print(f"{project:>10} memory P: one band index built for real: {index_s:.1f} s, "
          f"{index_bytes / 2**30:.2f} GiB held, {index_delta:.2f} GiB RSS growth while built "
          f"(argsort keys included); plus word 2 ({word_gb:.2f} GiB) and the crop hashes "
          f"({hashes_gb:.1f} GiB): in RAM {held_gb + hashes_gb:.1f} GiB, memory-mapped .npy "
          f"{held_gb:.1f} GiB + page cache; all bands' indexes at once (before sharding): "
          f"{4 * index_b * project / 2**30:.1f} GiB; peak of that process {index_peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--radius", type=int, default=10, help="Hamming radius (params default)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 200_000, 600_000])
    parser.add_argument("--crop-radius", type=int, default=7, help="curate.radius (params)")
    parser.add_argument("--total-radius", type=int, default=24, help="curate.total_radius")
    parser.add_argument("--images", type=Path, default=Path("build/neardup"),
                        help="real tiles for the per-image and per-pair costs "
                             "(python -m bench.neardup_set makes them)")
    parser.add_argument("--scale-sizes", type=int, nargs="+",
                        default=[600_000, 2_000_000, 6_000_000])
    parser.add_argument("--sample", type=int, default=9_000,
                        help="images whose queries are timed per scaling row")
    parser.add_argument("--project", type=int, default=60_000_000, help="projected size")
    parser.add_argument("--only-scaling", action="store_true", help="skip parts 1 and 2")
    args = parser.parse_args()
    if args.only_scaling:
        scaling(args.scale_sizes, args.crop_radius, args.total_radius, args.sample,
                args.project)
        return
    print(f"radius {args.radius}; each search in its own process, on every core; "
          "peak = that process's maximum RSS (interpreter and libraries included)")
    print(f"{'hashes':>8} {'ours s':>8} {'ours GiB':>9} {'faiss s':>8} {'faiss GiB':>10} "
          f"{'speed-up':>9} {'pairs':>7} {'recall':>7}")
    phash_s = {}
    for n in args.sizes:
        got, ours_s, ours_gb = run("ours", n, args.radius)
        phash_s[n] = ours_s
        ref, ref_s, ref_gb = run("faiss", n, args.radius)
        recall = len(got & ref) / len(ref) if ref else 1.0
        extra = len(got - ref)
        print(f"{n:>8} {ours_s:>8.2f} {ours_gb:>9.2f} {ref_s:>8.2f} {ref_gb:>10.2f} "
              f"{ref_s / ours_s:>8.1f}x {len(ref):>7} {recall:>7.4f}"
              + (f"  ({extra} pairs beyond the radius!)" if extra else ""))

    print()
    print(f"crop-robust search (curate): {len(CROP_BOXES)} crop boxes x 8 symmetries per image "
          f"against every whole image; radius {args.crop_radius} (word 1), total "
          f"{args.total_radius} (both words)")
    if not (args.images / "manifest.json").exists():
        from bench.neardup_set import generate
        generate(args.images)
    cost = real_costs(args.images, args.crop_radius, args.total_radius)
    align_ms = cost["align"]
    print(f"per image, once at ingest: crop hashes {cost['hash']:.2f} ms (pHash alone "
          f"{cost['phash']:.2f} ms); per candidate pair, decode both and align: "
          f"{align_ms:.2f} ms over {cost['candidates']} real candidates, "
          f"{cost['align_distinct']:.2f} ms for an unrelated pair (refined in full); "
          f"real 128 px Landsat tiles, larger JPEGs decode slower")
    print("vs pHash: this search's time over the pHash search's above (the price of crops and "
          "symmetries); stage: search + the candidates found x one alignment; at 10%: the same "
          "if 10% of all images had a copy (0.2 n candidates: both directions)")
    print(f"{'images':>8} {'search s':>9} {'GiB':>6} {'vs pHash':>9} {'cands':>7} {'recall':>7} "
          f"{'align s':>8} {'stage s':>8} {'at 10%':>7} {'target':>7}")
    for n in args.sizes:
        seconds, peak, rows, recall = run_crop(n, args.crop_radius, args.total_radius)
        align_s = rows * align_ms / 1e3
        busy = seconds + 0.2 * n * align_ms / 1e3
        print(f"{n:>8} {seconds:>9.1f} {peak:>6.2f} {seconds / phash_s[n]:>8.1f}x {rows:>7} "
              f"{recall:>7.4f} {align_s:>8.1f} {seconds + align_s:>8.1f} {busy:>7.0f} "
              f"{'<600 s' if n >= 600_000 else '':>7}")
    print()
    scaling(args.scale_sizes, args.crop_radius, args.total_radius, args.sample, args.project)


if __name__ == "__main__":
    main()
