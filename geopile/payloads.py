"""Where image payloads live: a directory or ``s3://bucket/prefix``, the same for every process.

A record's ``path`` (``raw/<source>/...``) names its image relative to this store. Ingest's
workers write the payloads they make here themselves and read the archive sources' images from
here; curate and shard tasks read them from here. So on a cluster whose nodes share nothing but
object storage, no payload passes through the driver (``paths.payloads: s3://...``); by default
the store is the data directory itself and nothing changes.

A record's path is input like any other (a table can be edited, a bucket written by anyone): a
name that is absolute, climbs with ``..`` or carries a backslash or NUL is refused before it
touches a disk or a key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse

from tqdm import tqdm

from geopile.atomic import write_bytes
from geopile.shardstore import S3Store

# no image GeoPile stores comes near this; a bigger object is not one of its payloads
MAX_PAYLOAD_BYTES = 1 << 30
UPLOAD_THREADS = 16


class PayloadError(OSError):
    """A payload that is not where its record says, or a name that is not a payload's."""

    network = False  # not the network's fault: ingest counts it as the input's


def checked_name(name: str) -> str:
    """``name`` if it is a plain relative POSIX path inside the store; else PayloadError."""
    text = str(name)
    parts = PurePosixPath(text).parts
    if (not text or "\\" in text or "\x00" in text or text.startswith("/")
            or any(p in ("..", ".") for p in parts) or text != "/".join(parts)):
        raise PayloadError(f"{text!r} is not a payload name: records name their images by a "
                           "relative path inside the payload store (raw/SOURCE/...), without "
                           "'..', '.', a leading '/', a backslash or NUL")
    return text


class PayloadStore(Protocol):
    """What ingest, curate and shard need of the place payloads live."""

    def read(self, name: str) -> bytes:
        """The payload's bytes (:class:`PayloadError` when it is missing)."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``: whole or not at all."""
        ...

    def stage(self, name: str, local: Path) -> bool:
        """Make ``name`` hold ``local``'s bytes (sent only when it does not); whether it sent."""
        ...

    def prune(self, prefix: str, keep: set[str]) -> int:
        """Delete what lies under ``prefix`` and is not in ``keep``; how many were deleted."""
        ...


@dataclass(frozen=True)
class LocalPayloads:
    """Payloads in a directory (the default: the data directory itself)."""

    root: Path

    def __post_init__(self) -> None:
        # absolute: a task's process (a Ray worker) need not share the driver's cwd
        object.__setattr__(self, "root", Path(self.root).absolute())

    def __str__(self) -> str:
        return str(self.root)

    def path(self, name: str) -> Path:
        """The file holding ``name``."""
        return self.root / checked_name(name)

    def read(self, name: str) -> bytes:
        """The bytes, whole; :class:`PayloadError` when the record's file is missing."""
        path = self.path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError as err:
            raise PayloadError(f"{path}: no such payload (its record names it; was the "
                               "source ingested with this paths.payloads?)") from err

    def write(self, name: str, data: bytes) -> None:
        """Whole under ``name`` or nothing (a temp name, then a rename)."""
        write_bytes(self.path(name), data)

    def stage(self, name: str, local: Path) -> bool:
        """Copy ``local`` in unless the same bytes are there already; whether it copied."""
        target = self.path(name)  # (the data directory itself: stage_inputs sends nothing)
        if target.is_file() and target.stat().st_size == local.stat().st_size \
                and target.read_bytes() == local.read_bytes():
            return False
        write_bytes(target, local.read_bytes())
        return True

    def prune(self, prefix: str, keep: set[str]) -> int:
        """Delete the files under ``prefix`` not in ``keep``, and folders left empty."""
        root = self.root / checked_name(prefix)
        deleted = 0
        for path in sorted(root.rglob("*"), reverse=True):
            if path.is_file() and path.relative_to(self.root).as_posix() not in keep:
                path.unlink()
                deleted += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        return deleted


@dataclass(frozen=True)
class S3Payloads:
    """Payloads as objects under an S3 prefix; every PUT carries its SHA-256.

    Picklable: a task gets the URL (``objects`` pickles as its URL and endpoint) and makes its
    own client (:func:`geopile.s3.s3_client`, from the node's own credentials and
    ``AWS_ENDPOINT_URL``).
    """

    objects: S3Store  # the prefix's keys, checksummed PUTs and their check (shared with shards)

    def __str__(self) -> str:
        return str(self.objects)

    def read(self, name: str) -> bytes:
        """The object's bytes; :class:`PayloadError` when it is missing or not an image's size."""
        from botocore.exceptions import ClientError

        store = self.objects
        key = store.key(checked_name(name))
        try:
            got = store.client().get_object(Bucket=store.bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise PayloadError(f"{store.where(name)}: no such payload (its record names "
                                   "it; was the source ingested with this paths.payloads?)"
                                   ) from err
            raise
        size = got.get("ContentLength", 0)
        if size > MAX_PAYLOAD_BYTES:
            got["Body"].close()
            raise PayloadError(f"{store.where(name)} is {size:,} bytes, more than any image "
                               f"payload ({MAX_PAYLOAD_BYTES:,}): not read")
        return got["Body"].read()

    def write(self, name: str, data: bytes) -> None:
        """One PUT with the bytes' SHA-256, which S3 checks on receipt."""
        self.objects.put_bytes(checked_name(name), data)

    def stage(self, name: str, local: Path) -> bool:
        """Upload ``local`` unless S3 holds these bytes (its own SHA-256, or read back)."""
        checked_name(name)
        return self.objects.put_file(local, name, keep=True)  # skipped when S3 holds the bytes

    def prune(self, prefix: str, keep: set[str]) -> int:
        """Delete the objects under ``prefix`` not in ``keep`` (1,000 a request)."""
        store = self.objects
        start = store.key(checked_name(prefix).rstrip("/") + "/")
        client = store.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket,
                                                                 Prefix=start)
        root = store.key("")
        doomed = [o["Key"] for page in pages for o in page.get("Contents", ())
                  if o["Key"][len(root):] not in keep]
        for at in range(0, len(doomed), 1000):  # DeleteObjects takes 1,000 keys at most
            client.delete_objects(Bucket=store.bucket, Delete={
                "Objects": [{"Key": k} for k in doomed[at:at + 1000]], "Quiet": True})
        return len(doomed)


def open_payloads(target: str | Path | None, data_dir: Path) -> PayloadStore:
    """The store ``paths.payloads`` names: an S3 prefix, a directory, or (None) the data dir."""
    if target is None:
        return LocalPayloads(Path(data_dir))
    text = str(target)
    if text.startswith("s3://"):
        if not urlparse(text).netloc:
            raise ValueError(f"paths.payloads needs s3://bucket/prefix, got {text!r}")
        return S3Payloads(S3Store(text.rstrip("/"), os.environ.get("AWS_ENDPOINT_URL")))
    if "://" in text:
        raise ValueError(f"paths.payloads is a directory or s3://bucket/prefix, not {text!r}")
    return LocalPayloads(Path(text))


def as_payloads(where: PayloadStore | Path | str) -> PayloadStore:
    """A store as is; a directory (the old way of naming the data directory) as its store."""
    return LocalPayloads(Path(where)) if isinstance(where, str | Path) else where


def stage_inputs(store: PayloadStore, data_dir: Path, names: Iterable[str], *,
                 progress: bool = False, desc: str = "stage") -> int:
    """Put the files a source installed under ``data_dir`` into ``store``; how many were sent.

    An archive's images, a user's folder: workers with no view of this disk read them there.
    This is the one place payload bytes leave the driver, which downloaded the archive. A name
    the store holds with the same bytes is not sent again (S3's own SHA-256; a file compare
    here).
    """
    names = list(names)
    if isinstance(store, LocalPayloads) and store.root.resolve() == Path(data_dir).resolve():
        return 0
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        sent = pool.map(lambda n: store.stage(n, Path(data_dir) / checked_name(n)), names)
        return sum(tqdm(sent, total=len(names), desc=desc, unit="file", disable=not progress))

