"""The Ray engine: ingest's per-candidate work and the shard writers as tasks on a Ray cluster.

Only imported when ``ingest.engine: ray``: the local engine needs no Ray. The driver keeps every
decision that fixes the output (quotas, checkpoint, record order, shard boundaries); tasks only
compute, and results come back in submission order, so a Ray run writes the same bytes as a local
one. Tasks are retried on another node when theirs dies (``MAX_RETRIES``); a killed driver resumes
from ingest's checkpoint like the local engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# a task lost with its node is run again elsewhere; tasks are pure (payload writes stay on the
# driver, shard tars are written under a temp name and renamed), so a retry is harmless
MAX_RETRIES = 5


def connect(address: str | None) -> Any:
    """Connect to the cluster at ``address`` (``ingest.ray_address``); start a local one for None.

    ``auto`` joins the cluster this machine belongs to (``ray start`` / KubeRay / Slurm);
    ``host:port`` or ``ray://host:10001`` a named one.
    """
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "ingest.engine is 'ray' but Ray is not installed: pip install 'geopile[ray]'"
        ) from err
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return ray


def wait_for_cpus(address: str, cpus: int, timeout_s: float = 120.0, logs: str = "") -> None:
    """Join the cluster at ``address`` and wait until it offers ``cpus`` CPUs.

    Nodes started with ``ray start`` register some seconds after their process starts.
    """
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if not ray.is_initialized():
                ray.init(address=address, log_to_driver=False)
            if ray.cluster_resources().get("CPU", 0) >= cpus:
                return
        except ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster at {address} never reached {cpus} CPUs"
                       + (f" (logs in {logs})" if logs else ""))


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _decide_batch(source: Any, cands: list, threads: int) -> list:
    """One task: decide a batch of candidates with the ingest driver's own ``_decide``."""
    from geopile import ingest

    ingest._init_worker(source)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(ingest._decide, cands))
    return [ingest._decide(c) for c in cands]


class RayMapper:
    """``map(chunk)`` -> ``_decide`` outcomes in chunk order, computed as Ray tasks.

    The Source is shipped once (``ray.put``); a chunk is split into about one batch per cluster
    CPU, so task overhead stays small. Thread-executor sources (NAIP: network-bound window reads)
    run each batch with ``threads`` threads.
    """

    def __init__(self, source: Any, address: str | None, threads: int) -> None:
        self.ray = connect(address)
        self.ref = self.ray.put(source)
        self.threads = threads if source.executor == "thread" else 1
        self.task = self.ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_decide_batch)
        self.cpus = _cluster_cpus(self.ray)

    def map(self, chunk: Sequence) -> list:
        """The outcomes of ``chunk``, in its order (the driver's decisions depend on it)."""
        size = max(1, math.ceil(len(chunk) / self.cpus))
        refs = [self.task.remote(self.ref, list(chunk[i:i + size]), self.threads)
                for i in range(0, len(chunk), size)]
        return [out for batch in self.ray.get(refs) for out in batch]


def _sizes(records: list[dict], data_dir: Path, config: Any) -> list[int]:
    """Each sample's tar member bytes (encodes converted images: the costly part, in tasks)."""
    from geopile.shards import _member_bytes, encode_sample

    return [_member_bytes(encode_sample(r, data_dir, config)) for r in records]


def _write_one(records: list[dict], data_dir: Path, store: Any, name: str,
               config: Any) -> dict:
    from geopile.shards import write_shard

    try:
        return write_shard(records, data_dir, store, name, config)
    finally:
        store.close()


def write_shards(records: list[dict], data_dir: Path, store: Any, config: Any,
                 address: str | None, progress: Callable[[int], Any] | None = None) -> list[dict]:
    """The index's ``shards`` entries, each shard written by one Ray task.

    Boundaries depend on every sample's encoded size, so sizes come first (batched tasks), the
    driver plans the shards the way the local writer fills them, then one task per shard encodes
    its samples again and writes the tar into ``store`` (:mod:`geopile.shardstore`): a
    directory every node mounts at the same path, or S3, which each task uploads to itself.
    ``data_dir`` (ingest's payloads) is read by the tasks: it must be on a shared mount too.
    """
    from geopile.shards import plan_shards

    ray = connect(address)
    cfg = ray.put(config)
    sizes_task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_sizes)
    write_task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_write_one)
    size = max(1, math.ceil(len(records) / (4 * _cluster_cpus(ray))))
    refs = [sizes_task.remote(records[i:i + size], data_dir, cfg)
            for i in range(0, len(records), size)]
    sizes = [s for batch in ray.get(refs) for s in batch]
    bounds = plan_shards(sizes, config)
    refs = [write_task.remote(records[a:b], data_dir, store, f"shard-{n:06d}.tar", cfg)
            for n, (a, b) in enumerate(bounds)]
    entries = []
    for ref, (a, b) in zip(refs, bounds, strict=True):
        entries.append(ray.get(ref))
        if progress:
            progress(b - a)
    return entries
