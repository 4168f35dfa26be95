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
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import numba
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from geopile.imagestats import HASH_FREQS

if TYPE_CHECKING:
    from geopile.engines import Mapper

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
def _search(sorted_hashes, order, start, band, masks, radius, band_radius, lo, hi):
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


def _band_index(words: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``words`` sorted by their 16-bit ``band`` key: (order, sorted words, bucket starts)."""
    keys = ((words >> np.uint64(BAND_BITS * band)) & np.uint64(0xFFFF)).astype(np.int64)
    order = np.argsort(keys, kind="stable").astype(np.int64)
    counts = np.bincount(keys, minlength=1 << BAND_BITS)
    return order, words[order], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


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
            order, sorted_hashes, start = _band_index(hashes, band)
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


# --- crop-robust search over the crop-pyramid hashes (geopile.imagestats.crop_hashes) ---------

def _freq_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per word: the bit each bit moves to under transpose, and the bits a flip negates."""
    perm = np.zeros((2, 64), np.int64)
    flip_h = np.zeros(2, np.uint64)  # mirror left-right: odd horizontal frequency v
    flip_v = np.zeros(2, np.uint64)  # mirror top-bottom: odd vertical frequency u
    for w, freqs in enumerate(HASH_FREQS):
        where = {f: b for b, f in enumerate(freqs)}
        perm[w] = np.arange(64)
        for b, (u, v) in enumerate(freqs):
            perm[w, b] = where[(v, u)]
            if v % 2:
                flip_h[w] |= np.uint64(1 << b)
            if u % 2:
                flip_v[w] |= np.uint64(1 << b)
    return perm, flip_h, flip_v


PERM, FLIP_H, FLIP_V = _freq_maps()
# The eight symmetries of the square as (transpose first?, mirror left-right, mirror top-bottom).
DIHEDRAL = tuple((t, h, v) for t in (False, True) for h in (False, True) for v in (False, True))
DIHEDRAL_NAMES = ("identity", "flip_v", "flip_h", "rot180", "transpose", "rot90", "rot270",
                  "anti_transpose")


def _permute_tables() -> np.ndarray:
    """(2, 8, 256): for word ``w``, byte ``k`` and its value, where transpose puts those bits."""
    tables = np.zeros((2, 8, 256), np.uint64)
    for w in range(2):
        for k in range(8):
            for value in range(256):
                out = 0
                for bit in range(8):
                    if value >> bit & 1:
                        out |= 1 << int(PERM[w, 8 * k + bit])
                tables[w, k, value] = out
    return tables


PERM_TABLES = _permute_tables()


@numba.njit(inline="always")
def _transpose(word, tables):
    out = np.uint64(0)
    for k in range(8):
        out |= tables[k, (word >> np.uint64(8 * k)) & np.uint64(0xFF)]
    return out


@numba.njit(inline="always")
def _symmetry(word, s, tables, flip_h, flip_v):
    """Symmetry ``s`` of one hash word: transpose (s >= 4), then the mirrors (bits 1 and 0)."""
    if s >= 4:
        word = _transpose(word, tables)
    if s & 2:
        word ^= flip_h
    if s & 1:
        word ^= flip_v
    return word


# Band layouts of word 1 for the crop search: bands -> bits per band. Both are exact (pigeonhole:
# a word within ``radius`` bits agrees on some band within ``radius // bands``); fewer, wider
# bands probe more buckets (4 x 16 at radius 7: 68 probes; 3 x 21: 696) that each hold fewer
# images (n / 2^16 against n / 2^21). In theory 3 x 21 wins from a few million images; measured
# (bench/dedup.py, 2 cores) it stays 1.4-2.2x slower up to 20M: each of its probes is a cache
# miss in a 16 MB bucket table and a random bucket, while 4 x 16 scans long buckets in order.
CROP_LAYOUTS = {4: 16, 3: 21}
CROP_BANDS = 4  # the default layout: fastest at every size measured (600k to 20M)


@numba.njit(nogil=True, cache=True)
def _search_crops(hashes, word2, band, band_bits, sorted1, order, start, masks, tables, flip_h,
                  flip_v, r1, total, band_radius, lo, hi, step):
    """Rows (i, j, crop, symmetry, distance) for the images ``i`` in ``range(lo, hi, step)``.

    A symmetry of crop ``crop`` of image ``i`` hashes within ``r1`` (word 1) and ``total``
    (both words) of image ``j`` whole. ``sorted1``, ``order`` and ``start`` index word 1 of
    every whole image by its ``band_bits``-bit ``band``; a (query, j) is reported by the first
    band whose key is within ``band_radius``, so once over all bands. Queries are made here, in
    the order of their images, so they are read sequentially and never stored: sorting them by
    bucket (tried) cost more in cache misses on the queries than it saved on the index.
    """
    cap = 1024
    out = np.empty((cap, 5), np.int64)
    n_out = 0
    band_mask = (np.uint64(1) << np.uint64(band_bits)) - np.uint64(1)
    shift = np.uint64(band_bits * band)
    for i in range(lo, hi, step):
        for c in range(hashes.shape[1]):
            for s in range(8):
                q0 = _symmetry(hashes[i, c, 0], s, tables[0], flip_h[0], flip_v[0])
                key = (q0 >> shift) & band_mask
                for m in range(masks.shape[0]):
                    probe = key ^ masks[m]
                    for pos in range(start[probe], start[probe + 1]):
                        x = q0 ^ sorted1[pos]
                        d1 = _popcount(x)
                        if d1 > r1:
                            continue
                        j = order[pos]
                        if j == i:
                            continue
                        first = True
                        for earlier in range(band):
                            if _popcount((x >> np.uint64(band_bits * earlier)) & band_mask) <= \
                                    band_radius:
                                first = False
                                break
                        if not first:
                            continue
                        q1 = _symmetry(hashes[i, c, 1], s, tables[1], flip_h[1], flip_v[1])
                        d = d1 + _popcount(q1 ^ word2[j])
                        if d > total:
                            continue
                        if n_out == cap:
                            cap *= 2
                            grown = np.empty((cap, 5), np.int64)
                            grown[:n_out] = out[:n_out]
                            out = grown
                        out[n_out, 0] = i
                        out[n_out, 1] = j
                        out[n_out, 2] = c
                        out[n_out, 3] = s
                        out[n_out, 4] = d
                        n_out += 1
    return out[:n_out]


def _word_index(words: np.ndarray, band: int, bits: int) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """``words`` sorted by their ``bits``-bit ``band`` key: (order, sorted words, bucket starts).

    16 bytes per image (int64 order and the sorted word) plus 8 bytes per bucket: the only
    index in memory at a time while the crop search goes band by band.
    """
    keys = ((words >> np.uint64(bits * band)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=1 << bits)
    del keys
    start = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    return order, words[order], start


def _masks(bits: int, band_radius: int) -> np.ndarray:
    """Every XOR mask of at most ``band_radius`` set bits among ``bits``: the probes of a key."""
    masks = [0]
    for k in range(1, band_radius + 1):
        for chosen in combinations(range(bits), k):
            masks.append(sum(1 << b for b in chosen))
    return np.asarray(masks, dtype=np.uint64)


def crop_band_rows(hashes: np.ndarray, word2: np.ndarray, radius: int, total: int, bands: int,
                   band: int, workers: int, step: int = 1, offset: int = 0) -> np.ndarray:
    """The rows of one band shard: build that band's index, search it, drop it.

    Queries are the images ``offset, offset + step, ...`` (``step > 1``: a sample, which
    bench/dedup.py times and scales up); ``hashes`` may be a memory map, read sequentially.
    """
    bits = CROP_LAYOUTS[bands]
    band_radius = radius // bands
    masks = _masks(bits, band_radius)
    n = len(hashes)
    order, sorted1, start = _word_index(np.ascontiguousarray(hashes[:, 0, 0]), band, bits)
    chunks = max(1, min(n // step, n // 4096, 64 * workers))
    bounds = np.linspace(0, n, chunks + 1).astype(np.int64)
    lows = [int(lo) + (offset - int(lo)) % step for lo in bounds[:-1]]  # same phase everywhere
    with ThreadPoolExecutor(workers) as pool:  # the kernel releases the GIL
        parts = list(pool.map(
            lambda k: _search_crops(hashes, word2, band, bits, sorted1, order, start, masks,
                                    PERM_TABLES, FLIP_H, FLIP_V, radius, total, band_radius,
                                    lows[k], bounds[k + 1], step),
            range(chunks)))
    return np.concatenate(parts) if parts else np.empty((0, 5), np.int64)


def crop_pairs(hashes: np.ndarray, radius: int, total: int, workers: int | None = None,
               bands: int | None = None, mapper: Mapper | None = None) -> np.ndarray:
    """Candidate near copies: rows ``(i, j, crop, symmetry, distance)``, one per ordered pair.

    Image ``j`` whole is matched against every crop of image ``i`` (``hashes[i]``, shape
    (boxes, 2): see :func:`geopile.imagestats.crop_hashes`) under all eight symmetries of the
    square; word 1 must be within ``radius`` bits (searched by multi-index hashing, exact) and
    both words within ``total``. Of the matches of one ordered pair the closest is kept.

    Queries are 8 per crop box (152 per image) against one entry per image; each probes the
    buckets within ``radius // bands`` bits of its bands' keys, so the cost grows as queries
    times probes times bucket occupancy: n squared over 2^bits. ``bands`` (default
    CROP_BANDS) picks 4 x 16 or 3 x 21 bits; the rows are the same either way. The
    search is sharded by band: one band's index (16 bytes per image) is in memory at a time
    besides word 2 of every image (8 bytes) and ``hashes``, which may be a memory-mapped .npy
    that each band reads through once (bench/dedup.py: times and memory to 60M images).

    ``mapper``: split the search into tasks (:func:`search_band_part`, about two per CPU) on a
    pool or a Ray cluster; the driver only merges their rows (:func:`closest_per_pair`).
    """
    hashes = np.asarray(hashes)
    if hashes.dtype != np.uint64 or not hashes.flags.c_contiguous:
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if not 0 <= radius < 64:
        raise ValueError(f"radius must be in [0, 63], got {radius}")
    bands = bands or CROP_BANDS
    if bands not in CROP_LAYOUTS:
        raise ValueError(f"bands must be one of {sorted(CROP_LAYOUTS)}, got {bands}")
    if n == 0:
        return np.empty((0, 5), np.int64)
    word2 = np.ascontiguousarray(hashes[:, 0, 1])
    if mapper is None:
        workers = workers or os.cpu_count() or 1
        parts = [crop_band_rows(hashes, word2, radius, total, bands, band, workers)
                 for band in range(bands)]
    else:
        # one task per (band, query offset): every task indexes one band over all n images and
        # searches every ``splits``-th query; the union over offsets is exactly the band's rows
        splits = max(1, -(-2 * mapper.cpus() // bands))
        shared = _BandSearch(hashes, word2, radius, total, bands, splits)
        tasks = [(band, offset) for band in range(bands) for offset in range(splits)]
        parts = list(mapper.map(search_band_part, tasks, shared))
    return closest_per_pair(np.concatenate(parts))


def closest_per_pair(rows: np.ndarray) -> np.ndarray:
    """Of the rows of each ordered pair (i, j), the closest: the merge of the search's parts.

    Ties go to the lowest crop, then symmetry, so neither the band layout nor how the queries
    were split can change a row.
    """
    rows = rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 4], rows[:, 1], rows[:, 0]))]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:, 0] != rows[:-1, 0]) | (rows[1:, 1] != rows[:-1, 1])
    return rows[first]


@dataclass(frozen=True)
class _BandSearch:
    """What every task of a split search shares, sent once.

    Through Ray's object store or a pool's initializer; the hashes dominate, 304 bytes an image.
    """

    hashes: np.ndarray
    word2: np.ndarray
    radius: int
    total: int
    bands: int
    splits: int


def search_band_part(search: _BandSearch, task: tuple[int, int]) -> np.ndarray:
    """One task of a split search: band ``task[0]``'s index, queries ``task[1]::splits``.

    Memory: the band index (16 bytes an image, plus 2^bits bucket starts) on top of the shared
    hashes and word 2; one core (the caller's mapper spreads the tasks).
    """
    band, offset = task
    return crop_band_rows(search.hashes, search.word2, search.radius, search.total,
                          search.bands, band, workers=1, step=search.splits, offset=offset)
