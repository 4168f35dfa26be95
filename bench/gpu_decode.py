"""JPEG decoding on the GPU (nvJPEG through torchvision) against GeoPile's CPU pipeline.

    python -m bench.gpu_decode [--images 4096] [--batch 256] [--workers 0 8]

Self-contained (no offline world): renders aerial-like 256 px scenes, writes them as a build,
then times, on the same shards and the same plan: (b) the CPU pipeline (decode, crop, resize,
flip on the CPU; normalise on the GPU) and (g) device decoding (the workers only read bytes and
draw crops; decode, crop, resize, flip and normalise run on the GPU). Needs CUDA; nothing else
in GeoPile does.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from bench.common import shard_config
from geopile.shards import write_build
from geopile.world.scenes import render_scene
from pipelines.loader import GeoPileLoader, decode_on_device, normalize

CLASSES = ["farmland", "forest", "river", "residential", "road", "lake", "desert", "harbor"]


def make_build(root: Path, n: int) -> Path:
    """``n`` rendered JPEGs (q90) written as a build; returns its directory."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = render_scene(CLASSES[i % len(CLASSES)], rng, (256, 256))
        buf = io.BytesIO()
        Image.fromarray(pixels[..., :3]).save(buf, "JPEG", quality=90)
        path = root / "raw" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        rows.append({"key": f"bench/img_{i:06d}", "source": "bench", "path": str(path.name),
                     "format": "jpeg", "bands": 3, "label_id": i % len(CLASSES),
                     "xxh3_pixels": "", "phash": 0})
    out = root / "shards"
    write_build(pa.Table.from_pylist(rows), root / "raw", out, "bench", 0,
                shard_config(max_samples=1000))
    return out


def timed(loader: GeoPileLoader, device_decode: bool) -> float:
    """Images per second over one epoch, ending with normalised float batches on the GPU."""
    torch.cuda.synchronize()
    start, n = time.perf_counter(), 0
    for batch in loader:
        if device_decode:
            images = decode_on_device(batch, 192, "cuda")
        else:
            images = batch["image"].cuda(non_blocking=True)
        x = normalize(images)
        n += x.shape[0]
    torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 8])
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_build(Path(tmp), args.images)
        print(f"{'workers':>7} {'(b) CPU pipeline':>17} {'(g) GPU decode':>15} {'g/b':>6}")
        for workers in args.workers:
            rates = {}
            for device_decode in (False, True, False, True):  # warm-up pass, then timed
                loader = GeoPileLoader(str(shards), batch_size=args.batch, workers=workers,
                                       device_decode=device_decode, pin_memory=True)
                rates[device_decode] = timed(loader, device_decode)
            b, g = rates[False], rates[True]
            print(f"{workers:>7} {b:>17.0f} {g:>15.0f} {g / b:>6.2f}")


if __name__ == "__main__":
    main()
