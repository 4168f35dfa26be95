"""The epoch plan: equal counts, no duplicates, mixing; no bytes read, no torch."""

import numpy as np
import pytest

from geopile.stream import (
    StreamConfig,
    blocks_of,
    delivery,
    epoch_order,
    rank_plan,
    sample_refs,
    worker_positions,
)


def _index(shards: int, rng: np.random.Generator) -> dict:
    out = []
    for s in range(shards):
        n = int(rng.integers(1, 60))
        offsets = (np.arange(n) * 2048).tolist()
        out.append({"name": f"shard-{s:06d}.tar", "bytes": n * 2048 + 1024,
                    "keys": [f"s{s}/k{i}" for i in range(n)], "offsets": offsets})
    return {"shards": out}


def _delivered(index: dict, config: StreamConfig, world: int, workers: int) -> list[list]:
    """Sample indices per (rank, worker), as the workers would deliver them."""
    refs = sample_refs(index)
    order = epoch_order(blocks_of(refs, config.block), config, epoch=3)
    out = []
    for rank in range(world):
        plan = rank_plan(order, config, rank, world, workers)
        for worker in range(max(1, workers)):
            out.append(plan[worker_positions(len(plan), config, worker, workers)].tolist())
    return out


@pytest.mark.parametrize("shards", range(1, 10))
def test_equal_counts_and_no_duplicates(shards):
    rng = np.random.default_rng(shards)
    index = _index(shards, rng)
    total = sum(len(s["keys"]) for s in index["shards"])
    for world in (1, 2, 3):
        for workers in (0, 1, 2, 3):
            for batch in (1, 4):
                config = StreamConfig(seed=1, block=4, window=3, batch_size=batch)
                parts = _delivered(index, config, world, workers)
                counts = {len(p) for p in parts}
                assert len(counts) == 1, (world, workers, batch, counts)
                every = [i for p in parts for i in p]
                assert len(every) == len(set(every)), "a sample came twice"
                assert total - len(every) < world * max(1, workers) * batch
                padded = _delivered(index, StreamConfig(seed=1, block=4, window=3,
                                                        batch_size=batch, remainder="pad"),
                                    world, workers)
                assert len({len(p) for p in padded}) == 1
                assert set(i for p in padded for i in p) == set(range(total))


def test_delivery_is_the_plan_whatever_the_workers():
    config = StreamConfig(batch_size=4)
    for workers in (1, 2, 3):
        length = 4 * workers * 5
        seen = delivery(length, 4, workers)
        assert sorted(seen.tolist()) == list(range(length))
        # resuming with another worker count continues the same sequence
        for new in (1, 2, 3):
            rest = delivery(length, 4, workers)[8:]
            got = [worker_positions(length, config, w, new, consumed=8, layout=workers)
                   for w in range(new)]
            merged = []
            batches = [list(np.split(g, len(g) // 4)) if len(g) else [] for g in got]
            k = 0
            while any(batches):
                if batches[k % new]:
                    merged += batches[k % new].pop(0).tolist()
                k += 1
            assert merged == rest.tolist()


def test_order_depends_on_seed_and_epoch_only():
    refs = sample_refs(_index(5, np.random.default_rng(0)))
    config = StreamConfig(seed=7, block=8, window=4)
    ids = blocks_of(refs, config.block)
    a, b = epoch_order(ids, config, 0), epoch_order(ids, config, 0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_order(ids, config, 1))
    assert sorted(a.tolist()) == list(range(len(refs)))


def test_batches_mix_shards():
    """With 8 shards, a batch of 32 holds samples of at least 7 shards on average."""
    index = {"shards": [{"name": f"s{s}", "bytes": 0, "keys": [f"{s}/{i}" for i in range(500)],
                         "offsets": list(range(500))} for s in range(8)]}
    refs = sample_refs(index)
    config = StreamConfig(seed=0, batch_size=32)  # default block and window
    for workers in (0, 2):
        plan = rank_plan(epoch_order(blocks_of(refs, config.block), config, 0), config, 0, 1,
                         workers)
        seq = plan[delivery(len(plan), 32, workers)]
        shards = [len({refs[i].shard for i in seq[k:k + 32]}) for k in range(0, len(seq), 32)]
        assert np.mean(shards) >= 7, np.mean(shards)
