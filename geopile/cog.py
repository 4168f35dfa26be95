"""Windowed reads from remote Cloud-Optimized GeoTIFFs, with the retries GDAL does not do.

GDAL retries 429/5xx itself only when told to and never retries a 403; an expired SAS token
shows up as exactly that. Here a 403 re-signs the *unsigned* href and tries again, 429/5xx and
dropped connections back off exponentially, and anything else fails with the href (unsigned)
in the message. GDAL's messages quote the *signed* ``/vsicurl/`` href, so every message that
leaves this module goes through :func:`geopile.urls.redact`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geopile.imagestats import BadImage
from geopile.stac import Signer
from geopile.urls import redact, strip_secrets

log = logging.getLogger(__name__)

# The settings pangeo/titiler recommend for reading COG windows over HTTP (FACTS.md §3).
REMOTE_COG_ENV: dict[str, object] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CURL_CACHE_SIZE": 64 * 1024 * 1024,
    "GDAL_HTTP_MAX_RETRY": 0,  # retries happen here, where a 403 can be re-signed
    "GDAL_HTTP_TIMEOUT": 60,
    # curl's request dump would carry the signed URL and headers; keep it off even if the
    # environment turns it on (rasterio relays it to logging, where it is redacted, but it is
    # also megabytes per run)
    "CPL_CURL_VERBOSE": "NO",
}
_HTTP_CODE = re.compile(r"HTTP (?:response )?code:? (\d{3})", re.IGNORECASE)


class CogReadError(OSError):
    """A window could not be read after all retries (404, corrupt bytes, refused connection).

    An ``OSError``: an unreadable input, which the ingest driver records as a reject with this
    message as its reason. The message is redacted on construction, since GDAL's text quotes
    the signed href. ``network``: whether the network or the server is the cause (an HTTP
    status, a dropped connection), as opposed to the file (not a TIFF, a window out of range).
    """

    def __init__(self, message: str, network: bool = False) -> None:
        super().__init__(redact(message))
        self.network = network


class GridMismatch(BadImage):
    """The COG's own header disagrees with the grid the catalog gives for it (a counted reject).

    The file's header wins: reading the catalog's window would put the band on other ground.
    """


@dataclass(frozen=True)
class Grid:
    """Where a catalog says a COG's pixels lie: its shape (rows, cols) and affine transform."""

    shape: tuple[int, int]
    transform: tuple[float, ...]

    def check(self, src: rasterio.DatasetReader, href: str) -> None:
        """Raise :class:`GridMismatch` naming both grids unless ``src`` lies on this one."""
        shape = (src.height, src.width)
        actual = tuple(src.transform)[:6]
        res = max(abs(self.transform[0]), abs(self.transform[4]))
        same = shape == tuple(self.shape) and all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3 * res)
            for a, b in zip(actual, self.transform, strict=True))
        if not same:
            raise GridMismatch(
                f"{strip_secrets(href)}: the catalog's grid (proj:shape {list(self.shape)}, "
                f"proj:transform {_short(self.transform)}) is not the file's (shape "
                f"{list(shape)}, transform {_short(actual)})")


def _short(transform: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in transform]


@dataclass(frozen=True)
class Patch:
    """Pixels of one window (bands first, as rasterio returns them) and where they lie."""

    pixels: np.ndarray  # (bands, rows, cols), the COG's dtype (uint8 NAIP, uint16 Sentinel-2)
    crs: str
    transform: tuple[float, ...]  # affine of the patch at its own resolution
    bounds: tuple[float, float, float, float]
    nodata: float | None = None  # the file's own nodata value (its header), if it sets one


def _status(err: Exception) -> int | None:
    match = _HTTP_CODE.search(str(err))
    return int(match.group(1)) if match else None


def read_window(
    href: str,
    window: Window,
    out_size: int,
    signer: Signer,
    *,
    retries: int = 5,
    backoff_s: float = 0.5,
    env: Mapping[str, object] | None = None,
    resampling: Resampling = Resampling.average,
    grid: Grid | None = None,
) -> Patch:
    """Read ``window`` of the COG at unsigned ``href``, resampled to ``out_size`` px.

    ``resampling``: average for reflectance; nearest for class rasters (Sentinel-2's SCL).
    ``grid``: the grid the catalog gives; the file's header is checked against it first
    (:class:`GridMismatch`). A window past the file's edge is a :class:`CogReadError` saying
    so, not a network failure.
    """
    settings = {**REMOTE_COG_ENV, **(env or {})}
    for attempt in range(retries + 1):
        try:
            with rasterio.Env(**settings), rasterio.open(signer(href)) as src:
                if grid is not None:
                    grid.check(src, href)
                if (window.col_off < 0 or window.row_off < 0
                        or window.col_off + window.width > src.width + 1e-6
                        or window.row_off + window.height > src.height + 1e-6):
                    raise CogReadError(
                        f"cannot read {strip_secrets(href)}: window {_window(window)} lies outside "
                        f"the file's {src.width} x {src.height} pixels")
                pixels = src.read(
                    window=window,
                    out_shape=(src.count, out_size, out_size),
                    resampling=resampling,
                )
                scale = window.width / out_size
                affine = window_transform(window, src.transform) @ rasterio.Affine.scale(scale)
                bounds = rasterio.windows.bounds(window, src.transform)
                return Patch(pixels, src.crs.to_string(), tuple(affine)[:6], tuple(bounds),
                             src.nodata)
        except RasterioIOError as err:
            status = _status(err)
            # a curl error (reset, timeout, EOF) is worth retrying; the "/vsicurl/" that every
            # message quotes is not one (corrupt bytes: "... not recognized as ..." is final)
            dropped = status is None and "curl" in str(err).lower().replace("/vsicurl/", "")
            retryable = status in (403, 429, 500, 502, 503, 504) or dropped
            if not retryable or attempt == retries:
                # from None: the RasterioIOError quotes the signed href, and its text is kept
                raise CogReadError(f"cannot read {strip_secrets(href)} {_window(window)}: {err}",
                                   network=retryable or status is not None) from None
            wait = 0.0 if status == 403 and attempt == 0 else backoff_s * 2**attempt
            log.warning(
                "read of %s failed (HTTP %s); %s, retry %d in %.1fs",
                strip_secrets(href),
                status,
                "re-signing" if status == 403 else "backing off",
                attempt + 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def _window(window: Window) -> str:
    return (f"window (col {window.col_off:g}, row {window.row_off:g}, "
            f"{window.width:g} x {window.height:g} px)")


def encode_geotiff(patch: Patch, band_names: Sequence[str] | None = None,
                   nodata: float | None = 0, tags: Mapping[str, str] | None = None) -> bytes:
    """A small lossless GeoTIFF of the patch: all bands in their dtype, CRS and transform kept.

    ``band_names`` become the band descriptions (how a reader tells B04 from B8A); ``nodata`` is
    the file's nodata value (NaN for float data without one); ``tags`` go into the dataset's
    metadata (GeoPile's preview definition, :data:`geopile.imagestats.PREVIEW_TAG`).
    """
    bands, rows, cols = patch.pixels.shape
    profile = {
        "driver": "GTiff",
        "dtype": patch.pixels.dtype.name,
        "count": bands,
        "height": rows,
        "width": cols,
        "crs": patch.crs,
        "transform": rasterio.Affine(*patch.transform),
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if patch.pixels.dtype.kind == "f" else 2,
        "interleave": "pixel",
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(patch.pixels)
            if band_names is not None:
                dst.descriptions = tuple(band_names)
            if tags:
                dst.update_tags(**tags)
        return bytes(mem.read())
