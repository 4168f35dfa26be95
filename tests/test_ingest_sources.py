"""Every source kind ingests from the offline world with the right counts, labels and classes,
and goes on through curate, shard, card, push and stream."""

import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geopile.card import CARD
from geopile.imagestats import BadImage, image_stats
from geopile.ingest import ingest
from geopile.records import RECORD_SCHEMA, read_records, records_path, rejects_path
from geopile.sources import SOURCES
from geopile.stream import ShardStream, StreamConfig
from geopile.world.world import world_env
from pipelines.curate import run_curate
from pipelines.ingest import run_ingest
from pipelines.push import push_build
from pipelines.shard import run_shard
from tests.conftest import make_source, source_of, typed

LABELED = [k for k in SOURCES if k not in ("naip", "folder", "stac")]


def _ingest(params: dict, name: str, workers: int = 2):
    data = Path(params["paths"]["data"])
    source = make_source(params, name, data, progress=False)
    summary = ingest(source, workers=workers, progress=False)
    return summary, read_records(records_path(data, name)), pq.read_table(rejects_path(data, name))


@pytest.mark.parametrize("name", LABELED)
def test_labeled_source_ingests(params, truth, name):
    expected = truth["sources"][name]
    summary, records, rejects = _ingest(params, name)
    assert records.num_rows == expected["valid_images"] == summary.images
    assert rejects.num_rows == expected["rejects"]
    assert records.schema.equals(RECORD_SCHEMA, check_metadata=True)
    rows = records.to_pylist()
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert all("." not in k.split("/", 1)[1] and k.startswith(f"{name}/") for k in keys)
    cls = SOURCES[name].classes
    assert Counter(r["label"] for r in rows) == Counter(expected["per_class"])
    for r in rows:
        assert r["label"] in cls and cls[r["label_id"]] == r["label"]
        assert r["bands"] == 3 and r["width"] > 0 and len(r["xxh3_pixels"]) == 32
        assert r["licence"] and r["origin_sha256"] and r["path"].startswith(f"raw/{name}/")
        assert (Path(params["paths"]["data"]) / r["path"]).is_file()
    # every planted corrupt member of this source is rejected, with a reason
    planted = {c["ref"]["member"] for c in truth["corrupt"] if c["ref"]["source"] == name}
    assert set(rejects["origin"].to_pylist()) == planted
    assert all(rejects["reason"].to_pylist())


def test_ucmerced_splits_and_sizes(params, truth):
    _, records, _ = _ingest(params, "ucmerced")
    splits = Counter(records["split"].to_pylist())
    assert splits == Counter(truth["sources"]["ucmerced"]["splits"])
    assert {(w, h) for w, h in zip(records["width"].to_pylist(), records["height"].to_pylist(),
                                   strict=True)} > {(256, 256)}  # not every UCM image is square


def test_mlrsnet_multilabels(params):
    _, records, _ = _ingest(params, "mlrsnet")
    labels_ids = zip(
        records["multilabels"].to_pylist(), records["multilabel_ids"].to_pylist(), strict=True
    )
    for labels, ids in labels_ids:
        assert labels and len(labels) == len(ids)
    assert all(o.endswith(".parquet#" + o.rsplit("#", 1)[1]) for o in records["origin"].to_pylist())


def test_rsd46_without_archive_explains_where_to_get_it(params, tmp_path):
    sp = params["sources"]["rsd46"]
    sp["archive"] = None
    source = source_of("rsd46", sp, tmp_path)
    with pytest.raises(FileNotFoundError, match="no public download URL"):
        source.fetch()


def test_folder_source(params, tmp_path, world_dir):
    """A user's own ImageFolder zip goes through the same path (here: the world's RSD46 zip)."""
    sp = {"type": "folder", "path": str(world_dir / "user" / "RSD46-WHU.zip"),
          "image_root": "RSD46-WHU/train", "licence": "mine", "gsd_m": 0.5}
    params["sources"]["mine"] = sp
    summary, records, _ = _ingest(params, "mine")
    assert summary.images > 0 and set(records["licence"].to_pylist()) == {"mine"}
    assert set(records["gsd_min"].to_pylist()) == {0.5}


def test_torchgeo_million_aid_fixture_through_a_folder_source(tmp_path):
    """An archive GeoPile did not write: torchgeo's Million-AID fixture (MIT, tests/data/torchgeo).

    Its zip has directory entries and nested class levels (``train/<l1>/<l2>/<l3>/<image>``):
    the label is the first level under ``image_root``, the key keeps the whole path.
    """
    archive = Path(__file__).parent / "data" / "torchgeo" / "millionaid-train.zip"
    sp = {"type": "folder", "path": str(archive), "image_root": "train",
          "licence": "MIT (torchgeo test fixture)"}
    source = source_of("maid", sp, tmp_path / "data", progress=False)
    summary = ingest(source, workers=1, progress=False)
    rows = read_records(records_path(tmp_path / "data", "maid")).to_pylist()
    assert summary.images == 2 and summary.rejects == 0
    assert {(r["key"], r["label"], r["origin"], r["width"], r["height"]) for r in rows} == {
        ("maid/agriculture_land_grassland_meadow_P0115918", "agriculture_land",
         "train/agriculture_land/grassland/meadow/P0115918.jpg", 32, 32),
        ("maid/water_area_beach_P0060208", "water_area", "train/water_area/beach/P0060208.jpg",
         32, 32)}


# -- every kind of source, from ingest to streaming -----------------------------------------------
FOLDER_FORMATS = ("directory", "zip", "tar")
KINDS = [k for k in SOURCES if k != "folder"] + [f"folder_{f}" for f in FOLDER_FORMATS]


def _user_folder(world_dir: Path, root: Path, form: str) -> Path:
    """A user's folder of six real images (two classes) taken from the world's RSD46 zip."""
    picked: dict[str, bytes] = {}
    per_class: Counter[str] = Counter()
    with zipfile.ZipFile(world_dir / "user" / "RSD46-WHU.zip") as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")  # RSD46-WHU/<split>/<class>/<file>
            if len(parts) != 4 or not parts[3] or per_class[parts[2]] == 3:
                continue
            if parts[2] not in per_class and len(per_class) == 2:
                continue
            data = zf.read(name)
            try:
                image_stats(data)
            except BadImage:  # the world plants corrupt members; a user's folder may not
                continue
            per_class[parts[2]] += 1
            picked[f"{parts[2]}/{parts[1]}_{parts[3]}"] = data
    assert len(picked) == 6
    if form == "directory":
        for rel, data in picked.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root
    root.mkdir(parents=True)
    if form == "zip":
        with zipfile.ZipFile(root / "mine.zip", "w") as zf:
            for rel, data in picked.items():
                zf.writestr(f"survey/{rel}", data)
        return root / "mine.zip"
    with tarfile.open(root / "mine.tar.gz", "w:gz") as tf:
        for rel, data in picked.items():
            info = tarfile.TarInfo(f"survey/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return root / "mine.tar.gz"


def _stream_keys(url: str) -> dict[str, dict[str, bytes]]:
    stream = ShardStream(url, StreamConfig(block=4, window=4))
    return {s.key: s.members for s in stream.samples(epoch=0)}


@pytest.mark.slow
@pytest.mark.parametrize("case", KINDS)
def test_every_source_kind_from_ingest_to_stream(params, world, world_dir, tmp_path, monkeypatch,
                                                 case):
    """Ingest, curate, shard, card, push and stream back, for every kind in the registry."""
    kind, _, form = case.partition("_")
    assert kind in SOURCES
    if kind == "folder":
        path = _user_folder(world_dir, tmp_path / "user", form)
        sp = {"type": "folder", "path": str(path), "licence": "CC-BY-4.0",
              "citation": "Doe, J. (2024). A survey of fields. Zenodo. doi:10.5281/zenodo.1",
              "origin": "https://example.org/fields-survey"}
        if form != "directory":
            sp["image_root"] = "survey"
    else:
        # a `type: stac` source: the world's Sentinel-2 collection
        sp = {**params["sources"]["sentinel2" if kind == "stac" else kind], "enabled": True}
        if kind in ("naip", "stac"):
            sp["count"] = 4
    name = case
    sp["role"] = "pretrain"
    # the params of a corpus of this one source: whole, as the CLI checks them
    p = {**params, "sources": {name: sp}, "builds": {"only": {name: "all"}},
         "ablation": ["only"],
         "curate": {**params["curate"], "eval_sets": {}, "priority": [name]},
         "paths": {**params["paths"], "data": str(tmp_path / "data"),
                   "reports": str(tmp_path / "reports"), "shards": str(tmp_path / "shards")}}
    data = tmp_path / "data"
    (summary,) = run_ingest(typed(p), [name], workers=2, progress=False)
    assert summary.images > 0
    run_curate(typed(p), progress=False)
    index = run_shard(typed(p), "only", progress=False)
    assert set(index["sources"]) == {name} and index["samples"] > 0

    build_dir = Path(p["paths"]["shards"]) / "only"
    card = (build_dir / CARD).read_text()
    source = source_of(name, sp, data)
    assert source.licence != "unknown" and source.citation != "unknown"
    assert f"| {name} | {index['samples']:,} | {source.licence} |" in card
    assert all(line in card for line in source.origin_lines())
    assert source.citation in card
    if kind == "folder":
        assert "https://example.org/fields-survey" in card and "Doe, J. (2024)" in card

    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    url = f"s3://{world['bucket']}/e2e-{case}/only"
    assert push_build(build_dir, url, progress=False)["shards"] == len(index["shards"])
    remote, local = _stream_keys(url), _stream_keys(str(build_dir))
    assert len(remote) == index["samples"] and remote == local
    for members in remote.values():
        assert json.loads(members["json"])["source"] == name
