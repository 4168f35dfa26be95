"""The multi-index Hamming search finds exactly the pairs a brute-force search finds."""

import numpy as np
import pytest

from geopile.dedup import clusters, exact_pairs, near_pairs


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
