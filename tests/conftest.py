"""Fixtures: the offline world (built once per session, servers started and stopped by PID)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# before anything imports torch._dynamo, which raises the recursion limit mid-session: on
# CPython 3.11 the hypothesis plugin's late import then fails in ast ("AST constructor recursion
# depth mismatch") after every test passed
import hypothesis  # noqa: F401
import pytest
import yaml

from geopile.params import load_params
from geopile.world.world import (
    PARAMS_OVERLAY,
    WORLD_S3,
    load_truth,
    s3_client,
    world_down,
    world_up,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], procs: int = 2, timeout: int = 300,
             module: str = "pipelines.cli") -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node PROCS -m MODULE ARGS`` (gloo on the CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
         "--standalone", "-m", module, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def typed(params: dict):  # geopile.settings.Settings
    """The params as every stage takes them: validated once, typed (the task registry too)."""
    from pipelines.common import checked

    return checked(params, with_tasks=True)


def source_of(name: str, block: dict, data_dir: Path, **kwargs):  # a Source
    """One source from its raw ``sources.<name>`` block, typed as the CLI would type it."""
    from geopile.sources import create_source, source_settings

    return create_source(name, source_settings(name, block), data_dir, **kwargs)


def make_source(params: dict, name: str, data_dir: Path, **kwargs):  # a Source
    """The source ``name`` of a whole params dict."""
    return source_of(name, params["sources"][name], data_dir, **kwargs)


def s3_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` of the world's bucket, by name below the prefix."""
    client = s3_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return {o["Key"][len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"]
            .read() for page in pages for o in page.get("Contents", ())}


def shard_members(build: Path) -> dict[str, dict[str, bytes]]:
    """``key -> {ext: bytes}`` of every shard of the build (a member seen twice fails)."""
    import tarfile

    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(build.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                assert ext not in out.get(key, {}), f"{key}.{ext} twice"
                out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated world (no servers)."""
    from pipelines.world import build

    path = tmp_path_factory.mktemp("world")
    build(path, seed=0, per_class=3)  # the world's data and its tiny teacher checkpoint
    return path


@pytest.fixture(scope="session")
def truth(world_dir: Path) -> dict:
    """The world's ground truth."""
    return load_truth(world_dir)


@pytest.fixture(scope="session")
def world(world_dir: Path):
    """The world's servers, running for the session and stopped afterwards."""
    endpoints = world_up(world_dir)
    # this process reads the world's published hrefs through its loopback signer
    before = os.environ.get(WORLD_S3)
    os.environ[WORLD_S3] = endpoints["s3"]
    try:
        yield endpoints
    finally:
        world_down(world_dir)
        if before is None:
            os.environ.pop(WORLD_S3, None)
        else:
            os.environ[WORLD_S3] = before


@pytest.fixture
def params(world, world_dir: Path, tmp_path: Path) -> dict:
    """``params.yaml`` with the world's overlay and a fresh data directory."""
    overlay = tmp_path / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"data": str(tmp_path / "data")}}))
    return load_params([REPO / "params.yaml", world_dir / PARAMS_OVERLAY, overlay])


@pytest.fixture(scope="session")
def ingested(world, world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Params whose data directory holds every enabled source ingested once (read-only)."""
    from pipelines.ingest import enabled_sources, run_ingest

    root = tmp_path_factory.mktemp("ingested")
    overlay = root / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {
        "data": str(root / "data"), "reports": str(root / "reports"),
        "shards": str(root / "shards"),
    }}))
    params = load_params([REPO / "params.yaml", world_dir / PARAMS_OVERLAY, overlay])
    run_ingest(typed(params), enabled_sources(typed(params)), workers=2, progress=False)
    return params


@pytest.fixture(scope="session")
def curated(ingested: dict) -> dict:
    """``ingested`` after ``geopile curate``; returns the params (report under paths.reports)."""
    from pipelines.curate import run_curate

    run_curate(typed(ingested), progress=False)
    return ingested


@pytest.fixture(scope="module")
def shards(curated, tmp_path_factory) -> Path:
    """The world's ``full`` build in about ten shards."""
    from pipelines.shard import run_shard

    params = {**curated, "paths": {**curated["paths"],
                                   "shards": str(tmp_path_factory.mktemp("stream"))},
              "shard": {**curated["shard"], "max_samples": 70}}
    run_shard(typed(params), "full", progress=False)
    return Path(params["paths"]["shards"]) / "full"


@pytest.fixture
def build(shards, tmp_path) -> Path:
    """A private copy of the ``full`` build, free to damage."""
    copy = tmp_path / "bucket" / "full"
    shutil.copytree(shards, copy)
    return copy


@pytest.fixture
def s3(build, tmp_path, monkeypatch):
    """The damaged-or-not copy served as ``s3://bucket/full`` on a loopback 'S3'."""
    from tests.httpserver import FlakyServer

    with FlakyServer(tmp_path) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
        yield server
