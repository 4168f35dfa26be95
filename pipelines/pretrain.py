"""``geopile pretrain BUILD``: GFM continual pretraining on a build's shards, resumable, DDP.

One process per GPU (or CPU process) under ``torchrun``; a plain ``geopile pretrain`` is a world
of one. GFM is a step on the training engine (:mod:`pipelines.engine`): the frozen teacher's
features and the masked student's losses, ``L = L_MIM + alpha L_feat``, for one batch of the
build's stream. The engine checkpoints everything needed to continue exactly (model,
optimiser, stream position, RNG states, energy so far) in ``checkpoints/last.pt``.

A run directory (``paths.runs``/BUILD) holds::

    config.json            resolved settings, teacher, shards, world size
    checkpoints/last.pt    the resumable state
    loss.csv, loss.png     the loss curve (dvc plots)
    metrics.json           final losses, images/s, kWh and CO2e (dvc metrics)
    tb/                    TensorBoard scalars
    encoder/               timm-format and GFM-layout encoder weights
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from timm.scheduler import CosineLRScheduler

from geopile.augment import GfmTransform
from geopile.settings import Pretrain, Settings
from geopile.stream.index import INDEX
from model.configs import GfmConfig, get_config
from model.export import export_encoder, load_exported
from model.gfm import GFM
from model.optim import param_groups
from model.teacher import FrozenTeacher
from pipelines.batches import Endless
from pipelines.energy import energy_line
from pipelines.engine import (
    Dist,
    Loop,
    Run,
    fingerprint,
    init_distributed,
    seed_everything,
    weights_digest,
    write_json,
)
from pipelines.loader import GeoPileLoader, normalize

log = logging.getLogger(__name__)
LOSSES = ["loss", "mim", "feat"]


def model_config(settings: Pretrain) -> GfmConfig:
    """The model configuration, with the teacher's name overridden if asked."""
    config = get_config(settings.model)
    if settings.teacher.name:
        config = dataclasses.replace(
            config, teacher=dataclasses.replace(config.teacher, name=settings.teacher.name))
    return config


def shards_url(settings: Settings, build: str) -> str:
    """The build's location: local ``paths.shards/BUILD`` or ``stream.url/BUILD`` on S3."""
    if settings.pretrain.stream.url:
        return f"{settings.pretrain.stream.url.rstrip('/')}/{build}"
    return str(settings.paths.shards / build)


def run_dir(settings: Settings, build: str) -> Path:
    """Where a build's pretraining run lives."""
    return settings.paths.runs / build


@dataclass
class Schedule:
    """Steps and learning rates of a run (lrs already scaled by global batch / 512)."""

    total: int
    warmup: int
    per_epoch: int
    global_batch: int
    lr: float
    warmup_lr: float
    min_lr: float


def make_schedule(settings: Pretrain, batches_per_epoch: int, world: int) -> Schedule:
    """Optimiser steps per epoch and in all, and the lrs scaled by the global batch."""
    per_epoch = batches_per_epoch // settings.accumulate
    if per_epoch < 1:
        raise ValueError(f"an epoch holds {batches_per_epoch} batches per rank, fewer than "
                         f"accumulate={settings.accumulate}: use a smaller batch_size")
    if settings.steps:
        total = settings.steps
        warmup = round(total * settings.warmup_epochs / max(settings.epochs, 1))
    else:
        total, warmup = settings.epochs * per_epoch, settings.warmup_epochs * per_epoch
    global_batch = settings.batch_size * world * settings.accumulate
    scale = global_batch / 512
    return Schedule(total, warmup, per_epoch, global_batch, settings.base_lr * scale,
                    settings.warmup_lr * scale, settings.min_lr * scale)


def make_optimizer(model: torch.nn.Module, settings: Pretrain,
                   lr: float) -> torch.optim.Optimizer:
    """AdamW over the reference's two parameter groups; one fused kernel on CUDA."""
    cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=lr,
                             betas=tuple(settings.betas), eps=settings.eps,
                             fused=True if cuda else None)


def gfm_step(teacher: torch.nn.Module, device: torch.device,
             keys: list[str] | None = None, *, stretched: bool = False,
             teacher_channels: list[int] | None = None
             ) -> Callable[[torch.nn.Module, dict], dict]:
    """GFM's step: a batch of the stream in, ``loss``, ``mim`` and ``feat`` out.

    ``keys`` (when tracing) collects each batch's sample keys. ``stretched``: the loader
    streams bands stretched per band (``pretrain.bands``); ``teacher_channels``: the 3 of the
    batch's channels the RGB teacher sees (None: all of them, i.e. RGB).
    """
    def step(student: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = normalize(batch["image"].to(device, non_blocking=True)
                           .contiguous(memory_format=torch.channels_last), stretched)
        mask = batch["mask"].to(device, non_blocking=True)
        if keys is not None:
            keys.extend(batch["key"])
        with torch.no_grad():
            target = teacher(images if teacher_channels is None
                             else images[:, teacher_channels].contiguous(
                                 memory_format=torch.channels_last))
        return student(images, mask, target)
    return step


def plot_losses(csv_path: Path, png_path: Path, title: str) -> None:
    """The loss curves as a PNG, for people who would rather look than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "L = L_MIM + alpha L_feat"), ("mim", "L_MIM"),
                       ("feat", "L_feat")):
        ax.plot(steps, [float(r[key]) for r in rows], label=label)
    ax.set_xlabel("optimiser step")
    ax.set_title(title)
    ax.legend()
    lr_ax.plot(steps, [float(r["lr"]) for r in rows])
    lr_ax.set_xlabel("optimiser step")
    lr_ax.set_title("learning rate")
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)


def _s3_object_exists(url: str) -> bool:
    """HEAD ``s3://bucket/key``: False when it is not there; other failures raise, explained."""
    import botocore.exceptions

    from geopile.s3 import s3_client

    parsed = urlparse(url)
    client = s3_client()
    try:
        client.head_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
    except botocore.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket",
                                                          "NotFound"):
            return False
        raise RuntimeError(f"cannot read {url}: {err}") from err
    except botocore.exceptions.BotoCoreError as err:
        raise RuntimeError(f"cannot read {url}: {err} (check AWS_ENDPOINT_URL and the "
                           "credentials)") from err
    return True


def check_inputs(build: str, url: str, settings: Pretrain, given: str) -> None:
    """Fail in seconds when the build's shards or the teacher file are missing.

    Runs before any model is built: loading the teacher by name is a download (minutes, or a
    47 s retry loop offline), and a missing build would only surface after it.

    Raises:
        FileNotFoundError: naming the build, where it looked (``given``: the setting or flag
            that chose the place) and the command that fixes it.
    """
    if url.startswith("s3://"):
        index = f"{url.rstrip('/')}/{INDEX}"
        found = _s3_object_exists(index)
        fix = f"write it with `geopile shard {build}` and upload it with `geopile push {build}`"
    else:
        index = str(Path(url) / INDEX)
        found = Path(index).is_file()
        fix = f"write it with `geopile shard {build}`"
    if given == "--shards":
        fix = "point --shards at a directory or s3://bucket/prefix/BUILD holding index.json"
    if not found:
        raise FileNotFoundError(f"build {build!r} has no shards: {index} does not exist "
                                f"({given}); {fix}")
    file = settings.teacher.file
    if file and not Path(file).expanduser().is_file():
        raise FileNotFoundError(
            f"pretrain.teacher.file: {file} does not exist; set it to a local copy of the "
            "teacher's weights (e.g. swin_base_patch4_window7_224_22k.pth), or to null to let "
            "timm download them by name (needs the network)")


# what a run may change between resumes: how it is run, not what it trains
VOLATILE = {"workers", "log_every", "checkpoint_every", "stream", "energy", "compile", "trace",
            "launcher"}


def teacher_channels(settings: Pretrain) -> list[int] | None:
    """Which of ``pretrain.bands`` the RGB teacher sees (None: the batch is its 3 channels)."""
    if settings.bands is None:
        if settings.teacher_bands is not None:
            raise ValueError("pretrain.teacher_bands is set but pretrain.bands is null (RGB): "
                             "set pretrain.bands too, or teacher_bands to null")
        return None
    chosen = settings.teacher_bands or settings.bands[:3]
    missing = [b for b in chosen if b not in settings.bands]
    if len(chosen) != 3 or missing:
        raise ValueError(f"pretrain.teacher_bands: the RGB teacher needs 3 of pretrain.bands "
                         f"{settings.bands}, got {chosen}"
                         + (f" ({', '.join(missing)} not among them)" if missing else ""))
    at = [settings.bands.index(b) for b in chosen]
    return None if at == [0, 1, 2] and len(settings.bands) == 3 else at


def run_pretrain(settings: Settings, build: str, *, resume: bool = False,
                 steps: int | None = None, progress: bool = True,
                 out: Path | None = None, shards: str | None = None) -> dict[str, Any]:
    """Pretrain on ``build`` (read from ``shards`` if given); returns rank 0's final metrics."""
    pre = settings.pretrain
    if steps is not None:
        pre = pre.model_copy(update={"steps": steps})
    seed = settings.seed
    where = init_distributed()
    config = model_config(pre)
    root = out or run_dir(settings, build)
    url = shards or shards_url(settings, build)
    check_inputs(build, url, pre, given="--shards" if shards else
                 "pretrain.stream.url" if pre.stream.url else "paths.shards")
    seed_everything(seed)
    cuda = where.device.type == "cuda"
    to_teacher = teacher_channels(pre)
    in_chans = 3 if pre.bands is None else len(pre.bands)

    # the frozen teacher, the student with its SimMIM decoder, the stream of masked images
    teacher = FrozenTeacher(config.teacher, file=pre.teacher.file,
                            distill_stage=pre.distill_stage).to(where.device)
    model = GFM(config, teacher_features=teacher.distill_features, alpha=pre.alpha,
                distill_stage=pre.distill_stage, in_chans=in_chans).to(where.device)
    transform = GfmTransform(size=config.img_size, mask_patch=config.mask_patch,
                             model_patch=config.model_patch, mask_ratio=config.mask_ratio,
                             seed=seed)
    loader = GeoPileLoader(url, batch_size=pre.batch_size, workers=pre.workers,
                           rank=where.rank, world=where.world, seed=seed, transform=transform,
                           cache_dir=pre.stream.cache_dir,
                           cache_bytes=pre.stream.cache_bytes, pin_memory=cuda,
                           max_bad_per_shard=pre.stream.max_bad_per_shard,
                           bands=pre.bands)
    sched = make_schedule(pre, len(loader), where.world)
    optimizer = make_optimizer(model, pre, sched.lr)
    # the reference's schedule: timm's per-step cosine with linear warm-up
    scheduler = CosineLRScheduler(optimizer, t_initial=sched.total, lr_min=sched.min_lr,
                                  warmup_lr_init=sched.warmup_lr, warmup_t=sched.warmup,
                                  cycle_limit=1, t_in_epochs=False)
    # the loader has read and parsed the build's index: its digest identifies the shards
    index_digest = hashlib.sha256(json.dumps(loader.stream.index, sort_keys=True).encode())
    # the global batch, not the world size: a run resumes on another number of processes
    # when world x accumulate stays the same (the loader deals the epoch's rest out again)
    # RGB runs leave the band settings out: their fingerprints stay those of older runs
    rgb_only = {"bands", "teacher_bands"} if pre.bands is None else set()
    stamp = fingerprint(settings=pre.model_dump(exclude=VOLATILE | {"accumulate"} | rgb_only),
                        seed=seed, global_batch=sched.global_batch, index=index_digest.hexdigest())
    run = Run(root, where, model, optimizer, scheduler, Endless(loader),
              Loop(steps=sched.total, steps_per_epoch=sched.per_epoch,
                   log_every=pre.log_every, checkpoint_every=pre.checkpoint_every,
                   accumulate=pre.accumulate, clip_grad=pre.clip_grad,
                   images_per_step=sched.global_batch),
              stamp, LOSSES, history_name="loss.csv", desc=f"pretrain {build}", tag="pretrain",
              progress=progress, compile=pre.compile,
              energy=pre.energy if pre.energy.enabled else None)
    if resume:
        run.resume()

    run_config = {
        "build": build, "shards": url, "model": pre.model,
        "teacher": {"name": config.teacher.name, "source": teacher.source,
                    "img_size": config.teacher.img_size},
        "world_size": where.world, "global_batch": sched.global_batch,
        "steps": sched.total, "warmup_steps": sched.warmup, "steps_per_epoch": sched.per_epoch,
        "lr": sched.lr, "device": str(where.device), "precision": "bf16" if cuda else "fp32",
        "fingerprint": stamp, "settings": pre.model_dump(), "seed": seed,
    }
    if where.main:
        write_json(root / "config.json", run_config)
        log.info("pretraining %s (%s) on %s: teacher %s, %d steps of %d images, %s",
                 pre.model, run_config["precision"], url, teacher.source, sched.total,
                 sched.global_batch, where.device)
    teacher_fn = torch.compile(teacher) if pre.compile and cuda else teacher
    keys: list[str] | None = [] if pre.trace else None
    last = run.fit(gfm_step(teacher_fn, where.device, keys, stretched=pre.bands is not None,
                            teacher_channels=to_teacher),
                   after_step=_tracer(root, where, model, keys) if keys is not None else None)

    metrics: dict[str, Any] = {}
    if where.main:
        plot_losses(root / "loss.csv", root / "loss.png", f"GFM pretraining: {build}")
        meta = {"build": build, "model": pre.model, "steps": run.step,
                "teacher": teacher.source, "fingerprint": stamp}
        export_encoder(model, config, root / "encoder", meta)
        energy = run.energy_used
        # metrics.json: what the same seed reproduces byte for byte; what the machine measured
        # (speed, energy) goes to energy.json
        metrics = {**{k: round(last[k], 6) for k in (*LOSSES, "lr") if k in last},
                   "steps": run.step, "epochs": round(run.step / sched.per_epoch, 3),
                   "images_seen": run.step * sched.global_batch,
                   "skipped_samples": loader.state.skipped,
                   "teacher": teacher.source}
        write_json(root / "metrics.json", metrics)
        write_json(root / "energy.json", {**(energy or {}), "images_per_s": (
            round(last["images_per_s"], 3) if last.get("images_per_s") is not None else None)})
        log.info(energy_line(energy))
    if where.world > 1:
        torch.distributed.barrier()
    return metrics


def _tracer(root: Path, where: Dist, model: torch.nn.Module,
            keys: list[str]) -> Callable[[int], None]:
    """Each rank's audit trace: per optimiser step, the samples it saw and a weight digest."""
    (root / "trace").mkdir(parents=True, exist_ok=True)
    path = root / "trace" / f"rank{where.rank}.jsonl"

    def trace(step: int) -> None:
        with path.open("a") as f:
            f.write(json.dumps({"step": step, "keys": list(keys),
                                "weights": weights_digest(model)}) + "\n")
        keys.clear()
    return trace


def summary(root: Path) -> str:
    """What the run wrote, for the console."""
    metrics = json.loads((root / "metrics.json").read_text())
    energy = json.loads((root / "energy.json").read_text())
    speed = energy.get("images_per_s")
    return "\n".join([
        f"pretrained {metrics['steps']} steps ({metrics['epochs']} epochs, "
        f"{metrics['images_seen']} images) with teacher {metrics['teacher']}",
        f"final loss {metrics['loss']:.4f} (L_MIM {metrics['mim']:.4f}, "
        f"L_feat {metrics['feat']:.4f})" + (f", {speed:.1f} images/s" if speed else ""),
        energy_line(energy),
        f"loss curve  {root / 'loss.png'} (data: {root / 'loss.csv'})",
        f"encoder     {root / 'encoder'}/encoder.timm.safetensors (timm), encoder.gfm.pth (GFM)"
        f"; timm loads it: {sum(p.numel() for p in load_exported(root / 'encoder').parameters())}"
        " parameters",
        f"tensorboard --logdir {root / 'tb'}",
    ])

