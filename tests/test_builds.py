"""Build-aware duplicate resolution, exact caps and shortfalls, and what each build says it lost.

Unit tests run :func:`geopile.shards.select` on small synthetic tables; the rest run on the
offline world after ingest and curate (the ``curated`` fixture) against its planted duplicates
and contaminants (``truth``).
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import xxhash
import yaml
from pydantic import ValidationError

from geopile.card import BOUNDARY_PLOT, CARD
from geopile.params import ParamsError
from geopile.records import read_records, records_path
from geopile.settings import Build, check_params
from geopile.shards import BuildError, caps, select, source_order
from geopile.stream.index import INDEX
from pipelines.curate import DUPLICATES, REPORT, curated_path
from pipelines.shard import run_shard
from tests.conftest import typed

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# synthetic tables


def _table(rows: list[tuple[str, int, str]]) -> pa.Table:
    """Rows of ``(key, cluster, pixel hash)``; the source is the key's first part."""
    return pa.table({
        "key": [k for k, _, _ in rows],
        "source": [k.split("/")[0] for k, _, _ in rows],
        "cluster": pa.array([c for _, c, _ in rows], pa.int64()),
        "xxh3_pixels": [p for _, _, p in rows],
    })


SYNTHETIC = _table([
    ("hi/a", 1, "A"), ("lo/a", 1, "A"),  # an exact copy across sources
    ("hi/b", 2, "B"), ("lo/b", 2, "B'"),  # a near copy, direct edge "crop"
    ("hi/d", 4, "D"), ("lo/d1", 4, "D1"), ("lo/d2", 4, "D2"),  # lo/d2 only reaches hi/d via d1
    ("lo/e", 5, "E"), ("lo/e2", 5, "E"),  # an exact copy within one source
    ("hi/f", 6, "F"), ("lo/g", 7, "G"), ("lo/h", 8, "H"),  # singletons
])
PAIRS = [
    {"a": "hi/a", "b": "lo/a", "kind": "exact", "score": 1.0},
    {"a": "lo/b", "b": "hi/b", "kind": "crop", "score": 0.97},
    {"a": "hi/d", "b": "lo/d1", "kind": "crop+rot90", "score": 0.95},
    {"a": "lo/d1", "b": "lo/d2", "kind": "flip_h+colour", "score": 0.93},
    {"a": "lo/e", "b": "lo/e2", "kind": "exact", "score": 1.0},
]


def _pick(table: pa.Table, build: str, spec: dict, *args, **kwargs):
    """``select`` with the build's spec as params.yaml writes it."""
    return select(table, build, Build.model_validate(spec), *args, **kwargs)


def _keys(table: pa.Table) -> set[str]:
    return set(table["key"].to_pylist())


def test_select_keeps_one_per_cluster_by_priority_and_counts_why():
    chosen = _pick(SYNTHETIC, "b", {"lo": "all", "hi": "all"}, 0, priority=["hi", "lo"],
                    pairs=PAIRS)
    keys = _keys(chosen.table)
    assert {"hi/a", "hi/b", "hi/d", "hi/f", "lo/g", "lo/h"} <= keys
    assert not keys & {"lo/a", "lo/b", "lo/d1", "lo/d2"}
    assert len(keys & {"lo/e", "lo/e2"}) == 1
    assert chosen.table.num_rows == 7 == len(set(SYNTHETIC["cluster"].to_pylist()))
    assert list(chosen.curation) == ["hi", "lo"]
    hi, lo = chosen.curation["hi"], chosen.curation["lo"]
    assert (hi["curated"], hi["available"], hi["selected"], hi["asked"]) == (4, 4, 4, "all")
    assert lo["curated"] == 8 and lo["exact_duplicate"] == 2  # lo/a, and one of lo/e, lo/e2
    assert lo["near_duplicate"] == 3
    assert lo["near_kinds"] == {"crop": 1, "crop+rot90": 1, "near (indirect)": 1}
    assert (lo["available"], lo["selected"], lo["shortfall"]) == (3, 3, 0)
    assert "in" not in lo  # no curate report given


def test_a_dropped_source_costs_no_image():
    chosen = _pick(SYNTHETIC, "b", {"lo": "all"}, 0, priority=["hi", "lo"], pairs=PAIRS)
    clusters = set(SYNTHETIC.filter(pc.equal(SYNTHETIC["source"], "lo"))["cluster"]
                   .to_pylist())
    assert chosen.table.num_rows == len(clusters)
    assert {"lo/a", "lo/b", "lo/g", "lo/h"} <= _keys(chosen.table)
    assert len(_keys(chosen.table) & {"lo/d1", "lo/d2"}) == 1


def _seed_ranking(first: str, second: str) -> int:
    """A seed whose hash order puts ``first`` before ``second``."""
    return next(s for s in range(1000) if xxhash.xxh3_64_intdigest(first.encode(), seed=s)
                < xxhash.xxh3_64_intdigest(second.encode(), seed=s))


def test_a_copy_beyond_its_cap_lets_the_lower_priority_copy_stand_for_it():
    table = _table([("hi/x", 10, "X"), ("hi/y", 11, "Y"), ("lo/y", 11, "Y")])
    seed = _seed_ranking("hi/x", "hi/y")  # hi/x fills hi's cap of 1; hi/y is beyond it
    chosen = _pick(table, "b", {"hi": 1, "lo": 1}, seed, priority=["hi", "lo"])
    assert _keys(chosen.table) == {"hi/x", "lo/y"}
    assert chosen.curation["hi"]["available"] == 2 and chosen.curation["hi"]["selected"] == 1
    assert chosen.curation["lo"]["exact_duplicate"] == 0
    # the other way round the copy taken within the cap claims the cluster
    seed = _seed_ranking("hi/y", "hi/x")
    chosen = _pick(table, "b", {"hi": 1, "lo": 1, "allow_short": True}, seed,
                    priority=["hi", "lo"])
    assert _keys(chosen.table) == {"hi/y"}
    assert chosen.curation["lo"]["exact_duplicate"] == 1
    assert chosen.shortfall == {"lo": 1}


def test_caps_are_exact_or_the_build_stops_naming_each_short_source():
    spec = {"hi": 3, "lo": 2}
    chosen = _pick(SYNTHETIC, "b", spec, 0, priority=["hi", "lo"], pairs=PAIRS)
    assert chosen.curation["hi"]["selected"] == 3 and chosen.curation["lo"]["selected"] == 2
    assert chosen.table.num_rows == 5
    with pytest.raises(BuildError) as err:
        _pick(SYNTHETIC, "big", {"hi": 2000, "lo": 31500}, 0, priority=["hi", "lo"])
    assert str(err.value) == ("big: hi asks 2,000, 4 left after curation; "
                              "lo asks 31,500, 3 left after curation")
    with pytest.raises(BuildError, match=r"^big: lo asks 200, 3 left after curation$"):
        _pick(SYNTHETIC, "big", {"hi": "all", "lo": 20000}, 0, 0.01, priority=["hi", "lo"])
    short = _pick(SYNTHETIC, "big", {"hi": 2000, "lo": 2, "allow_short": True}, 0,
                   priority=["hi", "lo"])
    assert short.shortfall == {"hi": 1996} and short.curation["hi"]["asked"] == 2000


def test_build_options_are_not_sources():
    spec = Build.model_validate({"naip": 10, "rsd46": "all", "allow_short": True})
    assert caps(spec, 0.5) == {"naip": 5, "rsd46": None}
    assert spec.allow_short is True
    assert Build.model_validate({"naip": 1}).allow_short is None
    with pytest.raises(ValidationError, match="allow_short"):
        Build.model_validate({"naip": 1, "allow_short": "yes"})
    with pytest.raises(ValidationError, match="must name at least one source"):
        Build.model_validate({"allow_short": True})
    assert source_order(["zz", "lo", "aa", "hi"], ["hi", "lo", "absent"]) == [
        "hi", "lo", "aa", "zz"]


def test_settings_accept_allow_short_as_a_bool_only():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, spec in params["builds"].items():
        assert spec.get("allow_short") is (True if name.startswith("paper") else None), name
    check_params(params)
    for bad, message in (
            ("yes", "builds.paper.allow_short: 'yes' is invalid: must be true or false"),
            (1, "builds.paper.allow_short: 1 is invalid: must be true or false")):
        broken = copy.deepcopy(params)
        broken["builds"]["paper"]["allow_short"] = bad
        with pytest.raises(ParamsError) as err:
            check_params(broken)
        assert message in str(err.value) and "no source" not in str(err.value)
    broken = copy.deepcopy(params)
    broken["builds"]["mine"] = {"allow_short": True}
    with pytest.raises(ParamsError, match="builds.mine: .* must name at least one source"):
        check_params(broken)


# ---------------------------------------------------------------------------------------------
# the world


def _inputs(params: dict) -> dict[str, Any]:
    reports = Path(params["paths"]["reports"])
    return {"curated": read_records(curated_path(Path(params["paths"]["data"]))),
            "priority": params["curate"]["priority"],
            "pairs": json.loads((reports / DUPLICATES).read_text())["pairs"],
            "counts": json.loads((reports / REPORT).read_text())["counts"]}


@pytest.fixture(scope="module")
def inputs(curated) -> dict[str, Any]:
    """The curated world's table, priority, duplicate edges and curate counts."""
    return _inputs(curated)


def _select(inputs: dict, build: str, spec: dict, scale: float, seed: int = 0):
    return _pick(inputs["curated"], build, spec, seed, scale, priority=inputs["priority"],
                  pairs=inputs["pairs"], curate_counts=inputs["counts"])


def _members(table: pa.Table) -> dict[int, list[tuple[str, str]]]:
    """cluster -> [(key, source)] of the curated table."""
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for key, source, cluster in zip(table["key"].to_pylist(), table["source"].to_pylist(),
                                    table["cluster"].to_pylist(), strict=True):
        out[cluster].append((key, source))
    return out


def _forbidden(params: dict, truth: dict) -> set[str]:
    """Contaminated images (curate's list and the world's planted ones)."""
    data = Path(params["paths"]["data"])
    refs = {}
    for name in {c["copy"]["source"] for c in truth["contaminants"]}:
        table = read_records(records_path(data, name))
        refs.update({(name, o): k for k, o in zip(table["key"].to_pylist(),
                                                  table["origin"].to_pylist(), strict=True)})
    planted = {refs[(c["copy"]["source"], c["copy"]["member"])] for c in truth["contaminants"]}
    report = json.loads((Path(params["paths"]["reports"]) / DUPLICATES).read_text())
    listed = {c["key"] for c in report["contaminated"]}
    assert planted and planted <= listed
    return listed


def test_every_cluster_a_build_touches_gives_exactly_one_image(curated, inputs, truth):
    """Caps above what is left (scale 1): one image per cluster, from the first source."""
    members = _members(inputs["curated"])
    forbidden = _forbidden(curated, truth)
    rank = {s: i for i, s in enumerate(inputs["priority"])}
    checked = 0
    for build, spec in curated["builds"].items():
        if build != "paper" and not build.startswith("paper_"):
            continue
        chosen = _select(inputs, build, spec, 1.0)
        keys = _keys(chosen.table)
        assert chosen.table.num_rows == len(keys)
        sources = set(spec) - {"allow_short"}
        for group in members.values():
            inside = [(k, s) for k, s in group if s in sources]
            if not inside:
                continue
            picked = [(k, s) for k, s in inside if k in keys]
            assert len(picked) == 1, (build, inside, picked)
            assert rank[picked[0][1]] == min(rank[s] for _, s in inside), (build, inside)
            checked += len(group) > 1
        assert not keys & forbidden
        assert not any(k.startswith("ucmerced/") for k in keys)
        for source, c in chosen.curation.items():
            assert c["available"] == c["selected"]
            assert c["curated"] == c["available"] + c["exact_duplicate"] + c["near_duplicate"]
            assert c["in"] == inputs["counts"][source]["in"]
    assert checked > 10


def test_at_the_worlds_scale_a_cluster_is_left_out_only_by_full_caps(curated, inputs, truth):
    members = _members(inputs["curated"])
    forbidden = _forbidden(curated, truth)
    scale = curated["shard"]["cap_scale"]
    for build, spec in curated["builds"].items():
        chosen = _select(inputs, build, spec, scale)
        keys = _keys(chosen.table)
        sources = set(spec) - {"allow_short"}
        full = {s for s, c in chosen.curation.items() if c["selected"] == c["asked"]}
        for group in members.values():
            picked = [k for k, s in group if s in sources and k in keys]
            assert len(picked) <= 1, (build, group)
            if not picked:
                assert {s for _, s in group if s in sources} <= full, (build, group)
        assert not keys & forbidden


def _planted_cross_source(params: dict, truth: dict, inputs: dict) -> list[tuple[str, str]]:
    """Planted duplicates across sources found by curate: (higher-, lower-priority key)."""
    data = Path(params["paths"]["data"])
    refs = {}
    for name in inputs["priority"]:
        table = read_records(records_path(data, name))
        refs.update({(name, o): k for k, o in zip(table["key"].to_pylist(),
                                                  table["origin"].to_pylist(), strict=True)})
    cluster = dict(zip(inputs["curated"]["key"].to_pylist(),
                       inputs["curated"]["cluster"].to_pylist(), strict=True))
    rank = {s: i for i, s in enumerate(inputs["priority"])}
    out = []
    for pair in truth["exact_duplicates"] + truth["near_duplicates"]:
        a, b = pair["a"], pair["b"]
        if a["source"] == b["source"]:
            continue
        ka, kb = refs[(a["source"], a["member"])], refs[(b["source"], b["member"])]
        if ka in cluster and kb in cluster and cluster[ka] == cluster[kb]:
            out.append((ka, kb) if rank[a["source"]] < rank[b["source"]] else (kb, ka))
    return out


def test_a_copy_in_a_dropped_source_is_represented_by_the_other(curated, inputs, truth):
    pairs = _planted_cross_source(curated, truth, inputs)
    assert len(pairs) >= 5
    paper = _keys(_select(inputs, "paper", curated["builds"]["paper"], 1.0).table)
    for high, low in pairs:
        assert high in paper and low not in paper
        ablation = f"paper_no_{high.split('/')[0]}"
        chosen = _select(inputs, ablation, curated["builds"][ablation], 1.0)
        assert low in _keys(chosen.table), (ablation, high, low)


def _left(inputs: dict, sources: list[str]) -> dict[str, int]:
    """Images left per source when no cap binds: its clusters no earlier source holds."""
    order = source_order(sources, inputs["priority"])
    held: set[int] = set()
    left = {}
    for source in order:
        table = inputs["curated"]
        mine = {c for c, s in zip(table["cluster"].to_pylist(), table["source"].to_pylist(),
                                  strict=True) if s == source}
        left[source] = len(mine - held)
        held |= mine
    return left


def _with_build(params: dict, tmp_path: Path, name: str, spec: dict,
                scale: float | None = None) -> dict:
    out = copy.deepcopy(params)
    out["builds"][name] = spec
    out["paths"]["shards"] = str(tmp_path / "shards")
    if scale is not None:
        out["shard"]["cap_scale"] = scale
    return out


def test_a_cap_above_whats_left_stops_the_build(curated, inputs, tmp_path):
    left = _left(inputs, ["naip", "resisc45"])
    params = _with_build(curated, tmp_path, "too_big", {"naip": 300000, "resisc45": 31500}, 1.0)
    with pytest.raises(BuildError) as err:
        run_shard(typed(params), "too_big", progress=False)
    assert str(err.value) == (f"too_big: naip asks 300,000, {left['naip']:,} left after "
                              f"curation; resisc45 asks 31,500, {left['resisc45']:,} left "
                              "after curation")
    assert not (Path(params["paths"]["shards"]) / "too_big").exists()
    # cap_scale applies before the comparison: the world's paper, without allow_short
    spec = {k: v for k, v in curated["builds"]["paper"].items() if k != "allow_short"}
    params = _with_build(curated, tmp_path, "strict", spec)
    scale = params["shard"]["cap_scale"]
    with pytest.raises(BuildError) as err:
        run_shard(typed(params), "strict", progress=False)
    asked = math.ceil(spec["naip"] * scale)
    assert left["naip"] < asked
    assert str(err.value) == f"strict: naip asks {asked:,}, {left['naip']:,} left after curation"


def test_allow_short_writes_the_shortfall_into_index_and_card(curated, inputs, tmp_path):
    params = _with_build(curated, tmp_path, "paper", curated["builds"]["paper"])
    index = run_shard(typed(params), "paper", progress=False)
    out = Path(params["paths"]["shards"]) / "paper"
    assert json.loads((out / INDEX).read_text()) == index
    naip = index["curation"]["naip"]
    asked = math.ceil(curated["builds"]["paper"]["naip"] * params["shard"]["cap_scale"])
    assert naip["asked"] == asked and naip["selected"] == naip["available"] < asked
    assert naip["shortfall"] == asked - naip["available"] > 0
    assert index["sources"]["naip"] == naip["selected"]
    for source, c in index["curation"].items():
        assert index["sources"][source] == c["selected"] == min(c["asked"], c["available"])
        assert c["in"] == inputs["counts"][source]["in"]
        assert c["contaminated"] == inputs["counts"][source]["contaminated"]
    card = (out / CARD).read_text()
    _, header, body = card.split("---\n", 2)
    assert yaml.safe_load(header)["geopile"]["shortfall"] == {"naip": naip["shortfall"]}
    assert (f"naip: the build asks {asked:,} images, {naip['available']:,} are left after "
            f"curation, so it holds {naip['shortfall']:,} fewer") in body
    for column in ("in", "filtered", "contaminated", "exact duplicates",
                   "near duplicates (by kind)", "available", "asked", "selected", "shortfall"):
        assert f" {column} |" in body
    assert (f"| naip | {naip['in']:,} | {naip['filtered']:,} | 0 | 0 | 0 | "
            f"{naip['available']:,} | {asked:,} | {naip['selected']:,} | "
            f"{naip['shortfall']:,} |") in body
    plot = Path(params["paths"]["reports"]) / "plots" / BOUNDARY_PLOT
    if plot.exists():
        assert (out / BOUNDARY_PLOT).read_bytes() == plot.read_bytes()
        assert f"]({BOUNDARY_PLOT})" in body and "curate.min_correlation" in body
    else:
        assert not (out / BOUNDARY_PLOT).exists() and BOUNDARY_PLOT not in body


def test_a_cap_below_whats_left_is_met_exactly(curated, inputs, tmp_path):
    left = _left(inputs, ["patternnet", "resisc45"])
    spec = {"resisc45": left["resisc45"] - 3, "patternnet": 5}
    params = _with_build(curated, tmp_path, "exact", spec, 1.0)
    index = run_shard(typed(params), "exact", progress=False)
    assert index["sources"] == {"patternnet": 5, "resisc45": left["resisc45"] - 3}
    assert index["samples"] == sum(s["samples"] for s in index["shards"]) == sum(spec.values())
    assert all(c["shortfall"] == 0 for c in index["curation"].values())
    card = (Path(params["paths"]["shards"]) / "exact" / CARD).read_text()
    assert "Short of the caps" not in card
