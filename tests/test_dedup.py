"""The multi-index Hamming search finds exactly the pairs a brute-force search finds."""

import numpy as np
import pytest

from geopile.dedup import clusters, crop_pairs, exact_pairs, near_pairs


def _brute(hashes: np.ndarray, radius: int) -> set[tuple[int, int]]:
    x = hashes[:, None] ^ hashes[None, :]
    dist = np.bitwise_count(x)
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.parametrize("radius", [0, 3, 7, 10, 13])
def test_near_pairs_match_brute_force(radius):
    rng = np.random.default_rng(radius)
    hashes = rng.integers(0, 2**64 - 1, size=3000, dtype=np.uint64, endpoint=True)
    # plant pairs at every distance up to radius + 2 (some must not be found)
    for k in range(300):
        src, dst = rng.integers(0, len(hashes), 2)
        flips = rng.choice(64, size=k % (radius + 3), replace=False)
        hashes[dst] = hashes[src] ^ np.uint64(sum(1 << int(f) for f in flips))
    i, j, d = near_pairs(hashes, radius, workers=2)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert found == _brute(hashes, radius)
    assert len(found) == len(i), "a pair was reported twice"
    assert np.array_equal(d, np.bitwise_count(hashes[i] ^ hashes[j]))


def test_near_pairs_rejects_bad_radius():
    with pytest.raises(ValueError, match="radius"):
        near_pairs(np.zeros(3, np.uint64), 64)


def test_exact_pairs_and_clusters():
    a, b = exact_pairs([b"x", b"y", b"x", b"z", b"x", b"y"])
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 2), (0, 4), (1, 5)]
    label = clusters(6, a, b)
    assert label[0] == label[2] == label[4] and label[1] == label[5]
    assert len({label[0], label[1], label[3]}) == 3


def _symmetric(word: np.ndarray, w: int, s: int) -> np.ndarray:
    """Reference: symmetry ``s`` of hash words, bit by bit in numpy."""
    from geopile.dedup import FLIP_H, FLIP_V, PERM

    out = word.copy()
    if s >= 4:
        bits = (word[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
        out = (bits << PERM[w].astype(np.uint64)).sum(axis=-1, dtype=np.uint64)
    if s & 2:
        out = out ^ FLIP_H[w]
    if s & 1:
        out = out ^ FLIP_V[w]
    return out


@pytest.mark.parametrize("bands", [4, 3])
def test_crop_pairs_match_brute_force(bands):
    n, radius, total = 400, 7, 24
    hashes = _planted_crops(n, 5, copies=120, noise_levels=12)
    rows = crop_pairs(hashes, radius, total, workers=2, bands=bands)
    variants = np.stack([np.stack([_symmetric(hashes[:, :, w], w, s) for s in range(8)], -1)
                         for w in range(2)], -1)  # (n, 17, 8, 2)
    d1 = np.bitwise_count(variants[:, :, :, None, 0] ^ hashes[None, None, None, :, 0, 0]
                          .reshape(1, 1, 1, n))
    d2 = np.bitwise_count(variants[:, :, :, None, 1] ^ hashes[None, None, None, :, 0, 1]
                          .reshape(1, 1, 1, n))
    d = np.where(d1 <= radius, d1 + d2, 999).astype(np.int64)  # (n, boxes, 8, n)
    best = d.min(axis=(1, 2))
    np.fill_diagonal(best, 999)
    want = {(i, j): int(best[i, j]) for i, j in zip(*np.nonzero(best <= total), strict=True)}
    got = {(int(i), int(j)): int(dist) for i, j, _, _, dist in rows}
    assert len(want) > 50  # planted pairs within the radii (the rest are beyond them)
    assert got == want
    for i, j, c, s, dist in rows:  # the reported crop and symmetry give the reported distance
        assert d[i, c, s, j] == dist
        ties = np.argwhere(d[i, :, :, j] == dist)  # and are the lowest (crop, symmetry) tied
        assert (c, s) == tuple(ties[np.lexsort((ties[:, 1], ties[:, 0]))[0]])


def _planted_crops(n: int, seed: int, copies: int | None = None,
                   noise_levels: int = 10) -> np.ndarray:
    """Random crop hashes with planted copies: image j whole = a symmetry of crop c of image
    i, plus 0..noise_levels-1 flipped bits (``copies``: n // 10 by default)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n, 19, 2), dtype=np.uint64)
    for k in range(n // 10 if copies is None else copies):
        i, j = rng.choice(n, 2, replace=False)
        c, s = rng.integers(0, 19), rng.integers(0, 8)
        for w in range(2):
            noise = rng.choice(63, size=k % noise_levels, replace=False)
            hashes[j, 0, w] = _symmetric(hashes[i, c, w], w, s) ^ np.uint64(
                sum(1 << int(b) for b in noise))
    return hashes


def test_crop_layouts_give_the_same_rows_from_a_memory_map(tmp_path):
    hashes = _planted_crops(3000, 11)
    np.save(tmp_path / "crops.npy", hashes)
    mapped = np.load(tmp_path / "crops.npy", mmap_mode="r")
    narrow = crop_pairs(hashes, 7, 24, workers=2, bands=4)
    wide = crop_pairs(mapped, 7, 24, workers=2, bands=3)
    assert len(narrow) > 100
    assert np.array_equal(narrow, wide)


def test_a_sample_of_queries_finds_exactly_its_images_rows():
    """bench/dedup.py scales sampled queries up: a sample must search exactly like the whole."""
    from geopile.dedup import crop_band_rows

    hashes = _planted_crops(2000, 3)
    word2 = np.ascontiguousarray(hashes[:, 0, 1])
    full = np.concatenate([crop_band_rows(hashes, word2, 7, 24, 3, b, 2) for b in range(3)])
    sample = np.concatenate([crop_band_rows(hashes, word2, 7, 24, 3, b, 2, step=7, offset=2)
                             for b in range(3)])
    assert len(sample) > 5
    assert (sample[:, 0] % 7 == 2).all()
    key = np.lexsort(full.T[::-1])
    want = full[key][full[key][:, 0] % 7 == 2]
    assert np.array_equal(sample[np.lexsort(sample.T[::-1])], want)


def test_bad_bands_are_refused():
    with pytest.raises(ValueError, match="bands"):
        crop_pairs(np.zeros((3, 19, 2), np.uint64), 7, 24, bands=5)


def test_curate_reads_crop_hashes_from_arrow_and_hashes_missing_ones(tmp_path):
    import pyarrow as pa
    from PIL import Image

    from geopile.curate import _crop_hashes, _grey
    from geopile.imagestats import crop_hashes
    from geopile.payloads import LocalPayloads

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    words = [rng.integers(0, 2**63, 38, dtype=np.uint64).tolist() for _ in range(3)]
    column = pa.chunked_array([pa.array([words[0], None], pa.list_(pa.uint64())),
                               pa.array([words[1], words[2]], pa.list_(pa.uint64()))])
    got = _crop_hashes(column, ["x.png", "a.png", "y.png", "z.png"], LocalPayloads(tmp_path))
    assert got.shape == (4, 19, 2) and got.dtype == np.uint64
    for row, want in zip((0, 2, 3), words, strict=True):
        assert got[row].ravel().tolist() == want
    assert got[1].ravel().tolist() == list(crop_hashes(_grey((tmp_path / "a.png").read_bytes())))
    with pytest.raises(ValueError, match="crop_hashes"):
        _crop_hashes(pa.chunked_array([pa.array([[1, 2]], pa.list_(pa.uint64()))]), ["p"],
                     LocalPayloads(tmp_path))


def test_the_search_split_into_tasks_gives_the_same_rows():
    """Curation on a cluster: a task per (band, query slice), merged by the driver."""
    from geopile.engines import LocalMapper

    hashes = _planted_crops(3000, 5)
    whole = crop_pairs(hashes, 7, 24, workers=2)
    with LocalMapper(3) as mapper:  # 3 workers: 2 slices a band, 8 tasks
        split = crop_pairs(hashes, 7, 24, mapper=mapper)
    assert len(whole) > 100
    assert np.array_equal(whole, split)
