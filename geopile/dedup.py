"""Duplicate search: exact groups by pixel hash, near pairs by perceptual-hash Hamming radius.

The near search is multi-index hashing (Norouzi et al., 2012): the 64-bit hash is cut into four
16-bit bands; by the pigeonhole principle two hashes within Hamming distance ``r`` agree on some
band to within ``r // 4`` bits, so each hash only probes the buckets of its bands' neighbours at
that distance. Written by hand (compiled with numba) because no maintained library does an exact
Hamming *range* search sub-quadratically: faiss ``IndexBinaryMultiHash`` is exact but slower than
brute force here (it keeps a hash set per query), and ``IndexBinaryFlat`` is the quadratic
reference that ``bench/dedup.py`` beats.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations

import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BANDS = 4
BAND_BITS = 16
_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@numba.njit(inline="always")
def _popcount(x: np.uint64) -> np.uint64:
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@numba.njit(nogil=True, cache=True)
def _search(sorted_hashes, order, start, band, masks, radius, band_radius, lo, hi):  # noqa: ANN001, ANN202
    """Pairs found through ``band`` for the items at sorted positions ``lo..hi``.

    Items are visited in the band's sorted order, so neighbouring items probe neighbouring
    buckets and the scan stays in cache. A pair is reported by the first band whose keys are
    within ``band_radius``, so each pair comes exactly once over all bands.
    """
    cap = 1024
    out_i = np.empty(cap, np.int64)
    out_j = np.empty(cap, np.int64)
    out_d = np.empty(cap, np.int8)
    n_out = 0
    band_mask = np.uint64(0xFFFF)
    shift = np.uint64(16 * band)
    for p in range(lo, hi):
        i = order[p]
        h = sorted_hashes[p]
        key = (h >> shift) & band_mask
        for m in range(masks.shape[0]):
            probe = key ^ masks[m]
            for pos in range(start[probe], start[probe + 1]):
                j = order[pos]
                if j <= i:
                    continue
                x = h ^ sorted_hashes[pos]
                d = _popcount(x)
                if d > radius:
                    continue
                first = True
                for earlier in range(band):
                    if _popcount((x >> np.uint64(16 * earlier)) & band_mask) <= band_radius:
                        first = False
                        break
                if not first:
                    continue
                if n_out == cap:
                    cap *= 2
                    out_i = np.resize(out_i, cap)
                    out_j = np.resize(out_j, cap)
                    out_d = np.resize(out_d, cap)
                out_i[n_out] = i
                out_j[n_out] = j
                out_d[n_out] = d
                n_out += 1
    return out_i[:n_out], out_j[:n_out], out_d[:n_out]


def _band_masks(band_radius: int) -> np.ndarray:
    masks = [0]
    for k in range(1, band_radius + 1):
        for bits in combinations(range(BAND_BITS), k):
            masks.append(sum(1 << b for b in bits))
    return np.asarray(masks, dtype=np.uint64)


def near_pairs(
    hashes: np.ndarray, radius: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with ``popcount(hashes[i] ^ hashes[j]) <= radius``.

    Returns ``(i, j, distance)`` sorted by ``(i, j)``. Exact: recall 1.0 within the radius.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    if not 0 <= radius < 64:
        raise ValueError(f"radius must be in [0, 63], got {radius}")
    n = len(hashes)
    band_radius = radius // BANDS
    masks = _band_masks(band_radius)
    workers = workers or os.cpu_count() or 1
    bounds = np.linspace(0, n, workers * 4 + 1).astype(np.int64)
    parts = []
    with ThreadPoolExecutor(workers) as pool:  # the kernel releases the GIL
        for band in range(BANDS):
            keys = ((hashes >> np.uint64(BAND_BITS * band)) & np.uint64(0xFFFF)).astype(np.int64)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            sorted_hashes = hashes[order]
            counts = np.bincount(keys, minlength=1 << BAND_BITS)
            start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            parts += pool.map(
                lambda k, o=order, sh=sorted_hashes, st=start, b=band: _search(
                    sh, o, st, b, masks, radius, band_radius, bounds[k], bounds[k + 1]
                ),
                range(len(bounds) - 1),
            )
    i = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    j = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    d = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.int8)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def exact_pairs(digests: list[bytes] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(first, other)`` linking every member of a group of equal digests to its first."""
    _, inverse = np.unique(np.asarray(digests, dtype=object).astype(bytes), return_inverse=True)
    first = np.full(inverse.max() + 1 if len(inverse) else 0, -1, dtype=np.int64)
    a, b = [], []
    for idx, group in enumerate(inverse):
        if first[group] < 0:
            first[group] = idx
        else:
            a.append(first[group])
            b.append(idx)
    return np.asarray(a, np.int64), np.asarray(b, np.int64)


def clusters(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label per item, for a graph of ``n`` items with edges ``i - j``."""
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]
