"""``geopile finetune TASK --init ...``: the reference finetuning recipe on a downstream task.

``--init`` is a pretraining run of ours (its ``encoder/``), ``imagenet22k`` (the baseline: the
ImageNet-22k Swin-B, from timm or ``finetune.imagenet22k.file``) or ``random``. The recipe's
values are the defaults under ``finetune:`` in params.yaml (FACTS.md section 1): layer decay 0.9,
100 epochs with 20 of warm-up, lr 1e-4 per 512 images, wd 0.05, drop-path 0.1, mixup 0.8 /
cutmix 1.0 / label smoothing 0.1 through timm, the task's size and window (position tables are
resized by timm when they differ from the checkpoint's).

A run directory (``paths.runs``/finetune/TASK/INIT) holds ``config.json``, ``checkpoints/last.pt``
(resumable, per epoch), ``checkpoints/best.pt`` (best validation score), ``metrics.json``
(``{"task", "init", "scores": {metric: test score}}``, read by ``geopile arp``) and
``history.csv``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD
from geopile.params import ParamsError
from model.configs import SwinSpec, get_config
from model.student import create_swin
from pipelines.common import History, atomic_torch_save, atomic_write_text, coerce_floats
from pipelines.dense_tasks import DENSE_TASKS
from pipelines.pretrain import Dist, exported_timm_args, init_distributed, weights_digest
from pipelines.tasks import TASKS, Task, TorchgeoSamples, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baseline:
    """The ImageNet-22k baseline's weights: a timm name, or a local file."""

    name: str | None = None  # None: the model configuration's teacher
    file: str | None = None


@dataclass(frozen=True)
class FinetuneSettings:
    """``finetune:`` in params.yaml."""

    model: str = "swin-b"  # the architecture of --init random / imagenet22k
    pretrained: str = "paper"  # `--init ours` is the pretraining run of this build
    imagenet22k: Baseline = field(default_factory=Baseline)
    epochs: int = 100
    warmup_epochs: int = 20
    batch_size: int = 64  # per process
    base_lr: float = 1e-4  # per 512 images of global batch, as in pretraining
    warmup_lr: float = 2.5e-7
    min_lr: float = 2.5e-7
    weight_decay: float = 0.05
    layer_decay: float = 0.9
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float = 5.0
    workers: int = 8
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)  # img_size/window_size
    dense: dict[str, Any] = field(default_factory=dict)  # pipelines.dense.DenseSettings

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FinetuneSettings:
        """Settings from the ``finetune`` block; unknown keys are an error."""
        block = dict(params.get("finetune") or {})
        try:
            block["imagenet22k"] = Baseline(**(block.get("imagenet22k") or {}))
            settings = cls(**coerce_floats(cls, block, "finetune"))
        except TypeError as err:
            raise ParamsError(f"finetune: {err}") from err
        get_config(settings.model)
        return settings


def resolve_init(init: str, settings: FinetuneSettings, img_size: int, window_size: int,
                 runs_root: str | Path = "runs") -> tuple[SwinSpec, str | None, bool, str]:
    """(architecture, weights file, fetch from timm?, a name for the run) for ``--init``.

    ``ours`` is ``runs_root/finetune.pretrained``; any other path is a pretraining run.
    """
    config = get_config(settings.model)
    if init == "ours":
        init = str(Path(runs_root) / settings.pretrained)
    if init == "random":
        return (dataclasses.replace(config.student, img_size=img_size, window_size=window_size),
                None, False, "random")
    if init == "imagenet22k":
        spec = config.teacher
        if settings.imagenet22k.name:
            spec = dataclasses.replace(spec, name=settings.imagenet22k.name)
        spec = dataclasses.replace(spec, img_size=img_size, window_size=window_size)
        return spec, settings.imagenet22k.file, settings.imagenet22k.file is None, "imagenet22k"
    path = Path(init)
    for card in (path / "encoder" / "encoder.json", path / "encoder.json"):
        if card.is_file():
            break
    else:
        raise FileNotFoundError(f"--init {init}: neither random, imagenet22k nor a run with "
                                "encoder/encoder.json (written by geopile pretrain)")
    timm_args = exported_timm_args(card.parent)
    arch = {k: v for k, v in timm_args.items()
            if k not in ("model_name", "num_classes", "img_size", "window_size")}
    spec = SwinSpec(timm_args["model_name"], img_size, window_size, arch)
    name = path.name if path.name != "encoder" else path.parent.name
    return spec, str(card.parent / "encoder.timm.safetensors"), False, f"ours-{name}"


def build_classifier(spec: SwinSpec, file: str | None, fetch: bool, num_classes: int,
                     drop_path: float) -> torch.nn.Module:
    """A timm Swin classifier; pretrained weights are checked to have arrived."""
    try:
        model = create_swin(spec, pretrained=fetch, file=file, num_classes=num_classes,
                            drop_path_rate=drop_path)
    except OSError as err:  # no network for the hub, or an unreadable local file
        where = file or f"timm's hub copy of {spec.name}"
        hint = (" Offline? Download the ImageNet-22k weights (swin_base_patch4_window7_224_22k.pth"
                " or timm's safetensors) and set finetune.imagenet22k.file" if fetch else "")
        raise RuntimeError(f"could not load the weights from {where}: {str(err).rstrip('.')}."
                           f"{hint}") from err
    if file and file.endswith(".safetensors"):
        # a new head makes timm load non-strictly: make sure the encoder really came in
        saved = load_file(file)
        key = "patch_embed.proj.weight"
        if key in saved and not torch.equal(saved[key], model.state_dict()[key]):
            raise RuntimeError(f"{file}: the encoder's weights did not load into {spec.name}")
    return model


def _transform(task: Task, size: int, train: bool) -> v2.Compose:
    """0..255 (through the task's own scaling), resize or augment, ImageNet normalisation."""
    ops: list[Any] = [v2.ToDtype(torch.float32, scale=False)]
    if task.to_255 is not None:
        ops.append(v2.Lambda(task.to_255))
    ops.append(v2.Lambda(lambda x: x / 255.0))
    if train:
        ops += [v2.RandomResizedCrop(size, scale=task.crop_scale, antialias=True),
                v2.RandomHorizontalFlip()]
        if task.vflip:
            ops.append(v2.RandomVerticalFlip())
    else:
        ops += [v2.Resize((size, size), antialias=True)]
    # always normalised (the reference forgets to for BigEarthNet without mixup)
    ops.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(ops)


def subset_indices(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded sample of ``int(fraction * n)`` of ``range(n)`` without replacement, sorted.

    The reference drew its BigEarthNet subsets with replacement, so about 5% of a 10% subset
    were repeats; this draws each index at most once.
    """
    size = int(fraction * n)
    if size < 1:
        raise ValueError(f"a {fraction:.0%} subset of {n} training samples is empty")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=size, replace=False).tolist())


def _metric(task: Task, device: torch.device):  # noqa: ANN202 - a torchmetrics Metric
    from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

    if task.multilabel:
        return MultilabelAveragePrecision(num_labels=task.num_classes, average="micro").to(device)
    return MulticlassAccuracy(num_classes=task.num_classes, average="micro").to(device)


def _criterion(task: Task, settings: FinetuneSettings, mixup: bool) -> torch.nn.Module:
    """Soft-target losses after mixup; otherwise CE (single label) or BCE (multi-label)."""
    if task.multilabel:
        return torch.nn.BCEWithLogitsLoss()  # takes mixup's (smoothed) soft targets as they are
    if mixup:
        return SoftTargetCrossEntropy()
    return torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)


def autocast(device: torch.device):  # noqa: ANN201 - a context manager
    """bf16 autocast on CUDA (as in pretraining), float32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def datasets_rank0_first(task: Any, params: dict[str, Any], where: Dist) -> dict[str, Dataset]:
    """The task's splits; under torchrun rank 0 fetches and extracts, the others then find it."""
    if where.world > 1 and not where.main:
        dist.barrier()
    splits = task.datasets(params)
    if where.world > 1 and where.main:
        dist.barrier()
    return splits


def check_replicas(model: torch.nn.Module, where: Dist) -> None:
    """Under DDP, fail if the processes ended with different weights.

    DDP keeps replicas equal; a silent divergence would taint the score.
    """
    if where.world > 1:
        digests: list[Any] = [None] * where.world
        dist.all_gather_object(digests, weights_digest(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the {where.world} processes ended with different weights "
                               f"({digests}); the run is not valid")
        dist.barrier()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, task: Task,
             device: torch.device) -> tuple[float, float]:
    """The task's metric over a split and its chance level, both in percent (the paper's scale).

    Chance is what uninformed scores get in expectation: 1/classes for top-1, and for micro AP
    the share of positive (image, label) pairs.
    """
    metric = _metric(task, device)
    model.eval()
    positives, pairs = 0, 0
    for images, labels in loader:
        with autocast(device):
            logits = model(images.to(device)).float()
        metric.update(logits, labels.to(device))
        positives, pairs = positives + int(labels.sum()), pairs + labels.numel()
    model.train()
    chance = positives / max(pairs, 1) if task.multilabel else 1 / task.num_classes
    return float(metric.compute()) * 100, chance * 100


def fingerprint(settings: Any, volatile: tuple[str, ...], weights: str | None,
                **identity: Any) -> str:
    """What a checkpoint must match to be resumed.

    The settings (less ``volatile`` ones, which a run may change between resumes), the initial
    weights' digest, and ``identity``.
    """
    keep = dataclasses.asdict(settings)
    for key in volatile:
        keep.pop(key)
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if weights else None
    blob = json.dumps({"settings": keep, "weights": digest, **identity}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_dir(params: dict[str, Any], task: str, init_name: str) -> Path:
    """Where a finetuning run lives."""
    return Path((params.get("paths") or {}).get("runs", "runs")) / "finetune" / task / init_name


def run_finetune(params: dict[str, Any], task_name: str, init: str, *, resume: bool = False,
                 epochs: int | None = None, iterations: int | None = None,
                 progress: bool = True, out: Path | None = None) -> dict[str, Any]:
    """Finetune ``init`` on ``task_name``; returns rank 0's metrics.

    Classification tasks train for epochs (here); the dense ones for iterations
    (:mod:`pipelines.dense`).
    """
    if task_name in DENSE_TASKS:
        from pipelines.dense import run_dense

        return run_dense(params, DENSE_TASKS[task_name], init, resume=resume,
                         iterations=iterations, progress=progress, out=out)
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of "
                         f"{[*TASKS, *DENSE_TASKS]}")
    settings = FinetuneSettings.from_params(params)
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    task = get_task(task_name)
    geometry = settings.tasks.get(task.name, {})
    img_size = int(geometry.get("img_size", task.img_size))
    window_size = int(geometry.get("window_size", task.window_size))
    seed = int(params.get("seed", 0))
    where = init_distributed()
    runs = Path((params.get("paths") or {}).get("runs", "runs"))
    spec, file, fetch, init_name = resolve_init(init, settings, img_size, window_size, runs)
    root = out or run_dir(params, task.name, init_name)

    torch.manual_seed(seed)
    model = build_classifier(spec, file, fetch, task.num_classes, settings.drop_path)
    model = model.to(where.device)
    splits = datasets_rank0_first(task, params, where)
    train_full = TorchgeoSamples(splits["train"], _transform(task, img_size, True))
    val = TorchgeoSamples(splits["val"], _transform(task, img_size, False))
    test = TorchgeoSamples(splits["test"], _transform(task, img_size, False))
    train: Dataset = train_full
    subset = None
    if task.train_fraction < 1:
        indices = subset_indices(len(train_full), task.train_fraction, seed)
        train = Subset(train_full, indices)
        subset = {"fraction": task.train_fraction, "seed": seed, "size": len(indices),
                  "of": len(train_full), "replacement": False, "indices": indices,
                  "samples": [train_full.sample_id(i) for i in indices]}
    batch = min(settings.batch_size, len(train) // where.world)
    batch -= batch % 2  # mixup pairs samples
    if batch < 2:
        raise ValueError(f"{task.name}: {len(train)} training images are too few for "
                         f"{where.world} processes")
    generator = torch.Generator().manual_seed(seed)
    sampler = (DistributedSampler(train, seed=seed, drop_last=True) if where.world > 1
               else RandomSampler(train, generator=generator))
    train_loader = DataLoader(train, batch_size=batch, sampler=sampler, drop_last=True,
                              num_workers=settings.workers, persistent_workers=False)
    val_loader = DataLoader(val, batch_size=batch, num_workers=settings.workers)
    test_loader = DataLoader(test, batch_size=batch, num_workers=settings.workers)
    per_epoch = len(train_loader)
    total, warmup = settings.epochs * per_epoch, settings.warmup_epochs * per_epoch
    scale = batch * where.world / 512
    optimizer = create_optimizer_v2(model, "adamw", lr=settings.base_lr * scale,
                                    weight_decay=settings.weight_decay,
                                    layer_decay=settings.layer_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=settings.min_lr * scale,
                                  warmup_lr_init=settings.warmup_lr * scale, warmup_t=warmup,
                                  cycle_limit=1, t_in_epochs=False)
    mixup = None
    if settings.mixup > 0 or settings.cutmix > 0:
        mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                      label_smoothing=settings.label_smoothing, num_classes=task.num_classes,
                      multi_label=task.multilabel)
    criterion = _criterion(task, settings, mixup is not None)

    epoch, best = 0, -1.0
    last_ckpt, best_ckpt = root / "checkpoints" / "last.pt", root / "checkpoints" / "best.pt"
    # more epochs continue a run (on the longer schedule); `dense` is the other tasks' recipe
    stamp = fingerprint(settings, ("workers", "epochs", "dense"), file, task=task.name,
                        seed=seed, world=where.world)
    state = (torch.load(last_ckpt, map_location="cpu", weights_only=False)
             if resume and last_ckpt.exists() else None)
    if state is not None and state.get("fingerprint") != stamp:
        log.warning("%s was written for other settings or weights: starting afresh", last_ckpt)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        # the schedule is a function of the step: a run given more epochs continues on the
        # longer schedule (its state would bring back the old length)
        scheduler.step_update(state["epoch"] * per_epoch)
        torch.set_rng_state(state["rng"])
        generator.set_state(state["sampler_rng"])
        epoch, best = state["epoch"], state["best"]
        log.info("resuming %s after epoch %d", last_ckpt, epoch)
    trainable = (DistributedDataParallel(model, device_ids=[where.device.index]
                                         if where.device.type == "cuda" else None)
                 if where.world > 1 else model)
    config = {"task": task.name, "init": init, "init_name": init_name, "weights": file,
              "architecture": spec.name, "img_size": img_size, "window_size": window_size,
              "arch": spec.arch, "batch_size": batch, "world_size": where.world,
              "steps": total, "settings": dataclasses.asdict(settings), "seed": seed,
              "train": len(train), "val": len(val), "test": len(test)}
    if where.main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "config.json", json.dumps(config, indent=1, default=str) + "\n")
        if subset is not None:  # which training samples this run saw
            atomic_write_text(root / "subset.json", json.dumps(subset, indent=1) + "\n")
    history = History(root / "history.csv", ["epoch", "loss", "lr", "val"],
                      state.get("history") if state else None, where.main)
    bar = tqdm(total=settings.epochs, initial=epoch, unit="epoch",
               desc=f"finetune {task.name} ({init_name})", disable=not (progress and where.main))
    model.train()
    while epoch < settings.epochs:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        losses = []
        for i, (images, labels) in enumerate(train_loader):
            images, labels = images.to(where.device), labels.to(where.device)
            if task.multilabel:
                labels = labels.float()
            if mixup is not None:
                images, labels = mixup(images, labels)
            with autocast(where.device):
                loss = criterion(trainable(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
            optimizer.step()
            scheduler.step_update(epoch * per_epoch + i + 1)
            losses.append(loss.item())
        epoch += 1
        score, _ = evaluate(model, val_loader, task, where.device)
        history.add([epoch, sum(losses) / len(losses), optimizer.param_groups[-1]["lr"], score])
        if where.main:
            if score > best:
                best = score
                atomic_torch_save({"model": model.state_dict(), "epoch": epoch, "val": score},
                             best_ckpt)
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "rng": torch.get_rng_state(),
                          "sampler_rng": generator.get_state(), "epoch": epoch,
                          "best": best, "fingerprint": stamp, "history": history.rows},
                         last_ckpt)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}", val=f"{score:.1f}")
    bar.close()
    check_replicas(model, where)
    model.load_state_dict(torch.load(best_ckpt, map_location="cpu", weights_only=False)["model"])
    test_score, chance = evaluate(model, test_loader, task, where.device)
    metrics: dict[str, Any] = {}
    if where.main:
        metrics = {"task": task.name, "init": init_name, "scores": {task.metric: test_score},
                   "chance": {task.metric: chance}, "val": best, "epochs": epoch,
                   "train_samples": len(train), "world_size": where.world, "weights": file}
        atomic_write_text(root / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
