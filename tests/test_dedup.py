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


def test_crop_pairs_match_brute_force():
    rng = np.random.default_rng(5)
    n, radius, total = 400, 7, 24
    hashes = rng.integers(0, 2**63, size=(n, 19, 2), dtype=np.uint64)
    # plant copies: image j whole = a symmetry of crop c of image i, plus noise at many distances
    for k in range(120):
        i, j = rng.choice(n, 2, replace=False)
        c, s = rng.integers(0, 19), rng.integers(0, 8)
        for w in range(2):
            noise = rng.choice(63, size=k % 12, replace=False)
            hashes[j, 0, w] = _symmetric(hashes[i, c, w], w, s) ^ np.uint64(
                sum(1 << int(b) for b in noise))
    rows = crop_pairs(hashes, radius, total, workers=2)
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


def test_symmetries_of_the_hash_are_those_of_the_image():
    from geopile.imagestats import crop_hashes

    rng = np.random.default_rng(0)
    field = rng.normal(size=(16, 16))
    image = np.kron(field, np.ones((8, 8)))  # 128 px, structure at every DCT frequency used
    image = np.clip(128 + 40 * image + rng.normal(size=image.shape), 0, 255).astype(np.uint8)
    words = np.asarray(crop_hashes(image), np.uint64).reshape(-1, 2)[0]
    transforms = {  # DIHEDRAL order: (transpose first, mirror left-right, mirror top-bottom)
        0: image, 1: image[::-1], 2: image[:, ::-1], 3: image[::-1, ::-1],
        4: image.T, 5: image.T[::-1], 6: image.T[:, ::-1], 7: image.T[::-1, ::-1],
    }
    for s, pixels in transforms.items():
        seen = np.asarray(crop_hashes(np.ascontiguousarray(pixels)), np.uint64).reshape(-1, 2)[0]
        for w in range(2):
            assert np.bitwise_count(seen[w] ^ _symmetric(words[w], w, s)) <= 1, (s, w)
