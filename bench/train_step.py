"""GFM training step: images/s and peak memory, ours against a reference-style step.

    python -m bench.train_step                      # CPU: tiny at 96 px, batch 8
    python -m bench.train_step --config swin-b --batch 128 --compile --workers 12   # GPU

Each variant runs in its own process (clean peak-memory figures, no shared compile caches):

- ``reference``: the step as the reference code takes it: fp16 autocast with a GradScaler
  (on the CPU: float32), ``torch.optim.AdamW`` as it comes, no compilation;
- ``ours``: the training engine's step (:func:`pipelines.engine.forward_backward` of
  :func:`pipelines.pretrain.gfm_step`, then :func:`pipelines.engine.optimizer_step`): bf16
  autocast with no scaler, fused AdamW, channels-last input, and with ``--compile`` the student
  and the teacher compiled;
- ``loader``: GeoPile's loader alone (rendered 256 px JPEG build, ``--workers`` workers, CPU
  decode), to compare with the step's rate: the loader keeps up when its rate is higher;
- ``end2end``: ``ours`` fed by the loader (real JPEGs through the whole pipeline) for
  ``--epochs`` epochs: the loader's workers persist across epochs, so the epoch boundaries
  cost nothing (target: within 5% of the slower of ``ours`` and ``loader``).

The teacher is randomly initialised (no weights offline); its cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from geopile.params import load_params
from geopile.settings import check_params
from model.configs import get_config
from model.gfm import GFM
from model.teacher import FrozenTeacher
from pipelines.engine import forward_backward, optimizer_step
from pipelines.pretrain import gfm_step, make_optimizer

VARIANTS = ("reference", "ours", "loader", "end2end")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _models(config_name: str, device: torch.device):
    torch.manual_seed(0)
    config = get_config(config_name)
    teacher = FrozenTeacher(config.teacher, pretrained=False).to(device)
    model = GFM(config, teacher_features=teacher.distill_features).to(device).train()
    return config, teacher, model


def _batch(config, batch: int, device: torch.device):
    size = config.img_size
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    side = size // config.model_patch
    mask = (torch.rand(batch, side, side, device=device) < 0.6).float()
    return images, mask


def _timed(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its figures."""
    device = _device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    params = load_params([Path(__file__).resolve().parents[1] / "params.yaml"])
    settings = check_params(params).pretrain.model_copy(update={"model": args.config})
    if args.variant == "loader":
        return _loader_only(args, device)
    config, teacher, model = _models(args.config, device)
    if args.variant == "reference":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        cuda = device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        images, mask = _batch(config, args.batch, device)

        def step() -> None:
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                with torch.no_grad():
                    target = teacher(images)
                loss = model(images, mask, target)["loss"]
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    else:
        optimizer = make_optimizer(model, settings, 1e-4)
        trainable, teacher_fn = model, teacher
        if args.compile:
            trainable, teacher_fn = torch.compile(model), torch.compile(teacher)
        if args.variant == "ours":
            images, mask = _batch(config, args.batch, device)

            gfm = gfm_step(teacher_fn, device)

            def step() -> None:
                forward_backward(trainable, gfm, {"image": images, "mask": mask}, device)
                optimizer_step(model, optimizer, 5.0)
        else:
            return _end_to_end(args, device, config, trainable, teacher_fn, model, optimizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, args.steps, args.warmup, device)
    return {"variant": args.variant, "images_per_s": args.steps * args.batch / seconds,
            "peak_gib": _peak_gib(device)}


def _build(root: Path, images: int) -> Path:
    from bench.gpu_decode import make_build

    return make_build(root, images)


def _loader(args: argparse.Namespace, shards: Path, size: int, device: torch.device):
    from geopile.augment import GfmTransform
    from pipelines.loader import GeoPileLoader

    return GeoPileLoader(str(shards), batch_size=args.batch, workers=args.workers,
                         transform=GfmTransform(size=size), pin_memory=device.type == "cuda")


def _loader_only(args: argparse.Namespace, device: torch.device) -> dict:
    from pipelines.loader import normalize

    size = get_config(args.config).img_size
    loader = _loader(args, Path(args.shards), size, device)
    n, start = 0, time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            images = normalize(batch["image"].to(device, non_blocking=True))
            n += len(images)
    _sync(device)
    return {"variant": "loader", "images_per_s": n / (time.perf_counter() - start),
            "peak_gib": _peak_gib(device)}


def _end_to_end(args, device, config, trainable, teacher_fn, model, optimizer) -> dict:
    """``--epochs`` whole epochs of the step fed by the loader: its workers persist across the
    epoch boundaries, which must cost nothing."""
    loader = _loader(args, Path(args.shards), config.img_size, device)
    gfm = gfm_step(teacher_fn, device)
    n = done = 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            forward_backward(trainable, gfm, batch, device)
            optimizer_step(model, optimizer, 5.0)
            done += 1
            if done == args.warmup:
                _sync(device)
                start = time.perf_counter()
            elif done > args.warmup:
                n += len(batch["image"])
    _sync(device)
    return {"variant": "end2end", "images_per_s": n / (time.perf_counter() - start),
            "peak_gib": _peak_gib(device), "epochs": args.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="tiny or swin-b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile in `ours`")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--images", type=int, default=512, help="images in the loader's build")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of loader and end2end")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        shards = None
        if {"loader", "end2end"} & set(args.variants):
            shards = _build(Path(tmp), args.images)
        results = {}
        for variant in args.variants:
            cmd = [sys.executable, "-m", "bench.train_step", "--variant", variant,
                   *(f"--{k}={v}" for k, v in (("config", args.config), ("batch", args.batch),
                                                ("steps", args.steps), ("warmup", args.warmup),
                                                ("workers", args.workers),
                                                ("epochs", args.epochs))),
                   *(["--compile"] if args.compile else []),
                   *([f"--shards={shards}"] if shards else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{variant}: failed\n{proc.stderr[-2000:]}")
                continue
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[variant]
            print(f"{variant:>9}: {r['images_per_s']:8.1f} images/s, peak {r['peak_gib']:.2f} GiB",
                  flush=True)
    device = _device()
    print(f"\n{args.config} at {get_config(args.config).img_size} px, batch {args.batch}, "
          f"{device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"compile={args.compile}, loader workers={args.workers}")
    rate = {k: v["images_per_s"] for k, v in results.items()}
    if "reference" in rate and "ours" in rate:
        print(f"ours / reference: {rate['ours'] / rate['reference']:.2f}x")
    if "loader" in rate and "ours" in rate:
        print(f"loader / ours step: {rate['loader'] / rate['ours']:.2f} (>= 1: it keeps up)")
    if {"end2end", "ours", "loader"} <= set(rate):
        lower = min(rate["ours"], rate["loader"])
        print(f"end2end over {args.epochs} epochs / min(ours step, loader): "
              f"{rate['end2end'] / lower:.2f} (target >= 0.95)")


if __name__ == "__main__":
    main()
