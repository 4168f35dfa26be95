"""Where a build's bytes come from: a local directory, S3 by ranged GETs, or a verified cache.

The index is read through the gate (:mod:`geopile.stream.index`) before any shard is; then
every listed shard is checked for presence and size (:func:`check_shards`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import urllib3

from geopile.s3 import s3_client
from geopile.stream.index import (
    INDEX,
    MAX_INDEX_BYTES,
    PUBLISHING,
    BuildIndexError,
    StreamError,
    parse_index,
    sha256_file,
)
from geopile.stream.index import fix_hint as _fix
from geopile.writelock import describe_holder

log = logging.getLogger(__name__)
MAX_MARKER_BYTES = 64 << 10  # a PUBLISHING marker is a line of JSON


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
                self._client = s3_client(self.endpoint_url)
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
    """The build's validated index and its bytes (see :mod:`geopile.stream.index`).

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
