"""SpaceNet 2 super-resolution: 8-band 1.24 m WorldView-3 to the 0.3 m pan-sharpened RGB.

Protocol: PSNR (the mean of per-image PSNR, as SR papers and SSIM do) and SSIM on 0..1
reflectance-like values (11-bit DNs over 2047), over the images of a seeded 10% test split of
the four training AOIs (SpaceNet2 publishes no SR test labels; 10% more for validation). The
encoder's RGB weights go to the red, green and blue bands (4, 2, 1) of the eight; the other
bands start at zero. ARP averages PSNR and SSIM first: one dataset.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.utils.data import Dataset

from geopile.downstream import DownstreamSet, PublishedFile
from geopile.settings import Settings
from pipelines.tasks.base import PaperScore
from pipelines.tasks.dense import SuperResolutionTask

PUBLISHED = DownstreamSet(
    name="SpaceNet 2: Building Detection v2 (the four training AOIs)",
    licence="CC-BY-SA-4.0",
    homepage="https://spacenet.ai/spacenet-buildings-dataset-v2/",
    files={  # the AWS open-data bucket; torchgeo's md5s
        f"aoi_{aoi}": PublishedFile(
            f"https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/tarballs/"
            f"SN2_buildings_train_AOI_{aoi}_{city}.tar.gz", md5,
            f"SN2_buildings_train_AOI_{aoi}_{city}.tar.gz", archive=True)
        for aoi, city, md5 in ((2, "Vegas", "307da318bc43aaf9481828f92eda9126"),
                               (3, "Paris", "4db469e3e4e7bf025368ad730aec0888"),
                               (4, "Shanghai", "986129eecd3e842ebc2063d43b407adb"),
                               (5, "Khartoum", "462b4bf0466c945d708befabd4d9115b"))
    },
)
RGB = (4, 2, 1)  # WorldView-3 MUL: coastal, blue, green, yellow, red, red edge, NIR1, NIR2
MAX = 2047.0  # 11-bit radiometry


def _tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


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


class SpaceNet2(SuperResolutionTask):
    """Multispectral to pan-sharpened RGB pairs, split 80/10/10 with the run's seed."""

    def splits(self, settings: Settings) -> dict[str, Dataset]:
        """Train / val / test."""
        pairs = sn2_pairs(self.root(settings))
        order = np.random.default_rng(settings.seed).permutation(len(pairs))
        n_val = n_test = max(1, len(pairs) // 10)
        picks = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        return {s: SpaceNet2SR([pairs[i] for i in sorted(idx)]) for s, idx in picks.items()}

    def sample(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bands, and the RGB target on 0..1."""
        return s["image"], (s["target"] / MAX).clamp(0, 1)

    def to_255(self, image: torch.Tensor) -> torch.Tensor:
        """11-bit DNs on 0..255."""
        return (image / MAX).clamp(0, 1) * 255


TASK = SpaceNet2(name="sn2", dataset="sn2", published=PUBLISHED, img_size=256, window_size=8,
                 scale=4, in_chans=8, rgb=RGB, scores=("psnr", "ssim"), select="psnr",
                 paper={"psnr": PaperScore(22.599, 21.655), "ssim": PaperScore(0.638, 0.612)},
                 protocol=__doc__.split("\n\n")[1])
