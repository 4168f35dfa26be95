"""The GFM input pipeline without torch: decode, RandomResizedCrop, flip, SimMIM masks.

Output is uint8 HWC plus a mask; normalisation to ImageNet statistics happens later on the
device (``pipelines.loader.normalize``), where it is a fused multiply-add instead of a float
copy per image on the CPU. Randomness comes from ``(seed, epoch, sample index)`` alone, so a
resumed run draws the same crops, flips and masks as an uninterrupted one.

JPEGs are decoded with libjpeg-turbo (simplejpeg), at a reduced DCT scale when the crop, scaled
down, still covers the output size (big images, small crops).

With ``bands`` (names), a multi-band GeoTIFF sample is decoded with rasterio, its bands picked by
the names in the GeoTIFF's band descriptions, cropped and resized in float32, and stretched to
uint8 per band: ``mean - STRETCH_K * std`` -> 0 and ``mean + STRETCH_K * std`` -> 255 with the
build's pooled stats (``index.json`` ``bands``). The batch stays uint8 NHWC, so the worker to
device path (shared memory, pinning, one fused normalisation on the device) is the JPEG one; a
stretched channel is normalised with :data:`STRETCH_MEAN`/:data:`STRETCH_STD`.
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
STRETCH_K = 3.0  # a band's mean +- 3 std spans 0..255 (clipped beyond: ~0.3% of a normal band)
STRETCH_MEAN = 0.5  # a stretched band's mean and std in 0..1 units, for normalisation
STRETCH_STD = 1 / (2 * STRETCH_K)


class DecodeError(ValueError):
    """The image bytes could not be decoded."""


class BandError(ValueError):
    """The sample cannot give the bands asked for (a configuration error, not a corrupt sample)."""


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
    bands: tuple[str, ...] | None = None  # None: RGB (JPEG, or a uint8 tif's first 3 bands)
    lo: tuple[float, ...] = ()  # per band in ``bands``: the value stretched to 0
    hi: tuple[float, ...] = ()  # ... and to 255

    @property
    def channels(self) -> int:
        """Channels of an output image."""
        return 3 if self.bands is None else len(self.bands)

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
        """The uint8 image (``size x size x channels``) for one sample's image bytes."""
        out = np.empty((self.size, self.size, self.channels), np.uint8)
        self.into(out, data, ext, epoch, index)
        return out

    def into(self, out: np.ndarray, data: bytes | memoryview, ext: str, epoch: int,
             index: int) -> None:
        """Write the sample's image into ``out`` (a batch's slot: no copy to stack it later)."""
        rng = self.rng(epoch, index)
        if self.bands is not None:
            self._bands_into(out, data, ext, rng)
            return
        pixels, (top, left, h, w) = _decode(data, ext, self, rng)
        # bilinear without antialiasing: the crop is at most ~1.5x the output, where the two
        # differ by little, and it is several times faster than PIL's filtered resize
        cv2.resize(pixels[top:top + h, left:left + w], (self.size, self.size), dst=out,
                   interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.flip:
            cv2.flip(out, 1, dst=out)

    def _bands_into(self, out: np.ndarray, data: bytes | memoryview, ext: str,
                    rng: random.Random) -> None:
        """The named bands of a GeoTIFF: crop, resize (float32), stretch to uint8, flip."""
        if ext != "tif":
            raise BandError(f"bands {list(self.bands or ())} asked for, but the sample is .{ext} "
                            "(RGB only): set pretrain.bands to null, or use a multi-band build")
        pixels = select_bands(data, self.bands or ())
        top, left, h, w = self.crop_box(pixels.shape[0], pixels.shape[1], rng)
        resized = resize_bands(pixels[top:top + h, left:left + w], self.size)
        lo, hi = np.asarray(self.lo, np.float32), np.asarray(self.hi, np.float32)
        scaled = (resized - lo) * (255.0 / np.maximum(hi - lo, 1e-6))
        np.clip(np.rint(scaled), 0, 255, out=scaled)
        out[...] = scaled.astype(np.uint8)
        if rng.random() < self.flip:
            out[...] = out[:, ::-1]


def select_bands(data: bytes | memoryview, bands: tuple[str, ...] | list[str]) -> np.ndarray:
    """``H x W x len(bands)`` float32 of a GeoTIFF's bands, picked by their descriptions."""
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(bytes(data)) as mem, mem.open() as src:
            names = list(src.descriptions)
            missing = [b for b in bands if b not in names]
            if missing:
                raise BandError(f"the GeoTIFF has no band {', '.join(missing)} (its bands: "
                                f"{names})")
            pixels = src.read([names.index(b) + 1 for b in bands], out_dtype="float32")
    except BandError:
        raise
    except Exception as err:  # rasterio's errors: not a readable GeoTIFF
        raise DecodeError(str(err)) from err
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def resize_bands(pixels: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``H x W x C`` float32 to ``size x size x C``, 4 channels at a time.

    cv2.resize takes up to 4 channels reliably in every build; splitting keeps any band count.
    """
    parts = [cv2.resize(np.ascontiguousarray(pixels[..., c:c + 4]), (size, size),
                        interpolation=cv2.INTER_LINEAR) for c in range(0, pixels.shape[2], 4)]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]
    return np.concatenate(parts, axis=2)


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
