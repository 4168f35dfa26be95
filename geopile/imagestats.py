"""Per-image statistics computed once at ingest: decode check, hashes, perceptual hash, entropy.

Entropy definitions (the paper reports "mean image entropy" without one, FACTS.md §2):
- ``entropy_global``: Shannon entropy, in bits, of the 256-bin histogram of the grayscale image.
- ``entropy_local``: mean over non-overlapping ``LOCAL_BLOCK`` x ``LOCAL_BLOCK`` blocks of the
  Shannon entropy (bits, 256 bins) of each block's grayscale values; it tells texture from a
  merely wide histogram (a smooth gradient has high global but low local entropy).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from struct import error as struct_error

import imagehash
import numpy as np
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.fft import dctn

LOCAL_BLOCK = 16
EXIF_ORIENTATION = 274  # the EXIF tag of the orientation
# Size limits, checked from the image header before any pixel is decoded. GeoPile's largest
# legitimate inputs are 600 x 600 (MLRSNet) and 256 x 256 patches, so 100 megapixels is generous;
# a 17000 x 17000 PNG of 843 KB (289 MP) took 11.4 GB to decode and measure. Below 16 px a side
# there is no texture to learn and the local entropy (16 px blocks) is undefined.


class _ManyBandsHandled(logging.Filter):
    """Drop PIL's ERROR for TIFFs of more than 4 bands.

    :func:`decode` reads those with rasterio instead, so the message would only alarm (one per
    Sentinel-2 patch).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "More samples per pixel than can be decoded" not in record.getMessage()


logging.getLogger("PIL.TiffImagePlugin").addFilter(_ManyBandsHandled())

MAX_PIXELS = 100_000_000
MIN_SIDE = 16
# PIL's own guard only warns past its limit and raises past twice it. It stays as a backstop for
# code that opens images without :func:`decode`, set above MAX_PIXELS so that decode's own check
# (naming the size and the limit) fires first; past 2 x MAX_PIXELS PIL also warns.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS


# Crop-pyramid hashes (see crop_hashes): the full image, 16 crops whose four margins are each
# 2.5% or 7.5% of the side (any crop of up to 10% a side is within 2.5% per edge of one of
# them), and two even zooms, 5% and 10% a side, where that grid is worst (all four edges off).
CROP_MARGINS = (0.025, 0.075)
CROP_BOXES: tuple[tuple[float, float, float, float], ...] = (  # (left, top, right, bottom)
    (0.0, 0.0, 0.0, 0.0), *product(CROP_MARGINS, repeat=4), (0.05,) * 4, (0.1,) * 4)
HASH_SIDE = 32  # the crop is box-filtered to 32 x 32 before its DCT
# Word 1: the signs of the 8 x 8 lowest DCT frequencies but DC (63 bits, bit 63 unused); word 2:
# those with max(u, v) in 8..10 (57 bits). Each set is closed under (u, v) -> (v, u), so a
# transposed image's hash is a bit permutation of the same words (geopile.dedup.PERM).
HASH_FREQS: tuple[tuple[tuple[int, int], ...], ...] = (
    tuple((u, v) for u in range(8) for v in range(8) if u or v),
    tuple((u, v) for u in range(11) for v in range(11) if max(u, v) >= 8),
)


class BadImage(ValueError):
    """An input that is not a usable image; the message is the reject reason."""


@dataclass(frozen=True)
class ImageStats:
    """What ingest records about one image's content."""

    width: int
    height: int
    bands: int
    format: str
    nbytes: int
    xxh3_bytes: str
    xxh3_pixels: str
    phash: int
    entropy_global: float
    entropy_local: float
    nodata_fraction: float
    crop_hashes: list[int]
    orientation: int | None = None  # EXIF orientation applied at decode (None: upright)

    def as_row(self) -> dict[str, object]:
        """The record columns this object fills."""
        return dict(self.__dict__)


def luma(pixels: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of the first three bands (or the only band), uint8."""
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 1:
        return pixels[..., 0]
    rgb = pixels[..., :3].astype(np.float32)
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255).astype(np.uint8)


# per word, the (u, v) index arrays of its frequencies and each one's bit, made once
_FREQ_INDEX = tuple((tuple(np.asarray(freqs).T), np.uint64(1) << np.arange(len(freqs),
                                                                          dtype=np.uint64))
                    for freqs in HASH_FREQS)


def _sign_bits(coefficients: np.ndarray, uv: tuple[np.ndarray, ...], bits: np.ndarray) -> int:
    return int(bits[coefficients[uv] > 0].sum())


def crop_hashes(gray: np.ndarray) -> list[int]:
    """Two 64-bit DCT-sign hashes of the image and of each crop in :data:`CROP_BOXES`.

    Returns ``[word1, word2]`` per box, flattened. A copy cropped by up to 10% a side and rescaled
    back hashes like one of the 16 crops (within 2.5% per edge, which these low frequencies
    tolerate); flips and 90-degree rotations permute and negate coefficients, so they are
    matched by bit operations at search time (:func:`geopile.dedup.crop_pairs`) without storing
    more hashes. Signs rather than pHash's median threshold keep that exact: a flip negates a
    coefficient, it does not move the median.
    """
    img = Image.fromarray(gray).convert("F")
    w, h = img.size
    words: list[int] = []
    for left, top, right, bottom in CROP_BOXES:
        box = (left * w, top * h, w - right * w, h - bottom * h)
        small = np.asarray(img.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, box=box))
        coefficients = dctn(small.astype(np.float64), norm="ortho")
        words += [_sign_bits(coefficients, uv, bits) for uv, bits in _FREQ_INDEX]
    return words


def global_entropy(gray: np.ndarray) -> float:
    """Shannon entropy in bits of a uint8 image's 256-bin histogram."""
    counts = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def local_entropy(gray: np.ndarray, block: int = LOCAL_BLOCK) -> float:
    """Mean entropy in bits of non-overlapping ``block`` x ``block`` tiles.

    Hand-written with one ``bincount``: ``skimage.filters.rank.entropy`` (a sliding disk) costs
    about 100 ms per 256 px image on these CPUs, this about 1 ms, and ingest runs it 600k times.
    """
    h, w = gray.shape
    if h < block or w < block:
        return global_entropy(gray)
    tiles = gray[: h // block * block, : w // block * block]
    tiles = tiles.reshape(h // block, block, w // block, block).swapaxes(1, 2).reshape(-1, block**2)
    offsets = np.arange(len(tiles), dtype=np.int64)[:, None] * 256
    counts = np.bincount((tiles + offsets).ravel(), minlength=len(tiles) * 256).reshape(-1, 256)
    p = counts / float(block**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
    return float(ent.mean())


def pixel_stats(pixels: np.ndarray, data: bytes, fmt: str, nodata: int | None = None) -> ImageStats:
    """Statistics of decoded ``pixels`` (HxW or HxWxC uint8) stored as ``data`` bytes."""
    if pixels.dtype != np.uint8:
        raise BadImage(f"pixel type {pixels.dtype}, expected uint8")
    pix = pixels if pixels.ndim == 3 else pixels[..., None]
    h, w, c = pix.shape
    digest = xxhash.xxh3_128(np.ascontiguousarray(pix).tobytes())
    digest.update(f"{h}x{w}x{c}".encode())
    gray = luma(pix)
    rgb = Image.fromarray(pix[..., :3] if c >= 3 else pix[..., 0])
    nodata_fraction = float((pix == nodata).all(axis=2).mean()) if nodata is not None else 0.0
    return ImageStats(
        width=w,
        height=h,
        bands=c,
        format=fmt,
        nbytes=len(data),
        xxh3_bytes=xxhash.xxh3_128_hexdigest(data),
        xxh3_pixels=digest.hexdigest(),
        phash=int(str(imagehash.phash(rgb)), 16),
        entropy_global=global_entropy(gray),
        entropy_local=local_entropy(gray),
        nodata_fraction=nodata_fraction,
        crop_hashes=crop_hashes(gray),
    )


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """The first three bands (NAIP: R, G, B of R, G, B, NIR), or the first band as gray."""
    if pixels.ndim == 3 and pixels.shape[2] >= 3:
        return np.ascontiguousarray(pixels[..., :3])
    gray = pixels if pixels.ndim == 2 else pixels[..., 0]
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


# The preview a stored multi-band patch is hashed, measured and shown by: which of its bands
# (one, or three as R, G, B) and whether they are power to be taken to dB first. Written into
# the patch's GeoTIFF metadata at ingest, so curate and the contact sheets see what ingest saw.
PREVIEW_TAG = "GEOPILE_PREVIEW"
PREVIEW_PERCENTILES = (2.0, 98.0)


@dataclass(frozen=True)
class Preview:
    """Bands of a preview (1 or 3 names) and ``db``: 10 log10 of the values before stretching."""

    bands: tuple[str, ...]
    db: bool = False

    def tag(self) -> str:
        """The GeoTIFF metadata value: ``red,green,blue`` or ``vv;db``."""
        return ",".join(self.bands) + (";db" if self.db else "")

    @classmethod
    def parse(cls, text: str | None) -> Preview | None:
        """The preview a tag names, or None (no tag, or not one of ours)."""
        if not text:
            return None
        names, _, flag = text.partition(";")
        bands = tuple(n for n in names.split(",") if n)
        return cls(bands, flag == "db") if len(bands) in (1, 3) else None


# true-colour preview of Sentinel-2 L2A: B04, B03, B02 with a fixed 0..3000 DN stretch (titiler's
# and the Planetary Computer explorer's usual rescale), so the same ground looks the same in
# every patch, whatever its histogram
S2_RGB = ("B04", "B03", "B02")
S2_STRETCH = 3000.0


def _stretch(values: np.ndarray, db: bool) -> np.ndarray:
    """Float data to uint8: (dB first, if asked) the 2nd..98th percentile of finite values."""
    vals = values.astype(np.float64)
    if db:
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = 10.0 * np.log10(np.where(vals > 0, vals, np.nan))
    finite = vals[np.isfinite(vals)]
    if not finite.size:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, PREVIEW_PERCENTILES)
    out = (np.nan_to_num(vals, nan=lo) - lo) * (255.0 / (hi - lo or 1.0))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def rgb_preview(pixels: np.ndarray, band_names: Sequence[str] | None = None,
                preview: Preview | None = None) -> np.ndarray:
    """A uint8 HxWx3 view of any stored patch, for hashes, entropy, thumbnails and sheets.

    ``preview`` (the patch's own, :data:`PREVIEW_TAG`) picks the bands by name; else the
    Sentinel-2 rule or the first three bands (one band, or two: the first, as gray). Scaling:
    Sentinel-2 bands (named B04, B03, B02): true colour, 0..3000 DN stretched to 0..255. uint8:
    as stored. Other integer types: over their own 0..max. Floating point (backscatter,
    elevation, physical units): the 2nd..98th percentile of the finite values, in dB first
    when the preview says so (SAR power): robust to the few extreme pixels such data have.
    """
    names = list(band_names or ())
    if preview is not None and pixels.ndim == 3 and all(b in names for b in preview.bands):
        picked = pixels[..., [names.index(b) for b in preview.bands]]
        if picked.dtype.kind == "f" or preview.db:
            return as_rgb(_stretch(picked, preview.db))
        if tuple(preview.bands) != S2_RGB:
            pixels, names = picked, list(preview.bands)
    if pixels.dtype.kind == "f":
        return as_rgb(_stretch(as_rgb(pixels), db=False))
    if all(b in names for b in S2_RGB) and pixels.ndim == 3:
        rgb = pixels[..., [names.index(b) for b in S2_RGB]].astype(np.float32)
        return np.ascontiguousarray(np.clip(rgb * (255.0 / S2_STRETCH) + 0.5, 0, 255)
                                    .astype(np.uint8))
    if pixels.dtype == np.uint8:
        return as_rgb(pixels)
    rgb = as_rgb(pixels).astype(np.float32)
    top = float(rgb.max()) or 1.0
    return np.ascontiguousarray(np.clip(rgb * (255.0 / top) + 0.5, 0, 255).astype(np.uint8))


def band_stats(pixels: np.ndarray, nodata: int = 0,
               valid: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Per-band mean and std over valid pixels, in stored units.

    ``valid`` (H x W bool): the pixels the record's ``nodata_fraction`` counts as data, so that
    the shards' pooled statistics (weighted by it) are exact; by default those not ``nodata``
    in every band.
    """
    pix = pixels if pixels.ndim == 3 else pixels[..., None]
    if valid is None:
        valid = ~(pix == nodata).all(axis=2)
    if not valid.any():
        return [0.0] * pix.shape[2], [0.0] * pix.shape[2]
    vals = pix[valid].astype(np.float64)
    return vals.mean(axis=0).tolist(), vals.std(axis=0).tolist()


def band_names(data: bytes) -> list[str] | None:
    """A GeoTIFF's band descriptions (None for other formats or undescribed bands)."""
    return described(data)[0]


def described(data: bytes) -> tuple[list[str] | None, Preview | None]:
    """A GeoTIFF's band descriptions and its preview (:data:`PREVIEW_TAG`); None where absent."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return None, None
    from rasterio.io import MemoryFile

    with MemoryFile(data) as mem, mem.open() as src:
        names = list(src.descriptions)
        preview = Preview.parse(src.tags().get(PREVIEW_TAG))
    return (names if all(names) else None), preview


def stored_preview(data: bytes) -> np.ndarray:
    """The uint8 preview of stored image bytes, as ingest measured it (see :func:`rgb_preview`)."""
    pixels = decode(data)[0]
    names, preview = described(data)
    if pixels.dtype == np.uint8 and not names:
        return pixels
    return rgb_preview(pixels, names, preview)


# what GeoTIFF patches may hold: any band count, these types (COGs of the STAC catalogs)
STORED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def _decode_tiff(data: bytes, max_pixels: int, min_side: int) -> tuple[np.ndarray, str]:
    """Multi-band or 16-bit GeoTIFFs PIL cannot decode (Sentinel-2 patches), with rasterio."""
    from rasterio.errors import RasterioIOError
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(data) as mem, mem.open() as src:
            check_size(src.width, src.height, max_pixels=max_pixels, min_side=min_side)
            if src.dtypes[0] not in STORED_DTYPES:
                raise BadImage(f"unsupported pixel type {src.dtypes[0]}")
            pixels = np.moveaxis(src.read(), 0, -1)
    except RasterioIOError as err:
        raise BadImage(f"corrupt or truncated image: {err}") from err
    return (pixels[..., 0] if pixels.shape[2] == 1 else pixels), "tiff"


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS,
               min_side: int = MIN_SIDE) -> None:
    """Raise :class:`BadImage` for a size outside the limits (from the header, before decoding)."""
    if width * height > max_pixels:
        raise BadImage(
            f"image too large: {width}x{height} px ({width * height:,} pixels) is over the "
            f"limit of {max_pixels:,} pixels; not decoded (a decompression bomb, or a tile "
            "that should be cut into patches first)")
    if min(width, height) < min_side:
        raise BadImage(f"image too small: {width}x{height} px; the minimum side is {min_side} px")


def decode(data: bytes, max_pixels: int = MAX_PIXELS,
           min_side: int = MIN_SIDE) -> tuple[np.ndarray, str]:
    """The pixels, upright, and the format of image bytes (see :func:`decode_oriented`)."""
    pixels, fmt, _ = decode_oriented(data, max_pixels, min_side)
    return pixels, fmt


def decode_oriented(data: bytes, max_pixels: int = MAX_PIXELS,
                    min_side: int = MIN_SIDE) -> tuple[np.ndarray, str, int]:
    """Decode image bytes fully (truncation is caught here, not at training time).

    Returns the pixels, turned upright by the EXIF orientation (:func:`exif_orientation`), the
    format as decoded and that orientation (1: stored upright).

    ``Image.open`` reads only the header, so the size is checked before anything is allocated
    for pixels: PIL alone would only warn about a 289-megapixel PNG and then decode it. A
    ``max_pixels`` above twice ``PIL.Image.MAX_IMAGE_PIXELS`` has no effect: PIL refuses those
    sizes itself.
    """
    if not data:
        raise BadImage("empty file")
    tiff = data[:4] in (b"II*\x00", b"MM\x00*")
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            check_size(*img.size, max_pixels=max_pixels, min_side=min_side)
            img.load()
            fmt = (img.format or "unknown").lower()
            orientation = exif_orientation(img)
            if orientation != 1:  # the pixels as the file says they are shown
                img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode not in ("L", "RGB", "RGBA", "CMYK"):
                if tiff:  # 16-bit or many bands: rasterio's
                    return (*_decode_tiff(data, max_pixels, min_side), 1)
                raise BadImage(f"unsupported image mode {img.mode}")
            pixels = np.asarray(img.convert("RGB") if img.mode == "CMYK" else img)
    except UnidentifiedImageError as err:
        if tiff:  # PIL reads no TIFF of more than 4 bands
            return (*_decode_tiff(data, max_pixels, min_side), 1)
        raise BadImage("not an image (no decoder recognises the bytes)") from err
    except Image.DecompressionBombError as err:  # past PIL's backstop (2 x MAX_IMAGE_PIXELS)
        raise BadImage(f"image too large: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, BadImage):
            raise
        raise BadImage(f"corrupt or truncated image: {err}") from err
    return pixels, fmt, orientation


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image, 1 (upright) when absent or invalid.

    2-8 are mirrors and quarter turns (EXIF 2.3, tag 274): a camera or phone stores its pixels
    as the sensor read them and says here how to show them. Not every reader applies it
    (libjpeg-turbo and simplejpeg do not, nor webdataset's decoders), so GeoPile applies it
    once, at decode, and writes oriented pixels into shards (:func:`geopile.shards.encode_sample`).
    """
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct_error):  # a damaged EXIF block: ignore it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_stats(data: bytes, expected_bands: int | None = 3, *, max_pixels: int = MAX_PIXELS,
                min_side: int = MIN_SIDE) -> ImageStats:
    """Decode ``data`` and compute its statistics; raise :class:`BadImage` with the reason.

    The pixels are measured as shown, after the EXIF orientation (recorded in ``orientation``).
    """
    pixels, fmt, orientation = decode_oriented(data, max_pixels, min_side)
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    if expected_bands is not None and bands != expected_bands:
        raise BadImage(f"wrong band count: {bands}, expected {expected_bands}")
    stats = pixel_stats(pixels, data, fmt)
    return dataclasses.replace(stats, orientation=orientation if orientation != 1 else None)
