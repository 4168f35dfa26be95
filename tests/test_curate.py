"""Curation finds the world's planted duplicates and contaminants and drops nothing else."""

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from geopile.curate import curate
from geopile.records import read_records, records_path
from geopile.settings import Curate
from pipelines.curate import DUPLICATES, REPORT, curated_path

PRETRAIN = ["naip", "rsd46", "mlrsnet", "resisc45", "patternnet"]


def _keys_by_ref(data: Path) -> dict[tuple[str, str], str]:
    refs = {}
    for name in [*PRETRAIN, "ucmerced"]:
        table = read_records(records_path(data, name))
        for key, origin in zip(table["key"].to_pylist(), table["origin"].to_pylist(), strict=True):
            refs[(name, origin)] = key
    return refs


def _config(params: dict, **changes) -> Curate:
    """``curate:`` as params.yaml (and the world) set it, with ``changes``."""
    return Curate.model_validate({**params["curate"], **changes})


def _key(refs: dict, ref: dict) -> str:
    return refs[(ref["source"], ref["member"])]


def test_planted_duplicates_and_contaminants_are_found(curated, truth):
    data = Path(curated["paths"]["data"])
    reports = Path(curated["paths"]["reports"])
    refs = _keys_by_ref(data)
    dup = json.loads((reports / DUPLICATES).read_text())
    removed = {r["key"]: r["reason"] for r in dup["removed"]}
    table = read_records(curated_path(data))
    cluster = dict(zip(table["key"].to_pylist(), table["cluster"].to_pylist(), strict=True))

    exact = [(_key(refs, p["a"]), _key(refs, p["b"])) for p in truth["exact_duplicates"]]
    near = [(_key(refs, p["a"]), _key(refs, p["b"])) for p in truth["near_duplicates"]]
    # every copy stays in the curated table, in its original's cluster (builds pick one)
    for pairs, want in ((exact, 1.0), (near, 0.95)):
        found = sum(cluster[a] == cluster[b] for a, b in pairs)
        assert found / len(pairs) >= want, pairs
    contaminants = {_key(refs, c["copy"]) for c in truth["contaminants"]}
    listed = {c["key"] for c in dup["contaminated"]}
    assert contaminants == listed
    assert all(removed[k] == "contaminated" for k in contaminants)
    assert set(removed) == contaminants  # nothing else is dropped (no filters in the world)

    # no cluster joins images that were not planted as copies of each other
    planted = {k for pair in exact + near for k in pair}
    sizes = Counter(cluster.values())
    assert {k for k, c in cluster.items() if sizes[c] > 1} <= planted
    kinds = {(p["a"], p["b"]): p["kind"] for p in dup["pairs"]}
    assert all(kinds.get((a, b), kinds.get((b, a))) == "exact" for a, b in exact)
    report = json.loads((reports / REPORT).read_text())
    total = report["counts"]["total"]
    assert total["contaminated"] == len(contaminants)
    assert total["out"] == len(cluster) == total["in"] - len(removed)
    # the eval set never enters the curated table
    assert not any(k.startswith("ucmerced/") for k in cluster)


def test_reports_and_plots(curated):
    reports = Path(curated["paths"]["reports"])
    report = json.loads((reports / REPORT).read_text())
    for name in PRETRAIN:
        stats = report["entropy"][name]["entropy_global"]
        assert 0 < stats["q05"] <= stats["q50"] <= stats["q95"] <= 8
        for kind in ("entropy", "contact"):
            png = reports / "plots" / f"{kind}_{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_distinct(curated):
    """Two different RESISC45 records, the second given the first's crop hashes."""
    data = Path(curated["paths"]["data"])
    table = read_records(records_path(data, "resisc45"))
    rows = table.slice(0, 2).to_pylist()
    assert rows[0]["xxh3_pixels"] != rows[1]["xxh3_pixels"]
    rows[1]["crop_hashes"] = rows[0]["crop_hashes"]
    return data, pa.Table.from_pylist(rows, schema=table.schema), _config(curated)


def test_hash_collision_is_not_a_duplicate(two_distinct):
    data, table, config = two_distinct
    result = curate({"resisc45": table}, {}, data, config)
    assert result.candidate_pairs == 2 and result.confirmed_pairs == 0  # both ways, both refused
    assert len(set(result.curated["cluster"].to_pylist())) == 2
    assert result.near_scores and result.near_scores[0]["score"] < 0.9


def test_overlapping_naip_windows_are_not_duplicates(curated):
    data = Path(curated["paths"]["data"])
    naip = read_records(records_path(data, "naip"))
    rows = naip.slice(0, 2).to_pylist()
    rows[1]["crop_hashes"] = rows[0]["crop_hashes"]  # as alike as two windows can look
    table = pa.Table.from_pylist(rows, schema=naip.schema)
    result = curate({"naip": table}, {}, data, _config(curated, min_correlation=0.01))
    assert result.curated.num_rows == 2 and result.candidate_pairs == 0


def test_records_without_crop_hashes_are_hashed_at_curate(curated):
    data = Path(curated["paths"]["data"])
    table = read_records(records_path(data, "patternnet")).slice(0, 5)
    blank = table.set_column(table.schema.get_field_index("crop_hashes"), "crop_hashes",
                             pa.nulls(5, table.schema.field("crop_hashes").type))
    with_hashes = curate({"patternnet": table}, {}, data, _config(curated))
    without = curate({"patternnet": blank}, {}, data, _config(curated))
    assert with_hashes.curated["cluster"].to_pylist() == without.curated["cluster"].to_pylist()
    assert with_hashes.near_scores == without.near_scores


def test_filters(curated):
    data = Path(curated["paths"]["data"])
    table = read_records(records_path(data, "patternnet"))
    cut = sorted(table["entropy_global"].to_pylist())[10]
    result = curate({"patternnet": table}, {}, data, _config(curated, min_entropy=cut))
    assert result.counts["patternnet"]["low_entropy"] == 10
    assert pc.min(result.curated["entropy_global"]).as_py() >= cut


def test_curation_on_a_pool_of_processes_decides_the_same(curated):
    """The search and the alignments as tasks (a process pool here; Ray in test_ray_engine)."""
    from geopile.engines import LocalMapper

    data = Path(curated["paths"]["data"])
    config = _config(curated)
    tables = {name: read_records(records_path(data, name)) for name in [*PRETRAIN, "ucmerced"]}
    pretrain = {name: tables[name] for name in PRETRAIN}
    evaluation = {"ucmerced": tables["ucmerced"]}
    one = curate(pretrain, evaluation, data, config)
    with LocalMapper(2) as mapper:
        pooled = curate(pretrain, evaluation, data, config, mapper=mapper)
    assert one.confirmed_pairs > 0 and one.contaminated
    assert pooled.curated.equals(one.curated)
    for field in ("pairs", "near_scores", "clusters", "contaminated", "removed", "counts"):
        assert getattr(pooled, field) == getattr(one, field), field
