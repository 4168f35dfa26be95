"""Curation finds the world's planted duplicates and contaminants and drops nothing else."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from geopile.curate import CurateConfig, curate
from geopile.records import read_records, records_path
from pipelines.curate import DUPLICATES, REPORT, curated_path, reports_dir

PRETRAIN = ["naip", "rsd46", "mlrsnet", "resisc45", "patternnet"]


def _keys_by_ref(data: Path) -> dict[tuple[str, str], str]:
    refs = {}
    for name in [*PRETRAIN, "ucmerced"]:
        table = read_records(records_path(data, name))
        for key, origin in zip(table["key"].to_pylist(), table["origin"].to_pylist(), strict=True):
            refs[(name, origin)] = key
    return refs


def _key(refs: dict, ref: dict) -> str:
    return refs[(ref["source"], ref["member"])]


def test_planted_duplicates_and_contaminants_are_found(curated, truth):
    data = Path(curated["paths"]["data"])
    reports = reports_dir(curated)
    refs = _keys_by_ref(data)
    dup = json.loads((reports / DUPLICATES).read_text())
    removed = {r["key"]: r["reason"] for r in dup["removed"]}
    kept = set(read_records(curated_path(data))["key"].to_pylist())

    exact = [(_key(refs, p["a"]), _key(refs, p["b"])) for p in truth["exact_duplicates"]]
    near = [(_key(refs, p["a"]), _key(refs, p["b"])) for p in truth["near_duplicates"]]
    for pairs, want in ((exact, 1.0), (near, 0.95)):
        # one of each pair is kept, the other removed
        found = sum((a in kept) != (b in kept) for a, b in pairs)
        assert found / len(pairs) >= want, pairs
    contaminants = {_key(refs, c["copy"]) for c in truth["contaminants"]}
    listed = {c["key"] for c in dup["contaminated"]}
    assert contaminants == listed
    assert all(removed[k] == "contaminated" for k in contaminants)

    # nothing else is dropped: every removal is one of the planted images
    planted = {k for pair in exact + near for k in pair} | contaminants
    assert set(removed) <= planted
    report = json.loads((reports / REPORT).read_text())
    total = report["counts"]["total"]
    assert total["exact_duplicate"] == len(exact)
    assert total["near_duplicate"] == len(near)
    assert total["contaminated"] == len(contaminants)
    assert total["out"] == len(kept) == total["in"] - len(removed)
    # the eval set never enters the curated table
    assert not any(k.startswith("ucmerced/") for k in kept)


def test_reports_and_plots(curated):
    reports = reports_dir(curated)
    report = json.loads((reports / REPORT).read_text())
    for name in PRETRAIN:
        stats = report["entropy"][name]["entropy_global"]
        assert 0 < stats["q05"] <= stats["q50"] <= stats["q95"] <= 8
        for kind in ("entropy", "contact"):
            png = reports / "plots" / f"{kind}_{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_distinct(curated):
    """Two different RESISC45 records, the second given the first's perceptual hash."""
    data = Path(curated["paths"]["data"])
    table = read_records(curated_path(data))
    pick = table.filter(pc.equal(table["source"], "resisc45")).slice(0, 2)
    rows = pick.to_pylist()
    assert rows[0]["xxh3_pixels"] != rows[1]["xxh3_pixels"]
    rows[1]["phash"] = rows[0]["phash"]
    return data, pa.Table.from_pylist(rows, schema=table.schema)


def test_hash_collision_is_not_a_duplicate(two_distinct):
    data, table = two_distinct
    result = curate({"resisc45": table}, {}, data, CurateConfig(radius=10))
    assert result.candidate_pairs == 1 and result.confirmed_pairs == 0
    assert result.curated.num_rows == 2


def test_overlapping_naip_windows_are_not_duplicates(curated):
    data = Path(curated["paths"]["data"])
    naip = read_records(records_path(data, "naip"))
    rows = naip.slice(0, 2).to_pylist()
    rows[1]["phash"] = rows[0]["phash"]  # as alike as two windows can look
    table = pa.Table.from_pylist(rows, schema=naip.schema)
    result = curate({"naip": table}, {}, data, CurateConfig(radius=10, min_correlation=-1.0))
    assert result.curated.num_rows == 2 and result.candidate_pairs == 0


def test_priority_decides_which_copy_stays(curated, truth):
    data = Path(curated["paths"]["data"])
    refs = _keys_by_ref(data)
    pair = next(p for p in truth["exact_duplicates"] if p["a"]["source"] != p["b"]["source"])
    a, b = _key(refs, pair["a"]), _key(refs, pair["b"])
    tables = {s: read_records(records_path(data, s)) for s in {pair["a"]["source"],
                                                               pair["b"]["source"]}}
    for first, second in ((a, b), (b, a)):
        order = (first.split("/")[0], second.split("/")[0])
        kept = curate(tables, {}, data, CurateConfig(priority=order)).curated["key"].to_pylist()
        assert first in kept and second not in kept


def test_filters(curated):
    data = Path(curated["paths"]["data"])
    table = read_records(records_path(data, "patternnet"))
    cut = sorted(table["entropy_global"].to_pylist())[10]
    result = curate({"patternnet": table}, {}, data, CurateConfig(min_entropy=cut))
    assert result.counts["patternnet"]["low_entropy"] == 10
    assert pc.min(result.curated["entropy_global"]).as_py() >= cut
