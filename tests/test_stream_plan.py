"""The epoch plan: equal counts, no duplicates, mixing, elastic resume; no bytes read, no torch."""

import itertools

import numpy as np
import pytest

from geopile.stream import (
    Leg,
    StreamConfig,
    blocks_of,
    epoch_order,
    rank_batches,
    sample_refs,
    spans_of,
    undelivered,
    worker_batches,
    worker_part,
)


def _index(shards: int, rng: np.random.Generator) -> dict:
    out = []
    for s in range(shards):
        n = int(rng.integers(1, 60))
        offsets = (np.arange(n) * 2048).tolist()
        out.append({"name": f"shard-{s:06d}.tar", "bytes": n * 2048 + 1024,
                    "keys": [f"s{s}/k{i}" for i in range(n)], "offsets": offsets})
    return {"shards": out}


def _parts(leg: Leg, config: StreamConfig, world: int, workers: int) -> list[np.ndarray]:
    """Positions per (rank, worker), as the workers deliver them."""
    positions = leg.positions()
    return [worker_part(positions, config, r, world, w, workers)
            for r in range(world) for w in range(max(1, workers))]


def _interleaved(counts: list[int], batches: int) -> list[int]:
    """Batches taken per worker after ``batches`` batches of torch's round-robin delivery."""
    taken, k = [0] * len(counts), 0
    while batches:
        if taken[k % len(counts)] < counts[k % len(counts)]:
            taken[k % len(counts)] += 1
            batches -= 1
        k += 1
    return taken


@pytest.mark.parametrize("shards", range(1, 8))
def test_equal_counts_no_duplicates_and_length_independent_of_workers(shards):
    rng = np.random.default_rng(shards)
    index = _index(shards, rng)
    total = sum(len(s["keys"]) for s in index["shards"])
    for world, batch in itertools.product((1, 2, 3), (1, 4)):
        config = StreamConfig(seed=1, block=4, window=3, batch_size=batch)
        dealt = {}
        for workers in (0, 1, 2, 3):
            parts = _parts(Leg.whole(3, total), config, world, workers)
            k = max(1, workers)
            per_rank = [sum(len(p) for p in parts[r * k:(r + 1) * k]) for r in range(world)]
            assert len(set(per_rank)) == 1, (world, workers, batch, per_rank)
            assert per_rank[0] == rank_batches(total, config, world) * batch
            every = np.concatenate(parts)
            assert len(every) == len(set(every.tolist())), "a sample came twice"
            assert 0 <= total - len(every) < world * batch  # at most world x batch dropped
            dealt[workers] = set(every.tolist())
        # the same samples are dropped (the order's last ones) whatever the workers
        assert len({frozenset(d) for d in dealt.values()}) == 1
        assert set(range(total)) - dealt[0] == set(range(len(dealt[0]), total))
        padded = _parts(Leg.whole(3, total), StreamConfig(seed=1, block=4, window=3,
                                                          batch_size=batch, remainder="pad"),
                        world, 2)
        assert set(np.concatenate(padded).tolist()) == set(range(total))


def test_worker_runs_differ_by_at_most_one_batch():
    for batches, workers in itertools.product(range(12), range(1, 5)):
        runs = [worker_batches(batches, w, workers) for w in range(workers)]
        assert [b for r in runs for b in r] == list(range(batches))
        assert max(map(len, runs)) - min(map(len, runs)) <= 1


LAYOUTS = [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (4, 2)), ((2, 1), (2, 3)),
           ((1, 3), (1, 1)), ((4, 3), (2, 0)), ((3, 2), (2, 4))]


@pytest.mark.parametrize("before,after", LAYOUTS)
def test_elastic_resume_delivers_exactly_the_rest(before, after):
    """(W1, K1) -> (W2, K2) after any number of steps: none repeated, none lost."""
    (w1, k1), (w2, k2) = before, after
    total, batch = 301, 4
    config = StreamConfig(seed=5, block=8, window=4, batch_size=batch)
    leg = Leg.whole(2, total)
    counts = [len(p) // batch for p in _parts(leg, config, w1, k1)[:max(1, k1)]]
    for steps in range(0, sum(counts) + 1, 3):
        taken = _interleaved(counts, steps)
        seen = [p[:t * batch] for p, t in
                zip(_parts(leg, config, w1, k1), taken * w1, strict=True)]
        rest = undelivered(leg, config, w1, k1, taken)
        after_parts = _parts(rest, config, w2, k2)
        first = np.concatenate(seen).tolist()
        second = np.concatenate(after_parts).tolist()
        assert len(first) == steps * batch * w1
        assert len(set(first + second)) == len(first + second), "a sample came twice"
        lost = set(range(total)) - set(first) - set(second)
        assert len(lost) < w2 * batch, "more than world x batch samples were left out"
        assert sorted(rest.positions().tolist()) == sorted(set(range(total)) - set(first))
        # a leg is a few spans, not a list of samples: what a checkpoint stores is small
        assert len(rest.spans) <= w1 * max(1, k1) + 1


def test_resume_of_a_resume():
    config = StreamConfig(seed=0, block=4, window=2, batch_size=2)
    leg, seen, total = Leg.whole(0, 97), [], 97
    for world, workers in [(2, 2), (1, 3), (4, 1), (3, 2)]:
        parts = _parts(leg, config, world, workers)
        taken = _interleaved([len(p) // 2 for p in parts[:max(1, workers)]], 2)
        seen += [int(x) for p, t in zip(parts, taken * world, strict=True) for x in p[:t * 2]]
        leg = undelivered(leg, config, world, workers, taken)
    assert len(seen) == len(set(seen))
    assert set(leg.positions().tolist()) == set(range(total)) - set(seen)


def test_spans_round_trip():
    positions = np.array([3, 4, 5, 9, 10, 20, 0, 1])
    assert spans_of(positions) == ((3, 6), (9, 11), (20, 21), (0, 2))
    assert Leg(0, spans_of(positions)).positions().tolist() == positions.tolist()


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
    order = epoch_order(blocks_of(refs, config.block), config, 0)
    for workers in (0, 2):
        for part in _parts(Leg.whole(0, len(refs)), config, 1, workers):
            seq = order[part]
            shards = [len({refs[i].shard for i in seq[k:k + 32]})
                      for k in range(0, len(seq), 32)]
            assert np.mean(shards) >= 7, np.mean(shards)
