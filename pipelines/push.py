"""``geopile push BUILD``: publish a build's shards where training streams them from (S3).

This is the readable layout the streaming reader wants (``PREFIX/BUILD/index.json`` and its
tars), not DVC's content-addressed cache: ``dvc push`` keeps versions, ``geopile push`` makes a
build streamable. Credentials and endpoint come from boto3's standard chain
(``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL`` for other stores).

Push publishes; it does not trust. The local index goes through the gate
(:mod:`geopile.stream.index`), so it can only name files of the build itself, and every shard is
hashed and checked against it before anything is sent: a damaged local build is refused whole,
and the remote copy stays as it was. Then the remote index goes away first (a ``PUBLISHING``
marker names this push meanwhile), each shard is sent unless S3's own checksum says the object
holds exactly its bytes (so a re-push repairs a damaged object), stale shards are pruned, and the
index comes back last: a push killed anywhere never leaves an old index over new shards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from geopile.card import BOUNDARY_PLOT, CARD
from geopile.shardstore import S3Store, open_store, prune
from geopile.stream import LocalStorage, check_shards, read_build_index
from geopile.stream.index import INDEX, StreamError, sha256_file

log = logging.getLogger(__name__)


def _verified(build_dir: Path, progress: bool) -> tuple[dict[str, Any], bytes]:
    """The build's validated index and its bytes, every shard's size and sha256 checked."""
    local = LocalStorage(build_dir)
    index, data = read_build_index(local, str(build_dir))
    check_shards(local, index, str(build_dir))
    total = sum(s["bytes"] for s in index["shards"])
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {build_dir.name}",
              disable=not progress) as bar:
        for shard in index["shards"]:
            digest = sha256_file(build_dir / shard["name"])
            if digest != shard["sha256"]:
                raise StreamError(
                    f"{build_dir / shard['name']} has sha256 {digest}, its index.json says "
                    f"{shard['sha256']}: the local build is damaged, so nothing was pushed; "
                    f"rebuild it with `geopile shard {build_dir.name}` (or `dvc pull`), then "
                    "push again")
            bar.update(shard["bytes"])
    return index, data


def push_build(build_dir: Path, url: str, *, progress: bool = True) -> dict[str, Any]:
    """Upload ``build_dir`` to ``url`` (``s3://bucket/prefix/BUILD``); returns what was done."""
    build_dir = Path(build_dir)
    if not (build_dir / INDEX).is_file():
        raise FileNotFoundError(f"{build_dir / INDEX} missing: run `geopile shard` for this "
                                "build first")
    store = open_store(url)
    if not isinstance(store, S3Store):
        raise ValueError(f"push needs an s3://bucket/prefix URL, got {url!r}")
    index, data = _verified(build_dir, progress)
    store.prepare()
    store.begin("geopile push")
    sent = 0
    with tqdm(total=sum(s["bytes"] for s in index["shards"]), unit="B", unit_scale=True,
              desc=f"push {build_dir.name}", disable=not progress) as bar:
        for shard in index["shards"]:
            sent += store.put_file(build_dir / shard["name"], shard["name"], shard["sha256"],
                                   keep=True)
            bar.update(shard["bytes"])
    prune(store, (s["name"] for s in index["shards"]))
    for extra in (CARD, BOUNDARY_PLOT):  # the dataset card (and its figure) travel with the data
        if (build_dir / extra).is_file():
            store.put_file(build_dir / extra, extra, keep=True)
    store.commit(data)  # last, the very bytes the gate read: readers see a complete build
    skipped = len(index["shards"]) - sent
    log.info("pushed %s to %s: %d shards sent, %d already there", build_dir, store, sent, skipped)
    return {"url": url, "sent": sent, "skipped": skipped, "shards": len(index["shards"])}
