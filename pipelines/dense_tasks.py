"""The dense downstream tasks: datasets (torchgeo where it has them), targets and metrics.

Segmentation: WHU Aerial (building IoU) and Vaihingen (6 classes, mIoU; overall F1 and
accuracy as details). Change detection: OSCD (Sentinel-2 RGB) and DSIFN; precision, recall and F1
of the change class. Super-resolution: SpaceNet2, 8-band 1.24 m WorldView-3 to the 0.3 m
pan-sharpened RGB; PSNR and SSIM. Metrics are torchmetrics', accumulated over whole test images.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from torch.utils.data import Dataset

from geopile.downstream import fetched_root
from pipelines.tasks import ben_to_255

IGNORE = 255  # label of padding (and of pixels no class claims)
SN2_RGB = (4, 2, 1)  # WorldView-3 MUL: coastal, blue, green, yellow, red, red edge, NIR1, NIR2
SN2_MAX = 2047.0  # 11-bit radiometry


@dataclass(frozen=True)
class DenseTask:
    """A dense downstream task and the reference's settings for it."""

    name: str
    kind: str  # seg | cd | sr
    num_classes: int
    img_size: int  # crop the encoder sees (the target grid for sr)
    window_size: int
    scores: tuple[str, ...]  # metrics.json "scores" (ARP); the rest go to "details"
    select: str  # the validation metric that picks the best checkpoint
    datasets: Callable[[dict[str, Any]], dict[str, Dataset]]
    sample: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]
    to_255: Callable[[torch.Tensor], torch.Tensor] | None = None
    scale: int = 1  # output / input resolution (sr)
    in_chans: int = 3
    rgb: tuple[int, int, int] | None = None  # the input bands that get the RGB weights (sr)

    def metrics(self, device: torch.device) -> dict[str, Any]:
        """Fresh torchmetrics accumulators for this task."""
        from torchmetrics import classification as C
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        if self.kind == "seg":
            found = {"iou": C.MulticlassJaccardIndex(self.num_classes, average="none",
                                                     ignore_index=IGNORE),
                     "f1": C.MulticlassF1Score(self.num_classes, average="macro",
                                               ignore_index=IGNORE),
                     "accuracy": C.MulticlassAccuracy(self.num_classes, average="micro",
                                                      ignore_index=IGNORE)}
        elif self.kind == "cd":
            found = {"precision": C.BinaryPrecision(ignore_index=IGNORE),
                     "recall": C.BinaryRecall(ignore_index=IGNORE),
                     "f1": C.BinaryF1Score(ignore_index=IGNORE)}
        else:
            # PSNR per test image, then the mean (as SpaceNet2 super-resolution papers and
            # SSIM do); one dataset-wide MSE would let the easiest images drown the rest
            found = {"psnr": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)),
                     "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)}
        return {k: m.to(device) for k, m in found.items()}

    def update(self, metrics: dict[str, Any], out: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of model outputs (logits, or images for sr) and targets."""
        if self.kind == "sr":
            for m in metrics.values():
                m.update(out.clamp(0, 1), target)
            return
        pred = out.argmax(1)
        for m in metrics.values():
            m.update(pred, target)

    def compute(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Final values on the paper's scale (percent; PSNR in dB, SSIM in 0..1)."""
        if self.kind == "sr":
            return {k: float(m.compute()) for k, m in metrics.items()}
        values = {k: m.compute() for k, m in metrics.items()}
        if self.kind == "seg":
            per_class = values.pop("iou")
            out = {f"iou_{i}": float(v) * 100 for i, v in enumerate(per_class)}
            out["miou"] = float(per_class.mean()) * 100
            if self.num_classes == 2:  # building / background: the building class's IoU
                out["iou"] = float(per_class[1]) * 100
            out.update({k: float(v) * 100 for k, v in values.items()})
            return out
        return {k: float(v) * 100 for k, v in values.items()}


def _data(params: dict[str, Any]) -> Path:
    return Path((params.get("paths") or {}).get("data", "data"))


def _tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


class PairedFolders(Dataset):
    """Our reader for published layouts torchgeo lacks: same-named files in sibling folders.

    WHU Aerial: ``<split>/image`` and ``<split>/label`` (building 255); DSIFN: ``<split>/t1``,
    ``<split>/t2`` and ``<split>/mask`` (change 255). Files pair by stem.
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
        mask = (_mask(self.files[-1][stem]) > 127).astype(np.int64)
        return {"image": torch.from_numpy(np.concatenate(images)).float(),
                "mask": torch.from_numpy(mask)}


def _split_dirs(root: Path, split: str, marker: str) -> Path:
    """The published ``<split>`` folder (holding ``marker``), under whatever top folder."""
    # glob, not Path.rglob: the root's entries are symlinks, which rglob does not follow
    found = sorted(glob.glob(str(root / "**" / split / marker), recursive=True))
    if not found:
        raise FileNotFoundError(f"{root}: no {split}/{marker} folder "
                                "(is this the published archive?)")
    return Path(found[0]).parent


def _whu(params: dict[str, Any]) -> dict[str, Dataset]:
    root = fetched_root("whu", params, _data(params))
    return {s: PairedFolders(_split_dirs(root, s, "image"), ("image",), "label")
            for s in ("train", "val", "test")}


def _dsifn(params: dict[str, Any]) -> dict[str, Dataset]:
    root = fetched_root("dsifn", params, _data(params))
    return {s: PairedFolders(_split_dirs(root, s, "t1"), ("t1", "t2"), "mask")
            for s in ("train", "val", "test")}


def _vaihingen(params: dict[str, Any]) -> dict[str, Dataset]:
    from torchgeo.datasets import Vaihingen2D

    root = fetched_root("vaihingen", params, _data(params))
    return {s: Vaihingen2D(str(root), split=s) for s in ("train", "test")}


def _oscd(params: dict[str, Any]) -> dict[str, Dataset]:
    from torchgeo.datasets import OSCD

    root = fetched_root("oscd", params, _data(params))
    return {s: OSCD(str(root), split=s, bands=OSCD.rgb_bands) for s in ("train", "test")}


class SpaceNet2SR(Dataset):
    """SpaceNet2 pairs, cropped to an exact 4x.

    ``MUL/MUL_<AOI>_img<N>.tif`` (8 bands, 1.24 m) and
    ``RGB-PanSharpen/RGB-PanSharpen_<AOI>_img<N>.tif`` (0.3 m).
    """

    def __init__(self, pairs: list[tuple[Path, Path]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        mul, rgb = (_tif(p).astype(np.float32) for p in self.pairs[index])
        h = min(mul.shape[1], rgb.shape[1] // 4)
        w = min(mul.shape[2], rgb.shape[2] // 4)
        return {"image": torch.from_numpy(mul[:, :h, :w]),
                "target": torch.from_numpy(rgb[:3, :4 * h, :4 * w])}


def sn2_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Every (MUL, RGB-PanSharpen) pair under the extracted tarballs, sorted."""
    pairs = []
    for found in sorted(glob.glob(str(root / "**" / "MUL" / "MUL_*.tif"), recursive=True)):
        mul = Path(found)
        rgb = mul.parent.parent / "RGB-PanSharpen" / mul.name.replace("MUL_", "RGB-PanSharpen_", 1)
        if not rgb.exists():
            raise FileNotFoundError(f"{mul}: no pan-sharpened RGB {rgb}")
        pairs.append((mul, rgb))
    if not pairs:
        raise FileNotFoundError(f"{root}: no MUL/*.tif (is this the SpaceNet2 tarball?)")
    return pairs


def _sn2(params: dict[str, Any]) -> dict[str, Dataset]:
    root = fetched_root("sn2", params, _data(params))
    pairs = sn2_pairs(root)
    # SpaceNet2 publishes no test labels for SR: a seeded 80/10/10 split of the training AOIs
    order = np.random.default_rng(int(params.get("seed", 0))).permutation(len(pairs))
    n_val = n_test = max(1, len(pairs) // 10)
    picks = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    return {s: SpaceNet2SR([pairs[i] for i in sorted(idx)]) for s, idx in picks.items()}


def _seg_sample(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return s["image"], s["mask"].long()


def _oscd_sample(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    image = s["image"]  # (2, 3, H, W): the two dates
    return image.reshape(-1, *image.shape[-2:]), s["mask"].reshape(image.shape[-2:]).long()


def _sn2_sample(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return s["image"], (s["target"] / SN2_MAX).clamp(0, 1)


def _oscd_to_255(image: torch.Tensor) -> torch.Tensor:
    """Both dates' B04/B03/B02 with the BigEarthNet stretch (the same Sentinel-2 bands)."""
    return torch.cat([ben_to_255(date) for date in image.split(3)])


def _sn2_to_255(image: torch.Tensor) -> torch.Tensor:
    return (image / SN2_MAX).clamp(0, 1) * 255


DENSE_TASKS: dict[str, DenseTask] = {
    "whu": DenseTask("whu", "seg", 2, 512, 8, ("iou",), "iou", _whu, _seg_sample),
    "vaihingen": DenseTask("vaihingen", "seg", 6, 512, 8, ("miou",), "miou", _vaihingen,
                           _seg_sample),
    "oscd": DenseTask("oscd", "cd", 2, 256, 8, ("f1",), "f1", _oscd, _oscd_sample,
                      to_255=_oscd_to_255),
    "dsifn": DenseTask("dsifn", "cd", 2, 256, 8, ("f1",), "f1", _dsifn, _seg_sample),
    "sn2": DenseTask("sn2", "sr", 0, 256, 8, ("psnr", "ssim"), "psnr", _sn2, _sn2_sample,
                     to_255=_sn2_to_255, scale=4, in_chans=8, rgb=SN2_RGB),
}
