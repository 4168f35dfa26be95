"""Fault trials for streaming: a freshly booted machine, silent corruption, missing pieces.

Each trial damages a copy of the world's ``full`` build (or the reader's clock) the way the
outside world does, and checks that the reader either shrugs it off or stops with an error that
names the file and the fix. S3 trials use a loopback 'S3' (``tests.httpserver.FlakyServer``)
with the same damaged copy; nothing here depends on the machine's uptime or wall clock.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import simplejpeg
import xxhash

from geopile.augment import GfmTransform
from geopile.stream import Leg, S3Storage, ShardStream, StreamConfig, StreamError, parse_members
from geopile.stream import storage as storage_module
from geopile.stream.index import INDEX
from pipelines.loader import GeoPileLoader
from tests.test_stream import BATCH, _epoch

BUCKET_URL = "s3://bucket/full"


def _index(build: Path) -> dict:
    return json.loads((build / INDEX).read_text())


def _planned(build: Path, shard: int, count: int) -> list[int]:
    """The first ``count`` samples of ``shard`` that epoch 0 delivers (``drop`` cuts a few)."""
    probe = ShardStream(str(build), StreamConfig(batch_size=BATCH))
    first = next(i for i, r in enumerate(probe.refs) if r.shard == shard)
    planned = set(probe.worker_indices(Leg.whole(0, len(probe.refs))).tolist())
    return [i - first for i in range(first, len(probe.refs))
            if probe.refs[i].shard == shard and i in planned][:count]


def _flip_jpeg_quant(build: Path, shard: int, sample: int) -> tuple[str, bytes, bytes]:
    """Change one bit of a quantisation-table entry inside a sample's JPEG payload.

    The image still decodes (to slightly different pixels): only a checksum can tell.
    Returns the sample's key and its JPEG before and after.
    """
    meta = _index(build)["shards"][shard]
    path = build / meta["name"]
    data = bytearray(path.read_bytes())
    ends = [*meta["offsets"][1:], meta["bytes"]]
    start, end = meta["offsets"][sample], ends[sample]
    jpeg = parse_members(bytes(data[start:end]))["jpg"]
    at = data.index(jpeg, start)
    dqt = jpeg.index(b"\xff\xdb")
    spot = at + dqt + 5 + 20  # marker, length (2), table id (1), then 64 table entries
    data[spot] ^= 0x01 if data[spot] != 1 else 0x02
    path.write_bytes(data)
    return meta["keys"][sample], jpeg, bytes(data[at:at + len(jpeg)])


class _FreshBootClock:
    """``time.monotonic`` of a machine booted seconds ago: starts at 5 s, steps 0.5 s a call."""

    def __init__(self, start: float = 5.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_s3_reads_on_a_freshly_booted_machine(build, s3, monkeypatch):
    """Trial (a): the monotonic clock reads 5..65 s (a VM up for a minute).

    Expected: every S3 read is signed and succeeds; nothing waits for the clock to pass the
    refresh period, and a signature is renewed once it is older than ``REFRESH_S``.
    """
    clock = _FreshBootClock()
    monkeypatch.setattr(storage_module, "time", SimpleNamespace(monotonic=clock, sleep=time.sleep))
    storage = S3Storage(BUCKET_URL, endpoint_url=s3.url, retries=1, backoff_s=0.01)
    name = _index(build)["shards"][0]["name"]
    assert storage.read_range(name, 0, 1024) == (build / name).read_bytes()[:1024]
    first = storage._signed[name][0]
    assert storage.read_range(name, 0, 10) == (build / name).read_bytes()[:10]
    assert storage._signed[name][0] == first  # still fresh: not signed again
    clock.now += S3Storage.REFRESH_S + 1
    storage.read_range(name, 0, 10)
    assert storage._signed[name][1] > S3Storage.REFRESH_S  # renewed at the new time

    clock.now = 5.0
    loader = GeoPileLoader(BUCKET_URL, batch_size=BATCH, workers=0)
    keys, _ = _epoch(loader)
    assert clock.now < 5.0 + S3Storage.REFRESH_S  # the whole epoch ran inside "boot + 40 min"
    assert len(keys) == len(loader) * BATCH and loader.state.skipped == 0


@pytest.mark.parametrize("where", ["local", "s3"])
def test_flipped_bit_in_a_jpeg_that_still_decodes(build, s3, where):
    """Trial (b): one bit of one JPEG payload flipped; the JPEG still decodes (local, S3 uncached).

    Expected: the sample fails its index checksum, is counted (``state.skipped == 1``) and its
    slot is filled with a good sample; its key never reaches the trainer; the epoch has its
    full length.
    """
    (sample,) = _planned(build, shard=2, count=1)
    key, before, after = _flip_jpeg_quant(build, shard=2, sample=sample)
    assert not (simplejpeg.decode_jpeg(before) == simplejpeg.decode_jpeg(after)).all()
    GfmTransform()(after, "jpg", 0, 0)  # decodes without complaint: only a checksum can tell
    url = str(build) if where == "local" else BUCKET_URL
    loader = GeoPileLoader(url, batch_size=BATCH, workers=0)
    keys, _ = _epoch(loader)
    assert key not in keys
    assert loader.state.skipped == 1
    assert len(keys) == len(loader) * BATCH


@pytest.mark.parametrize("where", ["local", "s3"])
def test_many_flipped_bits_in_one_shard_stop_the_run(build, s3, where):
    """Trial (c): five samples of one shard damaged (more than ``max_bad_per_shard=3``).

    Expected: StreamError naming the shard and the count of bad samples, whichever worker or
    sample meets the damage first; with ``max_bad_per_shard=5`` the same build streams with
    the five samples substituted.
    """
    name = _index(build)["shards"][3]["name"]
    for sample in _planned(build, shard=3, count=5):
        _flip_jpeg_quant(build, shard=3, sample=sample)
    url = str(build) if where == "local" else BUCKET_URL
    with pytest.raises(StreamError, match=rf"{re.escape(name)}: 5 of \d+ samples fail their xxh3 "
                                          r"checksum.*max_bad_per_shard=3.*geopile shard full"):
        _epoch(GeoPileLoader(url, batch_size=BATCH, workers=2))
    tolerant = GeoPileLoader(url, batch_size=BATCH, workers=0, max_bad_per_shard=5)
    keys, _ = _epoch(tolerant)
    assert tolerant.state.skipped == 5 and len(keys) == len(tolerant) * BATCH


def test_deleted_shard_local(build):
    """Trial (d), local: a shard listed in index.json is deleted, before or during a run.

    Expected: a StreamError naming the missing file and ``geopile shard full``; at open time
    when it is already gone, at the read when it goes missing mid-run.
    """
    name = _index(build)["shards"][4]["name"]
    loader = GeoPileLoader(str(build), batch_size=BATCH, workers=0)
    (build / name).unlink()
    message = rf"{re.escape(str(build / name))}: no such file.*geopile shard full"
    with pytest.raises(StreamError, match=message):
        _epoch(loader)
    with pytest.raises(StreamError, match=message):
        GeoPileLoader(str(build), batch_size=BATCH, workers=0)


def test_truncated_shard_local_is_refused_at_open(build):
    """Trial (d'), local: a shard cut short (a copy interrupted).

    Expected: a StreamError at open naming the file, both sizes and the fix.
    """
    meta = _index(build)["shards"][1]
    path = build / meta["name"]
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(StreamError, match=rf"{re.escape(str(path))} is 1000 bytes, index.json says "
                                          rf"{meta['bytes']}.*geopile shard full"):
        GeoPileLoader(str(build), batch_size=BATCH, workers=0)


def test_deleted_shard_s3(build, s3):
    """Trial (d), S3: a shard listed in index.json is missing from the bucket.

    Expected: a StreamError naming ``s3://bucket/full/<shard>``, saying it does not exist
    (HTTP 404, not retried) and how to push the build.
    """
    name = _index(build)["shards"][4]["name"]
    (build / name).unlink()
    message = rf"{BUCKET_URL}/{name}: no such object \(HTTP 404\).*geopile push full"
    with pytest.raises(StreamError, match=message):
        _epoch(GeoPileLoader(BUCKET_URL, batch_size=BATCH, workers=0))
    storage = S3Storage(BUCKET_URL, endpoint_url=s3.url, retries=3, backoff_s=0.01)
    s3.requests.clear()
    with pytest.raises(StreamError, match=message):
        storage.read_range(name, 0, 10)
    assert len(s3.requests) == 1  # a 404 is final: not retried


@pytest.mark.parametrize("where", ["local", "s3"])
def test_truncated_index(build, s3, where):
    """Trial (e): index.json cut in half (an interrupted copy or upload), local and S3.

    Expected: a StreamError naming the index's path or URL, saying it is not valid JSON
    (truncated or damaged), and giving the fix (rebuild / re-push).
    """
    text = (build / INDEX).read_text()
    (build / INDEX).write_text(text[: len(text) // 2])
    url = str(build) if where == "local" else BUCKET_URL
    shown = re.escape(str(build / INDEX) if where == "local" else f"{BUCKET_URL}/{INDEX}")
    fix = "geopile shard full" if where == "local" else "geopile push full"
    with pytest.raises(StreamError, match=rf"{shown} is not valid JSON.*truncated.*{fix}"):
        ShardStream(url, StreamConfig())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_index_missing_a_key(build, s3, where):
    """Trial (e'): index.json parses but lacks a shard's ``offsets`` (hand-edited, other tool).

    Expected: a StreamError naming the file, the build, the field and the fix.
    """
    index = _index(build)
    del index["shards"][2]["offsets"]
    (build / INDEX).write_text(json.dumps(index))
    url = str(build) if where == "local" else BUCKET_URL
    shown = re.escape(str(build / INDEX) if where == "local" else f"{BUCKET_URL}/{INDEX}")
    with pytest.raises(StreamError, match=rf"{shown} \(build 'full'\): shards\[2\]\.offsets: "
                                          r"None is invalid: must be a list of \d+ byte offsets"):
        ShardStream(url, StreamConfig())


def test_missing_index(tmp_path):
    """A directory that is not a build: the error names the index path and the fix."""
    message = rf"{re.escape(str(tmp_path / INDEX))}: no such file.*geopile shard"
    with pytest.raises(StreamError, match=message):
        ShardStream(str(tmp_path), StreamConfig())


def test_index_without_checksums_streams_unverified(build, caplog):
    """An index written before per-sample checksums still streams, with one warning."""
    index = _index(build)
    for shard in index["shards"]:
        del shard["xxh3"]
    (build / INDEX).write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="geopile.stream"):
        loader = GeoPileLoader(str(build), batch_size=BATCH, workers=0)
        keys, _ = _epoch(loader)
        _epoch(loader)
    assert len(keys) == len(loader) * BATCH
    warnings = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert len(warnings) == 1 and str(build) in warnings[0].getMessage()


def test_index_checksums_cover_the_ranges_the_reader_reads(build):
    """Writer and reader agree: sample i's xxh3 is of bytes offsets[i]..offsets[i+1] (or EOF)."""
    for meta in _index(build)["shards"]:
        data = (build / meta["name"]).read_bytes()
        ends = [*meta["offsets"][1:], meta["bytes"]]
        got = [xxhash.xxh3_64_hexdigest(data[a:b]) for a, b in
               zip(meta["offsets"], ends, strict=True)]
        assert got == meta["xxh3"]


def test_stream_config_rejects_a_negative_threshold():
    """A wrong parameter raises, naming it."""
    with pytest.raises(ValueError, match="max_bad_per_shard"):
        StreamConfig(max_bad_per_shard=-1)
