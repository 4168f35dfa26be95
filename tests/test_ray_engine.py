"""The Ray engine writes what the local engine writes, byte for byte, and survives a dead node.

A real two-node Ray cluster on loopback (a head and a second node, one CPU each), started and
stopped by process group here; ingest of an archive source and NAIP, then shards of the result.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

pytest.importorskip("ray")

from geopile.cluster import wait_for_cpus  # noqa: E402
from geopile.ingest import ingest  # noqa: E402
from geopile.params import source_params  # noqa: E402
from geopile.records import read_records, records_path  # noqa: E402
from geopile.shards import INDEX, ShardConfig, write_build  # noqa: E402
from geopile.sources import create_source  # noqa: E402
from tests.killing import kill_once  # noqa: E402

pytestmark = pytest.mark.slow
RAY = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[1] / ".venv")) / "bin/ray"
SOURCES = ["resisc45", "naip"]
NAIP_COUNT = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(args: list[str], temp: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group: killing the group kills the node."""
    cmd = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--disable-usage-stats", *args]
    log = open(temp / f"node-{len(list(temp.glob('node-*.log')))}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


class Cluster:
    """A head and one more node on 127.0.0.1; ``add_node``/``kill_node`` for the second."""

    def __init__(self) -> None:
        # unix socket paths must stay short: not pytest's tmp_path
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = _node(["--head", "--port", str(self.port), "--include-dashboard=false",
                           "--temp-dir", str(self.temp), "--ray-client-server-port",
                           str(_free_port()), "--node-manager-port", str(_free_port()),
                           "--object-manager-port", str(_free_port())], self.temp)
        self.nodes: list[subprocess.Popen] = []
        self.wait_cpus(1)
        self.add_node()

    def add_node(self) -> None:
        self.nodes.append(_node(["--address", self.address, "--node-manager-port",
                                 str(_free_port()), "--object-manager-port",
                                 str(_free_port())], self.temp))
        self.wait_cpus(1 + len(self.nodes))

    def wait_cpus(self, n: int) -> None:
        wait_for_cpus(self.address, n, logs=str(self.temp))

    def kill_node(self) -> None:
        _stop(self.nodes.pop())

    def stop(self) -> None:
        import ray

        ray.shutdown()
        for proc in [*self.nodes, self.head]:
            _stop(proc)
        left = subprocess.run(["pgrep", "-f", str(self.temp)], capture_output=True, text=True)
        shutil.rmtree(self.temp, ignore_errors=True)
        assert not left.stdout.strip(), f"Ray processes left behind: {left.stdout}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def _ingest(params: dict, data: Path, **kw) -> None:
    for name in SOURCES:
        source = create_source(name, source_params(params, name), data, seed=int(params["seed"]),
                               progress=False)
        ingest(source, workers=2, progress=False, **kw)


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
    _ingest(params, data, engine="ray", ray_address=cluster.address)
    want, got = _files(reference), _files(data)
    assert any(k.startswith("raw/") for k in want)
    assert {records_path(Path(), n).as_posix() for n in SOURCES} <= set(want)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []

    selection = pa.concat_tables([read_records(records_path(reference, n)) for n in SOURCES])
    config = dataclasses.replace(ShardConfig.from_params(params["shard"]), max_samples=7)
    seed = int(params["seed"])
    index_local = write_build(selection, reference, tmp_path / "local", "t", seed, config)
    index_ray = write_build(selection, reference, tmp_path / "ray", "t", seed, config,
                            engine="ray", ray_address=cluster.address)
    assert len(index_local["shards"]) >= 3
    assert index_ray == index_local
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert (tmp_path / "ray" / INDEX).exists()


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
    source = create_source("naip", source_params(params, "naip"), data,
                           seed=int(params["seed"]), progress=False)
    ingest(source, workers=2, chunk_size=2, flush_every=2, progress=False, engine="ray",
           ray_address=cluster.address)
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
from geopile.ingest import ingest
from geopile.sources import create_source
params = yaml.safe_load(open(sys.argv[1]))
src = create_source("naip", params["sources"]["naip"], Path(params["paths"]["data"]),
                    seed=int(params["seed"]), progress=False)
ingest(src, workers=2, chunk_size=2, flush_every=2, progress=False, engine="ray",
       ray_address="{cluster.address}")
"""
    kparts = killed / "records" / ".parts" / "naip"
    kill_once(runner, [str(params_file)], kparts, "part-*.parquet", 2)
    assert kparts.is_dir() and not records_path(killed, "naip").exists()
    source = create_source("naip", source_params(params, "naip"), killed,
                           seed=int(params["seed"]), progress=False)
    ingest(source, workers=2, progress=False, engine="ray", ray_address=cluster.address)
    got = _files(killed)
    assert got.keys() == want.keys() and [k for k in want if got[k] != want[k]] == []
