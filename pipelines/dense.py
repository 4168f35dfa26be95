"""Iteration-based finetuning for the dense tasks: segmentation, change detection, super-resolution.

``geopile finetune whu|vaihingen|oscd|dsifn|sn2 --init ...`` lands here. The recipe is the
mmsegmentation Swin-UperNet one the paper used (``finetune.dense`` in params.yaml): AdamW (lr
6e-5, wd 0.01, layer decay on the encoder), linear warm-up then poly decay per iteration, 40k
iterations of random crops with flips. Evaluation predicts whole images tile by tile (the
encoder's fixed input size) and stitches the logits. With a validation split the best
validation checkpoint is scored on test; without one (Vaihingen, OSCD, as in the reference)
the last checkpoint is. Outputs match classification runs: ``metrics.json`` (``scores`` enter
``geopile arp``; ``details`` hold the rest), ``history.csv``, ``config.json``, checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import PolyLRScheduler
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD
from geopile.params import ParamsError
from model.dense import ChangeDetector, Segmenter, SuperResolver, adapt_patch_embed
from pipelines.common import History, atomic_torch_save, atomic_write_text, coerce_floats
from pipelines.dense_tasks import IGNORE, DenseTask
from pipelines.finetune import (
    FinetuneSettings,
    autocast,
    build_classifier,
    check_replicas,
    datasets_rank0_first,
    fingerprint,
    resolve_init,
)
from pipelines.pretrain import init_distributed
from pipelines.tasks import read_sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseSettings:
    """``finetune.dense`` in params.yaml (mmsegmentation's Swin-UperNet schedule)."""

    iterations: int = 40000
    warmup_iters: int = 1500
    batch_size: int = 8  # per process (the reference: 16 over its GPUs)
    lr: float = 6e-5
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0
    weight_decay: float = 0.01
    layer_decay: float = 0.9
    drop_path: float = 0.3
    decoder_channels: int = 512
    eval_every: int = 4000  # iterations between validation (and checkpoints)
    workers: int = 8

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DenseSettings:
        """Settings from ``finetune.dense``; unknown keys are an error."""
        block = dict((params.get("finetune") or {}).get("dense") or {})
        try:
            return cls(**coerce_floats(cls, block, "finetune.dense"))
        except TypeError as err:
            raise ParamsError(f"finetune.dense: {err}") from err


def _normalise(task: DenseTask, image: torch.Tensor) -> torch.Tensor:
    """0..255 (through the task's scaling) to ImageNet-normalised, per 3-band date."""
    image = (task.to_255(image) if task.to_255 else image) / 255.0
    if task.kind == "sr":
        return image  # reflectance-like inputs and targets in 0..1: PSNR/SSIM on that range
    mean = torch.tensor(IMAGENET_MEAN).repeat(image.shape[0] // 3).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).repeat(image.shape[0] // 3).view(-1, 1, 1)
    return (image - mean) / std


class TrainCrops(Dataset):
    """Random crops with flips from a task's training images (padded with ``IGNORE`` labels)."""

    def __init__(self, task: DenseTask, dataset: Dataset, crop: int):
        self.task, self.dataset, self.crop = task, dataset, crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.task.sample(read_sample(self.dataset, index))
        image = _normalise(self.task, image)
        scale = self.task.scale
        crop_in = self.crop // scale
        h, w = image.shape[-2:]
        pad_h, pad_w = max(crop_in - h, 0), max(crop_in - w, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            fill = IGNORE if target.dtype == torch.long else 0.0
            target = F.pad(target, (0, pad_w * scale, 0, pad_h * scale), value=fill)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - crop_in + 1, ()))
        left = int(torch.randint(0, w - crop_in + 1, ()))
        image = image[..., top:top + crop_in, left:left + crop_in]
        target = target[..., top * scale:(top + crop_in) * scale,
                        left * scale:(left + crop_in) * scale]
        if torch.rand(()) < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if torch.rand(()) < 0.5:
            image, target = image.flip(-2), target.flip(-2)
        return image.contiguous(), target.contiguous()


class WholeImages(Dataset):
    """Evaluation samples: normalised whole images and their targets."""

    def __init__(self, task: DenseTask, dataset: Dataset):
        self.task, self.dataset = task, dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.task.sample(read_sample(self.dataset, index))
        return _normalise(self.task, image), target


@torch.no_grad()
def predict_tiled(model: nn.Module, image: torch.Tensor, crop: int, scale: int = 1,
                  batch: int = 8) -> torch.Tensor:
    """Whole-image output of a fixed-input-size model: padded, tiled, stitched, cropped back."""
    c, h, w = image.shape
    rows, cols = -(-h // crop), -(-w // crop)
    padded = F.pad(image, (0, cols * crop - w, 0, rows * crop - h))
    tiles = [padded[:, r * crop:(r + 1) * crop, k * crop:(k + 1) * crop]
             for r in range(rows) for k in range(cols)]
    outs = torch.cat([model(torch.stack(tiles[i:i + batch])) for i in range(0, len(tiles), batch)])
    out = outs.new_zeros((outs.shape[1], rows * crop * scale, cols * crop * scale))
    for i, tile in enumerate(outs):
        r, k = divmod(i, cols)
        step = crop * scale
        out[:, r * step:(r + 1) * step, k * step:(k + 1) * step] = tile
    return out[:, :h * scale, :w * scale]


def evaluate(model: nn.Module, dataset: WholeImages, task: DenseTask, crop: int,
             device: torch.device) -> dict[str, float]:
    """The task's metrics over whole images (torchmetrics), on the paper's scale."""
    metrics = task.metrics(device)
    was_training = model.training
    model.eval()
    for image, target in dataset:
        out = predict_tiled(model, image.to(device), crop // task.scale, task.scale).float()
        task.update(metrics, out.unsqueeze(0), target.unsqueeze(0).to(device))
    model.train(was_training)
    return task.compute(metrics)


def build_dense_model(task: DenseTask, init: str, finetune: FinetuneSettings,
                      settings: DenseSettings, crop: int, window: int,
                      runs_root: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The task's network on an encoder from ``--init`` (weights checked to have arrived)."""
    enc_size = crop
    spec, file, fetch, init_name = resolve_init(init, finetune, enc_size, window, runs_root)
    encoder = build_classifier(spec, file, fetch, 0, settings.drop_path)
    if task.kind == "seg":
        model: nn.Module = Segmenter(encoder, task.num_classes, settings.decoder_channels)
    elif task.kind == "cd":
        model = ChangeDetector(encoder, settings.decoder_channels)
    else:
        assert task.rgb is not None
        adapt_patch_embed(encoder, task.in_chans, task.rgb)
        model = SuperResolver(encoder, task.rgb, task.scale, settings.decoder_channels)
    info = {"init_name": init_name, "weights": file, "architecture": spec.name,
            "arch": spec.arch}
    return model, info


def make_optimizer(model: nn.Module, settings: DenseSettings, lr: float) -> torch.optim.AdamW:
    """AdamW: layer decay over the encoder's blocks (timm), plain groups for the decoder."""
    groups = param_groups_layer_decay(model.encoder, weight_decay=settings.weight_decay,
                                      no_weight_decay_list=model.encoder.no_weight_decay(),
                                      layer_decay=settings.layer_decay)
    groups += param_groups_weight_decay(model.decoder, weight_decay=settings.weight_decay)
    for group in groups:
        group.setdefault("lr_scale", 1.0)
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr)


def _loss(task: DenseTask, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task.kind == "sr":
        return F.l1_loss(out, target)
    return F.cross_entropy(out, target, ignore_index=IGNORE)


def _forever(loader: DataLoader, sampler: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_dense(params: dict[str, Any], task: DenseTask, init: str, *, resume: bool = False,
              iterations: int | None = None, progress: bool = True,
              out: Path | None = None) -> dict[str, Any]:
    """Finetune ``init`` on the dense ``task``; returns rank 0's metrics."""
    from pipelines.finetune import run_dir

    finetune = FinetuneSettings.from_params(params)
    settings = DenseSettings.from_params(params)
    if iterations is not None:
        settings = dataclasses.replace(settings, iterations=iterations)
    geometry = finetune.tasks.get(task.name, {})
    crop = int(geometry.get("img_size", task.img_size))
    window = int(geometry.get("window_size", task.window_size))
    seed = int(params.get("seed", 0))
    where = init_distributed()
    runs = Path((params.get("paths") or {}).get("runs", "runs"))
    torch.manual_seed(seed)
    model, info = build_dense_model(task, init, finetune, settings, crop, window, runs)
    model = model.to(where.device)
    root = out or run_dir(params, task.name, info["init_name"])

    splits = datasets_rank0_first(task, params, where)
    train = TrainCrops(task, splits["train"], crop)
    val = WholeImages(task, splits["val"]) if "val" in splits else None
    test = WholeImages(task, splits["test"])
    batch = settings.batch_size
    generator = torch.Generator().manual_seed(seed)
    sampler = (DistributedSampler(train, seed=seed) if where.world > 1
               else RandomSampler(train, replacement=True, num_samples=batch * 1000,
                                  generator=generator))
    loader = DataLoader(train, batch_size=batch, sampler=sampler, drop_last=where.world > 1,
                        num_workers=settings.workers)
    scale = batch * where.world / 16  # the lr is the reference's at its global batch of 16
    optimizer = make_optimizer(model, settings, settings.lr * scale)
    scheduler = PolyLRScheduler(optimizer, t_initial=settings.iterations, power=settings.power,
                                lr_min=settings.min_lr * scale,
                                warmup_t=settings.warmup_iters,
                                warmup_lr_init=settings.lr * scale * settings.warmup_ratio,
                                t_in_epochs=False)
    last_ckpt, best_ckpt = root / "checkpoints" / "last.pt", root / "checkpoints" / "best.pt"
    stamp = fingerprint(settings, ("workers", "iterations", "eval_every"), info["weights"],
                        task=task.name, crop=crop, window=window, seed=seed, world=where.world)
    step, best = 0, None
    state = (torch.load(last_ckpt, map_location="cpu", weights_only=False)
             if resume and last_ckpt.exists() else None)
    if state is not None and state.get("fingerprint") != stamp:
        log.warning("%s was written for other settings or weights: starting afresh", last_ckpt)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        generator.set_state(state["sampler_rng"])
        step, best = state["step"], state["best"]
        log.info("resuming %s after iteration %d", last_ckpt, step)
    scheduler.step_update(step)
    trainable = (DistributedDataParallel(model, device_ids=[where.device.index]
                                         if where.device.type == "cuda" else None)
                 if where.world > 1 else model)
    config = {"task": task.name, "kind": task.kind, "init": init, **info, "crop": crop,
              "window_size": window, "batch_size": batch, "world_size": where.world,
              "settings": dataclasses.asdict(settings), "seed": seed,
              "train": len(train), "val": len(val) if val is not None else None,
              "test": len(test), "selection": "best validation" if val is not None else "last"}
    if where.main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "config.json", json.dumps(config, indent=1, default=str) + "\n")
    history = History(root / "history.csv", ["iteration", "loss", "lr", task.select],
                      state.get("history") if state else None, where.main)
    bar = tqdm(total=settings.iterations, initial=step, unit="it",
               desc=f"finetune {task.name} ({info['init_name']})",
               disable=not (progress and where.main))
    batches = _forever(loader, sampler)
    model.train()
    losses: list[float] = []
    while step < settings.iterations:
        images, targets = next(batches)
        with autocast(where.device):
            out = trainable(images.to(where.device)).float()
        loss = _loss(task, out, targets.to(where.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(step)
        losses.append(loss.item())
        bar.update(1)
        if step % settings.eval_every == 0 or step == settings.iterations:
            score = (evaluate(model, val, task, crop, where.device)[task.select]
                     if val is not None else None)
            history.add([step, sum(losses) / len(losses), optimizer.param_groups[-1]["lr"],
                         score])
            if where.main:
                if score is not None and (best is None or score > best):
                    best = score
                    atomic_torch_save({"model": model.state_dict(), "step": step,
                                       "val": score}, best_ckpt)
                atomic_torch_save({"model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(),
                                   "rng": torch.get_rng_state(),
                                   "sampler_rng": generator.get_state(), "step": step,
                                   "best": best, "fingerprint": stamp,
                                   "history": history.rows}, last_ckpt)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}",
                            **({task.select: f"{score:.2f}"} if score is not None else {}))
            losses = []
    bar.close()
    check_replicas(model, where)
    if val is not None and best_ckpt.exists():
        model.load_state_dict(torch.load(best_ckpt, map_location="cpu",
                                         weights_only=False)["model"])
    results = evaluate(model, test, task, crop, where.device)
    metrics: dict[str, Any] = {}
    if where.main:
        metrics = {"task": task.name, "init": info["init_name"],
                   "scores": {k: results[k] for k in task.scores},
                   "details": {k: v for k, v in results.items() if k not in task.scores},
                   "val": best, "iterations": step, "world_size": where.world,
                   "weights": info["weights"]}
        atomic_write_text(root / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
