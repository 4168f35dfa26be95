"""Scene classification on the engine: the reference's finetuning recipe as a step/evaluate pair.

The recipe is ``finetune:`` in params.yaml (FACTS.md section 1): layer decay 0.9, 100 epochs
with 20 of warm-up, lr 1e-4 per 512 images, wd 0.05, drop-path 0.1, mixup 0.8 / cutmix 1.0 /
label smoothing 0.1 through timm; timm's AdamW with layer decay and per-step cosine schedule.
Validation after every epoch picks the checkpoint scored on test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD
from geopile.settings import Finetune
from pipelines.batches import EpochBatches
from pipelines.encoders import Init
from pipelines.engine import Dist, Loop, autocast
from pipelines.tasks.base import Prepared, Task, read_sample


class TorchgeoSamples(Dataset):
    """(image, label) pairs from a torchgeo dataset, through a tensor transform."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = read_sample(self.dataset, index)
        return self.transform(sample["image"]), sample["label"]

    def sample_id(self, index: int) -> str:
        """A name for sample ``index`` that survives re-ordering (its file or folder)."""
        ds = self.dataset
        if hasattr(ds, "folders"):  # BigEarthNet
            return Path(ds.folders[index]["s2"]).name
        if hasattr(ds, "samples"):  # torchvision ImageFolder-style (UC Merced)
            return Path(ds.samples[index][0]).name
        return str(index)


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


@dataclass(frozen=True, kw_only=True)
class ClassificationTask(Task):
    """Single- or multi-label scene classification with a linear head on the pooled encoder."""

    num_classes: int
    multilabel: bool
    train_fraction: float = 1.0  # a seeded sample of the training split, without replacement
    to_255: Callable[[torch.Tensor], torch.Tensor] | None = None  # raw values -> 0..255
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range
    vflip: bool = False  # vertical flips too (overhead imagery has no up)
    family: ClassVar[str] = "classification"

    def transform(self, size: int, train: bool) -> v2.Compose:
        """0..255 (through the task's own scaling), resize or augment, ImageNet normalisation."""
        ops: list[Any] = [v2.ToDtype(torch.float32, scale=False)]
        if self.to_255 is not None:
            ops.append(v2.Lambda(self.to_255))
        ops.append(v2.Lambda(lambda x: x / 255.0))
        if train:
            ops += [v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                    v2.RandomHorizontalFlip()]
            if self.vflip:
                ops.append(v2.RandomVerticalFlip())
        else:
            ops += [v2.Resize((size, size), antialias=True)]
        # always normalised (the reference forgets to for BigEarthNet without mixup)
        ops.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
        return v2.Compose(ops)

    def metric(self, device: torch.device):  # a torchmetrics Metric
        """Top-1 (single label) or micro average precision (multi-label)."""
        from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

        if self.multilabel:
            return MultilabelAveragePrecision(num_labels=self.num_classes,
                                              average="micro").to(device)
        return MulticlassAccuracy(num_classes=self.num_classes, average="micro").to(device)

    @torch.no_grad()
    def score(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """The task's metric and its chance level over a split, in percent (the paper's scale).

        Chance is what uninformed scores get in expectation: 1/classes for top-1, and for micro
        AP the share of positive (image, label) pairs.
        """
        metric, (key,) = self.metric(device), self.scores
        model.eval()
        positives, pairs = 0, 0
        for images, labels in loader:
            with autocast(device):
                logits = model(images.to(device)).float()
            metric.update(logits, labels.to(device))
            positives, pairs = positives + int(labels.sum()), pairs + labels.numel()
        chance = positives / max(pairs, 1) if self.multilabel else 1 / self.num_classes
        return {key: float(metric.compute()) * 100, f"chance_{key}": chance * 100}

    def prepare(self, settings: Finetune, splits: dict[str, Dataset], init: Init, where: Dist,
                seed: int, length: int | None) -> Prepared:
        """A classifier, its epochs of seeded batches (with mixup), AdamW and cosine."""
        model = init.build(self.num_classes, settings.drop_path).to(where.device)
        size, _ = self.geometry(settings)
        train_full = TorchgeoSamples(splits["train"], self.transform(size, True))
        evaluation = {s: TorchgeoSamples(splits[s], self.transform(size, False))
                      for s in ("val", "test")}
        train: Dataset = train_full
        files = {}
        if self.train_fraction < 1:
            indices = subset_indices(len(train_full), self.train_fraction, seed)
            train = Subset(train_full, indices)
            files["subset.json"] = {
                "fraction": self.train_fraction, "seed": seed, "size": len(indices),
                "of": len(train_full), "replacement": False, "indices": indices,
                "samples": [train_full.sample_id(i) for i in indices]}
        batch = min(settings.batch_size, len(train) // where.world)
        batch -= batch % 2  # mixup pairs samples
        if batch < 2:
            raise ValueError(f"{self.name}: {len(train)} training images are too few for "
                             f"{where.world} processes")
        batches = EpochBatches(train, batch, where, seed, settings.workers)
        epochs = length or settings.epochs
        per_epoch = len(batches)
        scale = batch * where.world / 512
        optimizer = create_optimizer_v2(model, "adamw", lr=settings.base_lr * scale,
                                        weight_decay=settings.weight_decay,
                                        layer_decay=settings.layer_decay)
        scheduler = CosineLRScheduler(optimizer, t_initial=epochs * per_epoch,
                                      lr_min=settings.min_lr * scale,
                                      warmup_lr_init=settings.warmup_lr * scale,
                                      warmup_t=settings.warmup_epochs * per_epoch,
                                      cycle_limit=1, t_in_epochs=False)
        mixup = None
        if settings.mixup > 0 or settings.cutmix > 0:
            mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                          label_smoothing=settings.label_smoothing,
                          num_classes=self.num_classes, multi_label=self.multilabel)
        if self.multilabel:  # BCE takes mixup's (smoothed) soft targets as they are
            criterion: nn.Module = nn.BCEWithLogitsLoss()
        elif mixup is not None:
            criterion = SoftTargetCrossEntropy()
        else:
            criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

        def step(trainable: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            images, labels = batch[0].to(where.device), batch[1].to(where.device)
            if self.multilabel:
                labels = labels.float()
            if mixup is not None:
                images, labels = mixup(images, labels)
            return {"loss": criterion(trainable(images).float(), labels)}

        loaders = {s: DataLoader(d, batch_size=batch, num_workers=settings.workers)
                   for s, d in evaluation.items()}

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            return self.score(model, loaders[split], where.device)

        return Prepared(
            model, optimizer, scheduler, batches,
            Loop(steps=epochs * per_epoch, steps_per_epoch=per_epoch, log_every=per_epoch,
                 checkpoint_every=per_epoch, eval_every=per_epoch, clip_grad=settings.clip_grad,
                 images_per_step=batch * where.world, select=self.select),
            ["loss"], step, evaluate,
            # what a resume must match: the recipe less what may change (more epochs continue
            # a run on the longer schedule; workers do not change what is learnt)
            identity={"img_size": size, "recipe": settings.model_dump(exclude={
                "workers", "epochs", "tasks", "imagenet22k", "pretrained", "dense"})},
            config={"batch_size": batch, "steps": epochs * per_epoch, "train": len(train),
                    "val": len(evaluation["val"]), "test": len(evaluation["test"])},
            files=files)
