"""Where a build's shards land: a directory (local or a shared mount) or an S3 prefix.

The shard writers (the local engine and the Ray tasks) and ``geopile push`` hand each finished
tar to a store. A writer replacing a build calls :meth:`begin` first, which leaves a
``PUBLISHING`` marker naming it and removes the old index, and :meth:`commit` last, which writes
the new index and removes the marker: a reader never finds an index whose shards are not all
there, and one that comes meanwhile is told the build is being published, and by whom.

On S3 an upload is verified by S3 itself: each object is sent in one PUT carrying the file's
SHA-256 (``ChecksumSHA256``), which the store checks on receipt and keeps; an object counts as
already there only when its size and that stored checksum match the file, never by metadata a
writer set. A store that keeps no checksum has the object read back and hashed instead. So a
re-push repairs any object whose bytes differ. Stores are plain picklable values (a path or a
URL): a Ray task gets its own S3 client, with credentials from boto3's standard chain on the
node (instance role, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``...).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from geopile.atomic import write_bytes
from geopile.s3 import s3_client
from geopile.stream.index import INDEX, PUBLISHING, is_shard_name, sha256_file
from geopile.urls import strip_secrets
from geopile.writelock import holder_line

SHARD_GLOB = "shard-*.tar"
MAX_PUT_BYTES = 5 << 30  # S3's limit for one PUT: the object's checksum is then the file's


class _Replacing:
    """How a writer replaces a build, for every store (needs ``put_bytes`` and ``delete``)."""

    def begin(self, command: str | None = None) -> None:
        """Mark the build as being replaced, then remove its index (see the module)."""
        self.put_bytes(PUBLISHING, holder_line(command))
        self.delete(INDEX)

    def commit(self, index: bytes) -> None:
        """Write the index, then remove the marker: the build is whole again."""
        self.put_bytes(INDEX, index)
        self.delete(PUBLISHING)


@dataclass(frozen=True)
class LocalStore(_Replacing):
    """A directory: temp files are written beside their final name and renamed."""

    root: Path

    def __str__(self) -> str:
        return str(self.root)

    def prepare(self) -> None:
        """Create the directory and drop stray temp files."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stray in self.root.glob("*.tmp"):
            stray.unlink()

    def temp_path(self, name: str) -> Path:
        """Where ``name`` is written before :meth:`put_file` (beside its final name)."""
        return self.root / f"{name}.tmp"

    def put_file(self, tmp: Path, name: str, sha256: str | None = None) -> bool:
        """Move a finished temp file (from :meth:`temp_path`) to its final name."""
        os.replace(tmp, self.root / name)
        return True

    def put_bytes(self, name: str, data: bytes) -> None:
        """Write a small file (index, card) atomically."""
        write_bytes(self.root / name, data)

    def delete(self, name: str) -> None:
        """Remove ``name`` if it is there."""
        (self.root / name).unlink(missing_ok=True)

    def shard_names(self) -> list[str]:
        """The shard tars present."""
        return sorted(p.name for p in self.root.glob(SHARD_GLOB))

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class S3Store(_Replacing):
    """``s3://bucket/prefix``: temp files in a local scratch directory, uploaded then deleted."""

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

    def where(self, name: str) -> str:
        """The object's URL, for messages."""
        return f"s3://{self.bucket}/{self.key(name)}"

    def _client(self) -> Any:
        if not self._scratch or self._scratch[0] != os.getpid():  # a client never crosses a fork
            self._scratch[:] = [os.getpid(), s3_client(self.endpoint_url), None]
        return self._scratch[1]

    def client(self) -> Any:
        """The boto3 client of the calling process (made once in each process)."""
        return self._client()

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

    def holds(self, name: str, size: int, sha256: str) -> bool:
        """Whether the object is there with exactly these bytes, by S3's own checksum.

        Objects without a whole-object SHA-256 (written by another tool, in parts, or a store
        that keeps none) are read back and hashed.
        """
        from botocore.exceptions import ClientError

        client = self._client()
        try:
            head = client.head_object(Bucket=self.bucket, Key=self.key(name),
                                      ChecksumMode="ENABLED")
        except ClientError:
            return False
        if head.get("ContentLength") != size:
            return False
        stored = head.get("ChecksumSHA256")
        if stored and "-" not in stored and head.get("ChecksumType") != "COMPOSITE":
            return stored == _b64(sha256)  # S3 computed it from the bytes it received
        body = client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(8 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def put_file(self, tmp: Path, name: str, sha256: str | None = None,
                 keep: bool = False) -> bool:
        """Upload ``tmp`` as ``name`` unless S3 holds these bytes already; whether it sent.

        ``sha256`` is the file's digest when the caller computed it from the file itself (a
        writer, or ``geopile push`` after hashing); otherwise it is computed here. S3 checks
        the bytes it receives against it. ``tmp`` is deleted unless ``keep``.
        """
        try:
            size = tmp.stat().st_size
            if size > MAX_PUT_BYTES:
                raise RuntimeError(f"{tmp} is {size:,} bytes, over S3's limit of "
                                   f"{MAX_PUT_BYTES:,} for one upload: write smaller shards "
                                   "(shard.max_bytes)")
            sha256 = sha256 or sha256_file(tmp)
            if self.holds(name, size, sha256):
                return False
            with open(tmp, "rb") as body:
                self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=body,
                                          ContentLength=size, ChecksumSHA256=_b64(sha256))
            return True
        finally:
            if not keep:
                tmp.unlink(missing_ok=True)

    def put_bytes(self, name: str, data: bytes) -> None:
        """PUT a small object (index, card, marker): visible whole or not at all."""
        digest = hashlib.sha256(data).hexdigest()
        self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=data,
                                  ChecksumSHA256=_b64(digest))

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


def _b64(sha256: str) -> str:
    """S3's form of a SHA-256: the digest's bytes in base64."""
    return base64.b64encode(bytes.fromhex(sha256)).decode()


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
        if name not in keep and is_shard_name(name):
            store.delete(name)

