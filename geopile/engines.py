"""Where per-item work runs: a local pool (:class:`LocalMapper`) or Ray tasks (:class:`RayMapper`).

Ingest and shard receive a mapper and call :meth:`Mapper.map`; neither asks which one it is.
A mapper yields results in the items' order, whatever order they finish in, so every decision
the driver takes from them (quotas, record order, shard boundaries), and so every byte written,
is the same on either. A leaf module: it knows nothing of what it maps (the function and the
object shared by every call come from the caller), and imports Ray only when a RayMapper is
made (``pip install 'geopile[ray]'``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)
S, T, R = TypeVar("S"), TypeVar("T"), TypeVar("R")

# a task lost with its node runs again elsewhere: the mapped functions are pure (they write
# under temp names and rename, or return what they computed), so a retry is harmless
MAX_RETRIES = 5


class Mapper(Protocol):
    """``fn(shared, item)`` for every item, results in order."""

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S, *,
            io_bound: bool = False, batches_per_cpu: int = 1) -> Iterator[R]:
        """``fn(shared, item)`` per item; ``io_bound``: threads (network reads), not CPUs.

        ``batches_per_cpu``: how finely a cluster cuts the items (more: better balance).
        """

    def cpus(self) -> int:
        """How many items can run at once: the cut a caller sizes its tasks by."""

    def close(self) -> None:
        """Release the workers (pending work is cancelled)."""


_SHARED: Any = None  # what a LocalMapper's worker process was given (its initializer sets it)


def _install(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _call(fn: Callable[[Any, T], R], item: T) -> R:
    return fn(_SHARED, item)


class LocalMapper:
    """A process pool (or threads, for network-bound work) on this machine.

    The shared object reaches each worker process once, through the pool's initializer; the
    pool lives while the same object is shared, so a source's candidates, chunk after chunk,
    reuse one pool.
    """

    def __init__(self, workers: int = 2) -> None:
        self.workers = max(1, workers)
        self._pool: Executor | None = None
        # the object itself, not its id: a freed object's id is reused by the next one, which
        # would then run against the previous object's pool
        self._key: tuple[Any, bool] | None = None

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S, *,
            io_bound: bool = False, batches_per_cpu: int = 1) -> Iterator[R]:
        """``fn(shared, item)`` per item, in the items' order (``batches_per_cpu``: unused)."""
        if self._key is None or self._key[0] is not shared or self._key[1] != io_bound:
            self.close()
            self._key = (shared, io_bound)
            self._pool = (ThreadPoolExecutor(self.workers) if io_bound else
                          ProcessPoolExecutor(self.workers, initializer=_install,
                                              initargs=(shared,)))
        assert self._pool is not None
        if io_bound:  # threads share this process: no need to ship ``shared``
            return self._pool.map(partial(fn, shared), items)
        return self._pool.map(partial(_call, fn), items)

    def cpus(self) -> int:
        """The pool's workers."""
        return self.workers

    def close(self) -> None:
        """Shut the pool down, cancelling what was not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool, self._key = None, None

    def __enter__(self) -> LocalMapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str | None) -> Any:
    """Connect to the Ray cluster at ``address``; start a local one for None.

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


def _run_batch(fn: Callable[[Any, T], R], shared: Any, batch: list[T], threads: int) -> list[R]:
    """One Ray task: ``fn`` over a batch of items (with threads for network-bound work)."""
    if threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(partial(fn, shared), batch))
    return [fn(shared, item) for item in batch]


class RayMapper:
    """Ray tasks on a cluster: the items cut into about one batch per cluster CPU.

    The shared object is put in Ray's object store once; tasks are retried on another node when
    theirs dies (:data:`MAX_RETRIES`). ``threads``: each task's threads for network-bound work.
    """

    def __init__(self, address: str | None, threads: int = 1) -> None:
        self.ray = connect(address)
        self.threads = max(1, threads)
        self.task = self.ray.remote(max_retries=MAX_RETRIES, num_cpus=1)(_run_batch)
        self._shared: tuple[Any, Any] | None = None  # (the object, its ref): see LocalMapper

    def cpus(self) -> int:
        """The cluster's CPUs now."""
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[[S, T], R], items: Sequence[T], shared: S, *,
            io_bound: bool = False, batches_per_cpu: int = 1) -> Iterator[R]:
        """``fn(shared, item)`` per item as tasks, in the items' order (yielded as they come)."""
        if self._shared is None or self._shared[0] is not shared:
            self._shared = (shared, self.ray.put(shared))
        size = max(1, math.ceil(len(items) / (batches_per_cpu * self.cpus())))
        threads = self.threads if io_bound else 1
        refs = [self.task.remote(fn, self._shared[1], list(items[i:i + size]), threads)
                for i in range(0, len(items), size)]
        for ref in refs:
            yield from self.ray.get(ref)

    def close(self) -> None:
        """Drop the shared object (the cluster stays up)."""
        self._shared = None
