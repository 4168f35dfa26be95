"""The payload store (issue 31): a directory or an S3 prefix, and the names it refuses.

A record's ``path`` is someone else's input (a table can be edited, a bucket written by anyone):
whatever the name, the store reads and writes inside its root or refuses, naming the name.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geopile.payloads import (
    LocalPayloads,
    PayloadError,
    S3Payloads,
    checked_name,
    open_payloads,
    stage_inputs,
)
from geopile.shardstore import S3Store
from geopile.world.world import s3_client, world_env

HOSTILE = ["../outside.tif", "/etc/hostname", "raw/../../x", "raw\\..\\x", "", ".",
           "raw/./x", "raw//x", "raw/x/", "a\x00b", "..", "raw/.."]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_outside_the_store_is_refused(name, tmp_path):
    (tmp_path / "outside.tif").write_bytes(b"secret")
    store = LocalPayloads(tmp_path / "store")
    with pytest.raises(PayloadError, match="not a payload name"):
        store.read(name)
    with pytest.raises(PayloadError, match="not a payload name"):
        store.write(name, b"x")
    assert (tmp_path / "outside.tif").read_bytes() == b"secret"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab./\\\x00_-é"), max_size=12))
def test_an_accepted_name_stays_inside_the_root(name):
    root = "/store/root"
    try:
        got = checked_name(name)
    except PayloadError:
        return
    joined = os.path.normpath(os.path.join(root, got))
    assert got == name and not os.path.isabs(got)
    assert joined.startswith(root + "/") and joined != root
    assert joined == f"{root}/{got}"  # nothing that normalisation would fold


def test_a_directory_store_writes_whole_reads_and_prunes(tmp_path):
    store = open_payloads(None, tmp_path)
    assert store == LocalPayloads(tmp_path)
    store.write("raw/s/a/1.tif", b"one")
    store.write("raw/s/b/2.tif", b"two")
    store.write("raw/s2/3.tif", b"three")  # another source sharing the name's start
    assert store.read("raw/s/a/1.tif") == b"one"
    assert not list(tmp_path.rglob("*.tmp*"))
    assert store.prune("raw/s", {"raw/s/a/1.tif"}) == 1
    assert not (tmp_path / "raw/s/b").exists() and store.read("raw/s2/3.tif") == b"three"
    with pytest.raises(PayloadError, match=r"raw/s/b/2.tif: no such payload"):
        store.read("raw/s/b/2.tif")


def test_staging_copies_only_what_differs(tmp_path):
    data = tmp_path / "data"
    (data / "raw/s").mkdir(parents=True)
    (data / "raw/s/a.jpg").write_bytes(b"a")
    (data / "raw/s/b.jpg").write_bytes(b"b")
    # the store is the data directory itself: nothing to send
    assert stage_inputs(LocalPayloads(data), data, ["raw/s/a.jpg", "raw/s/b.jpg"]) == 0
    other = LocalPayloads(tmp_path / "elsewhere")
    assert stage_inputs(other, data, ["raw/s/a.jpg", "raw/s/b.jpg"]) == 2
    (data / "raw/s/b.jpg").write_bytes(b"B")  # same size, other bytes
    assert stage_inputs(other, data, ["raw/s/a.jpg", "raw/s/b.jpg"]) == 1
    assert other.read("raw/s/b.jpg") == b"B"
    with pytest.raises(PayloadError):
        stage_inputs(other, data, ["../data/raw/s/a.jpg"])


def test_settings_name_the_store(tmp_path):
    from geopile.settings import Paths

    base = {"data": str(tmp_path), "reports": "r", "shards": "s", "runs": "x"}
    assert Paths.model_validate(base).payload_store() == LocalPayloads(tmp_path)
    s3 = Paths.model_validate({**base, "payloads": "s3://bucket/geopile/data/"}).payload_store()
    assert isinstance(s3, S3Payloads) and str(s3) == "s3://bucket/geopile/data"
    for bad in ("gs://bucket/x", "s3:///x", "https://host/x"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            Paths.model_validate({**base, "payloads": bad})


@pytest.fixture
def s3_env(world, monkeypatch):
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    return world


def test_an_s3_store_checks_every_put_and_reads_back(s3_env, tmp_path, monkeypatch):
    url = f"s3://{s3_env['bucket']}/payloads-{time.monotonic_ns()}"
    store = open_payloads(url, tmp_path)
    assert isinstance(store, S3Payloads)
    store.write("raw/s/a/1.tif", b"one")
    store.write("raw/s/b/2.tif", b"two")
    store.write("raw/s2/3.tif", b"three")
    # a task gets the URL, not a client or a socket
    again = pickle.loads(pickle.dumps(store))
    assert again == store and again.read("raw/s/a/1.tif") == b"one"
    client = s3_client(s3_env["s3"])
    key = url.split("/", 3)[3]
    head = client.head_object(Bucket=s3_env["bucket"], Key=f"{key}/raw/s/a/1.tif",
                              ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # S3 checked the bytes it received
    with pytest.raises(PayloadError, match=rf"{url}/raw/s/x.tif: no such payload"):
        store.read("raw/s/x.tif")
    with pytest.raises(PayloadError, match="not a payload name"):
        store.read("../escape")

    # staging sends what S3 lacks or holds with other bytes, and nothing else
    local = tmp_path / "raw/s/a/1.tif"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"one")
    before = client.head_object(Bucket=s3_env["bucket"], Key=f"{key}/raw/s/a/1.tif")
    time.sleep(1.1)  # LastModified has whole seconds
    assert stage_inputs(store, tmp_path, ["raw/s/a/1.tif"]) == 0
    after = client.head_object(Bucket=s3_env["bucket"], Key=f"{key}/raw/s/a/1.tif")
    assert after["LastModified"] == before["LastModified"]
    local.write_bytes(b"ONE")
    assert stage_inputs(store, tmp_path, ["raw/s/a/1.tif"]) == 1
    assert store.read("raw/s/a/1.tif") == b"ONE"

    assert store.prune("raw/s", {"raw/s/a/1.tif"}) == 1
    listed = client.list_objects_v2(Bucket=s3_env["bucket"], Prefix=f"{key}/")
    assert sorted(o["Key"][len(key) + 1:] for o in listed["Contents"]) == [
        "raw/s/a/1.tif", "raw/s2/3.tif"]

    # an object bigger than any image is not read into memory
    monkeypatch.setattr("geopile.payloads.MAX_PAYLOAD_BYTES", 4)
    with pytest.raises(PayloadError, match="more than any image"):
        store.read("raw/s2/3.tif")


def test_a_record_naming_a_file_outside_the_store_is_not_sharded(tmp_path):
    from geopile.settings import Shard
    from geopile.shards import encode_sample

    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8secret")
    record = {"path": "../secret.jpg", "format": "jpeg", "bands": 3, "key": "k"}
    config = Shard(max_samples=10, max_bytes=1 << 20, naip_bands=3, jpeg_quality=95, mtime=0,
                   cap_scale=1.0)
    with pytest.raises(PayloadError, match="'../secret.jpg' is not a payload name"):
        encode_sample(record, LocalPayloads(tmp_path / "data"), config)


def test_a_missing_payload_is_an_input_failure_of_its_candidate(params, tmp_path):
    """An archive image the store lacks: a counted failure of its candidate, not a crash."""
    from geopile.ingest import decide
    from geopile.sources.base import Candidate
    from tests.conftest import make_source

    source = make_source(params, "resisc45", tmp_path / "data", progress=False)
    source.ctx.payloads = LocalPayloads(tmp_path / "empty")
    result, reason, failure = decide(source, Candidate("k", path="raw/resisc45/x.jpg"))
    assert result is None and failure == "input" and "no such payload" in reason


def test_a_directory_store_keeps_files_under_its_root(tmp_path):
    assert Path(LocalPayloads(tmp_path).path("raw/a.tif")).is_relative_to(tmp_path)


def test_a_checkpoint_is_not_resumed_onto_another_store(params, tmp_path):
    """Parts decided while payloads went to one store must not finish in another: that store
    would lack them. The default store keeps the fingerprint it always had."""
    from geopile.ingest import _fingerprint
    from tests.conftest import make_source

    source = make_source(params, "naip", tmp_path / "data", progress=False)
    default = _fingerprint(source)
    source.ctx.payloads = LocalPayloads(tmp_path / "data")
    assert _fingerprint(source) == default
    source.ctx.payloads = S3Payloads(S3Store("s3://bucket/geopile/data"))
    assert _fingerprint(source) != default


def test_a_bigger_cluster_gets_more_candidates_between_barriers(params, tmp_path):
    """64 candidates a chunk left most of a big cluster idle: the default follows its CPUs."""
    from geopile.engines import LocalMapper
    from geopile.ingest import ingest
    from tests.conftest import make_source

    class Wide(LocalMapper):  # a pool that reports a 100-CPU cluster
        chunks: list[int] = []

        def cpus(self) -> int:
            return 100

        def map(self, fn, items, shared, **kw):
            self.chunks.append(len(items))
            return super().map(fn, items, shared, **kw)

    source = make_source(params, "resisc45", tmp_path / "data", progress=False)
    mapper = Wide(2)
    summary = ingest(source, mapper=mapper, progress=False)
    mapper.close()
    total = summary.images + summary.rejects
    assert total > 64 and mapper.chunks[0] == min(400, total)
