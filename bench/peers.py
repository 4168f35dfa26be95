"""Peer streaming libraries on the loader benchmark's JPEGs: MosaicML streaming and litdata.

    from bench.peers import write_mds, write_litdata, mds_batches, litdata_batches

Both are written from the same (key, JPEG bytes, label) samples and read back shuffled in the
calling process (num_workers=0) from a local dir or an ``s3://`` URL; the S3 endpoint and
credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Each reader
streams into a fresh directory under ``cache`` that is deleted once its loader is garbage, so a
reader built per round really streams from S3 every round (its later epochs read the cache, as
each library does by design). Needs the ``bench`` extra: mosaicml-streaming and litdata.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

Sample = tuple[str, bytes, int]  # key, JPEG bytes, label
Transform = Callable[[bytes, int], np.ndarray]  # (JPEG bytes, sample index) -> uint8 HWC image
SHARD_BYTES = 1 << 23  # both libraries' shard / chunk size: about GeoPile's 500-sample shards


def write_mds(samples: list[Sample], out: Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """MosaicML MDS shards of ``samples`` in ``out``, replaced (uncompressed, as JPEGs are)."""
    from streaming import MDSWriter

    shutil.rmtree(out, ignore_errors=True)
    columns = {"key": "str", "jpg": "bytes", "cls": "int"}
    with MDSWriter(out=str(out), columns=columns, size_limit=shard_bytes) as writer:
        for key, jpg, cls in samples:
            writer.write({"key": key, "jpg": jpg, "cls": cls})
    return out


def write_litdata(samples: list[Sample], out: Path, shard_bytes: int = SHARD_BYTES) -> Path:
    """Litdata optimized chunks of ``samples`` in ``out``, replaced (uncompressed).

    Its in-process writer (what ``litdata.optimize`` runs in each of its worker processes):
    the same chunks and index.json, without spawning workers to re-pickle bytes we already hold.
    """
    from litdata.streaming.writer import BinaryWriter

    shutil.rmtree(out, ignore_errors=True)  # merge() keeps an index.json already there
    writer = BinaryWriter(cache_dir=str(out), chunk_bytes=shard_bytes)
    for i, (key, jpg, cls) in enumerate(samples):
        writer[i] = {"key": key, "jpg": jpg, "cls": cls}
    writer.done()
    writer.merge()
    return out


def _fresh_cache(cache: Path, name: str) -> str:
    """A new directory under ``cache``: no instance reuses another's (MosaicML refuses that)."""
    cache.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{name}-", dir=cache)


def _remove(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


def _drop_with(owner: object, paths: list[str]) -> None:
    """Delete ``paths`` once ``owner`` is garbage: the next reader streams from S3 again."""
    weakref.finalize(owner, _remove, paths)


@functools.cache
def _clean_stale_shm_once() -> None:
    """MosaicML's shared memory left by killed runs, once per process: it unlinks every
    streaming segment, live datasets' included, so never again once ours exist."""
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()


def mds_batches(src: str, cache: Path, batch_size: int, transform: Transform) -> Iterable:
    """A DataLoader (num_workers=0) of shuffled (images, labels) from MDS at ``src``.

    A local ``src`` is read in place; an ``s3://`` one is downloaded shard by shard (whole
    shards, boto3 ``download_file``) into a fresh dir under ``cache``. MosaicML reads its
    endpoint from S3_ENDPOINT_URL, so it is set from AWS_ENDPOINT_URL.
    """
    from streaming import StreamingDataset

    class Dataset(StreamingDataset):
        def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
            sample = self.get_item(index)
            return transform(sample["jpg"], index), sample["cls"]

    _clean_stale_shm_once()
    remote = src if src.startswith("s3://") else None
    if remote and "AWS_ENDPOINT_URL" in os.environ:  # read when it first downloads
        os.environ["S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    local = _fresh_cache(cache, "mds") if remote else src
    dataset = Dataset(remote=remote, local=local, shuffle=True, batch_size=batch_size)
    # its two filelocks in /tmp outlive it, and a prefix with one is never used again
    locks = [f"{dataset._filelock_root}/{dataset._shm_prefix_int:06d}_{kind}_filelock"
             for kind in ("barrier", "cache")]
    _drop_with(dataset, [local, *locks] if remote else locks)
    return DataLoader(dataset, batch_size=batch_size, num_workers=0)


def litdata_batches(src: str, cache: Path, batch_size: int, transform: Transform) -> Iterable:
    """A StreamingDataLoader (num_workers=0) of shuffled (images, labels) from litdata at ``src``.

    Litdata's boto3 client takes the endpoint from ``storage_options`` (its obstore chunk
    reader copies the client's endpoint and region), so both are passed explicitly.
    """
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming import downloader
    from litdata.streaming.sampler import ChunkedIndex

    class Dataset(StreamingDataset):
        def __getitem__(self, index: Any) -> tuple[np.ndarray, int]:
            sample = super().__getitem__(index)
            i = index.index if isinstance(index, ChunkedIndex) else index
            return transform(sample["jpg"], i), sample["cls"]

    endpoint = os.environ.get("AWS_ENDPOINT_URL") if src.startswith("s3://") else None
    options = None
    if endpoint:
        options = {"endpoint_url": endpoint,
                   "region_name": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint.startswith("http://"):  # its obstore client options lack allow_http: any
            downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # plain-http GET would fail
    path = _fresh_cache(cache, "litdata")
    dataset = Dataset(input_dir=src, cache_dir=path, shuffle=True, storage_options=options)
    _drop_with(dataset, [path])
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0)
