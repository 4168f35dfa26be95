"""Where a build's shards land: a directory (local or a shared mount) or an S3 prefix.

The shard writers (the local engine and the Ray tasks) write each tar to a temporary file and
hand it to the store; the index goes last, after the old one is removed first, so a reader never
finds an index whose shards are not all there, whichever store it is. Stores are plain picklable
values (a path or a URL): a Ray task gets its own S3 client, with credentials from boto3's
standard chain on the node (instance role, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from geopile.urls import strip_secrets

SHARD_GLOB = "shard-*.tar"


@dataclass(frozen=True)
class LocalStore:
    """A directory: temp files are written beside their final name and renamed."""

    root: Path

    def __str__(self) -> str:
        return str(self.root)

    def prepare(self) -> None:
        """Create the directory, drop stray temp files and the old index."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stray in self.root.glob("*.tmp"):
            stray.unlink()

    def temp_path(self, name: str) -> Path:
        """Where ``name`` is written before :meth:`put_file` (beside its final name)."""
        return self.root / f"{name}.tmp"

    def put_file(self, tmp: Path, name: str, sha256: str | None = None) -> None:
        """Move a finished temp file (from :meth:`temp_path`) to its final name."""
        os.replace(tmp, self.root / name)

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write a small file (index, card) atomically."""
        tmp = self.temp_path(name)
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)

    def delete(self, name: str) -> None:
        """Remove ``name`` if it is there."""
        (self.root / name).unlink(missing_ok=True)

    def shard_names(self) -> list[str]:
        """The shard tars present."""
        return sorted(p.name for p in self.root.glob(SHARD_GLOB))

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class S3Store:
    """``s3://bucket/prefix``: temp files in a local scratch directory, uploaded then deleted.

    Each object carries its sha256 as metadata (as ``geopile push`` does), so a rerun after a
    kill skips the shards already uploaded with the same bytes.
    """

    url: str
    endpoint_url: str | None = None
    _scratch: list = field(default_factory=list, compare=False, repr=False)

    def __str__(self) -> str:
        return strip_secrets(self.url)

    def __getstate__(self) -> dict[str, Any]:  # the scratch dir and client stay on this node
        return {"url": self.url, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "url", state["url"])
        object.__setattr__(self, "endpoint_url", state["endpoint_url"])
        object.__setattr__(self, "_scratch", [])

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return urlparse(self.url).netloc

    def key(self, name: str) -> str:
        """The object key of ``name`` under the prefix."""
        prefix = urlparse(self.url).path.strip("/")
        return f"{prefix}/{name}" if prefix else name

    def _client(self) -> Any:
        import boto3

        if not self._scratch or self._scratch[0] != os.getpid():  # a client never crosses a fork
            self._scratch[:] = [os.getpid(), boto3.client("s3", endpoint_url=self.endpoint_url),
                                None]
        return self._scratch[1]

    def prepare(self) -> None:
        """Check that the bucket answers (naming it and the endpoint when it does not)."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as err:
            raise RuntimeError(f"cannot write shards to {self}: bucket {self.bucket!r} at "
                               f"{client.meta.endpoint_url}: {err}") from err

    def temp_path(self, name: str) -> Path:
        """A scratch path for ``name`` (this process's temp directory, removed by close)."""
        self._client()
        if self._scratch[2] is None:
            self._scratch[2] = tempfile.mkdtemp(prefix="geopile-shard-")
        return Path(self._scratch[2]) / f"{name}.tmp"

    def has(self, name: str, sha256: str) -> bool:
        """Whether the object exists with this sha256 in its metadata."""
        from botocore.exceptions import ClientError

        try:
            head = self._client().head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError:
            return False
        return head.get("Metadata", {}).get("sha256") == sha256

    def put_file(self, tmp: Path, name: str, sha256: str | None = None,
                 callback: Callable[[int], Any] | None = None, keep: bool = False) -> bool:
        """Upload ``tmp`` as ``name``; whether bytes were sent.

        Skipped when the object is already there with ``sha256``; ``tmp`` is deleted unless
        ``keep``.
        """
        sent = False
        try:
            if sha256 is None or not self.has(name, sha256):
                extra = {"Metadata": {"sha256": sha256}} if sha256 else None
                self._client().upload_file(str(tmp), self.bucket, self.key(name),
                                           ExtraArgs=extra, Callback=callback)
                sent = True
            elif callback:
                callback(tmp.stat().st_size)
        finally:
            if not keep:
                tmp.unlink(missing_ok=True)
        return sent

    def put_bytes(self, name: str, data: bytes) -> None:
        """PUT a small object (index, card): S3 makes a PUT visible whole or not at all."""
        self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=data)

    def delete(self, name: str) -> None:
        """Delete the object (no error when it is absent)."""
        self._client().delete_object(Bucket=self.bucket, Key=self.key(name))

    def shard_names(self) -> list[str]:
        """The shard tars directly under the prefix."""
        prefix = self.key("")
        pages = self._client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        names = (o["Key"][len(prefix):] for page in pages for o in page.get("Contents", ()))
        return sorted(n for n in names if "/" not in n and Path(n).match(SHARD_GLOB))

    def close(self) -> None:
        """Remove this process's scratch directory."""
        if self._scratch and self._scratch[2] is not None:
            shutil.rmtree(self._scratch[2], ignore_errors=True)
            self._scratch[2] = None


ShardStore = LocalStore | S3Store


def open_store(target: str | Path) -> ShardStore:
    """The store for a directory or an ``s3://bucket/prefix`` URL."""
    text = str(target)
    if text.startswith("s3://"):
        if not urlparse(text).netloc:
            raise ValueError(f"an S3 shard destination needs s3://bucket/prefix, got {text!r}")
        return S3Store(text, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    if "://" in text:
        raise ValueError(f"shards go to a directory or s3://bucket/prefix, not {text!r}")
    return LocalStore(Path(text))


def prune(store: ShardStore, wanted: Iterable[str]) -> None:
    """Delete shards of an earlier, larger build that this one does not hold."""
    keep = set(wanted)
    for name in store.shard_names():
        if name not in keep:
            store.delete(name)
