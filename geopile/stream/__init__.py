"""Stream a GeoPile build from its ``index.json``: shuffled, evenly split, resumable, local or S3.

The epoch order is planned from the index alone, before any byte is read, and does not depend
on how many ranks or workers read it:

1. the build's samples are cut into *blocks* of ``block`` consecutive samples of one shard (one
   ranged read each), and the blocks are permuted with ``(seed, epoch)``;
2. consecutive runs of ``window`` blocks are pooled and their samples permuted, so any stretch
   of the stream mixes samples from ``window`` blocks drawn from all over the build;
3. the order is cut (``drop``, fewer than ``ranks x batch_size`` samples left out: the last
   ones) or wrapped (``pad``) to whole batches on every rank, and rank ``r`` takes the
   ``r``-th equal contiguous part;
4. inside a rank, each worker delivers a contiguous run of whole batches (whole blocks, few
   reads); the trainer counts the batches it took from each worker.

Those counts say exactly which positions of the order were delivered, so a checkpoint resumes
with any number of ranks and workers (:class:`Leg`, :func:`undelivered`): the epoch's
undelivered positions are dealt out again by the same rules, none repeated, none lost.

Every sample is checked against its xxh3-64 in the index as it is read (local and S3 alike): a
sample whose bytes changed since the build is set aside like an unreadable one, and a shard with
more than ``max_bad_per_shard`` such samples stops the run (:class:`StreamError`).

The package: ``index`` (the gate), ``storage``, ``plan``, ``tar`` and ``reader``. Written by
hand because none of webdataset, MosaicML streaming or litdata does all of this over
plain WebDataset tars (FACTS.md section 5).
"""

from geopile.stream.index import (
    INDEX,
    PUBLISHING,
    TAR_BLOCK,
    BuildIndexError,
    StreamError,
    parse_index,
    sha256_file,
)
from geopile.stream.plan import (
    Leg,
    SampleRef,
    StreamConfig,
    blocks_of,
    epoch_order,
    rank_batches,
    rank_part,
    sample_refs,
    spans_of,
    undelivered,
    worker_batches,
    worker_part,
)
from geopile.stream.reader import AUDIT_BYTES, RawSample, ShardStream
from geopile.stream.storage import (
    CachedStorage,
    LocalStorage,
    S3Storage,
    check_shards,
    open_storage,
    read_build_index,
    read_index,
    storage_for,
)
from geopile.stream.tar import parse_members

__all__ = [
    "AUDIT_BYTES", "INDEX", "PUBLISHING", "TAR_BLOCK", "BuildIndexError", "CachedStorage", "Leg",
    "LocalStorage", "RawSample", "S3Storage", "SampleRef", "ShardStream", "StreamConfig",
    "StreamError", "blocks_of", "check_shards", "epoch_order", "open_storage", "parse_index",
    "parse_members", "rank_batches", "rank_part", "read_build_index", "read_index",
    "sample_refs", "sha256_file", "spans_of", "storage_for", "undelivered", "worker_batches",
    "worker_part",
]
