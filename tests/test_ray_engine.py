"""The Ray engine writes what the local engine writes, byte for byte, and survives a dead node.

A real two-node Ray cluster on loopback (a head and a second node, one CPU each), started and
stopped by process group here; ingest of an archive source and NAIP, then shards of the result.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

pytest.importorskip("ray")

from geopile.engines import RayMapper
from geopile.ingest import ingest
from geopile.records import read_records, records_path
from geopile.settings import Shard
from geopile.shards import write_build
from geopile.shardstore import open_store
from geopile.stream.index import INDEX
from geopile.world.world import s3_client, world_env
from tests.conftest import make_source, s3_objects, typed
from tests.killing import kill_once
from tests.raycluster import Cluster

pytestmark = pytest.mark.slow
SOURCES = ["resisc45", "naip"]
NAIP_COUNT = 24


@pytest.fixture(scope="module")
def cluster(world) -> Iterator[Cluster]:
    c = Cluster(world_env(world["s3"]))
    try:
        yield c
    finally:
        c.stop()


def _ingest(params: dict, data: Path, mapper: RayMapper | None = None) -> None:
    for name in SOURCES:
        source = make_source(params, name, data, seed=int(params["seed"]),
                               progress=False)
        ingest(source, workers=2, progress=False, mapper=mapper)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def local(world, world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Both sources ingested by the local engine: the reference bytes."""
    from geopile.params import load_params
    from geopile.world.world import PARAMS_OVERLAY
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("local")
    params = load_params([REPO / "params.yaml", world_dir / PARAMS_OVERLAY])
    params["sources"]["naip"]["count"] = NAIP_COUNT
    params["paths"] = {**params["paths"], "data": str(root / "data")}
    _ingest(params, root / "data")
    return params, root / "data"


def test_ray_ingest_and_shards_match_local(cluster, local, tmp_path):
    params, reference = local
    data = tmp_path / "data"
    _ingest(params, data, mapper=RayMapper(cluster.address, threads=2))
    want, got = _files(reference), _files(data)
    assert any(k.startswith("raw/") for k in want)
    assert {records_path(Path(), n).as_posix() for n in SOURCES} <= set(want)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []

    selection = pa.concat_tables([read_records(records_path(reference, n)) for n in SOURCES])
    config = Shard.model_validate(params["shard"]).model_copy(update={'max_samples': 7})
    seed = int(params["seed"])
    index_local = write_build(selection, reference, tmp_path / "local", "t", seed, config)
    index_ray = write_build(selection, reference, tmp_path / "ray", "t", seed, config,
                            mapper=RayMapper(cluster.address))
    assert len(index_local["shards"]) >= 3
    assert index_ray == index_local
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert (tmp_path / "ray" / INDEX).exists()


def test_ray_shards_straight_to_s3(cluster, local, world, tmp_path, monkeypatch):
    """Each Ray task uploads the shard it wrote to S3 (the world's); the driver, the index last.

    The objects are the local engine's files; a rerun re-sends only what S3 lacks or holds with
    other bytes, by S3's own checksum (as ``geopile push`` does), never by metadata.
    """
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    params, reference = local
    selection = pa.concat_tables([read_records(records_path(reference, n)) for n in SOURCES])
    config = Shard.model_validate(params["shard"]).model_copy(update={'max_samples': 7})
    seed = int(params["seed"])
    index_local = write_build(selection, reference, tmp_path / "local", "t", seed, config)
    want = _files(tmp_path / "local")
    url = f"s3://{world['bucket']}/ray-s3/t"
    index_s3 = write_build(selection, reference, open_store(url), "t", seed, config,
                           mapper=RayMapper(cluster.address))
    assert index_s3 == index_local
    assert s3_objects(world["s3"], world["bucket"], "ray-s3/t") == want

    # a rerun (a driver killed after some uploads): a shard S3 holds with its checksum is not
    # sent again; one whose bytes differ (under the old metadata that once made it "trusted")
    # is repaired; a missing one is sent; one another tool wrote is read back and kept
    client = s3_client(world["s3"])
    first, second, third, fourth = index_local["shards"][:4]
    client.put_object(Bucket=world["bucket"], Key=f"ray-s3/t/{first['name']}", Body=b"rotten",
                      Metadata={"sha256": first["sha256"]})
    client.delete_object(Bucket=world["bucket"], Key=f"ray-s3/t/{second['name']}")
    client.put_object(Bucket=world["bucket"], Key=f"ray-s3/t/{third['name']}",
                      Body=want[third["name"]])  # by another tool: no SHA-256 of S3's
    untouched = client.head_object(Bucket=world["bucket"], Key=f"ray-s3/t/{fourth['name']}")
    time.sleep(1.1)  # LastModified has whole seconds: a new PUT would show
    write_build(selection, reference, open_store(url), "t", seed, config,
                mapper=RayMapper(cluster.address))
    assert s3_objects(world["s3"], world["bucket"], "ray-s3/t") == want
    head = client.head_object(Bucket=world["bucket"], Key=f"ray-s3/t/{fourth['name']}")
    assert head["LastModified"] == untouched["LastModified"]
    third_head = client.head_object(Bucket=world["bucket"], Key=f"ray-s3/t/{third['name']}",
                                    ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in third_head  # verified by reading it back, not re-sent


def test_dead_node_and_killed_driver_end_identical(cluster, local, tmp_path):
    params, reference = local
    # a node dies mid-run: its tasks are retried on the head
    data = tmp_path / "node"
    parts = data / "records" / ".parts" / "naip"

    def kill_when_started() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(parts.glob("part-*.parquet")):
            time.sleep(0.02)
        cluster.kill_node()

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    source = make_source(params, "naip", data,
                           seed=int(params["seed"]), progress=False)
    ingest(source, chunk_size=2, flush_every=2, progress=False,
           mapper=RayMapper(cluster.address, threads=2))
    killer.join(timeout=130)
    assert not cluster.nodes, "the node was not killed during the run"
    want = {k: v for k, v in _files(reference).items() if "naip" in k}
    got = _files(data)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []

    # the driver is killed mid-run: a rerun resumes from the checkpoint to the same bytes
    cluster.add_node()
    killed = tmp_path / "driver"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**params, "paths": {"data": str(killed)}}))
    runner = f"""
import sys, yaml
from pathlib import Path
from geopile.engines import RayMapper
from geopile.ingest import ingest
from tests.conftest import make_source
from geopile.sources import source_settings
params = yaml.safe_load(open(sys.argv[1]))
src = make_source(params, "naip", Path(params["paths"]["data"]),
                    seed=int(params["seed"]), progress=False)
ingest(src, chunk_size=2, flush_every=2, progress=False,
       mapper=RayMapper("{cluster.address}", threads=2))
"""
    kparts = killed / "records" / ".parts" / "naip"
    kill_once(runner, [str(params_file)], kparts, "part-*.parquet", 2)
    assert kparts.is_dir() and not records_path(killed, "naip").exists()
    source = make_source(params, "naip", killed,
                           seed=int(params["seed"]), progress=False)
    ingest(source, progress=False, mapper=RayMapper(cluster.address, threads=2))
    got = _files(killed)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []


def test_curate_on_ray_writes_what_one_process_writes(cluster, curated, tmp_path):
    """The near-duplicate search (a task per band and query slice) and the pixel alignments
    as Ray tasks; the driver merges their rows and decides: curated.parquet and
    duplicates.json are the one-process run's bytes (the session's ``curated``)."""
    from pipelines.curate import DUPLICATES, curated_path, run_curate

    data, reports = Path(curated["paths"]["data"]), Path(curated["paths"]["reports"])
    copy = tmp_path / "data"
    shutil.copytree(data, copy, symlinks=True)
    curated_path(copy).unlink()
    params = {**curated, "paths": {**curated["paths"], "data": str(copy),
                                   "reports": str(tmp_path / "reports")}}
    run_curate(typed(params), progress=False, engine="ray", ray_address=cluster.address)
    duplicates = json.loads((reports / DUPLICATES).read_text())
    assert duplicates["pairs"] and duplicates["contaminated"]  # there was work to agree on
    assert curated_path(copy).read_bytes() == curated_path(data).read_bytes()
    assert (tmp_path / "reports" / DUPLICATES).read_bytes() == (reports / DUPLICATES).read_bytes()
