"""Ingest -> curate -> shard on a cluster whose nodes share no disk, only S3 (issue 31).

Two worker nodes, each in its own mount namespace where pytest's whole temp tree (the driver's
data directory, the world's files) is an empty tmpfs and with its own temp directory; the head
runs no task. ``paths.payloads`` is the world's S3: ingest's workers write NAIP's and
Sentinel-2's payloads there themselves and read the archive sources' images the driver staged
there; curate's and shard's tasks read them there; the shards go to S3. Every byte must be what
the local engine wrote with payloads in the data directory (the session's ``curated`` and this
module's ``shards``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from geopile.engines import RayMapper
from geopile.ingest import ingest
from geopile.records import records_path, rejects_path
from geopile.world.world import world_env
from pipelines.curate import DUPLICATES, curated_path, run_curate
from pipelines.ingest import enabled_sources, run_ingest
from pipelines.shard import run_shard
from tests.conftest import make_source, s3_objects, typed
from tests.raycluster import Cluster, can_hide

pytestmark = pytest.mark.slow
GENERATED = ("raw/naip/", "raw/sentinel2/")  # payloads the workers make (the rest: staged)


@pytest.fixture(scope="module")
def isolated(world, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    hide = tmp_path_factory.getbasetemp()
    if not can_hide(hide):
        pytest.skip("this machine does not allow unprivileged mount namespaces (unshare -rm)")
    cluster = Cluster(world_env(world["s3"]), head_cpus=0, nodes=2, hide=hide)
    try:
        yield cluster
    finally:
        cluster.stop()


def _blind(cluster: Cluster, folder: Path) -> list[tuple[bool, str]]:
    """What each task slot sees of ``folder`` (exists, first entry) and its temp directory."""
    import ray

    from geopile.engines import connect

    connect(cluster.address)

    @ray.remote(num_cpus=1)
    def look(path: str) -> tuple[bool, str, str]:
        import tempfile

        return (os.path.exists(path), ",".join(sorted(os.listdir(path))[:1]),
                tempfile.gettempdir())

    return ray.get([look.remote(str(folder)) for _ in range(4)])


def test_ingest_curate_shard_with_only_s3_in_common(isolated, curated, shards, world,
                                                    tmp_path_factory, monkeypatch):
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    reference = Path(curated["paths"]["data"])
    seen = _blind(isolated, tmp_path_factory.getbasetemp())
    assert all(not listing for _, listing, _ in seen), seen  # the driver's files are not there
    assert all(temp.startswith(str(isolated.temp)) for *_, temp in seen), seen  # its own

    root = tmp_path_factory.mktemp("cluster")
    prefix = "no-shared-disk"
    payloads = f"s3://{world['bucket']}/{prefix}/data"
    params = {**curated,
              "paths": {**curated["paths"], "data": str(root / "data"),
                        "reports": str(root / "reports"), "shards": str(root / "shards"),
                        "payloads": payloads},
              "shard": {**curated["shard"], "max_samples": 70}}  # the `shards` fixture's
    settings = typed(params)
    cluster = {"engine": "ray", "ray_address": isolated.address}
    names = enabled_sources(settings)
    run_ingest(settings, names, progress=False, **cluster)
    run_curate(settings, progress=False, **cluster)
    run_shard(settings, "full", progress=False, to=f"s3://{world['bucket']}/{prefix}/shards",
              **cluster)

    # records and rejects: the driver's, the same bytes
    for name in names:
        for path in (records_path, rejects_path):
            assert path(root / "data", name).read_bytes() == path(reference, name).read_bytes()
    # every payload a record names is in S3 with the local engine's bytes; the driver wrote none
    stored = s3_objects(world["s3"], world["bucket"], f"{prefix}/data")
    recorded = {p for name in names
                for p in pq.read_table(records_path(reference, name), columns=["path"])["path"]
                .to_pylist()}
    assert recorded and {p: stored.get(p) for p in recorded} == {
        p: (reference / p).read_bytes() for p in recorded}
    made = {p for p in stored if p.startswith(GENERATED)}
    assert made and made == {p for p in recorded if p.startswith(GENERATED)}  # surplus pruned
    assert not [p for p in (root / "data").rglob("*") if p.is_file()
                and p.relative_to(root / "data").as_posix().startswith(GENERATED)]
    # curation's decisions, and every object of the build
    assert curated_path(root / "data").read_bytes() == curated_path(reference).read_bytes()
    assert ((root / "reports" / DUPLICATES).read_bytes()
            == (Path(curated["paths"]["reports"]) / DUPLICATES).read_bytes())
    built = s3_objects(world["s3"], world["bucket"], f"{prefix}/shards/full")
    want = {p.name: p.read_bytes() for p in shards.iterdir() if p.is_file()}
    assert built.keys() == want.keys() and [k for k in want if built[k] != want[k]] == []


def test_a_killed_driver_resumes_onto_s3_to_the_same_bytes(isolated, curated, world,
                                                          tmp_path, monkeypatch):
    """The driver is SIGKILLed after two checkpoints while the isolated nodes write NAIP's
    payloads to S3; the rerun resumes from ``records/.parts`` and ends with the local engine's
    records, and S3 holds exactly the recorded payloads with the local bytes."""
    import yaml

    from tests.killing import kill_once

    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)  # the driver's child inherits them
    reference = Path(curated["paths"]["data"])
    prefix = "killed-driver"
    params = {**curated, "paths": {**curated["paths"], "data": str(tmp_path / "data"),
                                   "payloads": f"s3://{world['bucket']}/{prefix}"}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    runner = f"""
import sys, yaml
from pathlib import Path
from geopile.engines import RayMapper
from geopile.ingest import ingest
from pipelines.common import checked
from tests.conftest import make_source
params = yaml.safe_load(open(sys.argv[1]))
settings = checked(params)
source = make_source(params, "naip", Path(params["paths"]["data"]), seed=int(params["seed"]),
                     progress=False, payloads=settings.paths.payload_store())
ingest(source, chunk_size=2, flush_every=2, progress=False,
       mapper=RayMapper("{isolated.address}", threads=2))
"""
    parts = tmp_path / "data" / "records" / ".parts" / "naip"
    kill_once(runner, [str(params_file)], parts, "part-*.parquet", 2)
    assert parts.is_dir() and not records_path(tmp_path / "data", "naip").exists()
    written = s3_objects(world["s3"], world["bucket"], prefix)
    assert written  # the nodes had written payloads before the kill

    settings = typed(params)
    source = make_source(params, "naip", tmp_path / "data", seed=int(params["seed"]),
                         progress=False, payloads=settings.paths.payload_store())
    ingest(source, progress=False, mapper=RayMapper(isolated.address, threads=2))
    got = records_path(tmp_path / "data", "naip")
    assert got.read_bytes() == records_path(reference, "naip").read_bytes()
    recorded = pq.read_table(got, columns=["path"])["path"].to_pylist()
    stored = s3_objects(world["s3"], world["bucket"], prefix)
    assert stored == {p: (reference / p).read_bytes() for p in recorded}
