"""``geopile verify BUILD|DIR|s3://...``: check a build, yours or someone else's, before using it.

The index goes through the gate (:mod:`geopile.stream.index`) and every shard's presence and size
are checked; then every byte is read once: each shard against its sha256 and each sample against
its xxh3, in sample-aligned pieces of at most 32 MiB (memory stays small whatever the shard).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import xxhash
from tqdm import tqdm

from geopile.stream import AUDIT_BYTES, open_storage, sample_refs


def verify_build(url: str, *, progress: bool = True) -> dict[str, Any]:
    """Every shard and sample of the build at ``url`` against its index; what failed."""
    storage, index = open_storage(url)
    refs = sample_refs(index)
    rows, bad_samples = [], 0
    with tqdm(total=sum(s["bytes"] for s in index["shards"]), unit="B", unit_scale=True,
              desc=f"verify {Path(url).name}", disable=not progress) as bar:
        first = 0
        for shard in index["shards"]:
            mine = refs[first:first + len(shard["keys"])]
            first += len(shard["keys"])
            digest, bad, i = hashlib.sha256(), 0, 0
            while i < len(mine):
                j = i + 1
                while j < len(mine) and mine[j].end - mine[i].start <= AUDIT_BYTES:
                    j += 1
                data = memoryview(storage.read_range(shard["name"], mine[i].start,
                                                     mine[j - 1].end))
                digest.update(data)
                for ref in mine[i:j]:
                    piece = data[ref.start - mine[i].start:ref.end - mine[i].start]
                    bad += int(ref.xxh3 is not None and xxhash.xxh3_64_hexdigest(piece)
                               != ref.xxh3)
                bar.update(len(data))
                i = j
            whole = not mine or digest.hexdigest() == shard["sha256"]
            rows.append({"shard": storage.where(shard["name"]), "samples": len(mine),
                         "sha256": "ok" if whole else "MISMATCH", "bad_samples": bad})
            bad_samples += bad
    damaged = [r for r in rows if r["sha256"] != "ok" or r["bad_samples"]]
    return {"url": url, "build": index["build"], "samples": index["samples"], "shards": rows,
            "damaged": len(damaged), "bad_samples": bad_samples,
            "verified_samples": any(r.xxh3 is not None for r in refs)}


def verify_table(result: dict[str, Any]) -> str:
    """The damaged shards (all of them if few), then one line of totals."""
    shown = [r for r in result["shards"] if r["sha256"] != "ok" or r["bad_samples"]]
    lines = [f"{r['shard']}: sha256 {r['sha256']}, {r['bad_samples']} of {r['samples']} "
             "samples fail their xxh3" for r in shown]
    per_sample = "" if result["verified_samples"] else " (no per-sample checksums: version 1)"
    lines.append(f"{result['url']}: build {result['build']}, {result['samples']:,} samples in "
                 f"{len(result['shards'])} shards; {result['damaged']} damaged shards, "
                 f"{result['bad_samples']} bad samples{per_sample}")
    return "\n".join(lines)
