"""Shard builds: exact ablation counts, byte-identical rebuilds, safe kills, interoperability.

Duplicate resolution, shortfalls and the per-build curation table: tests/test_builds.py.
"""

import hashlib
import io
import itertools
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import webdataset as wds
import xxhash
import yaml
from PIL import Image

from geopile.records import read_records
from geopile.settings import Build, Shard
from geopile.shards import select, write_build
from geopile.stream.index import INDEX
from geopile.world.world import s3_client, world_env
from pipelines.curate import DUPLICATES, REPORT, curated_path
from pipelines.shard import run_shard
from tests.conftest import s3_objects, typed
from tests.killing import kill_once


@pytest.fixture(scope="module")
def built(curated, tmp_path_factory):
    """Every build of the world written once; returns params with a private shard root."""
    params = {**curated, "paths": {**curated["paths"],
                                   "shards": str(tmp_path_factory.mktemp("shards"))}}
    for build in params["builds"]:
        run_shard(typed(params), build, progress=False)
    return params


def _index(params: dict, build: str) -> dict:
    return json.loads((Path(params["paths"]["shards"]) / build / INDEX).read_text())


def _selection(params: dict, build: str, config: Shard, seed: int | None = None):
    """``select`` with what the shard stage passes it (priority, duplicate edges, counts)."""
    reports = Path(params["paths"]["reports"])
    curated = read_records(curated_path(Path(params["paths"]["data"])))
    seed = params["seed"] if seed is None else seed
    return select(curated, build, Build.model_validate(params["builds"][build]), seed,
                  config.cap_scale, priority=params["curate"]["priority"],
                  pairs=json.loads((reports / DUPLICATES).read_text())["pairs"],
                  curate_counts=json.loads((reports / REPORT).read_text())["counts"])


def test_ablation_counts_are_exact(built):
    """Every cap is met exactly where enough is left, and the index says what fell short."""
    curated = read_records(curated_path(Path(built["paths"]["data"])))
    scale = built["shard"]["cap_scale"]
    for build, spec in built["builds"].items():
        caps = {s: c for s, c in spec.items() if s != "allow_short"}
        index = _index(built, build)
        curation = index["curation"]
        assert set(curation) == set(caps), build
        for source, cap in caps.items():
            c = curation[source]
            asked = "all" if cap == "all" else math.ceil(cap * scale)
            assert c["asked"] == asked
            want = c["available"] if cap == "all" else min(c["available"], asked)
            assert index["sources"].get(source, 0) == c["selected"] == want, (build, source)
            assert c["shortfall"] == (0 if cap == "all" else max(0, asked - c["available"]))
            assert c["shortfall"] == 0 or spec.get("allow_short") is True
            assert c["curated"] == int(pc.sum(pc.equal(curated["source"], source)).as_py())
        assert index["samples"] == sum(index["sources"].values()) == sum(
            s["samples"] for s in index["shards"])
    # `full` holds one image of every cluster of its sources (the world also curates
    # sentinel2, which no default build names)
    full_sources = pa.array(sorted(set(built["builds"]["full"]) - {"allow_short"}))
    in_full = curated.filter(pc.is_in(curated["source"], value_set=full_sources))
    assert _index(built, "full")["samples"] == len(set(in_full["cluster"].to_pylist()))
    assert set(_index(built, "paper_no_labeled")["sources"]) == {"naip"}


def test_samples_are_the_same_images_in_every_build(built):
    """A source gives a build the same images when the sources before it are the same."""
    curated = read_records(curated_path(Path(built["paths"]["data"])))
    naip = pc.equal(curated["source"], "naip")
    naip_clusters = set(curated.filter(naip)["cluster"].to_pylist())
    others = set(curated.filter(pc.invert(naip))["cluster"].to_pylist())
    assert not naip_clusters & others  # NAIP shares no image with the labeled corpora

    def keys(build: str) -> set[str]:
        return {k for s in _index(built, build)["shards"] for k in s["keys"]}
    paper = keys("paper")
    assert keys("paper_no_naip") == {k for k in paper if not k.startswith("naip/")}


def test_index_matches_the_tars(built):
    root = Path(built["paths"]["shards"]) / "paper"
    index = _index(built, "paper")
    seen = []
    for shard in index["shards"]:
        path = root / shard["name"]
        assert path.stat().st_size == shard["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
        assert all(m.mtime == 0 for m in members)
        firsts = {}
        for m in members:
            key, ext = m.name.split(".", 1)
            firsts.setdefault(key, m.offset)
            assert ext in ("jpg", "json", "cls") and "." not in key.rsplit("/", 1)[-1]
        assert list(firsts) == shard["keys"]
        assert list(firsts.values()) == shard["offsets"]
        # each sample's xxh3 covers what the reader reads for it: up to the next one, or EOF
        data = path.read_bytes()
        ends = [*shard["offsets"][1:], len(data)]
        assert shard["xxh3"] == [xxhash.xxh3_64_hexdigest(data[a:b])
                                 for a, b in zip(shard["offsets"], ends, strict=True)]
        seen += shard["keys"]
    sources = [k.split("/")[0] for k in seen]
    # shuffled across sources: no long run of one source
    runs = max(len(list(g)) for _, g in itertools.groupby(sources))
    assert runs < 20


def test_jpeg_bytes_are_copied(built):
    data = Path(built["paths"]["data"])
    curated = read_records(curated_path(data))
    paths = dict(zip(curated["key"].to_pylist(), curated["path"].to_pylist(), strict=True))
    urls = sorted(str(p) for p in (Path(built["paths"]["shards"]) / "paper").glob("*.tar"))
    checked = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert int(sample["cls"]) == (meta["label_id"] if meta["label_id"] is not None else -1)
        if meta["source"] != "naip":
            assert sample["jpg"] == (data / paths[sample["__key__"]]).read_bytes()
            checked += 1
        else:
            assert Image.open(io.BytesIO(sample["jpg"])).mode == "RGB"
    assert checked > 50


def test_rebuild_is_byte_identical(built, tmp_path):
    data = Path(built["paths"]["data"])
    config = Shard.model_validate(built["shard"])
    chosen = _selection(built, "paper", config)
    index = write_build(chosen.table, data, tmp_path / "again", "paper", built["seed"], config,
                        curation=chosen.curation)
    first = Path(built["paths"]["shards"]) / "paper"
    assert index == _index(built, "paper")
    for shard in index["shards"]:
        assert (tmp_path / "again" / shard["name"]).read_bytes() == \
            (first / shard["name"]).read_bytes()


def test_naip_four_bands_are_lossless(built, tmp_path):
    data = Path(built["paths"]["data"])
    config = Shard.model_validate({**built["shard"], "naip_bands": 4})
    chosen = _selection(built, "paper_no_labeled", config, seed=0)
    write_build(chosen.table, data, tmp_path, "naip4", 0, config)
    import rasterio
    for sample in wds.WebDataset(sorted(str(p) for p in tmp_path.glob("*.tar")),
                                 shardshuffle=False):
        with rasterio.MemoryFile(sample["tif"]) as mem, mem.open() as src:
            assert src.count == 4
        break


def test_loads_in_hf_datasets(built, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(Path(built["paths"]["data"]) / "hf-cache"))
    import datasets

    index = _index(built, "paper")
    urls = [str(Path(built["paths"]["shards"]) / "paper" / s["name"]) for s in index["shards"]]
    ds = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train",
                               cache_dir=str(Path(built["paths"]["data"]) / "hf-cache"))
    assert ds.num_rows == index["samples"]
    assert {"jpg", "json", "cls", "__key__"} <= set(ds.column_names)
    assert sorted(ds["__key__"]) == sorted(k for s in index["shards"] for k in s["keys"])
    assert np.asarray(ds[0]["jpg"]).ndim == 3


KILLED_BUILD = """
import sys, yaml
from pathlib import Path
from pipelines.shard import run_shard
from tests.conftest import typed
params = yaml.safe_load(open(sys.argv[1]))
run_shard(typed(params), "full", progress=False)
"""


def test_killed_build_leaves_only_whole_shards(built, tmp_path):
    params = {**built, "paths": {**built["paths"], "shards": str(tmp_path / "shards")},
              "shard": {**built["shard"], "max_samples": 8}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "shards" / "full"
    kill_once(KILLED_BUILD, [str(params_file)], out, "shard-*.tar", 3)
    assert not (out / INDEX).exists()
    for tar in out.glob("shard-*.tar"):  # every shard that has its final name is whole
        with tarfile.open(tar) as t:
            assert len(t.getmembers()) == 8 * 3
    index = run_shard(typed(params), "full", progress=False)
    assert not list(out.glob("*.tmp"))
    assert sorted(p.name for p in out.glob("*.tar")) == [s["name"] for s in index["shards"]]
    for shard in index["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


def test_unknown_build_and_bad_cap(built):
    from geopile.params import ParamsError

    with pytest.raises(ParamsError, match="nosuch"):
        run_shard(typed(built), "nosuch", progress=False)
    with pytest.raises(ParamsError, match=r"builds\.x\.naip"):
        typed({**built, "builds": {"x": {"naip": "many"}}})


def test_dataset_card_lists_sources_licences_and_hashes(built):
    from geopile.card import CARD
    from geopile.sources import SOURCES

    for build, nc_expected in (("paper", True), ("paper_no_resisc45", False)):
        index = _index(built, build)
        text = (Path(built["paths"]["shards"]) / build / CARD).read_text()
        _, header, body = text.split("---\n", 2)
        meta = yaml.safe_load(header)
        assert meta["source_datasets"] == sorted(index["sources"])
        assert meta["geopile"]["samples"] == index["samples"]
        for source in index["sources"]:
            licence = meta["geopile"]["licences"][source]
            assert f"| {source} | {index['sources'][source]:,} | {licence} |" in body
            assert licence == SOURCES[source].publication.licence  # the source's own file
        assert ("non-commercial purposes only" in body) == nc_expected
        for shard in index["shards"]:
            assert shard["sha256"] in body
        assert "@inproceedings{mendieta2023gfm" in body
        assert "sig=" not in text and "secret" not in text.lower()


def test_shard_to_s3_writes_the_local_bytes(built, world, monkeypatch):
    """``geopile shard BUILD --to s3://...``: every file of the local build, and nothing else.

    A stale index and a shard of an earlier, larger build under the prefix are removed.
    """
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    build = next(iter(built["builds"]))
    client = s3_client(world["s3"])
    for stale in (INDEX, "shard-000999.tar"):
        client.put_object(Bucket=world["bucket"], Key=f"to-test/{build}/{stale}", Body=b"old")
    run_shard(typed(built), build, progress=False,
              to=f"s3://{world['bucket']}/to-test")
    local = Path(built["paths"]["shards"]) / build
    want = {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}
    assert s3_objects(world["s3"], world["bucket"], f"to-test/{build}") == want
