"""Run under torchrun: take batches of a GeoPile build on every rank, then save where it got.

    python -m torch.distributed.run --nproc-per-node W -m tests.elastic_loader SHARDS OUT
        --batch B --workers K [--take N] [--resume STATE]

Each rank writes the keys it received to ``OUT/keys-RANK.json``; rank 0 writes the loader's
``state_dict()`` to ``OUT/state.json`` (as a checkpoint would). Without ``--take`` the rest of
the epoch is taken.
"""

import argparse
import json
import os
from pathlib import Path

import torch.distributed as dist

from pipelines.loader import GeoPileLoader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--take", type=int, help="batches per rank (default: the epoch's rest)")
    parser.add_argument("--resume", type=Path)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loader = GeoPileLoader(args.shards, batch_size=args.batch, workers=args.workers,
                           rank=rank, world=world, seed=11)
    if args.resume:
        loader.load_state_dict(json.loads(args.resume.read_text()))
    keys: list[str] = []
    epoch = loader.state_dict()["epoch"]
    for n, batch in enumerate(loader):
        keys += batch["key"]
        if args.take is not None and n + 1 == args.take:
            break
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"keys-{rank}.json").write_text(json.dumps({"epoch": epoch, "keys": keys}))
    dist.barrier()  # every rank took the same number of batches (DDP would hang otherwise)
    if rank == 0:
        (args.out / "state.json").write_text(json.dumps(loader.state_dict()))
    dist.destroy_process_group()
    os._exit(0)  # persistent workers: no need to wait for their orderly shutdown


if __name__ == "__main__":
    main()
