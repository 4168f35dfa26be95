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

from tqdm import tqdm

from geopile.card import CARD
from geopile.shardstore import S3Store, open_store
from geopile.stream import INDEX, read_index

log = logging.getLogger(__name__)


def push_build(build_dir: Path, url: str, *, progress: bool = True) -> dict[str, Any]:
    """Upload ``build_dir`` to ``url`` (``s3://bucket/prefix/BUILD``); returns what was done."""
    index_path = Path(build_dir) / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} missing: run `geopile shard` for this build first")
    store = open_store(url)
    if not isinstance(store, S3Store):
        raise ValueError(f"push needs an s3://bucket/prefix URL, got {url!r}")
    index = read_index(str(build_dir))  # names the file if it is damaged; every shard present
    store.prepare()
    sent = 0
    total = sum(s["bytes"] for s in index["shards"])
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"push {build_dir.name}",
              disable=not progress) as bar:
        for shard in index["shards"]:
            sent += store.put_file(Path(build_dir) / shard["name"], shard["name"],
                                   shard["sha256"], callback=bar.update, keep=True)
    card = Path(build_dir) / CARD
    if card.is_file():  # the dataset card travels with the data
        store.put_file(card, CARD, keep=True)
    store.put_file(index_path, INDEX, keep=True)  # last: readers see a complete build
    skipped = len(index["shards"]) - sent
    log.info("pushed %s to %s: %d shards sent, %d already there", build_dir, store, sent, skipped)
    return {"url": url, "sent": sent, "skipped": skipped, "shards": len(index["shards"])}
