"""Stream a GeoPile build from its ``index.json``: shuffled, evenly split, resumable, local or S3.

The epoch order is planned from the index alone, before any byte is read, and does not depend
on how many ranks or workers read it:

1. the build's samples are cut into *blocks* of ``block`` consecutive samples of one shard (one
   ranged read each), and the blocks are permuted with ``(seed, epoch)``;
2. consecutive runs of ``window`` blocks are pooled and their samples permuted, so any stretch
   of the stream mixes samples from ``window`` blocks drawn from all over the build;
3. the order is cut (``drop``, fewer than ``ranks x batch_size`` samples left out: the last
   ones) or wrapped (``pad``) to whole batches on every rank, and rank ``r`` takes the
   ``r``-th equal contiguous part;
4. inside a rank, each worker delivers a contiguous run of whole batches (whole blocks, few
   reads); the trainer counts the batches it took from each worker.

Those counts say exactly which positions of the order were delivered, so a checkpoint resumes
with any number of ranks and workers (:class:`Leg`, :func:`undelivered`): the epoch's
undelivered positions are dealt out again by the same rules, none repeated, none lost.

Every sample is checked against its xxh3-64 in the index as it is read (local and S3 alike): a
sample whose bytes changed since the build is set aside like an unreadable one, and a shard with
more than ``max_bad_per_shard`` such samples stops the run (:class:`StreamError`).

Written by hand because none of webdataset, MosaicML streaming or litdata does all of this over
plain WebDataset tars (FACTS.md section 5).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import urllib3
import xxhash

from geopile.buildindex import (
    INDEX,
    MAX_INDEX_BYTES,
    PUBLISHING,
    TAR_BLOCK,
    BuildIndexError,
    StreamError,
    parse_index,
    sha256_file,
)
from geopile.buildindex import fix_hint as _fix
from geopile.writelock import describe_holder

log = logging.getLogger(__name__)
AUDIT_BYTES = 32 << 20  # a damaged shard is re-checked whole, this many bytes a read
MAX_MARKER_BYTES = 64 << 10  # a PUBLISHING marker is a line of JSON
_warned_unverified: set[str] = set()  # builds already reported as unverified (once a process)


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: its shard, its byte range there, its key, its bytes' xxh3."""

    shard: int
    start: int
    end: int
    key: str
    xxh3: str | None = None  # hex xxh3-64 of bytes start..end; None: the index predates them


@dataclass(frozen=True)
class StreamConfig:
    """How to cut and shuffle an epoch."""

    seed: int = 0
    # 64 x 16 pools 1,024 samples as 16 x 64 did, in a quarter of the requests: from S3 each
    # costs about 0.9 ms of the reading core, a fifth of a 64-sample block's decoding
    # (bench/loader.py: (c)/(b) 0.83 with 16 x 64 and 4 threads, 0.94 with 64 x 16 and 8)
    block: int = 64  # samples per ranged read
    window: int = 16  # blocks pooled and shuffled together
    batch_size: int = 1
    remainder: str = "drop"  # or "pad"
    read_ahead: int = 8  # block reads in flight per worker (S3)
    verify: bool = True  # check every sample against its xxh3 in the index
    max_bad_per_shard: int = 3  # more samples of one shard failing their xxh3 stop the run

    def __post_init__(self) -> None:
        if self.remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {self.remainder!r}")
        if min(self.block, self.window, self.batch_size) < 1:
            raise ValueError("block, window and batch_size must be at least 1")
        if self.max_bad_per_shard < 0:
            raise ValueError(f"max_bad_per_shard must be 0 or more, got {self.max_bad_per_shard}")


# ---------------------------------------------------------------------------------------------
# storage: local files or S3 objects, read by byte range


class Storage(Protocol):
    """Byte-range access to the shards of one build."""

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (exclusive) of shard ``name``."""

    def where(self, name: str) -> str:
        """The path or URL of ``name``, for messages."""


class LocalStorage:
    """Shards in a local directory.

    A file the index lists that is gone or shorter than the range asked for is a
    :class:`StreamError` naming it and the fix (the build is incomplete), not a bare OSError.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def where(self, name: str) -> str:
        """The file's path."""
        return str(self.root / name)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` of a shard file."""
        try:
            with open(self.root / name, "rb") as f:
                data = os.pread(f.fileno(), end - start, start)
        except FileNotFoundError:
            raise StreamError(f"{self.where(name)}: no such file, though index.json lists it: "
                              f"the build is incomplete; {_fix(str(self.root))}") from None
        if len(data) != end - start:
            raise StreamError(f"{self.where(name)}: short read ({len(data)} of {end - start} "
                              f"bytes at {start}): the file was truncated; "
                              f"{_fix(str(self.root))}")
        return data

    def read_small(self, name: str, limit: int) -> bytes | None:
        """A whole small file (the index, a marker), refused unread above ``limit`` bytes.

        ``None`` when it does not exist.
        """
        path = self.root / name
        try:
            with open(path, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise BuildIndexError(f"{path} is not a regular file: refused unread")
                if info.st_size > limit:
                    raise BuildIndexError(f"{path} is {info.st_size:,} bytes, over the limit of "
                                          f"{limit:,}: refused unread; {_fix(str(self.root))}")
                return f.read(limit + 1)
        except FileNotFoundError:
            return None

    def shard_sizes(self, names: list[str]) -> dict[str, int | None]:
        """Each shard's size (``None``: missing), from one ``stat`` each."""
        sizes: dict[str, int | None] = {}
        for name in names:
            try:
                info = (self.root / name).stat()
            except FileNotFoundError:
                sizes[name] = None
                continue
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
                raise StreamError(f"{self.where(name)} is not a regular file, though index.json "
                                  f"lists it as a shard: refused; {_fix(str(self.root))}")
            sizes[name] = info.st_size
        return sizes


class MissingObject(StreamError):
    """An object the build needs is not in the bucket (HTTP 404: final, not retried)."""


class S3Storage:
    """Shards under ``s3://bucket/prefix``, read with ranged GETs.

    boto3 does what it is good at: credentials (its standard chain; ``AWS_ENDPOINT_URL`` or
    ``endpoint_url`` for other stores) and request signing, as presigned URLs refreshed well
    before they expire. The GETs themselves go through one shared urllib3 pool: a boto3
    ``get_object`` costs about 2 ms of Python per request, as much as decoding ten images.
    Throttling (429/503), other 5xx, expired signatures (403) and dropped or short
    connections are retried with exponential back-off; a shard that still fails is a
    :class:`StreamError` naming it. A missing object (404) is final at once.

    Signatures age by ``time.monotonic()`` (seconds since boot, unaffected by clock changes):
    a name never signed counts as unsigned whatever the clock says, so a machine booted
    minutes ago signs its first request like any other.
    """

    PRESIGN_S = 3600
    REFRESH_S = 2400

    def __init__(self, url: str, endpoint_url: str | None = None, retries: int = 5,
                 backoff_s: float = 0.2, connections: int = 32) -> None:
        parsed = urlparse(url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.endpoint_url = endpoint_url
        self.retries, self.backoff_s, self.connections = retries, backoff_s, connections
        self._reset()

    def _reset(self) -> None:
        # clients and pooled sockets must not cross a fork: a DataLoader worker that used its
        # parent's keep-alive connection would read its sibling's responses
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._signed: dict[str, tuple[str, float]] = {}
        self._client = None
        self._http = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k in ("bucket", "prefix", "endpoint_url", "retries", "backoff_s",
                         "connections")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _where(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def _url(self, name: str, fresh: bool = False) -> str:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
                self._http = urllib3.PoolManager(maxsize=self.connections, retries=False)
            signed = self._signed.get(name)  # None: never signed (not "signed at boot")
            now = time.monotonic()
            if fresh or signed is None or now - signed[1] > self.REFRESH_S:
                url = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": self._key(name)},
                    ExpiresIn=self.PRESIGN_S)
                signed = self._signed[name] = (url, now)
            return signed[0]

    def _get(self, name: str, byte_range: tuple[int, int] | None, exact: bool = True) -> bytes:
        last = ""
        fresh = False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
            try:
                response = self._http_get(self._url(name, fresh), headers)
            except (urllib3.exceptions.HTTPError, OSError) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            fresh = False
            status, data = response
            if status in (200, 206):
                want = byte_range[1] - byte_range[0] if byte_range else None
                if want is None or len(data) == want or (not exact and len(data) < want):
                    return data
                last = f"short read: {len(data)} of {want} bytes"
            elif status == 403:
                # presigned URLs carry this machine's wall-clock time: a skewed clock fails too
                fresh, last = True, "HTTP 403 (signature expired, or this machine's clock is off?)"
            elif status == 404:
                raise MissingObject(f"{self._where(name)}: no such object (HTTP 404): the URL "
                                    f"is wrong or the build there is incomplete; "
                                    f"{_fix(f's3://{self.bucket}/{self.prefix}')}")
            elif status == 416 and not exact:
                return b""  # an empty object: no byte is in range
            elif status == 416:
                raise StreamError(f"{self._where(name)}: bytes {byte_range} are past the "
                                  f"object's end (HTTP 416): index.json's sizes or offsets do "
                                  f"not match the object; "
                                  f"{_fix(f's3://{self.bucket}/{self.prefix}')}")
            elif status == 429 or status >= 500:
                last = f"HTTP {status}"
            else:
                raise StreamError(f"{self._where(name)}: HTTP {status}")
        raise StreamError(f"{self._where(name)} unreadable after {self.retries} retries: {last}")

    def _http_get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        response = self._http.request("GET", url, headers=headers, preload_content=True,
                                      timeout=urllib3.Timeout(connect=10, read=60))
        return response.status, response.data

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """One ranged GET (retried)."""
        return self._get(name, (start, end))

    def read_small(self, name: str, limit: int) -> bytes | None:
        """A whole small object (the index, a marker), refused above ``limit`` bytes.

        One GET of at most ``limit + 1`` bytes (a Range: a hostile object cannot fill memory);
        ``None`` when it does not exist.
        """
        try:
            data = self._get(name, (0, limit + 1), exact=False)
        except MissingObject:
            return None
        if len(data) > limit:
            raise BuildIndexError(f"{self._where(name)} is over the limit of {limit:,} bytes: "
                                  f"refused; {_fix(f's3://{self.bucket}/{self.prefix}')}")
        return data

    def shard_sizes(self, names: list[str]) -> dict[str, int | None] | None:
        """Each shard's size (``None``: missing) from one listing per 1,000 objects.

        ``None`` when the credentials may read but not list the bucket: the shards are then
        checked at their first read.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        self._url(INDEX)  # makes the client
        prefix = self._key("")
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            found = {o["Key"][len(prefix):]: int(o["Size"])
                     for page in pages for o in page.get("Contents", ())}
        except (ClientError, BotoCoreError) as err:
            log.debug("cannot list %s (%s): shards are checked at their first read",
                      self._where(""), err)
            return None
        return {name: found.get(name) for name in names}

    def where(self, name: str) -> str:
        """The object's URL."""
        return self._where(name)


class CachedStorage:
    """Whole shards fetched once into a local directory, kept under a byte limit (LRU).

    The cache touches only what it wrote: each shard is stored as ``<sha256>.tar`` (the
    index's digest, validated hex, so no index can name a file elsewhere), written to a temp
    name and checked against that digest before it is renamed in; eviction and repair delete
    only such names, as regular files of ``cache_dir`` itself. A shard larger than the limit is
    not cached (its ranges come from S3), and a fetch reads exactly the size the index gives.
    A cached copy that no longer matches its digest (a damaged disk) is fetched again; a
    fetch that does not match is refused with a :class:`StreamError`.
    """

    _OURS = re.compile(r"[0-9a-f]{64}\.tar")

    def __init__(self, remote: S3Storage, cache_dir: Path, max_bytes: int,
                 shards: dict[str, tuple[str, int]]) -> None:
        self.remote, self.max_bytes = remote, max_bytes
        self.dir = Path(cache_dir).expanduser().resolve()
        self.shards = shards  # name -> (sha256, bytes), from the validated index
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._verified: set[str] = set()

    def _copy(self, digest: str) -> Path | None:
        """The cached copy of ``digest``, if any; a non-regular file there is not the cache's."""
        path = self.dir / f"{digest}.tar"
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise StreamError(f"{path} is not a regular file, so the shard cache did not write "
                              "it: remove it, or set pretrain.stream.cache_dir to a directory "
                              "of its own")
        return path

    def _ensure(self, name: str) -> Path:
        digest, size = self.shards[name]
        with self._lock:
            path = self._copy(digest)
            if path is not None and digest in self._verified:
                os.utime(path)  # LRU by access time
                return path
            if path is not None and sha256_file(path) != digest:
                log.warning("%s no longer matches its sha256: fetching %s again", path,
                            self.remote.where(name))
                path.unlink()
                path = None
            if path is None:
                path = self._fetch(name, digest, size)
            self._verified.add(digest)
            self._evict(keep=path)
            return path

    def _fetch(self, name: str, digest: str, size: int) -> Path:
        data = self.remote.read_range(name, 0, size) if size else b""
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise StreamError(f"{self.remote.where(name)} has sha256 {got}, the index says "
                              f"{digest}: refused (not cached)")
        tmp = self.dir / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / f"{digest}.tar")
        finally:
            tmp.unlink(missing_ok=True)
        return self.dir / f"{digest}.tar"

    def _evict(self, keep: Path) -> None:
        files = [p for p in self.dir.iterdir()
                 if self._OURS.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
        files.sort(key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.max_bytes:
                break
            if p != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
                self._verified.discard(p.stem)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes of a shard, from the verified local copy (from S3 if it is over the limit)."""
        if self.shards[name][1] > self.max_bytes:
            return self.remote.read_range(name, start, end)
        with open(self._ensure(name), "rb") as f:
            return os.pread(f.fileno(), end - start, start)

    def where(self, name: str) -> str:
        """The object's URL (the local copy is a verified copy of it)."""
        return self.remote.where(name)


def _publishing(storage: LocalStorage | S3Storage) -> str | None:
    """Who is replacing the build, from its ``PUBLISHING`` marker (None: no marker)."""
    try:
        data = storage.read_small(PUBLISHING, MAX_MARKER_BYTES)
    except StreamError:
        return "an unknown writer"
    return None if data is None else describe_holder(data)


def read_build_index(storage: LocalStorage | S3Storage, url: str) -> tuple[dict[str, Any], bytes]:
    """The build's validated index and its bytes (see :mod:`geopile.buildindex`).

    No index but a ``PUBLISHING`` marker: the build is being replaced (a push or a shard run
    that removed the old index first), which the error says, naming the writer.
    """
    data = storage.read_small(INDEX, MAX_INDEX_BYTES)
    if data is None:
        writer = _publishing(storage)
        if writer is not None:
            raise BuildIndexError(
                f"{storage.where(INDEX)} is not there: the build is being published by "
                f"{writer}; try again when it has finished (if that run was killed, run it "
                "again: it completes the build)")
        fix = _fix(url)
        raise BuildIndexError(f"{storage.where(INDEX)}: no such file: {url} is not a GeoPile "
                              f"build; check the path, or {fix}")
    return parse_index(data, storage.where(INDEX), _fix(url)), data


def check_shards(storage: LocalStorage | S3Storage, index: dict[str, Any], url: str) -> None:
    """Fail at open, not hours in, when a listed shard is gone or has another size.

    Local: a ``stat`` each. S3: one listing per 1,000 objects, when the credentials may list.
    """
    sizes = storage.shard_sizes([s["name"] for s in index["shards"]])
    for shard in index["shards"] if sizes is not None else ():
        where, size = storage.where(shard["name"]), sizes[shard["name"]]
        if size is None:
            raise StreamError(f"{where}: no such file, though index.json lists it: the build is "
                              f"incomplete; {_fix(url)}")
        if size != shard["bytes"]:
            raise StreamError(f"{where} is {size} bytes, index.json says {shard['bytes']}: the "
                              f"shard was truncated or replaced; {_fix(url)}")


def storage_for(url: str, cache_dir: str | Path | None = None, cache_bytes: int = 0,
                index: dict[str, Any] | None = None) -> Storage:
    """Storage for a build at a local path or ``s3://bucket/prefix``.

    A shard cache (``cache_dir``, ``cache_bytes``) needs the build's validated ``index``.
    """
    if url.startswith("s3://"):
        remote = S3Storage(url, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        if cache_dir and cache_bytes > 0 and index is not None:
            shards = {s["name"]: (s["sha256"], s["bytes"]) for s in index["shards"]}
            return CachedStorage(remote, Path(cache_dir), cache_bytes, shards)
        return remote
    return LocalStorage(Path(url))


def open_storage(url: str, cache_dir: str | Path | None = None,
                 cache_bytes: int = 0) -> tuple[Storage, dict[str, Any]]:
    """Storage for a build and its index, validated by the gate before anything else is read.

    Every shard the index lists is checked for presence and size (:func:`check_shards`).
    """
    bare = storage_for(url)
    index, _ = read_build_index(bare, url)  # type: ignore[arg-type]
    check_shards(bare, index, url)  # type: ignore[arg-type]
    return storage_for(url, cache_dir, cache_bytes, index), index


def read_index(url: str) -> dict[str, Any]:
    """The validated index of the build at a local path or ``s3://bucket/prefix``."""
    return open_storage(url)[1]


# ---------------------------------------------------------------------------------------------
# the plan


def sample_refs(index: dict[str, Any]) -> list[SampleRef]:
    """Every sample of the build with its byte range and checksum, in shard order.

    A sample ends where the next begins; the last one of a shard runs to the end of the file
    (the tar's end blocks are harmless: parsing stops at them). This range is also what the
    writer hashed into the index's ``xxh3`` (:func:`geopile.shards.write_build`), so the reader
    checks exactly the bytes it reads.
    """
    refs = []
    for s, shard in enumerate(index["shards"]):
        ends = [*shard["offsets"][1:], shard["bytes"]]
        hashes = shard.get("xxh3") or [None] * len(shard["keys"])
        for key, start, end, digest in zip(shard["keys"], shard["offsets"], ends, hashes,
                                           strict=True):
            refs.append(SampleRef(s, start, end, key, digest))
    return refs


def blocks_of(refs: list[SampleRef], block: int) -> np.ndarray:
    """Block id per sample: runs of ``block`` consecutive samples of one shard."""
    ids = np.empty(len(refs), np.int64)
    current, start = -1, 0
    for i, ref in enumerate(refs):
        if i == 0 or ref.shard != refs[start].shard or i - start == block:
            current, start = current + 1, i
        ids[i] = current
    return ids


def epoch_order(block_ids: np.ndarray, config: StreamConfig, epoch: int) -> np.ndarray:
    """Sample indices for an epoch: blocks permuted, then samples permuted within windows."""
    rng = np.random.default_rng([config.seed, epoch])
    n_blocks = int(block_ids[-1]) + 1 if len(block_ids) else 0
    bounds = np.searchsorted(block_ids, np.arange(n_blocks + 1))
    perm = rng.permutation(n_blocks)
    out = []
    for w in range(0, n_blocks, config.window):
        pooled = np.concatenate([np.arange(bounds[b], bounds[b + 1])
                                 for b in perm[w:w + config.window]])
        out.append(pooled[rng.permutation(len(pooled))])
    return np.concatenate(out) if out else np.empty(0, np.int64)


Spans = tuple[tuple[int, int], ...]  # [start, end) runs of positions in an epoch's order


@dataclass(frozen=True)
class Leg:
    """What an epoch still owes, as runs of positions in its order (the whole order at first).

    A leg is dealt out for one layout (world size, workers); a resume with another layout
    starts a new leg from the positions the old one had not delivered (:func:`undelivered`).
    This is the whole of the elastic resume: the order never depends on the layout, so the
    positions delivered, and therefore those owed, are known from the per-worker counts alone.
    """

    epoch: int
    spans: Spans

    @classmethod
    def whole(cls, epoch: int, samples: int) -> Leg:
        """A fresh epoch of ``samples`` samples."""
        return cls(epoch, ((0, samples),) if samples else ())

    def positions(self) -> np.ndarray:
        """The owed positions, in order."""
        if not self.spans:
            return np.empty(0, np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.spans])


def spans_of(positions: np.ndarray) -> Spans:
    """Runs of consecutive positions (the compact form a checkpoint stores)."""
    if not len(positions):
        return ()
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(positions)]])
    return tuple((int(positions[a]), int(positions[b - 1]) + 1)
                 for a, b in zip(starts, ends, strict=True))


def rank_batches(owed: int, config: StreamConfig, world: int) -> int:
    """Batches per rank for ``owed`` samples: ranks get equal counts, whatever the workers.

    ``drop`` leaves out fewer than ``world x batch_size`` samples (the last of the order);
    ``pad`` wraps round to the leg's first samples instead.
    """
    unit = world * config.batch_size
    return owed // unit if config.remainder == "drop" else -(-owed // unit)


def rank_part(positions: np.ndarray, config: StreamConfig, rank: int, world: int) -> np.ndarray:
    """The rank's contiguous share of a leg's positions (whole blocks: few reads)."""
    per_rank = rank_batches(len(positions), config, world) * config.batch_size
    dealt = np.resize(positions, per_rank * world) if len(positions) else positions
    return dealt[rank * per_rank:(rank + 1) * per_rank]


def worker_batches(batches: int, worker: int, workers: int) -> range:
    """The batches (of a rank's share) that ``worker`` delivers: a contiguous run of them.

    Runs differ by at most one batch; torch's DataLoader takes the workers' batches in turn, and
    the trainer counts them per worker, so what was delivered is known for any interleaving.
    """
    k = max(1, workers)
    return range(worker * batches // k, (worker + 1) * batches // k)


def worker_part(positions: np.ndarray, config: StreamConfig, rank: int, world: int,
                worker: int, workers: int) -> np.ndarray:
    """The positions ``worker`` of ``rank`` delivers in a leg, in its delivery order."""
    mine = rank_part(positions, config, rank, world)
    run = worker_batches(len(mine) // config.batch_size, worker, workers)
    return mine[run.start * config.batch_size:run.stop * config.batch_size]


def undelivered(leg: Leg, config: StreamConfig, world: int, workers: int,
                taken: list[int]) -> Leg:
    """The rest of ``leg`` after every rank took ``taken[k]`` batches from worker ``k``.

    All ranks deal identical runs to their workers, so one rank's counts are every rank's.
    What the leg left out (the remainder under ``drop``) is owed too; padding repeats are not.
    """
    positions = leg.positions()
    delivered = []
    for rank in range(world):
        for worker, count in enumerate(taken):
            part = worker_part(positions, config, rank, world, worker, workers)
            delivered.append(part[:count * config.batch_size])
    done = np.concatenate(delivered) if delivered else np.empty(0, np.int64)
    return Leg(leg.epoch, spans_of(positions[~np.isin(positions, done)]))


# ---------------------------------------------------------------------------------------------
# reading


def parse_members(data: bytes | memoryview, want: tuple[str, ...] | None = None,
                  trusted: bool = False) -> dict[str, bytes | memoryview]:
    """The members of one sample from its tar bytes: ``{extension: payload}``.

    Parsed by hand: ``tarfile`` costs about 0.4 ms a sample to set up, as much as decoding
    the JPEG. Only what GeoPile's writer produces is accepted (USTAR regular files). ``want``
    stops at the first member with one of these extensions, and returns views into ``data``
    (no copy); otherwise payloads are bytes. Each header's checksum is verified unless
    ``trusted`` (the sample's bytes already matched their xxh3, which covers the headers).
    """
    members: dict[str, bytes | memoryview] = {}
    pos, end = 0, len(data)
    while pos + TAR_BLOCK <= end:
        header = bytes(data[pos:pos + TAR_BLOCK])
        if header[0] == 0 and header.count(0) == TAR_BLOCK:
            break  # the archive's end blocks
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            if not trusted:
                stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
        except ValueError as err:
            raise tarfile.ReadError(f"unparsable header at byte {pos}") from err
        if not trusted and stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad header checksum at byte {pos}")
        try:
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
        except UnicodeDecodeError as err:
            raise tarfile.ReadError(f"member name at byte {pos} is not UTF-8") from err
        if header[156:157] not in (b"0", b"\0"):
            raise tarfile.ReadError(f"member {name!r} is not a regular file")
        body = pos + TAR_BLOCK
        if size < 0 or body + size > end:
            raise tarfile.ReadError(f"member {name!r} is truncated")
        base = (f"{prefix}/{name}" if prefix else name).rsplit("/", 1)[-1]
        if "." not in base:
            raise tarfile.ReadError(f"member {name!r} has no extension")
        ext = base.split(".", 1)[1]
        payload = data[body:body + size]
        members[ext] = payload if want is not None else bytes(payload)
        if want is not None and ext in want:
            return members
        pos = body + -(-size // TAR_BLOCK) * TAR_BLOCK
    if not members:
        raise tarfile.ReadError("no members")
    return members


@dataclass
class RawSample:
    """One sample as read: its place in the build and the epoch, its key and its members."""

    index: int  # into the build's samples: with the epoch, it seeds the augmentation
    epoch: int
    key: str
    members: dict[str, bytes | memoryview]  # none when unreadable or failing its xxh3
    error: str = ""  # why ``members`` is empty


class ShardStream:
    """One rank's view of a build: its plan per epoch, and the samples of one worker."""

    def __init__(self, url: str, config: StreamConfig, *, rank: int = 0, world: int = 1,
                 cache_dir: str | Path | None = None, cache_bytes: int = 0) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.url, self.config, self.rank, self.world = url, config, rank, world
        self.cache_dir, self.cache_bytes = cache_dir, cache_bytes
        self.storage, self.index = open_storage(url, cache_dir, cache_bytes)
        self.refs = sample_refs(self.index)
        self.block_ids = blocks_of(self.refs, config.block)
        shard_of = np.fromiter((r.shard for r in self.refs), np.int64, len(self.refs))
        self.shard_bounds = np.searchsorted(shard_of, np.arange(len(self.index["shards"]) + 1))
        self.bad: dict[int, int] = {}  # shard -> samples failing their xxh3 (once audited)
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's order
        if config.verify and any(r.xxh3 is None for r in self.refs) \
                and url not in _warned_unverified:
            _warned_unverified.add(url)
            log.warning("%s has no per-sample checksums (written before they existed): its "
                        "samples stream unverified; %s to verify them",
                        self.storage.where(INDEX), _fix(url))

    def __getstate__(self) -> dict[str, Any]:
        # storage objects hold clients and locks: rebuild them in each worker process
        state = self.__dict__.copy()
        state.pop("storage")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # the index travels validated: a worker does not re-read it
        self.storage = storage_for(self.url, self.cache_dir, self.cache_bytes, self.index)

    def batches_per_epoch(self) -> int:
        """Batches this rank delivers in a whole epoch (the same for any number of workers)."""
        return rank_batches(len(self.refs), self.config, self.world)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of the build's samples (the same on every rank and worker)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.block_ids, self.config, epoch))
        return self._order[1]

    def worker_indices(self, leg: Leg, worker: int = 0, workers: int = 1) -> np.ndarray:
        """The samples (indices into ``refs``) that ``worker`` of this rank delivers in ``leg``."""
        part = worker_part(leg.positions(), self.config, self.rank, self.world, worker, workers)
        return self.order(leg.epoch)[part]

    def samples(self, epoch: int, worker: int = 0, workers: int = 1,
                leg: Leg | None = None) -> Iterator[RawSample]:
        """The worker's samples of an epoch (or of what ``leg`` still owes of it)."""
        leg = leg or Leg.whole(epoch, len(self.refs))
        return self.read(self.worker_indices(leg, worker, workers), leg.epoch)

    def _read_group(self, indices: list[int]) -> list[memoryview]:
        """One ranged read over samples of one block; split into per-sample bytes."""
        refs = [self.refs[i] for i in indices]
        name = self.index["shards"][refs[0].shard]["name"]
        lo, hi = min(r.start for r in refs), max(r.end for r in refs)
        data = memoryview(self.storage.read_range(name, lo, hi))  # slices, not copies
        return [data[r.start - lo:r.end - lo] for r in refs]

    def _audit(self, shard: int) -> None:
        """Count the shard's samples that fail their xxh3; too many is a :class:`StreamError`.

        Runs once per shard and process, at the first bad sample met, over the whole shard: the
        verdict is then the same whichever rank, worker or epoch meets the damage first.
        """
        if shard not in self.bad:
            first, stop = int(self.shard_bounds[shard]), int(self.shard_bounds[shard + 1])
            bad, i = 0, first
            while i < stop:
                j = i + 1
                while j < stop and self.refs[j].end - self.refs[i].start <= AUDIT_BYTES:
                    j += 1
                for ref, blob in zip(self.refs[i:j], self._read_group(list(range(i, j))),
                                     strict=True):
                    bad += int(xxhash.xxh3_64_hexdigest(blob) != ref.xxh3)
                i = j
            self.bad[shard] = bad
        meta = self.index["shards"][shard]
        if self.bad[shard] > self.config.max_bad_per_shard:
            raise StreamError(
                f"{self.storage.where(meta['name'])}: {self.bad[shard]} of {len(meta['keys'])} "
                f"samples fail their xxh3 checksum, more than max_bad_per_shard="
                f"{self.config.max_bad_per_shard}: the shard is damaged; {_fix(self.url)}")

    def _unpack(self, i: int, blob: memoryview,
                want: tuple[str, ...] | None) -> tuple[dict[str, bytes | memoryview], str]:
        """A sample's members, or none and why: its bytes changed, or do not parse."""
        ref = self.refs[i]
        checked = self.config.verify and ref.xxh3 is not None
        if checked:
            digest = xxhash.xxh3_64_hexdigest(blob)
            if digest != ref.xxh3:
                self._audit(ref.shard)  # raises when the shard has too many
                return {}, (f"its bytes have xxh3 {digest}, index.json says {ref.xxh3} "
                            f"(changed since the build)")
        try:
            return parse_members(blob, want, trusted=checked), ""
        except (tarfile.TarError, IndexError, EOFError, KeyError) as err:
            return {}, f"unparsable tar member ({err})"

    def read(self, indices: np.ndarray, epoch: int,
             want: tuple[str, ...] | None = None) -> Iterator[RawSample]:
        """The samples ``indices`` in that order (``want``: only up to these members).

        They are read a chunk (``window x block`` samples) at a time: the samples of a chunk
        that share a block come in one ranged read, and the next chunk's reads are in flight
        while this one is consumed. A sample that fails its xxh3 or does not parse comes with
        no members and an ``error`` (the caller substitutes it); a shard with more than
        ``max_bad_per_shard`` failing samples raises :class:`StreamError`.
        """
        size = self.config.window * self.config.block
        chunks = [indices[i:i + size] for i in range(0, len(indices), size)]
        # local files come from the page cache: threads would only add GIL hand-offs
        threads = 0 if isinstance(self.storage, LocalStorage) else self.config.read_ahead
        with ThreadPoolExecutor(max(1, threads)) as pool:

            def submit(chunk: np.ndarray) -> dict[int, tuple[Future, list[int]]]:
                groups: dict[int, list[int]] = {}
                for i in chunk.tolist():
                    groups.setdefault(int(self.block_ids[i]), []).append(i)
                reads = {}
                for members in groups.values():
                    if threads:
                        future = pool.submit(self._read_group, members)
                    else:
                        future = Future()
                        future.set_result(self._read_group(members))
                    reads.update({i: (future, members) for i in members})
                return reads

            ahead = submit(chunks[0]) if chunks else {}
            for c, chunk in enumerate(chunks):
                current, ahead = ahead, (submit(chunks[c + 1]) if c + 1 < len(chunks) else {})
                blobs: dict[int, bytes] = {}
                for i in chunk.tolist():
                    if i not in blobs:
                        future, members = current[i]
                        blobs.update(zip(members, future.result(), strict=True))  # StreamError
                    parsed, error = self._unpack(i, blobs.pop(i), want)
                    if error:
                        shard = self.index["shards"][self.refs[i].shard]["name"]
                        error = f"{self.storage.where(shard)}: {error}"
                    yield RawSample(i, epoch, self.refs[i].key, parsed, error)
