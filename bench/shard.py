"""Shard writing throughput for copied JPEGs, against plain ``tarfile`` writing the same bytes.

    .venv/bin/python -m bench.shard [--per-class 20] [--repeat 3]

Builds an offline world, ingests its four JPEG corpora, and writes them all as one build with
``geopile.shards.write_build`` (read each original, compose its .json and .cls, tar, sha256,
index). The baseline, in the same run on the same files, reads each original and writes the
same three members with the standard library's ``tarfile`` (no metadata, no hashing, no
index). Best of ``--repeat`` runs each, alternated, so the page cache treats both alike.
Target: at least 0.5x of plain tar.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

from bench.common import ingest_jpegs, running_world, shard_config
from geopile.shards import write_build


def plain_tar(records: list[dict], data: Path, out: Path) -> None:
    """The same members, written with nothing but tarfile."""
    with tarfile.open(out, "w") as tar:
        for r in records:
            members = {
                "jpg": (data / r["path"]).read_bytes(),
                "json": json.dumps({"key": r["key"], "label": r["label"]}).encode(),
                "cls": str(r["label_id"]).encode(),
            }
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{r['key']}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with running_world(Path(tmp), args.per_class) as (world, _):
            table = ingest_jpegs(world, data)
        records = table.to_pylist()
        mb = sum(r["nbytes"] for r in records) / 1e6
        config = shard_config(max_samples=1000)
        ours, base = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            write_build(table, data, Path(tmp) / "ours", "bench", 0, config)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            plain_tar(records, data, Path(tmp) / "plain.tar")
            base.append(time.perf_counter() - start)
    n = len(records)
    print(f"\n{n} JPEGs, {mb:.1f} MB, best of {args.repeat}")
    print(f"{'writer':<34} {'img/s':>8} {'MB/s':>8}")
    for name, secs in (("geopile write_build", min(ours)), ("plain tarfile (baseline)", min(base))):
        print(f"{name:<34} {n / secs:>8.0f} {mb / secs:>8.1f}")
    print(f"ratio (ours / plain tar): {min(base) / min(ours):.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
