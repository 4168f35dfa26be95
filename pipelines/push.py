"""``geopile push BUILD``: publish a build's shards where training streams them from (S3).

This is the readable layout the streaming reader wants (``PREFIX/BUILD/index.json`` and its
tars), not DVC's content-addressed cache: ``dvc push`` keeps versions, ``geopile push`` makes a
build streamable. Credentials and endpoint come from boto3's standard chain
(``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL`` for other stores).
Shards already there with the index's sha256 are skipped; ``index.json`` goes last, so a reader
never finds an index whose shards are not all uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from geopile.card import CARD
from geopile.stream import INDEX, read_index

log = logging.getLogger(__name__)


def push_build(build_dir: Path, url: str, *, progress: bool = True) -> dict[str, Any]:
    """Upload ``build_dir`` to ``url`` (``s3://bucket/prefix/BUILD``); returns what was done."""
    import boto3
    from botocore.exceptions import ClientError

    index_path = Path(build_dir) / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} missing: run `geopile shard` for this build first")
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"push needs an s3://bucket/prefix URL, got {url!r}")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    index = read_index(str(build_dir))  # names the file if it is damaged; every shard present
    client = boto3.client("s3")
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        raise RuntimeError(f"cannot use bucket {bucket!r} at {client.meta.endpoint_url}: "
                           f"{err}") from err
    sent = skipped = 0
    total = sum(s["bytes"] for s in index["shards"])
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {build_dir.name}",
              disable=not progress) as bar:
        for shard in index["shards"]:
            key = f"{prefix}/{shard['name']}" if prefix else shard["name"]
            path = Path(build_dir) / shard["name"]
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                if head.get("Metadata", {}).get("sha256") == shard["sha256"]:
                    skipped += 1
                    bar.update(path.stat().st_size)
                    continue
            except ClientError:
                pass
            client.upload_file(str(path), bucket, key,
                               ExtraArgs={"Metadata": {"sha256": shard["sha256"]}},
                               Callback=bar.update)
            sent += 1
    card = Path(build_dir) / CARD
    if card.is_file():  # the dataset card travels with the data
        client.upload_file(str(card), bucket, f"{prefix}/{CARD}" if prefix else CARD)
    key = f"{prefix}/{INDEX}" if prefix else INDEX  # last: readers see a complete build
    client.upload_file(str(index_path), bucket, key)
    log.info("pushed %s to %s: %d shards sent, %d already there", build_dir, url, sent, skipped)
    return {"url": url, "sent": sent, "skipped": skipped, "shards": len(index["shards"])}
