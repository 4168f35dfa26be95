"""Dense tasks on the engine: segmentation, change detection, super-resolution.

The recipe is the mmsegmentation Swin-UperNet one the paper used (``finetune.dense`` in
params.yaml): AdamW (lr 6e-5, wd 0.01, layer decay on the encoder), linear warm-up then poly
decay per iteration, 40k iterations of random crops with flips, drawn as mmseg's
``InfiniteSampler`` does (one stream of permutations of the training images; a batch may span
two), each crop from its own seeded generator so that a resumed run is exact. Evaluation is
mmseg's ``slide`` inference: windows of the crop size at a stride of two thirds of it (mmseg's
512 / 341), the logits of overlapping windows averaged. With a validation split the best
validation checkpoint is scored on test; without one (Vaihingen, OSCD, as in the reference)
the last is. Metrics are torchmetrics', accumulated over whole test images.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import PolyLRScheduler
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD
from geopile.settings import Finetune
from model.dense import ChangeDetector, Segmenter, SuperResolver, adapt_patch_embed
from pipelines.batches import StreamBatches
from pipelines.encoders import Init
from pipelines.engine import Dist, Loop, autocast
from pipelines.tasks.base import Prepared, Task, read_sample

IGNORE = 255  # label of padding (and of pixels no class claims)


@torch.no_grad()
def predict_slide(model: Any, image: torch.Tensor, crop: int, stride: int,
                  scale: int = 1, batch: int = 8) -> torch.Tensor:
    """Whole-image output of a fixed-input-size model by mmseg's sliding windows.

    Windows of ``crop`` at ``stride`` cover the image, the last of each row and column moved
    back inside it (mmseg's ``slide_inference``); an image smaller than ``crop`` is padded.
    Overlapping outputs are averaged. ``scale``: output pixels per input pixel (SR).
    """
    c, h, w = image.shape
    padded = F.pad(image, (0, max(crop - w, 0), 0, max(crop - h, 0)))
    ph, pw = padded.shape[-2:]
    rows = max(ph - crop + stride - 1, 0) // stride + 1
    cols = max(pw - crop + stride - 1, 0) // stride + 1
    corners = [(min(r * stride, ph - crop), min(k * stride, pw - crop))
               for r in range(rows) for k in range(cols)]
    tiles = [padded[:, y:y + crop, x:x + crop] for y, x in corners]
    outs = torch.cat([model(torch.stack(tiles[i:i + batch])) for i in range(0, len(tiles), batch)])
    total = outs.new_zeros((outs.shape[1], ph * scale, pw * scale))
    count = outs.new_zeros((1, ph * scale, pw * scale))
    step = crop * scale
    for (y, x), out in zip(corners, outs, strict=True):
        total[:, y * scale:y * scale + step, x * scale:x * scale + step] += out
        count[:, y * scale:y * scale + step, x * scale:x * scale + step] += 1
    return (total / count)[:, :h * scale, :w * scale]


class TrainCrops(Dataset):
    """Random crops with flips from a task's training images (padded with ``IGNORE`` labels).

    Keyed by ``(position, index)`` in the engine's stream (:class:`StreamBatches`): each crop
    is drawn from its own generator, seeded by (seed, position), so a resumed run cuts the same
    crops whatever the number of loader workers.
    """

    def __init__(self, task: DenseTask, dataset: Dataset, crop: int, seed: int):
        self.task, self.dataset, self.crop, self.seed = task, dataset, crop, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, index = key
        image, target = self.task.sample(read_sample(self.dataset, index))
        image = self.task.normalise(image)
        entropy = np.random.SeedSequence([self.seed, position]).generate_state(1)
        rng = torch.Generator().manual_seed(int(entropy[0]))
        scale = self.task.scale
        crop_in = self.crop // scale
        h, w = image.shape[-2:]
        pad_h, pad_w = max(crop_in - h, 0), max(crop_in - w, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            fill = IGNORE if target.dtype == torch.long else 0.0
            target = F.pad(target, (0, pad_w * scale, 0, pad_h * scale), value=fill)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - crop_in + 1, (), generator=rng))
        left = int(torch.randint(0, w - crop_in + 1, (), generator=rng))
        image = image[..., top:top + crop_in, left:left + crop_in]
        target = target[..., top * scale:(top + crop_in) * scale,
                        left * scale:(left + crop_in) * scale]
        if torch.rand((), generator=rng) < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if torch.rand((), generator=rng) < 0.5:
            image, target = image.flip(-2), target.flip(-2)
        return image.contiguous(), target.contiguous()


@dataclass(frozen=True, kw_only=True)
class DenseTask(Task):
    """A per-pixel task: a UperNet-decoded Swin, trained for iterations on crops."""

    num_classes: int = 0
    scale: int = 1  # output / input resolution (super-resolution)
    in_chans: int = 3
    family: ClassVar[str] = "dense"

    # -- what each kind defines
    def head(self, encoder: nn.Module, channels: int) -> nn.Module:
        """The network on ``encoder``."""
        raise NotImplementedError

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels (super-resolution: L1)."""
        return F.cross_entropy(out, target, ignore_index=IGNORE)

    def metrics(self, device: torch.device) -> dict[str, Any]:
        """Fresh torchmetrics accumulators."""
        raise NotImplementedError

    def update(self, metrics: dict[str, Any], out: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of logits and label maps."""
        pred = out.argmax(1)
        for m in metrics.values():
            m.update(pred, target)

    def compute(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Final values on the paper's scale (percent)."""
        return {k: float(m.compute()) * 100 for k, m in metrics.items()}

    def sample(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of a reader's sample."""
        return s["image"], s["mask"].long()

    def to_255(self, image: torch.Tensor) -> torch.Tensor:
        """The reader's values on 0..255."""
        return image

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """0..255 (through the task's scaling) to ImageNet-normalised, per 3-band date."""
        image = self.to_255(image) / 255.0
        mean = torch.tensor(IMAGENET_MEAN).repeat(image.shape[0] // 3).view(-1, 1, 1)
        std = torch.tensor(IMAGENET_STD).repeat(image.shape[0] // 3).view(-1, 1, 1)
        return (image - mean) / std

    # -- the family's part of the engine
    def evaluate(self, model: nn.Module, dataset: Dataset, crop: int,
                 device: torch.device) -> dict[str, float]:
        """The task's metrics over whole images, predicted by sliding windows."""
        metrics = self.metrics(device)
        model.eval()
        crop_in = crop // self.scale
        for index in range(len(dataset)):
            image, target = self.sample(read_sample(dataset, index))
            with autocast(device):
                out = predict_slide(model, self.normalise(image).to(device), crop_in,
                                    max(crop_in * 2 // 3, 1), self.scale).float()
            self.update(metrics, out.unsqueeze(0), target.unsqueeze(0).to(device))
        return self.compute(metrics)

    def prepare(self, settings: Finetune, splits: dict[str, Dataset], init: Init, where: Dist,
                seed: int, length: int | None) -> Prepared:
        """The network, endless seeded crops, AdamW with layer decay and poly decay."""
        recipe = settings.dense
        crop, _ = self.geometry(settings)
        model = self.head(init.build(0, recipe.drop_path), recipe.decoder_channels)
        model = model.to(where.device)
        train = TrainCrops(self, splits["train"], crop, seed)
        batch = recipe.batch_size
        batches = StreamBatches(train, batch, where, seed, recipe.workers)
        iterations = length or recipe.iterations
        scale = batch * where.world / 16  # the lr is the reference's at its global batch of 16
        lr = recipe.lr * scale
        groups = param_groups_layer_decay(model.encoder, weight_decay=recipe.weight_decay,
                                          no_weight_decay_list=model.encoder.no_weight_decay(),
                                          layer_decay=recipe.layer_decay)
        groups += param_groups_weight_decay(model.decoder, weight_decay=recipe.weight_decay)
        for group in groups:
            group.setdefault("lr_scale", 1.0)
            group["lr"] = lr * group["lr_scale"]
        optimizer = torch.optim.AdamW(groups, lr=lr)
        scheduler = PolyLRScheduler(optimizer, t_initial=iterations, power=recipe.power,
                                    lr_min=recipe.min_lr * scale, warmup_t=recipe.warmup_iters,
                                    warmup_lr_init=lr * recipe.warmup_ratio, t_in_epochs=False)

        def step(trainable: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            images, targets = batch[0].to(where.device), batch[1].to(where.device)
            return {"loss": self.loss(trainable(images).float(), targets)}

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            return self.evaluate(model, splits[split], crop, where.device)

        has_val = "val" in splits
        return Prepared(
            model, optimizer, scheduler, batches,
            Loop(steps=iterations, steps_per_epoch=len(batches), log_every=recipe.eval_every,
                 checkpoint_every=recipe.eval_every,
                 eval_every=recipe.eval_every if has_val else None,
                 images_per_step=batch * where.world, select=self.select if has_val else None),
            ["loss"], step, evaluate,
            identity={"crop": crop, "recipe": recipe.model_dump(exclude={
                "workers", "iterations", "eval_every"})},
            config={"crop": crop, "batch_size": batch, "train": len(train),
                    "val": len(splits["val"]) if has_val else None, "test": len(splits["test"]),
                    "selection": "best validation" if has_val else "last"})


class SegmentationTask(DenseTask):
    """Semantic segmentation: UperNet logits; per-class IoU, mIoU, macro F1, accuracy."""

    def head(self, encoder: nn.Module, channels: int) -> nn.Module:
        """Swin + UperNet."""
        return Segmenter(encoder, self.num_classes, channels)

    def metrics(self, device: torch.device) -> dict[str, Any]:
        """IoU per class, macro F1 and overall accuracy over labelled pixels."""
        from torchmetrics import classification as C

        return {k: m.to(device) for k, m in {
            "iou": C.MulticlassJaccardIndex(self.num_classes, average="none",
                                            ignore_index=IGNORE),
            "f1": C.MulticlassF1Score(self.num_classes, average="macro", ignore_index=IGNORE),
            "accuracy": C.MulticlassAccuracy(self.num_classes, average="micro",
                                             ignore_index=IGNORE)}.items()}

    def compute(self, metrics: dict[str, Any]) -> dict[str, float]:
        """``iou_<class>``, ``miou``, ``iou`` (two classes: the foreground's), f1, accuracy."""
        values = {k: m.compute() for k, m in metrics.items()}
        per_class = values.pop("iou")
        out = {f"iou_{i}": float(v) * 100 for i, v in enumerate(per_class)}
        out["miou"] = float(per_class.mean()) * 100
        if self.num_classes == 2:  # building / background: the building class's IoU
            out["iou"] = float(per_class[1]) * 100
        out.update({k: float(v) * 100 for k, v in values.items()})
        return out


class ChangeTask(DenseTask):
    """Binary change detection on two stacked dates: precision, recall, F1 of change."""

    def head(self, encoder: nn.Module, channels: int) -> nn.Module:
        """A Siamese Swin + UperNet over |f(t1) - f(t2)|."""
        return ChangeDetector(encoder, channels)

    def metrics(self, device: torch.device) -> dict[str, Any]:
        """Precision, recall and F1 of the change class over labelled pixels."""
        from torchmetrics import classification as C

        return {k: m.to(device) for k, m in {
            "precision": C.BinaryPrecision(ignore_index=IGNORE),
            "recall": C.BinaryRecall(ignore_index=IGNORE),
            "f1": C.BinaryF1Score(ignore_index=IGNORE)}.items()}


@dataclass(frozen=True, kw_only=True)
class SuperResolutionTask(DenseTask):
    """Multispectral in, RGB at ``scale`` times the resolution out: PSNR and SSIM on 0..1."""

    rgb: tuple[int, int, int]  # the input bands that get the encoder's RGB weights

    def head(self, encoder: nn.Module, channels: int) -> nn.Module:
        """The encoder widened to ``in_chans`` bands, and a residual UperNet."""
        adapt_patch_embed(encoder, self.in_chans, self.rgb)
        return SuperResolver(encoder, self.rgb, self.scale, channels)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 on reflectance-like 0..1 values."""
        return F.l1_loss(out, target)

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Reflectance-like 0..1 inputs (targets are on the same scale: PSNR/SSIM on 0..1)."""
        return self.to_255(image) / 255.0

    def metrics(self, device: torch.device) -> dict[str, Any]:
        """PSNR per test image, then the mean; SSIM.

        As SpaceNet2 super-resolution papers and SSIM do: one dataset-wide MSE would let the
        easiest images drown the rest.
        """
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        return {"psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device),
                "ssim": StructuralSimilarityIndexMeasure(data_range=1.0).to(device)}

    def update(self, metrics: dict[str, Any], out: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predicted and reference images."""
        for m in metrics.values():
            m.update(out.clamp(0, 1), target)

    def compute(self, metrics: dict[str, Any]) -> dict[str, float]:
        """PSNR in dB, SSIM in 0..1."""
        return {k: float(m.compute()) for k, m in metrics.items()}


# -- a reader shared by published layouts torchgeo lacks


class PairedFolders(Dataset):
    """Same-named files in sibling folders: ``<split>/<input>...`` and ``<split>/<mask>``.

    WHU Aerial: ``image`` and ``label`` (building 255); DSIFN: ``t1``, ``t2`` and ``mask``
    (change 255). Files pair by stem (DSIFN's test masks are ``.tif``, the others ``.png``).
    """

    def __init__(self, split_dir: Path, inputs: tuple[str, ...], mask: str):
        self.dirs = [split_dir / name for name in inputs]
        self.mask_dir = split_dir / mask
        missing = [d for d in (*self.dirs, self.mask_dir) if not d.is_dir()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: not found (is this the published archive?)")
        self.stems = sorted(p.stem for p in self.mask_dir.iterdir() if p.is_file())
        self.files = [{p.stem: p for p in d.iterdir()} for d in (*self.dirs, self.mask_dir)]
        for stem in self.stems:
            for folder, files in zip((*self.dirs, self.mask_dir), self.files, strict=True):
                if stem not in files:
                    raise FileNotFoundError(f"{folder}: no image for {stem} (in {self.mask_dir})")

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        stem = self.stems[index]
        images = []
        for files in self.files[:-1]:
            with Image.open(files[stem]) as img:
                images.append(np.asarray(img.convert("RGB")).transpose(2, 0, 1))
        with Image.open(self.files[-1][stem]) as img:
            mask = (np.asarray(img.convert("L")) > 127).astype(np.int64)
        return {"image": torch.from_numpy(np.concatenate(images)).float(),
                "mask": torch.from_numpy(mask)}


def split_dir(root: Path, split: str, marker: str) -> Path:
    """The published ``<split>`` folder (holding ``marker``), under whatever top folder."""
    # glob, not Path.rglob: the root's entries are symlinks, which rglob does not follow
    found = sorted(glob.glob(str(root / "**" / split / marker), recursive=True))
    if not found:
        raise FileNotFoundError(f"{root}: no {split}/{marker} folder "
                                "(is this the published archive?)")
    return Path(found[0]).parent
