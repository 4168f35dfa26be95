"""The training engine's data positions: torch's order, disjoint ranks, exact resume."""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import DataLoader, RandomSampler

from pipelines.batches import EpochBatches, StreamBatches
from pipelines.engine import Dist


def _where(rank: int = 0, world: int = 1) -> Dist:
    return Dist(rank, world, rank, torch.device("cpu"))


def _take(batches, n: int) -> list[list]:
    return [b.tolist() if torch.is_tensor(b) else [int(i) for i in b[1]]
            for b in islice(iter(batches), n)]


def test_one_process_sees_torchs_random_sampler_order():
    data = list(range(10))
    torch_order = DataLoader(data, batch_size=3, drop_last=True,
                             sampler=RandomSampler(data, generator=torch.Generator()
                                                   .manual_seed(7)))
    expected = [b.tolist() for _ in range(4) for b in torch_order]
    assert _take(EpochBatches(data, 3, _where(), seed=7), 12) == expected


def test_epoch_batches_split_ranks_and_resume_mid_epoch():
    data = list(range(23))
    ranks = [_take(EpochBatches(data, 4, _where(r, 2), seed=1), 2) for r in range(2)]
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 16  # 23 // 2 = 11 each, two full batches of 4
    straight = EpochBatches(data, 4, _where(), seed=1)
    reference = _take(straight, 13)  # into the third epoch (5 batches each)
    first = EpochBatches(data, 4, _where(), seed=1)
    done = _take(first, 7)
    resumed = EpochBatches(data, 4, _where(), seed=1)
    resumed.load_state_dict(first.state_dict())
    assert first.state_dict()["epoch"] == 1 and first.state_dict()["consumed"] == 2
    assert done + _take(resumed, 6) == reference


class _Keys(torch.utils.data.Dataset):
    """Returns the (position, index) key it is given."""

    def __len__(self) -> int:
        return 5

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key


def test_stream_batches_span_passes_split_ranks_and_resume():
    stream = StreamBatches(_Keys(), 4, _where(), seed=3)
    batches = [list(zip(b[0].tolist(), b[1].tolist(), strict=True))
               for b in islice(iter(stream), 5)]
    positions = [p for b in batches for p, _ in b]
    assert positions == list(range(20))  # no image dropped at a pass's end
    for start in range(0, 20, 5):  # each pass a permutation of the five images
        assert sorted(i for b in batches for p, i in b if start <= p < start + 5) == \
            list(range(5))
    assert stream.state_dict() == {"consumed": 20}
    resumed = StreamBatches(_Keys(), 4, _where(), seed=3)
    resumed.load_state_dict({"consumed": 8})
    again = [list(zip(b[0].tolist(), b[1].tolist(), strict=True))
             for b in islice(iter(resumed), 3)]
    assert again == batches[2:]
    # two ranks take alternate positions of the same stream
    ranks = [StreamBatches(_Keys(), 2, _where(r, 2), seed=3) for r in range(2)]
    got = [[p for b in islice(iter(s), 2) for p in b[0].tolist()] for s in ranks]
    assert got == [[0, 2, 4, 6], [1, 3, 5, 7]]
