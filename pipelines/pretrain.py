"""``geopile pretrain BUILD``: GFM continual pretraining on a build's shards, resumable, DDP.

One process per GPU (or CPU process) under ``torchrun``; a plain ``geopile pretrain`` is a world
of one. Everything the run needs to continue exactly (model, optimiser, schedule, stream
position, RNG states, energy so far) is in ``checkpoints/last.pt``, written atomically.

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
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from geopile.augment import GfmTransform
from geopile.params import ParamsError
from geopile.shards import INDEX
from model.configs import GfmConfig, get_config
from model.export import gfm_state_dict, timm_state_dict
from model.gfm import GFM
from model.optim import param_groups
from model.teacher import FrozenTeacher
from pipelines.common import atomic_torch_save, atomic_write_text, coerce_floats
from pipelines.energy import EnergyMeter, EnergySettings, add_energy, energy_line
from pipelines.loader import GeoPileLoader, normalize

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoints/last.pt"
LOSS_FIELDS = ["step", "epoch", "loss", "mim", "feat", "lr", "images_per_s"]


@dataclass(frozen=True)
class StreamSettings:
    """Where the shards come from."""

    url: str | None = None  # None: paths.shards/BUILD; s3://bucket/prefix: prefix/BUILD there
    cache_dir: str | None = None  # keep whole S3 shards here (LRU) ...
    cache_bytes: int = 0  # ... up to this many bytes
    max_bad_per_shard: int = 3  # samples failing their checksum tolerated (skipped) per shard


@dataclass(frozen=True)
class TeacherSettings:
    """The frozen teacher: the configuration's timm name, or a local checkpoint file."""

    name: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class PretrainSettings:
    """``pretrain:`` in params.yaml (the paper's values there; see FACTS.md section 1)."""

    launcher: str = "geopile"  # the command dvc.yaml starts runs with (torchrun for many GPUs)
    model: str = "swin-b"
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    alpha: float = 1.0
    distill_stage: int = 3
    batch_size: int = 128  # per process
    accumulate: int = 1
    epochs: int = 100
    warmup_epochs: int = 10
    steps: int | None = None  # optimiser steps; overrides epochs (warm-up keeps its share)
    base_lr: float = 2e-4  # the three lrs are per 512 images of global batch
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 5.0
    compile: bool = False
    workers: int = 8
    checkpoint_every: int = 1000  # optimiser steps
    log_every: int = 20
    trace: bool = False  # each rank logs its samples and a weight digest per step (audits)
    stream: StreamSettings = field(default_factory=StreamSettings)
    energy: EnergySettings = field(default_factory=EnergySettings)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PretrainSettings:
        """Settings from the ``pretrain`` block; unknown keys are an error, not ignored."""
        block = dict(params.get("pretrain") or {})
        nested = {"teacher": TeacherSettings, "stream": StreamSettings,
                  "energy": EnergySettings}
        try:
            for key, kind in nested.items():
                block[key] = kind(**coerce_floats(kind, block.get(key) or {},
                                                  f"pretrain.{key}"))
            if "betas" in block:
                block["betas"] = tuple(float(b) for b in block["betas"])
            settings = cls(**coerce_floats(cls, block, "pretrain"))
        except TypeError as err:
            raise ParamsError(f"pretrain: {err}") from err
        get_config(settings.model)
        if settings.accumulate < 1 or settings.batch_size < 1:
            raise ParamsError("pretrain: batch_size and accumulate must be at least 1")
        return settings

    def config(self) -> GfmConfig:
        """The model configuration, with the teacher's name overridden if asked."""
        config = get_config(self.model)
        if self.teacher.name:
            config = dataclasses.replace(
                config, teacher=dataclasses.replace(config.teacher, name=self.teacher.name))
        return config


# ---------------------------------------------------------------------------------------------
# distribution


@dataclass(frozen=True)
class Dist:
    """A process's place: rank, world size, its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group that ``torchrun`` describes (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank, device)


def _mean_across(values: torch.Tensor, where: Dist) -> torch.Tensor:
    if where.world > 1:
        dist.all_reduce(values)
        values /= where.world
    return values


# ---------------------------------------------------------------------------------------------
# the run


def shards_url(params: dict[str, Any], build: str, settings: PretrainSettings) -> str:
    """The build's location: local ``paths.shards/BUILD`` or ``stream.url/BUILD`` on S3."""
    if settings.stream.url:
        return f"{settings.stream.url.rstrip('/')}/{build}"
    return str(Path((params.get("paths") or {}).get("shards", "shards")) / build)


def run_dir(params: dict[str, Any], build: str) -> Path:
    """Where a build's pretraining run lives."""
    return Path((params.get("paths") or {}).get("runs", "runs")) / build


def fingerprint(settings: PretrainSettings, seed: int, index: dict[str, Any],
                world: int) -> str:
    """What a checkpoint must match to be resumed: settings, seed, shards, world size.

    ``workers``, ``log_every`` and ``checkpoint_every`` may change across a resume, and so may
    where the shards are read from (their index digest is what counts).
    """
    keep = dataclasses.asdict(settings)
    for key in ("workers", "log_every", "checkpoint_every", "stream", "energy", "compile",
                "trace", "launcher"):
        keep.pop(key)
    blob = json.dumps({"settings": keep, "seed": seed, "world": world,
                       "index": hashlib.sha256(json.dumps(index, sort_keys=True).encode())
                       .hexdigest()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def make_schedule(settings: PretrainSettings, batches_per_epoch: int, world: int) -> Schedule:
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


class LossLog:
    """``loss.csv`` (dvc plots) kept in step with checkpoints: a resume drops later rows."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = []
        if resume_step and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOSS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.last = ({k: float(v) for k, v in rows[-1].items() if k != "step"} if rows
                     else {})  # what a resumed, already finished run reports
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, LOSS_FIELDS)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush (a killed run keeps what it logged)."""
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()


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


def export_encoder(model: GFM, config: GfmConfig, out: Path, meta: dict[str, Any]) -> None:
    """The student encoder in timm's format and in the reference GFM layout."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".encoder.timm.safetensors.tmp"
    save_file(timm_state_dict(model.student), str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates it private
    os.replace(tmp, out / "encoder.timm.safetensors")
    atomic_torch_save({"model": gfm_state_dict(model.student), "meta": meta},
                 out / "encoder.gfm.pth")
    spec = config.student
    load = {"model_name": spec.name, "num_classes": 0, "img_size": spec.img_size,
            "window_size": spec.window_size, **spec.arch}
    usage = (f"timm.create_model({spec.name!r}, pretrained=True, pretrained_cfg_overlay="
             f"dict(file='encoder.timm.safetensors'), num_classes=0, img_size={spec.img_size}, "
             f"window_size={spec.window_size}"
             + "".join(f", {k}={v!r}" for k, v in spec.arch.items()) + ")")
    atomic_write_text(out / "encoder.json", json.dumps(
        {"timm": load, "usage": usage, **meta}, indent=1) + "\n")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests, identical weights."""
    digest = hashlib.sha256()
    for _, param in sorted(module.named_parameters()):
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def make_optimizer(model: torch.nn.Module, settings: PretrainSettings,
                   lr: float) -> torch.optim.Optimizer:
    """AdamW over the reference's two parameter groups; one fused kernel on CUDA."""
    cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=lr,
                             betas=settings.betas, eps=settings.eps, fused=True if cuda else None)


def micro_step(trainable: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor,
               mask: torch.Tensor, accumulate: int = 1) -> dict[str, torch.Tensor]:
    """Forward (bf16 autocast on CUDA, float32 on CPU) and backward of one batch."""
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if images.is_cuda
                else nullcontext())
    with autocast:
        with torch.no_grad():
            target = teacher(images)
        out = trainable(images, mask, target)
    (out["loss"] / accumulate).backward()
    return out


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   clip: float) -> None:
    """Clip the gradient norm, step, and free the gradients."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _s3_object_exists(url: str) -> bool:
    """HEAD ``s3://bucket/key``: False when it is not there; other failures raise, explained."""
    import boto3
    import botocore.config
    import botocore.exceptions

    parsed = urlparse(url)
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                          config=botocore.config.Config(connect_timeout=10, read_timeout=30,
                                                        retries={"max_attempts": 3}))
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


def check_inputs(build: str, url: str, settings: PretrainSettings, given: str) -> None:
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


def run_pretrain(params: dict[str, Any], build: str, *, resume: bool = False,
                 steps: int | None = None, progress: bool = True,
                 out: Path | None = None, shards: str | None = None) -> dict[str, Any]:
    """Pretrain on ``build`` (read from ``shards`` if given); returns rank 0's final metrics."""
    settings = PretrainSettings.from_params(params)
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    seed = int(params.get("seed", 0))
    where = init_distributed()
    config = settings.config()
    root = out or run_dir(params, build)
    url = shards or shards_url(params, build, settings)
    check_inputs(build, url, settings, given="--shards" if shards else
                 "pretrain.stream.url" if settings.stream.url else "paths.shards")

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    cuda = where.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    teacher = FrozenTeacher(config.teacher, file=settings.teacher.file,
                            distill_stage=settings.distill_stage).to(where.device)
    model = GFM(config, teacher_features=teacher.distill_features, alpha=settings.alpha,
                distill_stage=settings.distill_stage).to(where.device)
    transform = GfmTransform(size=config.img_size, mask_patch=config.mask_patch,
                             model_patch=config.model_patch, mask_ratio=config.mask_ratio,
                             seed=seed)
    loader = GeoPileLoader(url, batch_size=settings.batch_size, workers=settings.workers,
                           rank=where.rank, world=where.world, seed=seed, transform=transform,
                           cache_dir=settings.stream.cache_dir,
                           cache_bytes=settings.stream.cache_bytes, pin_memory=cuda,
                           max_bad_per_shard=settings.stream.max_bad_per_shard)
    # the loader has read and parsed the build's index: its digest identifies the shards
    stamp = fingerprint(settings, seed, loader.stream.index, where.world)
    sched = make_schedule(settings, len(loader), where.world)
    optimizer = make_optimizer(model, settings, sched.lr)
    # the reference's schedule: timm's per-step cosine with linear warm-up
    scheduler = CosineLRScheduler(optimizer, t_initial=sched.total, lr_min=sched.min_lr,
                                  warmup_lr_init=sched.warmup_lr, warmup_t=sched.warmup,
                                  cycle_limit=1, t_in_epochs=False)

    step, energy_before = 0, None
    checkpoint = root / CHECKPOINT
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["fingerprint"] != stamp:
            if where.main:
                log.warning("%s was written for other settings or shards: starting afresh",
                            checkpoint)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            loader.load_state_dict(state["loader"])
            _set_rng_state(state["rng"])
            step, energy_before = state["step"], state.get("energy")
            if where.main:
                log.info("resuming %s at step %d of %d", checkpoint, step, sched.total)
    scheduler.step_update(step)

    trainable = model
    if settings.compile and cuda:  # on the CPU compilation costs more than it saves here
        trainable, teacher_fn = torch.compile(model), torch.compile(teacher)
    else:
        teacher_fn = teacher
    if where.world > 1:
        trainable = DistributedDataParallel(
            trainable, device_ids=[where.device.index] if cuda else None)

    run_config = {
        "build": build, "shards": url, "model": settings.model,
        "teacher": {"name": config.teacher.name, "source": teacher.source,
                    "img_size": config.teacher.img_size},
        "world_size": where.world, "global_batch": sched.global_batch,
        "steps": sched.total, "warmup_steps": sched.warmup, "steps_per_epoch": sched.per_epoch,
        "lr": sched.lr, "device": str(where.device), "precision": "bf16" if cuda else "fp32",
        "fingerprint": stamp, "settings": dataclasses.asdict(settings), "seed": seed,
    }
    writer = losses = None
    last: dict[str, float] = {}
    if where.main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "config.json",
                          json.dumps(run_config, indent=1, default=str) + "\n")
        log.info("pretraining %s (%s) on %s: teacher %s, %d steps of %d images, %s",
                 settings.model, run_config["precision"], url, teacher.source, sched.total,
                 sched.global_batch, where.device)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(root / "tb"), purge_step=step or None)
        losses = LossLog(root / "loss.csv", step)
        last = {k: v for k, v in losses.last.items() if k != "epoch"}
    trace = None
    if settings.trace:
        (root / "trace").mkdir(parents=True, exist_ok=True)
        trace = (root / "trace" / f"rank{where.rank}.jsonl").open("a")
    # rank 0's machine, all of it (machine mode): every GPU, CPU and DIMM of that node
    meter = EnergyMeter(settings.energy) if where.main else None
    if meter:
        meter.start()

    def save() -> None:
        if not where.main:
            return
        energy = add_energy(energy_before, meter.snapshot() if meter else None)
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                      "rng": _rng_state(), "step": step, "fingerprint": stamp,
                      "energy": energy, "config": run_config}, checkpoint)

    bar = tqdm(total=sched.total, initial=step, unit="step", desc=f"pretrain {build}",
               disable=not (progress and where.main), dynamic_ncols=True)
    sums = torch.zeros(3, device=where.device)  # loss, mim, feat over the log interval
    logged, tic, micro, keys = 0, time.perf_counter(), 0, []
    model.train()
    while step < sched.total:
        for batch in loader:
            images = normalize(batch["image"].to(where.device, non_blocking=True)
                               .contiguous(memory_format=torch.channels_last))
            mask = batch["mask"].to(where.device, non_blocking=True)
            micro += 1
            if trace:
                keys += batch["key"]
            sync = micro % settings.accumulate == 0
            context = (trainable.no_sync() if where.world > 1 and not sync else nullcontext())
            with context:
                out = micro_step(trainable, teacher_fn, images, mask, settings.accumulate)
            sums += torch.stack([out["loss"].detach().float(), out["mim"].float(),
                                 out["feat"].float()]) / settings.accumulate
            if not sync:
                continue
            optimizer_step(model, optimizer, settings.clip_grad)
            step += 1
            logged += 1
            scheduler.step_update(step)
            if trace:
                trace.write(json.dumps({"step": step, "keys": keys,
                                        "weights": weights_digest(model)}) + "\n")
                trace.flush()
            keys = []
            bar.update(1)
            if step % settings.log_every == 0 or step == sched.total:
                means = (_mean_across(sums, where) / logged).tolist()
                elapsed = time.perf_counter() - tic
                last = {"loss": means[0], "mim": means[1], "feat": means[2],
                        "lr": optimizer.param_groups[0]["lr"],
                        "images_per_s": logged * sched.global_batch / elapsed}
                if where.main:
                    row = {"step": step, "epoch": round(step / sched.per_epoch, 3), **last}
                    losses.write(row)
                    for key in ("loss", "mim", "feat", "lr", "images_per_s"):
                        writer.add_scalar(f"pretrain/{key}", last[key], step)
                    bar.set_postfix(loss=f"{means[0]:.4f}", mim=f"{means[1]:.4f}",
                                    feat=f"{means[2]:.4f}")
                sums.zero_()
                logged, tic = 0, time.perf_counter()
            if step % settings.checkpoint_every == 0 or step == sched.total:
                save()
                if where.main and not progress and last:  # no bar: a line per checkpoint
                    log.info("step %d/%d: loss %.4f (L_MIM %.4f, L_feat %.4f), %.1f images/s",
                             step, sched.total, last["loss"], last["mim"], last["feat"],
                             last["images_per_s"])
            if step >= sched.total:
                break
    bar.close()
    if trace:
        trace.close()
    energy = add_energy(energy_before, meter.stop() if meter else None)
    metrics: dict[str, Any] = {}
    if where.main:
        losses.close()
        writer.close()
        plot_losses(root / "loss.csv", root / "loss.png", f"GFM pretraining: {build}")
        meta = {"build": build, "model": settings.model, "steps": step,
                "teacher": teacher.source, "fingerprint": stamp}
        export_encoder(model, config, root / "encoder", meta)
        metrics = {**{k: round(v, 6) for k, v in last.items()}, "steps": step,
                   "epochs": round(step / sched.per_epoch, 3),
                   "images_seen": step * sched.global_batch,
                   "skipped_samples": loader.state.skipped,
                   "kwh": energy["kwh"] if energy else None,
                   "kg_co2e": energy["kg_co2e"] if energy else None,
                   "teacher": teacher.source}
        atomic_write_text(root / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        atomic_write_text(root / "energy.json", json.dumps(energy, indent=1) + "\n")
        log.info(energy_line(energy))
    if where.world > 1:
        dist.barrier()
    return metrics


def exported_timm_args(encoder_dir: Path) -> dict[str, Any]:
    """``timm.create_model`` arguments of an exported encoder (``model_name`` included)."""
    card = json.loads((encoder_dir / "encoder.json").read_text())
    # JSON has no tuples: depths and heads come back as lists
    return {k: tuple(v) if isinstance(v, list) else v for k, v in card["timm"].items()}


def load_exported(encoder_dir: Path) -> torch.nn.Module:
    """The exported encoder, loaded the way a timm user would (the call in encoder.json)."""
    import timm

    kwargs = exported_timm_args(encoder_dir)
    name = kwargs.pop("model_name")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={
        "file": str(encoder_dir / "encoder.timm.safetensors")}, **kwargs)


def summary(root: Path) -> str:
    """What the run wrote, for the console."""
    metrics = json.loads((root / "metrics.json").read_text())
    energy = json.loads((root / "energy.json").read_text())
    return "\n".join([
        f"pretrained {metrics['steps']} steps ({metrics['epochs']} epochs, "
        f"{metrics['images_seen']} images) with teacher {metrics['teacher']}",
        f"final loss {metrics['loss']:.4f} (L_MIM {metrics['mim']:.4f}, "
        f"L_feat {metrics['feat']:.4f}), {metrics['images_per_s']:.1f} images/s",
        energy_line(energy),
        f"loss curve  {root / 'loss.png'} (data: {root / 'loss.csv'})",
        f"encoder     {root / 'encoder'}/encoder.timm.safetensors (timm), encoder.gfm.pth (GFM)"
        f"; timm loads it: {sum(p.numel() for p in load_exported(root / 'encoder').parameters())}"
        " parameters",
        f"tensorboard --logdir {root / 'tb'}",
    ])

