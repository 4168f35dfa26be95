"""Streaming real shards: exact resume, local = S3, flaky S3, the cache's checksum, corruption."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from geopile.stream import CachedStorage, S3Storage, StreamError
from geopile.stream.index import INDEX
from geopile.world.world import upload_tree
from pipelines.loader import GeoPileLoader, decode_on_device
from tests.conftest import torchrun
from tests.httpserver import FlakyServer

BATCH = 8


def _epoch(loader: GeoPileLoader, stop_after: int | None = None) -> tuple[list, list]:
    keys, images = [], []
    for n, batch in enumerate(loader):
        keys += batch["key"]
        images.append(batch["image"].numpy().copy())
        if stop_after is not None and n + 1 == stop_after:
            break
    return keys, images


def test_batches(shards):
    loader = GeoPileLoader(str(shards), batch_size=BATCH, workers=0)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (BATCH, 3, 192, 192)
    assert batch["image"].dtype.is_floating_point is False
    assert tuple(batch["mask"].shape) == (BATCH, 48, 48)
    assert batch["mask"].float().mean().item() == pytest.approx(22 / 36)


def _start_at(loader: GeoPileLoader, epoch: int) -> GeoPileLoader:
    """``loader`` set to begin ``epoch`` (as a checkpoint at an epoch's start would)."""
    state = loader.state_dict()
    loader.load_state_dict({**state, "epoch": epoch, "leg": state["owed"]})
    return loader


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_mid_epoch_with_the_same_workers_is_exact(shards, workers):
    """Same layout: the very batches, pixels and masks the uninterrupted run had."""
    full = _start_at(GeoPileLoader(str(shards), batch_size=BATCH, workers=workers, seed=3), 1)
    keys, images = _epoch(full)
    assert len(keys) == len(full) * BATCH and len(set(keys)) == len(keys)

    first = _start_at(GeoPileLoader(str(shards), batch_size=BATCH, workers=workers, seed=3), 1)
    head_keys, _ = _epoch(first, stop_after=5)
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert sum(state["taken"]) == 5

    resumed = GeoPileLoader(str(shards), batch_size=BATCH, workers=workers, seed=3)
    resumed.load_state_dict(state)
    tail_keys, tail_images = _epoch(resumed)
    assert head_keys + tail_keys == keys
    assert all(np.array_equal(a, b) for a, b in zip(tail_images, images[5:], strict=True))
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["owed"] == [
        [0, resumed.state_dict()["samples"]]]


@pytest.mark.parametrize("before,after", [(2, 0), (0, 3), (3, 2)])
def test_resume_with_other_workers_delivers_exactly_the_rest(shards, before, after):
    first = _start_at(GeoPileLoader(str(shards), batch_size=BATCH, workers=before, seed=3), 1)
    n = len(first)
    head_keys, _ = _epoch(first, stop_after=5)
    resumed = GeoPileLoader(str(shards), batch_size=BATCH, workers=after, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail_keys, _ = _epoch(resumed)
    every = head_keys + tail_keys
    assert len(every) == len(set(every)) == n * BATCH  # none repeated, and one world: none lost
    assert set(every) == set(_epoch(_start_at(GeoPileLoader(
        str(shards), batch_size=BATCH, workers=after, seed=3), 1))[0])


def test_workers_persist_across_epochs(shards):
    loader = GeoPileLoader(str(shards), batch_size=BATCH, workers=2, seed=3)
    first = _epoch(loader)[0]
    pids = {w.pid for w in loader._loader._iterator._workers}
    second = _epoch(loader)[0]
    assert {w.pid for w in loader._loader._iterator._workers} == pids
    # the kept workers read epoch 1, as new ones would
    assert second == _epoch(_start_at(GeoPileLoader(str(shards), batch_size=BATCH, workers=2,
                                                    seed=3), 1))[0] != first
    assert loader.state_dict()["epoch"] == 2


def test_ranks_split_evenly(shards):
    per_rank = []
    for rank in range(3):
        loader = GeoPileLoader(str(shards), batch_size=BATCH, workers=2, rank=rank, world=3)
        per_rank.append(_epoch(loader)[0])
    assert len({len(k) for k in per_rank}) == 1
    every = [k for keys in per_rank for k in keys]
    assert len(every) == len(set(every))


def test_device_decoding_matches_shapes(shards):
    loader = GeoPileLoader(str(shards), batch_size=BATCH, workers=0, device_decode=True)
    batch = next(iter(loader))
    images = decode_on_device(batch, 192, "cpu")
    assert tuple(images.shape) == (BATCH, 3, 192, 192)


def test_s3_reads_equal_local_reads(shards, world, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", world["s3"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "geopile")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "offline-world")
    url = upload_tree(world["s3"], shards, "stream-test/full")
    local = _epoch(GeoPileLoader(str(shards), batch_size=BATCH, workers=2))
    remote = _epoch(GeoPileLoader(url, batch_size=BATCH, workers=2))
    assert local[0] == remote[0]
    assert all(np.array_equal(a, b) for a, b in zip(local[1], remote[1], strict=True))


@pytest.fixture
def flaky_s3(shards, tmp_path, monkeypatch):
    """A loopback 'S3' (path-style GETs with Range) that can drop connections and fail."""
    bucket = tmp_path / "bucket" / "full"
    shutil.copytree(shards, bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with FlakyServer(tmp_path) as server:
        yield server


def test_dropped_connection_mid_read_is_retried(flaky_s3, shards):
    storage = S3Storage("s3://bucket/full", endpoint_url=flaky_s3.url, backoff_s=0.01)
    index = json.loads((shards / INDEX).read_text())
    name = index["shards"][0]["name"]
    flaky_s3.drop_after, flaky_s3.drops_left = 100, 2
    data = storage.read_range(name, 0, 20000)
    assert data == (shards / name).read_bytes()[:20000]
    assert [r[2] for r in flaky_s3.requests].count(206) == 3  # two cut short, one whole


def test_unreadable_shard_names_it(flaky_s3):
    storage = S3Storage("s3://bucket/full", endpoint_url=flaky_s3.url, retries=2,
                        backoff_s=0.01)
    flaky_s3.errors_left = 100
    with pytest.raises(StreamError, match="shard-000001.tar.*after 2 retries"):
        storage.read_range("shard-000001.tar", 0, 100)


def test_cache_refuses_a_shard_that_fails_its_checksum(flaky_s3, shards, tmp_path):
    index = json.loads((shards / INDEX).read_text())
    entries = {s["name"]: (s["sha256"], s["bytes"]) for s in index["shards"]}
    remote = S3Storage("s3://bucket/full", endpoint_url=flaky_s3.url, backoff_s=0.01)
    name = index["shards"][0]["name"]
    digest = entries[name][0]
    limit = sum(s["bytes"] for s in index["shards"][:2])
    cache = CachedStorage(remote, tmp_path / "cache", limit, entries)
    assert cache.read_range(name, 0, 512) == (shards / name).read_bytes()[:512]
    for shard in index["shards"][1:4]:
        cache.read_range(shard["name"], 0, 512)
    cached = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.tar"))
    assert cached <= limit  # least recently used shards were evicted
    # the cache names its copies by their sha256: no index can make it touch another file
    assert {p.name for p in (tmp_path / "cache").iterdir()} <= {f"{d}.tar" for d, _ in
                                                                entries.values()}

    # a damaged copy (a bad disk) is fetched again, not used
    damaged = CachedStorage(remote, tmp_path / "cache2", limit, entries)
    bad = bytearray((shards / name).read_bytes())
    bad[700] ^= 0xFF
    (tmp_path / "cache2" / f"{digest}.tar").write_bytes(bad)
    assert damaged.read_range(name, 600, 800) == (shards / name).read_bytes()[600:800]
    assert (tmp_path / "cache2" / f"{digest}.tar").read_bytes() == (shards / name).read_bytes()

    # a remote shard that does not match its index is refused and not cached
    (tmp_path / "bucket" / "full" / name).write_bytes(bad)
    tampered = CachedStorage(remote, tmp_path / "cache3", limit, entries)
    with pytest.raises(StreamError, match=f"{name} has sha256 .*refused"):
        tampered.read_range(name, 0, 512)
    assert not list((tmp_path / "cache3").iterdir())


def test_corrupt_sample_is_skipped_and_counted(shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    index = json.loads((broken / INDEX).read_text())
    shard = index["shards"][1]
    data = bytearray((broken / shard["name"]).read_bytes())
    data[shard["offsets"][3] + 10] ^= 0xFF  # a header byte: the checksum no longer matches
    (broken / shard["name"]).write_bytes(data)
    loader = GeoPileLoader(str(broken), batch_size=BATCH, workers=2)
    keys, _ = _epoch(loader)
    clean_keys, _ = _epoch(GeoPileLoader(str(shards), batch_size=BATCH, workers=2))
    assert len(keys) == len(clean_keys)
    assert loader.state.skipped == 1
    assert shard["keys"][3] not in keys


def _run(shards: Path, out: Path, world: int, workers: int, take: int | None = None,
         resume: Path | None = None) -> list[list[str]]:
    args = [str(shards), str(out), "--batch", str(BATCH), "--workers", str(workers)]
    args += ["--take", str(take)] if take is not None else []
    args += ["--resume", str(resume)] if resume else []
    proc = torchrun(args, procs=world, module="tests.elastic_loader")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads((out / f"keys-{r}.json").read_text()) for r in range(world)]
    assert {r["epoch"] for r in runs} == {0}
    return [r["keys"] for r in runs]


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (4, 1)),
                                          ((2, 1), (2, 3))])
def test_elastic_resume_under_torchrun(shards, tmp_path, before, after):
    """A checkpoint of (W1 ranks, K1 workers) resumed with (W2, K2): exactly the epoch's rest."""
    (w1, k1), (w2, k2) = before, after
    total = sum(len(s["keys"]) for s in json.loads((shards / INDEX).read_text())["shards"])
    head = _run(shards, tmp_path / "head", w1, k1, take=3)
    assert len({len(k) for k in head}) == 1 and len(head[0]) == 3 * BATCH
    tail = _run(shards, tmp_path / "tail", w2, k2, resume=tmp_path / "head" / "state.json")
    assert len({len(k) for k in tail}) == 1, "ranks got unequal counts"
    every = [k for keys in head + tail for k in keys]
    assert len(every) == len(set(every)), "a sample came twice"
    assert total - len(every) < w2 * BATCH, f"{total - len(every)} samples lost"
