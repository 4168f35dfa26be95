"""Loader throughput per core: GeoPile beside MosaicML streaming and litdata, same images.

    .venv/bin/python -m bench.loader [--per-class 20] [--batch 64] [--rounds 10]
    .venv/bin/python -m bench.loader --only bc --against ../base   # another checkout, same runs

Every pipeline reads the same JPEGs (the offline world's four scene corpora, 256 px), one epoch
per run, each run in its own process pinned to one core with torch on one thread and no
workers: images per second per core. Runs are interleaved in rounds (noise on this shared
machine hits all alike) and the table gives medians over the rounds.

(a) decode only with the fastest decoder here (simplejpeg, libjpeg-turbo): the limit;
(b) GeoPile (geopile.stream + geopile.augment through pipelines.loader) from local shards: read,
    check each sample's xxh3, parse, decode, RandomResizedCrop(192, 0.67-1), flip, SimMIM mask,
    batch, uint8 out (ImageNet normalisation is done on the device, not here);
(c) the same from the offline world's S3 server (SeaweedFS on loopback), default settings;
(d) the reference GFM loader: torchvision ImageFolder over the same images as loose files,
    RandomResizedCrop + flip + ToTensor + Normalize + SimMIM mask generator;
(e) a plain webdataset pipeline over the same shards with (d)'s transforms;
(f) (b) and (g) (c) without the xxh3 check: (b)/(f) and (c)/(g) are what verification costs
    (target: at most 3%); (h) the xxh3 of every sample alone, its share of (b)'s time per image;
(i) MosaicML StreamingDataset (MDS shards), local, and (j) from the same S3 server;
(k) litdata StreamingDataset (optimized chunks), local, and (l) from the same S3 server.
``--against DIR`` also runs (b) and (c) from another checkout of GeoPile (``git worktree add DIR
COMMIT``) in the same rounds, on the same shards, and prints this tree's rate over that one's.
The peers get GeoPile's own decode + augmentation (geopile.augment.GfmTransform) per sample and
its SimMIM masks per batch, so they differ from (b) and (c) only in how they store, read,
shuffle and batch. Each S3 run starts with an empty cache (a fresh process and directory); the
S3 server (SeaweedFS) runs on the other cores, so the figures are the client's core alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = {
    "a": "(a) decode only, simplejpeg",
    "b": "(b) GeoPile, local shards",
    "c": "(c) GeoPile, loopback S3",
    "d": "(d) reference: ImageFolder + torchvision",
    "e": "(e) plain webdataset + torchvision",
    "f": "(f) (b) without xxh3 verification",
    "g": "(g) (c) without xxh3 verification",
    "h": "(h) xxh3 of each sample alone",
    "i": "(i) MosaicML streaming, local MDS",
    "j": "(j) MosaicML streaming, loopback S3",
    "k": "(k) litdata, local chunks",
    "l": "(l) litdata, loopback S3",
}
PEERS = "ijkl"


# ---------------------------------------------------------------------------------------------
# one pipeline, one epoch (a child process)


class SimMIMMask:
    """The reference MaskGenerator (SimMIM's data_simmim.py), for (d) and (e)."""

    def __init__(self, size: int = 192, mask_patch: int = 32, model_patch: int = 4,
                 ratio: float = 0.6) -> None:
        self.side = size // mask_patch
        self.scale = mask_patch // model_patch
        self.count = self.side**2
        self.masked = int(math.ceil(self.count * ratio))

    def __call__(self):
        import numpy as np

        idx = np.random.permutation(self.count)[: self.masked]
        mask = np.zeros(self.count, dtype=int)
        mask[idx] = 1
        return mask.reshape(self.side, self.side).repeat(self.scale, 0).repeat(self.scale, 1)


def _reference_item():
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(192, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    mask = SimMIMMask()
    return lambda img: (transform(img), mask())


def _count(batches, masks=None) -> int:
    """Images in an epoch of ``batches``; ``masks(n)`` draws a batch's masks (the peers)."""
    n = 0
    for batch in batches:
        # GeoPile batches are dicts; the others give [images (, masks)], labels
        size = len(batch["key"]) if isinstance(batch, dict) else len(batch[-1])
        if masks is not None:
            masks(n, size)
        n += size
    return n


def run_one(key: str, data: Path, batch: int) -> dict:
    """One epoch of pipeline ``key``: images per second and the process's peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from geopile.augment import GfmTransform

    s3 = (data / "s3.txt").read_text().strip()
    transform = GfmTransform()
    # every import before the clock (MosaicML's pulls in transformers): runs time their
    # pipeline's construction (index reads, S3 clients) and one epoch, not Python's imports
    import boto3  # noqa: F401

    import pipelines.loader  # noqa: F401
    if key in PEERS:
        import litdata  # noqa: F401
        import streaming  # noqa: F401
    start = time.perf_counter()
    if key == "a":
        import simplejpeg

        blobs = [p.read_bytes() for p in sorted((data / "folder").rglob("*.jpg"))]
        start = time.perf_counter()
        for blob in blobs:
            simplejpeg.decode_jpeg(blob)
        n = len(blobs)
    elif key == "h":
        import xxhash

        from geopile.stream import read_index, sample_refs

        index = read_index(str(data / "shards"))
        tars = [(data / "shards" / s["name"]).read_bytes() for s in index["shards"]]
        samples = [(tars[r.shard][r.start:r.end], r.xxh3) for r in sample_refs(index)]
        start = time.perf_counter()
        for blob, digest in samples:
            if xxhash.xxh3_64_hexdigest(blob) != digest:
                raise RuntimeError("a freshly written sample fails its xxh3")
        n = len(samples)
    elif key in "bcfg":
        from pipelines.loader import GeoPileLoader

        url = str(data / "shards") if key in "bf" else f"{s3}/shards"
        n = _count(GeoPileLoader(url, batch_size=batch, workers=0, verify=key in "bc"))
    elif key == "d":
        from torch.utils.data import DataLoader
        from torchvision import datasets

        n = _count(DataLoader(datasets.ImageFolder(str(data / "folder"),
                                                   transform=_reference_item()),
                              batch_size=batch, num_workers=0, shuffle=True))
    elif key == "e":
        import webdataset as wds
        from torch.utils.data import DataLoader

        urls = [str(p) for p in sorted((data / "shards").glob("*.tar"))]
        n = _count(DataLoader(wds.WebDataset(urls, shardshuffle=False).shuffle(1000)
                              .decode("pil").to_tuple("jpg", "cls")
                              .map_tuple(_reference_item(), int),
                              batch_size=batch, num_workers=0))
    else:
        from bench.peers import litdata_batches, mds_batches

        def augment(jpeg: bytes, index: int) -> np.ndarray:
            return transform(jpeg, "jpg", 0, index)

        def masks(first: int, size: int) -> None:
            transform.masks(0, np.arange(first, first + size))

        make = mds_batches if key in "ij" else litdata_batches
        fmt = "mds" if key in "ij" else "litdata"
        src = str(data / fmt) if key in "ik" else f"{s3}/{fmt}"
        with tempfile.TemporaryDirectory(dir=data) as cache:
            n = _count(make(src, Path(cache), batch, augment), masks)
    seconds = time.perf_counter() - start
    # VmHWM: this process's peak (ru_maxrss would carry the parent's over the fork)
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return {"images": n, "images_per_s": n / seconds, "rss_mib": int(status.split()[0]) / 1024}


# ---------------------------------------------------------------------------------------------
# the data, the rounds, the table


def prepare(root: Path, per_class: int, endpoint: str, world: Path, peers: bool = True) -> int:
    """Every store of the same JPEGs under ``root`` (and on S3); how many images.

    ``peers``: MosaicML's and litdata's stores too (``make bench`` installs them).
    """
    from bench.common import ingest_jpegs, shard_config
    from geopile.shards import write_build
    from geopile.world.world import upload_tree

    table = ingest_jpegs(world, root / "data")
    records = table.to_pylist()
    blobs = [(root / "data" / r["path"]).read_bytes() for r in records]
    write_build(table, root / "data", root / "shards", "bench", 0, shard_config(max_samples=500))
    for r, blob in zip(records, blobs, strict=True):
        target = root / "folder" / r["source"] / (r["key"].split("/", 1)[1] + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    labels = [r["label_id"] if r["label_id"] is not None else -1 for r in records]
    samples = list(zip([r["key"] for r in records], blobs, labels, strict=True))
    stores = ["shards"]
    if peers:
        from bench.peers import write_litdata, write_mds

        write_mds(samples, root / "mds")
        write_litdata(samples, root / "litdata")
        stores += ["mds", "litdata"]
    for name in stores:
        url = upload_tree(endpoint, root / name, f"bench/{name}")
    (root / "s3.txt").write_text(url.rsplit("/", 1)[0])
    return len(blobs)


def _child(key: str, root: Path, batch: int, core: int, code: Path | None = None) -> dict:
    """One run in a child pinned to ``core``; ``code``: another checkout's GeoPile runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if code is not None:  # ahead of the editable install on sys.path
        env["PYTHONPATH"] = str(code)
    proc = subprocess.run([sys.executable, "-m", "bench.loader", "--one", key, "--data",
                           str(root), "--batch", str(batch)], env=env, capture_output=True,
                          text=True, check=False, cwd=code,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    if proc.returncode != 0:
        raise RuntimeError(f"{NAMES[key]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: dict[str, list[dict]], n: int, batch: int) -> None:
    """The table of medians, and the ratios the targets are set on."""
    rate = {k: statistics.median(r["images_per_s"] for r in runs) for k, runs in results.items()}
    rounds = len(next(iter(results.values())))
    print(f"\n{n} JPEGs (256 px), batch {batch}, one core each, median of {rounds} rounds")
    print(f"{'pipeline':<44} {'img/s':>8} {'vs (a)':>7} {'peak RSS MiB':>13}")
    for key, name in NAMES.items():
        if key in rate:
            rss = statistics.median(r["rss_mib"] for r in results[key])
            print(f"{name:<44} {rate[key]:>8.0f} {rate[key] / rate['a']:>7.2f} {rss:>13.0f}")

    def paired(x: str, y: str) -> str:
        each = [a["images_per_s"] / b["images_per_s"] for a, b in zip(results[x], results[y],
                                                                        strict=True)]
        return f"{rate[x] / rate[y]:.2f} (rounds {min(each):.2f}-{max(each):.2f})"

    if {"i", "k"} & set(rate):
        peer = max({"i", "k"} & set(rate), key=rate.get)
        print(f"\nlocal: (b)/(a) {paired('b', 'a')} target >= 0.8; (b)/best peer ({peer}) "
              f"{paired('b', peer)} target >= 1.2")
    if "c" in rate:
        print(f"S3: (c)/(b) {paired('c', 'b')} target >= 0.9", end="")
        if {"j", "l"} & set(rate):
            peer = max({"j", "l"} & set(rate), key=rate.get)
            print(f"; (c)/best peer ({peer}) {paired('c', peer)} target >= 1.2", end="")
        print()
    if {"d", "e"} <= set(rate):
        print(f"reference: (b)/(d) {rate['b'] / rate['d']:.2f}   "
              f"(b)/(e) {rate['b'] / rate['e']:.2f}")
    if {"f", "g", "h"} <= set(rate):
        print(f"verification: (b)/(f) {paired('b', 'f')}   (c)/(g) {paired('c', 'g')} "
              f"target >= 0.97; xxh3 alone {1e6 / rate['h']:.1f} us a sample = "
              f"{100 * rate['b'] / rate['h']:.2f}% of (b)'s {1e6 / rate['b']:.0f} us "
              f"(target <= 3%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=20, help="images per class and source")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--only", default="".join(NAMES), help="pipelines to run, e.g. abik")
    parser.add_argument("--core", type=int, default=0, help="the core every run is pinned to")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout: also run its (b) and (c), same rounds and shards")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.batch)))
        return
    from bench.common import running_world

    # this process, the world's servers it starts and their S3 traffic stay off the runs' core
    others = os.sched_getaffinity(0) - {args.core}
    if others:
        os.sched_setaffinity(0, others)
    keys = [k for k in NAMES if k in set(args.only) | {"a", "b"}]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with running_world(root, args.per_class) as (world, endpoints):
            os.environ.update(AWS_ENDPOINT_URL=endpoints["s3"], AWS_ACCESS_KEY_ID="geopile",
                              AWS_SECRET_ACCESS_KEY="offline-world")
            n = prepare(root, args.per_class, endpoints["s3"], world,
                        peers=bool(set(PEERS) & set(keys)))
            results: dict[str, list[dict]] = {k: [] for k in keys}
            against = [k for k in "bc" if k in keys] if args.against else []
            results.update({f"{k}@": [] for k in against})
            for r in range(args.rounds):
                for key in keys:
                    results[key].append(_child(key, root, args.batch, args.core))
                    if key in against:
                        results[f"{key}@"].append(_child(key, root, args.batch, args.core,
                                                         args.against.resolve()))
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{k} {v[-1]['images_per_s']:.0f}" for k, v in results.items()), flush=True)
    report({k: v for k, v in results.items() if not k.endswith("@")}, n, args.batch)
    for key in against:
        mine, theirs = results[key], results[f"{key}@"]
        each = [a["images_per_s"] / b["images_per_s"] for a, b in zip(mine, theirs, strict=True)]
        ratio = (statistics.median(a["images_per_s"] for a in mine)
                 / statistics.median(b["images_per_s"] for b in theirs))
        print(f"{NAMES[key]}: this tree / {args.against} = {ratio:.3f} (rounds "
              f"{min(each):.3f}-{max(each):.3f}, median of per-round ratios "
              f"{statistics.median(each):.3f}); target >= 0.97")


if __name__ == "__main__":
    main()
