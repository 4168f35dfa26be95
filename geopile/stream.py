"""Stream a GeoPile build from its ``index.json``: shuffled, evenly split, resumable, local or S3.

The epoch order is planned from the index alone, before any byte is read:

1. the build's samples are cut into *blocks* of ``block`` consecutive samples of one shard (one
   ranged read each), and the blocks are permuted with ``(seed, epoch)``;
2. consecutive runs of ``window`` blocks are pooled and their samples permuted, so any stretch
   of the stream mixes samples from ``window`` blocks drawn from all over the build;
3. the order is cut (``drop``) or wrapped (``pad``) to a multiple of
   ``ranks x workers x batch_size`` and rank ``r`` takes the ``r``-th equal contiguous part;
4. inside a rank, each worker reads its own contiguous part (whole blocks, few reads) and
   torch's DataLoader takes the workers' batches in turn, so the trainer sees a fixed
   sequence (:func:`delivery`); ``consumed`` (samples the trainer has taken) and the worker
   layout are all a resume needs.

With ``drop`` no sample appears twice in an epoch across ranks; with ``pad`` every sample
appears at least once and a few twice. A resume with another number of workers continues with
the very next samples of the plan; the rest of that epoch is then split across the new workers
in whole batches, as evenly as they go.

Written by hand because none of webdataset, MosaicML streaming or litdata does all of this over
plain WebDataset tars (FACTS.md section 5).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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

log = logging.getLogger(__name__)
INDEX = "index.json"
TAR_BLOCK = 512


class StreamError(RuntimeError):
    """A shard could not be read (after retries), or failed its checksum."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: its shard, its byte range there, its key."""

    shard: int
    start: int
    end: int
    key: str


@dataclass(frozen=True)
class StreamConfig:
    """How to cut and shuffle an epoch."""

    seed: int = 0
    block: int = 16  # samples per ranged read
    window: int = 64  # blocks pooled and shuffled together
    batch_size: int = 1
    remainder: str = "drop"  # or "pad"
    read_ahead: int = 4  # block reads in flight per worker

    def __post_init__(self) -> None:
        if self.remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {self.remainder!r}")
        if min(self.block, self.window, self.batch_size) < 1:
            raise ValueError("block, window and batch_size must be at least 1")


# ---------------------------------------------------------------------------------------------
# storage: local files or S3 objects, read by byte range


class Storage(Protocol):
    """Byte-range access to the shards of one build."""

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (exclusive) of shard ``name``."""

    def read_text(self, name: str) -> str:
        """A whole small object (the index)."""


class LocalStorage:
    """Shards in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` of a shard file."""
        with open(self.root / name, "rb") as f:
            return os.pread(f.fileno(), end - start, start)

    def read_text(self, name: str) -> str:
        """A whole file."""
        return (self.root / name).read_text()


class S3Storage:
    """Shards under ``s3://bucket/prefix``, read with ranged GETs.

    boto3 does what it is good at: credentials (its standard chain; ``AWS_ENDPOINT_URL`` or
    ``endpoint_url`` for other stores) and request signing, as presigned URLs refreshed well
    before they expire. The GETs themselves go through one shared urllib3 pool: a boto3
    ``get_object`` costs about 2 ms of Python per request, as much as decoding ten images.
    Throttling (429/503), other 5xx, expired signatures (403) and dropped or short
    connections are retried with exponential back-off; a shard that still fails is a
    :class:`StreamError` naming it.
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
            url, when = self._signed.get(name, ("", 0.0))
            if fresh or time.monotonic() - when > self.REFRESH_S:
                url = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": self._key(name)},
                    ExpiresIn=self.PRESIGN_S)
                self._signed[name] = (url, time.monotonic())
            return url

    def _get(self, name: str, byte_range: tuple[int, int] | None) -> bytes:
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
                if want is None or len(data) == want:
                    return data
                last = f"short read: {len(data)} of {want} bytes"
            elif status == 403:
                fresh, last = True, "403 (signature expired?)"
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

    def read_object(self, name: str) -> bytes:
        """A whole object (retried)."""
        return self._get(name, None)

    def read_text(self, name: str) -> str:
        """A whole small object."""
        return self.read_object(name).decode()


class CachedStorage:
    """Whole shards fetched once into a local directory, kept under a byte limit (LRU).

    Every fetched shard is checked against the index's sha256 before it is used; one that does
    not match is deleted and refused with a :class:`StreamError`.
    """

    def __init__(self, remote: S3Storage, cache_dir: Path, max_bytes: int,
                 digests: dict[str, str]) -> None:
        self.remote, self.dir, self.max_bytes = remote, Path(cache_dir), max_bytes
        self.digests = digests
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._verified: set[str] = set()

    def _ensure(self, name: str) -> Path:
        path = self.dir / name
        with self._lock:
            if name in self._verified and path.exists():
                os.utime(path)  # LRU by access time
                return path
            if not path.exists():
                data = self.remote.read_object(name)
                tmp = self.dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != self.digests[name]:
                path.unlink(missing_ok=True)
                raise StreamError(f"cached shard {name} has sha256 {digest}, the index says "
                                  f"{self.digests[name]}: refused")
            self._verified.add(name)
            self._evict(keep=name)
            return path

    def _evict(self, keep: str) -> None:
        files = sorted((p for p in self.dir.glob("*.tar")), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.max_bytes:
                break
            if p.name != keep:
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
                self._verified.discard(p.name)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes of a shard, from the verified local copy."""
        with open(self._ensure(name), "rb") as f:
            return os.pread(f.fileno(), end - start, start)

    def read_text(self, name: str) -> str:
        """Small objects are not cached."""
        return self.remote.read_text(name)


def open_storage(url: str, cache_dir: str | Path | None = None,
                 cache_bytes: int = 0) -> tuple[Storage, dict[str, Any]]:
    """Storage for a build at a local path or ``s3://bucket/prefix``, and its parsed index."""
    if url.startswith("s3://"):
        remote = S3Storage(url, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        index = json.loads(remote.read_text(INDEX))
        if cache_dir and cache_bytes > 0:
            digests = {s["name"]: s["sha256"] for s in index["shards"]}
            return CachedStorage(remote, Path(cache_dir), cache_bytes, digests), index
        return remote, index
    local = LocalStorage(Path(url))
    return local, json.loads(local.read_text(INDEX))


# ---------------------------------------------------------------------------------------------
# the plan


def sample_refs(index: dict[str, Any]) -> list[SampleRef]:
    """Every sample of the build with its byte range, in shard order.

    A sample ends where the next begins; the last one of a shard runs to the end of the file
    (the tar's end blocks are harmless: parsing stops at them).
    """
    refs = []
    for s, shard in enumerate(index["shards"]):
        ends = [*shard["offsets"][1:], shard["bytes"]]
        for key, start, end in zip(shard["keys"], shard["offsets"], ends, strict=True):
            refs.append(SampleRef(s, start, end, key))
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


def rank_length(n: int, config: StreamConfig, world: int, workers: int) -> int:
    """Samples per rank in an epoch of ``n``: cut or wrapped to whole worker batches."""
    unit = world * max(1, workers) * config.batch_size
    units = n // unit if config.remainder == "drop" else -(-n // unit)
    return units * unit // world


def rank_plan(order: np.ndarray, config: StreamConfig, rank: int, world: int,
              workers: int) -> np.ndarray:
    """The rank's equal part of the epoch order (see :func:`rank_length`)."""
    per_rank = rank_length(len(order), config, world, workers)
    plan = np.resize(order, per_rank * world) if len(order) else order
    return plan[rank * per_rank:(rank + 1) * per_rank]


def delivery(length: int, batch_size: int, workers: int) -> np.ndarray:
    """Plan positions in the order the trainer receives them.

    Each of ``workers`` workers delivers its contiguous part of the plan, and the loader takes
    their batches in turn.
    """
    w = max(1, workers)
    part = length // w
    k = np.arange(length // batch_size)
    starts = (k % w) * part + (k // w) * batch_size
    return (starts[:, None] + np.arange(batch_size)).ravel()


def worker_positions(length: int, config: StreamConfig, worker: int, workers: int,
                     consumed: int = 0, layout: int | None = None) -> np.ndarray:
    """Plan positions that ``worker`` of ``workers`` delivers.

    They continue an epoch laid out for ``layout`` workers (default: ``workers``) after the
    trainer consumed ``consumed`` samples of it.
    """
    rest = delivery(length, config.batch_size, layout or workers)[consumed:]
    batch = np.arange(len(rest)) // config.batch_size
    return rest[batch % max(1, workers) == worker]


# ---------------------------------------------------------------------------------------------
# reading


def parse_members(data: bytes) -> dict[str, bytes]:
    """The members of one sample from its tar bytes: ``{extension: payload}``.

    Parsed by hand: ``tarfile`` costs about 0.4 ms a sample to set up, as much as decoding
    the JPEG. Only what GeoPile's writer produces is accepted (USTAR regular files); every
    header's checksum is verified, so a damaged sample is refused, not misread.
    """
    members: dict[str, bytes] = {}
    pos, end = 0, len(data)
    while pos + TAR_BLOCK <= end:
        header = data[pos:pos + TAR_BLOCK]
        if header.count(0) == TAR_BLOCK:
            break  # the archive's end blocks
        try:
            stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError as err:
            raise tarfile.ReadError(f"unparsable header at byte {pos}") from err
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad header checksum at byte {pos}")
        name = header[:100].split(b"\0", 1)[0].decode()
        prefix = header[345:500].split(b"\0", 1)[0].decode()
        if header[156:157] not in (b"0", b"\0"):
            raise tarfile.ReadError(f"member {name!r} is not a regular file")
        body = pos + TAR_BLOCK
        if body + size > end:
            raise tarfile.ReadError(f"member {name!r} is truncated")
        full = f"{prefix}/{name}" if prefix else name
        members[full.rsplit("/", 1)[-1].split(".", 1)[1]] = data[body:body + size]
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
    members: dict[str, bytes]  # empty when the sample could not be read


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

    def __getstate__(self) -> dict[str, Any]:
        # storage objects hold clients and locks: rebuild them in each worker process
        state = self.__dict__.copy()
        state.pop("storage")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.storage, _ = open_storage(self.url, self.cache_dir, self.cache_bytes)

    def epoch_length(self, workers: int) -> int:
        """Samples this rank delivers in one epoch with ``workers`` workers."""
        return rank_length(len(self.refs), self.config, self.world, workers)

    def plan(self, epoch: int, workers: int) -> np.ndarray:
        """The rank's plan for an epoch: indices into ``refs``."""
        order = epoch_order(self.block_ids, self.config, epoch)
        return rank_plan(order, self.config, self.rank, self.world, workers)

    def _read_group(self, indices: list[int]) -> list[bytes]:
        """One ranged read over samples of one block; split into per-sample bytes."""
        refs = [self.refs[i] for i in indices]
        name = self.index["shards"][refs[0].shard]["name"]
        lo, hi = min(r.start for r in refs), max(r.end for r in refs)
        data = self.storage.read_range(name, lo, hi)
        return [data[r.start - lo:r.end - lo] for r in refs]

    def samples(self, epoch: int, worker: int = 0, workers: int = 1, consumed: int = 0,
                layout: int | None = None) -> Iterator[RawSample]:
        """The worker's samples of the epoch, after ``consumed`` (see :func:`worker_positions`).

        The positions are read a chunk (``window x block`` samples) at a time: the samples of a
        chunk that share a block come in one ranged read, and the next chunk's reads are in
        flight while this one is consumed.
        """
        plan = self.plan(epoch, layout or workers)
        positions = worker_positions(len(plan), self.config, worker, workers, consumed, layout)
        wanted = plan[positions]
        size = self.config.window * self.config.block
        chunks = [wanted[i:i + size] for i in range(0, len(wanted), size)]
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
                    try:
                        parsed = parse_members(blobs.pop(i))
                    except (tarfile.TarError, IndexError, EOFError, KeyError) as err:
                        log.warning("unreadable sample %s in %s: %s", self.refs[i].key,
                                    self.index["shards"][self.refs[i].shard]["name"], err)
                        parsed = {}
                    yield RawSample(i, epoch, self.refs[i].key, parsed)
