"""The GFM input pipeline without torch: decode, RandomResizedCrop, flip, SimMIM masks.

Output is uint8 HWC plus a mask; normalisation to ImageNet statistics happens later on the
device (``pipelines.loader.normalize``), where it is a fused multiply-add instead of a float
copy per image on the CPU. Randomness comes from ``(seed, epoch, sample index)`` alone, so a
resumed run draws the same crops, flips and masks as an uninterrupted one.

JPEGs are decoded with libjpeg-turbo (simplejpeg), at a reduced DCT scale when the crop, scaled
down, still covers the output size (big images, small crops).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
import xxhash
from PIL import Image

from geopile.imagestats import as_rgb, decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodeError(ValueError):
    """The image bytes could not be decoded."""


@dataclass(frozen=True)
class GfmTransform:
    """GFM pretraining augmentation and SimMIM masking (the paper's values as defaults)."""

    size: int = 192
    scale: tuple[float, float] = (0.67, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mask_patch: int = 32
    model_patch: int = 4
    mask_ratio: float = 0.6
    seed: int = 0

    def rng(self, epoch: int, index: int) -> random.Random:
        """The sample's own random stream (Python's: seeding numpy's costs ~40 us a sample)."""
        return random.Random(xxhash.xxh3_64_intdigest(f"{self.seed}:{epoch}:{index}".encode()))

    def crop_box(self, height: int, width: int,
                 rng: random.Random) -> tuple[int, int, int, int]:
        """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws them."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def masks(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """SimMIM masks for a batch: ``mask_ratio`` of the mask patches, at model-patch size.

        Drawn together from one generator seeded by the batch's samples: a fraction of the cost
        of one generator per sample, and as reproducible.
        """
        side = self.size // self.mask_patch
        count = side * side
        rng = np.random.default_rng([self.seed, epoch, *np.asarray(indices).tolist()])
        masked = math.ceil(count * self.mask_ratio)
        chosen = rng.random((len(indices), count)).argsort(1)[:, :masked]
        flat = np.zeros((len(indices), count), np.uint8)
        np.put_along_axis(flat, chosen, 1, axis=1)
        scale = self.mask_patch // self.model_patch
        return flat.reshape(-1, side, side).repeat(scale, 1).repeat(scale, 2)

    def __call__(self, data: bytes | memoryview, ext: str, epoch: int, index: int) -> np.ndarray:
        """The uint8 image (``size x size x 3``) for one sample's image bytes."""
        out = np.empty((self.size, self.size, 3), np.uint8)
        self.into(out, data, ext, epoch, index)
        return out

    def into(self, out: np.ndarray, data: bytes | memoryview, ext: str, epoch: int,
             index: int) -> None:
        """Write the sample's image into ``out`` (a batch's slot: no copy to stack it later)."""
        rng = self.rng(epoch, index)
        pixels, (top, left, h, w) = _decode(data, ext, self, rng)
        # bilinear without antialiasing: the crop is at most ~1.5x the output, where the two
        # differ by little, and it is several times faster than PIL's filtered resize
        cv2.resize(pixels[top:top + h, left:left + w], (self.size, self.size), dst=out,
                   interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.flip:
            cv2.flip(out, 1, dst=out)


def _decode(data: bytes | memoryview, ext: str, t: GfmTransform,
            rng: random.Random) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Decoded pixels and the crop box in them.

    The crop is drawn on the full size; JPEGs are then decoded at the smallest DCT scale that
    keeps the crop at least ``t.size`` pixels wide.
    """
    try:
        if ext == "jpg":
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            top, left, h, w = t.crop_box(height, width, rng)
            # the smallest 1/2^k scale at which the crop still covers the output
            k = 0
            while k < 3 and min(h, w) / 2 ** (k + 1) >= t.size:
                k += 1
            if k:
                pixels = simplejpeg.decode_jpeg(data, colorspace="RGB",
                                                min_height=math.ceil(height / 2**k),
                                                min_width=math.ceil(width / 2**k))
                sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
                box = (int(top * sy), int(left * sx), max(1, int(h * sy)), max(1, int(w * sx)))
            else:
                pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
                box = (top, left, h, w)
        else:
            pixels = as_rgb(decode(data)[0])
            height, width = pixels.shape[:2]
            box = t.crop_box(height, width, rng)
    except (ValueError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise DecodeError(str(err)) from err
    return pixels, box
