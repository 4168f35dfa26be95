"""Multi-band patches sampled from any STAC collection (Sentinel-2 L2A, Landsat, ...).

Like NAIP, sampling is planned from catalog metadata alone (item grids, properties) and a seed,
so the plan is the same on every run against the same catalog and a killed ingest resumes by
key with the same records. Strata are the values of ``strata`` keys (item properties such as
``s2:mgrs_tile``, or ``month``/``year`` of the item's datetime, or ``grid:<degrees>`` cells of
its centroid), each with an equal share of ``count``. Every band named in ``assets`` is read
over the same ground box from its own grid (Sentinel-2: 10, 20 and 60 m) and resampled to
``patch_size`` px at ``target_gsd``: average for reflectance, nearest for the class raster
(``cloud_asset``, Sentinel-2's SCL) that the cloud filter reads. Property filters (``query``)
follow the STAC query extension but run here, since not every server implements it. Every
setting comes from ``sources.<name>`` in ``params.yaml``, which holds the only defaults.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime as Datetime
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import xxhash
from pydantic import BeforeValidator, Field, model_validator
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from geopile.cog import Grid, Patch, encode_geotiff, read_window
from geopile.imagestats import PREVIEW_TAG, BadImage, Preview, band_stats, pixel_stats, rgb_preview
from geopile.records import make_key
from geopile.schema import Block, Number, Omit, SourceSettings, Text, invalid
from geopile.sources.base import Candidate, Processed, Source
from geopile.stac import (
    SIGNERS,
    AssetRef,
    BandInfo,
    ItemRef,
    SkippedItem,
    StacError,
    resolve_signer,
    search_items,
)
from geopile.stream.index import show
from geopile.urls import strip_secrets

log = logging.getLogger(__name__)

# the STAC query extension's comparisons (eq, neq, lt, lte, gt, gte, in)
QUERY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
    "gt": operator.gt, "gte": operator.ge, "in": lambda value, allowed: value in allowed,
}


def query_filter(query: Mapping[str, Any] | None, setting: str = "query"
                 ) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate on item properties with the STAC query extension's semantics.

    ``{prop: {op: value, ...}}``: every comparison of every property must hold; a property the
    item lacks fails (as on a server, where a comparison with null is false). A bare value
    means ``eq``.

    Raises:
        ValueError: an operator outside :data:`QUERY_OPS` (naming ``setting``).
    """
    tests: list[tuple[str, Callable[[Any, Any], bool], Any]] = []
    for prop, cond in (query or {}).items():
        for op, value in (cond.items() if isinstance(cond, Mapping) else [("eq", cond)]):
            if op not in QUERY_OPS:
                raise ValueError(f"{setting}.{prop}: unknown operator {op!r}; use one of "
                                 f"{', '.join(QUERY_OPS)}")
            if op == "in" and not isinstance(value, list | tuple):
                raise ValueError(f"{setting}.{prop}.in: expected a list, got {value!r}")
            tests.append((prop, QUERY_OPS[op], value))

    def keep(props: Mapping[str, Any]) -> bool:
        for prop, compare, value in tests:
            if props.get(prop) is None:
                return False
            try:
                if not compare(props[prop], value):
                    return False
            except TypeError:  # e.g. a string compared with a number: no match
                return False
        return True

    return keep


def stratum_of(item: ItemRef, keys: list[str]) -> str:
    """The stratum of ``item``: its values of ``keys`` joined by ``_``.

    ``month`` / ``year`` come from the item's datetime; ``grid:<deg>`` is the ``<deg>``-degree
    cell of the bbox centre (``<lat>_<lon>`` of its south-west corner); anything else is a
    property.

    Raises:
        KeyError: a property the item lacks.
    """
    parts = []
    for key in keys:
        if key in ("month", "year"):
            when = Datetime.fromisoformat(item.datetime.replace("Z", "+00:00"))
            parts.append(f"{when.month:02d}" if key == "month" else f"{when.year:04d}")
        elif key.startswith("grid:"):
            deg = float(key.split(":", 1)[1])
            west, south, east, north = item.bbox[:4]
            lat = math.floor((south + north) / 2 / deg) * deg
            lon = math.floor((west + east) / 2 / deg) * deg
            parts.append(f"{lat:g}_{lon:g}".replace("-", "m").replace(".", "p"))
        else:
            parts.append(str(item.properties[key]))
    return "_".join(parts) if parts else "all"


def split_quota(count: int, strata: list[str]) -> dict[str, int]:
    """``count`` spread evenly over ``strata``, the remainder to the first ones (sorted)."""
    base, extra = divmod(count, len(strata))
    return {s: base + (i < extra) for i, s in enumerate(sorted(strata))}


# ---------------------------------------------------------------------------------------------
# settings: what every STAC-sampled source searches, and what type: stac reads beyond it


def _signer(value: Any) -> Any:
    if value is None or (isinstance(value, str)
                         and (value in SIGNERS or re.fullmatch(r"[\w.]+:\w+", value))):
        return value
    raise invalid(f"must be one of {', '.join(sorted(SIGNERS))} or 'package.module:function'")


def _bbox(value: Any) -> Any:
    ok = (isinstance(value, list) and len(value) == 4
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if value is None or (ok and value[0] < value[2] and value[1] < value[3]):
        return value
    raise invalid("must be [west, south, east, north] in degrees, west < east and south < north")


def _datetime(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise invalid("must be text (YAML reads an unquoted date as a date): quote it, "
                "e.g. datetime: '2020-01-01/2020-12-31'")


class StacSearch(SourceSettings):
    """What every STAC-sampled source searches: the API, collection, signer, area and time."""

    stac_url: Annotated[str, Field(pattern=r"^https?://")] = Field(
        description="the STAC API's URL")
    collection: Text = Field(description="the STAC collection")
    signer: Annotated[str | None, BeforeValidator(_signer)] = Field(
        description="signs asset hrefs at read time")
    bbox: Annotated[list[float] | None, BeforeValidator(_bbox)] = Field(
        description="search area, EPSG:4326")
    datetime: Annotated[str | None, BeforeValidator(_datetime)] = Field(
        description="STAC datetime interval")


def _query(value: Any) -> Any:
    """The STAC query extension's ``{property: {op: value}}``, checked like the source does."""
    if value is None:
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected {{property: {{op: value}}}}, got {show(value)}")
    for prop, cond in value.items():
        for op in cond if isinstance(cond, dict) else ():
            if op not in QUERY_OPS:
                raise ValueError(f"{prop}: unknown operator {op!r}; use one of "
                                 f"{', '.join(QUERY_OPS)}")
    return value


class Harmonize(Block):
    """A collection's change of scale: subtract ``offset`` from the bands of later items."""

    property: Text = Field(description="the item property that dates the change")
    since: Text = Field(description="items whose property is >= this (as text) are shifted")
    offset: int = Field(gt=0, description="added to every band value by later processing")

    def applies(self, properties: Mapping[str, Any]) -> bool:
        """Whether an item with these properties is shifted (its property at or past ``since``).

        Sentinel-2 L2A from processing baseline 04.00 (January 2022) stores DN + 1000
        (``BOA_ADD_OFFSET``); the Planetary Computer's recipe puts those items back on the
        earlier scale, so one corpus has one scale. An item without the property is left as
        published.
        """
        value = properties.get(self.property)
        return value is not None and str(value) >= self.since

    def undo(self, pixels: np.ndarray) -> np.ndarray:
        """``clip(DN, offset) - offset``, in the stored dtype (the Planetary Computer's recipe)."""
        return (np.maximum(pixels, self.offset) - self.offset).astype(pixels.dtype)


class StacSettings(StacSearch):
    """``type: stac``: multi-band patches of any STAC collection (geopile/sources/stac.py)."""

    query: Annotated[dict[str, Any] | None, BeforeValidator(_query)] = Field(
        description="item property filters (STAC query extension: eq/neq/lt/lte/gt/gte/in)")
    assets: list[Text] = Field(min_length=1, description="asset keys stacked as bands, in order")
    strata: list[Annotated[str, Field(pattern=r"^(month|year|grid:[0-9.]+|[A-Za-z0-9:_.-]+)$")]
                 ] = Field(description="item properties, month, year or grid:<degrees>")
    count: int = Field(ge=1, description="a patch count")
    patch_size: int = Field(ge=1, description="patch side in pixels")
    target_gsd: Annotated[Number, Field(gt=0)] | Literal["native"] = Field(
        description="metres per output pixel, or native: each item's finest asset grid, copied "
        "1:1 (needed for grids in degrees, e.g. cop-dem-glo-30)")
    max_nodata: Number = Field(ge=0, le=1, description="a fraction of nodata pixels")
    min_entropy: Number = Field(ge=0, le=8, description="bits of preview grayscale entropy")
    values: Literal["stored", "scaled"] = Field(
        "stored", description="stored: the numbers as published (their raster:bands scale and "
        "offset recorded per band); scaled: stored x scale + offset as float32, nodata as NaN")
    preview_bands: Omit[Annotated[list[Text], Field(min_length=1, max_length=3)]] = Field(
        None, description="the 1 or 3 assets hashes, entropy and thumbnails see; default: those "
        "whose common names are red, green, blue, else the first asset as gray")
    preview_db: bool = Field(False, description="take the preview bands to dB first (SAR power)")
    max_cloud: Number | None = Field(ge=0, le=1, description="a fraction of cloud pixels")
    cloud_asset: str | None = Field(description="scene classification asset (SCL); null: none")
    cloud_classes: list[int] = Field(description="cloud_asset classes counted as cloud")
    max_draws_factor: int = Field(ge=1, description="draws per stratum, x its quota")
    retries: int = Field(ge=0, description="retries of a failed window read")
    page_size: int = Field(ge=1, description="STAC items per page")
    requester_pays: bool = Field(False, description="S3 requester-pays buckets")
    aws_profile: Omit[Text] = Field(None, description="AWS profile for requester-pays reads")
    seed: Omit[int] = Field(None, ge=0, description="overrides the top-level seed")
    backoff_s: Omit[Number] = Field(None, ge=0, description="seconds before the first retry")
    gdal_env: Omit[dict[str, str | int | float | bool]] = Field(
        None, description="GDAL configuration options for the COG reads")
    harmonize: Omit[Harmonize] = Field(
        None, description="put items of a later processing baseline on the earlier scale")

    @model_validator(mode="after")
    def _preview_of_assets(self) -> StacSettings:
        bands = self.preview_bands
        if bands is not None and (len(bands) not in (1, 3) or not set(bands) <= set(self.assets)):
            raise ValueError(f"preview_bands {bands} must be 1 or 3 of assets {self.assets}")
        return self


@dataclass(frozen=True)
class BoxTask:
    """One planned patch: the item and the upper-left corner of its ground box (item CRS)."""

    item: ItemRef
    x: float
    y: float


SNAP = 1e-3  # a ratio of pixel sizes within this (relative) of a whole number is that number


def snapped(value: float, tolerance: float | None = None) -> float:
    """``value``, or the whole number within ``tolerance`` of it.

    The default, :data:`SNAP` relative, is for ratios of pixel sizes; offsets pass an absolute
    one. NAIP's 0.6 m tiles say 0.5999999999999951: without this a 256 px patch reads 257 px and
    averages them down, changing 97% of the values of what should be a copy.
    """
    whole = round(value)
    allowed = SNAP * abs(value) if tolerance is None else tolerance
    return float(whole) if abs(value - whole) <= allowed else value


@dataclass(frozen=True)
class BandValues:
    """What the stored numbers of one band mean: ``physical = stored * scale + offset``."""

    scale: float | None
    offset: float | None
    nodata: float | None
    unit: str | None


class StacSource(Source):
    """Multi-band patches of a STAC collection, lossless GeoTIFF, keyed ``<name>/<stratum>_N``."""

    kind = "stac"
    settings = StacSettings
    expected_bands = None
    executor = "thread"
    writes_raw_dir = True

    def origin_lines(self) -> list[str]:
        """The STAC search the patches were sampled from (for the dataset card)."""
        s = self.settings
        return [f"STAC {strip_secrets(s.stac_url)} collection `{s.collection}`, "
                f"bbox {s.bbox}, {s.datetime}, query {getattr(s, 'query', None)}"]

    def inputs(self) -> dict[str, list[str]]:
        """The STAC API the boxes are planned from (their COGs are read on demand)."""
        return {"stac_api": [self.settings.stac_url]}

    @cached_property
    def signer(self):  # a Signer
        """The URL signer named by ``signer`` (``planetary_computer`` for its collections)."""
        return resolve_signer(self.settings.signer)

    @property
    def where(self) -> str:
        """The params block of this source, for messages."""
        return f"sources.{self.ctx.name}"

    @property
    def assets(self) -> list[str]:
        """Asset keys stacked as bands, in order."""
        return list(self.settings.assets)

    @property
    def cloud_asset(self) -> str | None:
        """The scene classification asset the cloud filter reads (Sentinel-2: SCL)."""
        return self.settings.cloud_asset or None

    @property
    def patch_size(self) -> int:
        """Output patch side in pixels at ``target_gsd``."""
        return self.settings.patch_size

    @property
    def target_gsd(self) -> float | None:
        """Output ground sample distance in metres; None: each item's native (finest) grid."""
        target = self.settings.target_gsd
        return None if target == "native" else float(target)

    def _searched(self) -> tuple[dict[str, list[ItemRef]], list[SkippedItem]]:
        p = self.settings
        keep = query_filter(p.query, f"{self.where}.query")
        wanted = self.assets + ([self.cloud_asset] if self.cloud_asset else [])
        by_stratum: dict[str, list[ItemRef]] = {}
        skipped: list[SkippedItem] = []
        for item in search_items(
            p.stac_url, collection=p.collection, bbox=p.bbox, datetime=p.datetime,
            assets=wanted, keep=keep, page_size=p.page_size, setting=f"{self.where}.stac_url",
        ):
            why = item.reason if isinstance(item, SkippedItem) else self._unfit(item)
            if why is not None:
                skipped.append(item if isinstance(item, SkippedItem)
                               else SkippedItem(item.item_id, item.properties, why))
                continue
            try:
                stratum = stratum_of(item, list(p.strata))
            except KeyError as err:
                raise StacError(f"STAC item {item.item_id!r} has no property {err} named in "
                                f"{self.where}.strata") from None
            by_stratum.setdefault(stratum, []).append(item)
        return by_stratum, skipped

    def _unfit(self, item: ItemRef) -> str | None:
        """Why an item with every asset still cannot be sampled as asked, or None."""
        if self.target_gsd is not None and CRS.from_epsg(item.epsg).is_geographic:
            return (f"its grid is in degrees (EPSG:{item.epsg}): set {self.where}.target_gsd: "
                    "native to copy it 1:1")
        return None

    @cached_property
    def searched(self) -> tuple[dict[str, list[ItemRef]], list[SkippedItem]]:
        """Matching items per stratum, sorted by id; and the items skipped, with why."""
        p = self.settings
        by_stratum, skipped = self._searched()
        if not by_stratum:
            why = ""
            if skipped:
                reasons = Counter(s.reason for s in skipped).most_common(3)
                why = (f" ({len(skipped)} found, none usable: "
                       + "; ".join(f"{n} x {r}" for r, n in reasons) + ")")
            raise StacError(
                f"the STAC search at {p.stac_url} found no items of collection "
                f"{p.collection!r} for bbox={p.bbox}, datetime={p.datetime}, "
                f"query={p.query}{why}. Check {self.where}.collection, its assets and those "
                "filters (geopile stac inspect shows what the catalog holds)")
        if skipped:
            log.warning("%s: skipped %d of %d items (reasons in the rejects; `geopile summary`)",
                        self.ctx.name, len(skipped),
                        len(skipped) + sum(map(len, by_stratum.values())))
        return ({k: sorted(v, key=lambda t: t.item_id) for k, v in sorted(by_stratum.items())},
                skipped)

    @property
    def items(self) -> dict[str, list[ItemRef]]:
        """Matching items per stratum, sorted by item id."""
        return self.searched[0]

    def skipped(self) -> list[dict[str, Any]]:
        """The items found but not sampled, as reject rows (``<name>/skipped_<item id>``)."""
        return [{"key": make_key(self.ctx.name, "skipped", item.item_id),
                 "origin": item.item_id, "stac_item": item.item_id, "stratum": None,
                 "reject_reason": f"item skipped: {item.reason}"}
                for item in self.searched[1]]

    def quotas(self) -> Mapping[str, int]:
        """Patches to accept per stratum."""
        return split_quota(self.settings.count, list(self.items))

    def fetch(self) -> None:
        """Nothing to download up front: windows are read on demand."""
        self.items  # noqa: B018 - search now, so a bad catalog fails before any work

    def _fine(self, item: ItemRef) -> AssetRef:
        """The item's finest asset grid (Sentinel-2: a 10 m band)."""
        return min((item.assets[a] for a in self.assets), key=lambda a: a.res)

    def _side(self, item: ItemRef) -> tuple[float, float]:
        """The ground width and height of a patch of ``item``, in its CRS units."""
        target = self.target_gsd
        if target is None:  # native: patch_size pixels of the finest grid, square or not
            fine = self._fine(item)
            return self.patch_size * fine.res, self.patch_size * fine.res_y
        return self.patch_size * target, self.patch_size * target

    def _draw(self, stratum: str, rng: np.random.Generator) -> Any:
        """A ground box on the coarsest asset grid, so every band's window is whole pixels."""
        items = self.items[stratum]
        item = items[int(rng.integers(len(items)))]
        side_x, side_y = self._side(item)
        grids = [item.assets[a] for a in self.assets]
        step_x, step_y = max(a.res for a in grids), max(a.res_y for a in grids)
        fine = self._fine(item)
        x0, y0 = fine.transform[2], fine.transform[5]
        width, height = fine.shape[1] * fine.res, fine.shape[0] * fine.res_y
        cols = math.floor((width - side_x) / step_x * (1 + 1e-9)) + 1
        rows = math.floor((height - side_y) / step_y * (1 + 1e-9)) + 1
        if cols < 1 or rows < 1:
            return None
        return BoxTask(item, x0 + int(rng.integers(cols)) * step_x,
                       y0 - int(rng.integers(rows)) * step_y)

    def candidates(self) -> Iterator[Candidate]:
        """Boxes drawn round-robin over strata, at most ``max_draws_factor`` x quota each.

        Shared with NAIP (its draws are windows of one tile): the same seed gives the same
        keys, in the same order, on every run.
        """
        seed = self.ctx.seed if self.settings.seed is None else self.settings.seed
        quotas = self.quotas()
        factor = self.settings.max_draws_factor
        rngs = {s: np.random.default_rng([seed, zlib.crc32(s.encode())]) for s in quotas}
        for draw in range(max(quotas.values()) * factor):
            for stratum in quotas:
                if draw >= quotas[stratum] * factor:
                    continue
                task = self._draw(stratum, rngs[stratum])
                if task is None:
                    continue
                key = make_key(self.ctx.name, stratum, f"{draw:07d}")
                yield Candidate(key=key, stratum=stratum, task=task,
                                fields={"origin": self._origin(task)})

    def _origin(self, task: BoxTask) -> str:
        """The candidate's ``origin`` before it is read (the item id)."""
        return task.item.item_id

    def window(self, task: BoxTask, asset: str) -> Window:
        """The task's ground box on ``asset``'s own grid.

        Boxes start on the coarsest asset grid, so offsets are whole pixels; the side is
        fractional where the box is not a multiple of the pixel (640 m of a 60 m band), and
        GDAL reads such a window exactly (its floating-point RasterIO window), so every band
        covers the same ground. A side within :data:`SNAP` of whole pixels is whole (1:1).
        """
        ref = task.item.assets[asset]
        side_x, side_y = self._side(task.item)
        width, height = snapped(side_x / ref.res), snapped(side_y / ref.res_y)
        col = snapped((task.x - ref.transform[2]) / ref.res, SNAP)
        row = snapped((ref.transform[5] - task.y) / ref.res_y, SNAP)
        return Window(col, row, int(width) if width == int(width) else width,
                      int(height) if height == int(height) else height)

    def _read(self, task: BoxTask, asset: str, resampling: Resampling) -> Patch:
        """One asset's window over the task's ground box, at ``patch_size`` px.

        Its grid is checked against the file's header first (:class:`geopile.cog.Grid`).
        """
        ref = task.item.assets[asset]
        return read_window(
            ref.href, self.window(task, asset), self.patch_size, self.signer,
            retries=self.settings.retries, backoff_s=self.backoff_s, env=self.gdal_env,
            resampling=Resampling.nearest if ref.categorical else resampling,
            grid=Grid(ref.shape, ref.transform))

    @property
    def backoff_s(self) -> float:
        """Seconds before the first retry of a window read (``backoff_s``, else 0.5)."""
        return 0.5 if self.settings.backoff_s is None else self.settings.backoff_s

    @cached_property
    def gdal_env(self) -> dict[str, object]:
        """``gdal_env``, plus requester-pays S3 settings when ``requester_pays`` is on."""
        env: dict[str, object] = dict(self.settings.gdal_env or {})
        if getattr(self.settings, "requester_pays", False):
            env["AWS_REQUEST_PAYER"] = "requester"
            if self.settings.aws_profile:
                env["AWS_PROFILE"] = self.settings.aws_profile
        return env

    def band_values(self, item: ItemRef, patches: list[Patch]) -> list[BandValues]:
        """Each band's published scale, offset, unit and nodata (the file's header first).

        Items that ``harmonize`` shifts are stored on the earlier scale, so their offset is
        the earlier one: ``offset + harmonize.offset * scale``.
        """
        rule = self.settings.harmonize
        shifted = rule is not None and rule.applies(item.properties)
        out = []
        for asset, patch in zip(self.assets, patches, strict=True):
            band = item.assets[asset].bands[0] if item.assets[asset].bands else BandInfo()
            offset = band.offset
            if shifted and band.scale is not None:
                offset = (offset or 0.0) + rule.offset * band.scale
            nodata = patch.nodata if patch.nodata is not None else band.nodata
            out.append(BandValues(band.scale, offset, nodata, band.unit))
        return out

    def preview(self, item: ItemRef) -> Preview:
        """The bands hashes and entropy see: ``preview_bands``, else red/green/blue, else one."""
        if self.settings.preview_bands:
            return Preview(tuple(self.settings.preview_bands), self.settings.preview_db)
        common = {}
        for asset in self.assets:
            bands = item.assets[asset].bands
            if bands and bands[0].common_name:
                common.setdefault(bands[0].common_name, asset)
        if all(c in common for c in ("red", "green", "blue")):
            return Preview((common["red"], common["green"], common["blue"]),
                           self.settings.preview_db)
        return Preview((self.assets[0],), self.settings.preview_db)

    def process(self, cand: Candidate) -> Processed:
        """Read every band, filter (nodata, cloud, entropy), encode and measure one patch."""
        task: BoxTask = cand.task
        item = task.item
        reads = [self._read(task, a, Resampling.average) for a in self.assets]
        for asset, patch in zip(self.assets, reads, strict=True):
            if patch.pixels.shape[0] != 1:
                raise BadImage(f"asset {asset} has {patch.pixels.shape[0]} bands; "
                               f"{self.where}.assets takes single-band assets")
        values = self.band_values(item, reads)
        stack = np.concatenate([r.pixels for r in reads])
        nodata = _nodata_mask(stack, values)
        rule = self.settings.harmonize
        if rule is not None and rule.applies(item.properties):
            stack = rule.undo(stack)
        if self.settings.values == "scaled":
            stack, values = _scaled(stack, values, nodata)
        fine = min(range(len(reads)), key=lambda i: item.assets[self.assets[i]].res)
        patch = Patch(stack, reads[fine].crs, reads[fine].transform, reads[fine].bounds)
        pixels = np.moveaxis(stack, 0, -1)
        cloud_fraction = None
        if self.cloud_asset:
            scl = self._read(task, self.cloud_asset, Resampling.nearest).pixels[0]
            nodata |= scl == 0
            classes = list(self.settings.cloud_classes)
            cloud_fraction = float(np.isin(scl, classes).mean())
        nodata_fraction = float(nodata.mean())
        max_nodata = self.settings.max_nodata
        if nodata_fraction > max_nodata:
            raise BadImage(f"nodata fraction {nodata_fraction:.3f} > max_nodata {max_nodata}")
        max_cloud = self.settings.max_cloud
        if cloud_fraction is not None and max_cloud is not None and cloud_fraction > max_cloud:
            raise BadImage(f"cloud fraction {cloud_fraction:.3f} > max_cloud {max_cloud}")
        preview = self.preview(item)
        data = encode_geotiff(patch, self.assets, nodata=_file_nodata(stack, values),
                              tags={PREVIEW_TAG: preview.tag()})
        stats = pixel_stats(rgb_preview(pixels, self.assets, preview), data, "tiff")
        min_entropy = self.settings.min_entropy
        if stats.entropy_global < min_entropy:
            raise BadImage(f"entropy {stats.entropy_global:.2f} < min_entropy {min_entropy}")
        h, w, c = pixels.shape
        digest = xxhash.xxh3_128(np.ascontiguousarray(pixels).tobytes())  # all bands, exact
        digest.update(f"{h}x{w}x{c}:{pixels.dtype.name}".encode())
        mean, std = band_stats(pixels, valid=~nodata)  # the pixels nodata_fraction counts
        name = cand.key.split("/", 1)[1]
        gsd = self.target_gsd if self.target_gsd is not None else item.assets[
            self.assets[fine]].gsd
        row = {
            **stats.as_row(),
            "bands": c,
            "xxh3_pixels": digest.hexdigest(),
            "nodata_fraction": nodata_fraction,
            "gsd_min": gsd,
            "gsd_max": gsd,
            "licence": self.licence,
            "path": f"raw/{self.ctx.name}/{item.item_id}/{name}.tif",
            "origin": item.item_id,
            "stac_item": item.item_id,
            "asset_href": item.assets[self.assets[0]].href,
            # on the finest asset's grid (Sentinel-2: the 10 m bands)
            "window": [round(v) for v in self.window(task, self.assets[fine]).flatten()],
            "crs": patch.crs,
            "bounds": list(patch.bounds),
            "year": item.datetime[:4],
            "band_names": list(self.assets),
            "dtype": pixels.dtype.name,
            "band_mean": mean,
            "band_std": std,
            "band_scale": _published([v.scale for v in values]),
            "band_offset": _published([v.offset for v in values]),
            "band_nodata": _published([v.nodata for v in values]),
            "band_unit": _published([v.unit for v in values]),
            "cloud_fraction": cloud_fraction,
            "datetime": item.datetime,
        }
        return Processed(row, payload=data)


def _published(values: list[Any]) -> list[Any] | None:
    """Per-band values, or None where the catalog publishes none for any band."""
    return values if any(v is not None for v in values) else None


def _nodata_mask(stack: np.ndarray, values: list[BandValues]) -> np.ndarray:
    """Pixels that are nodata in every band (each band's own nodata; NaN for float data).

    A band that declares none counts 0 as nodata when it is an integer type (the Sentinel-2
    and NAIP convention), nothing when it is floating point (0 m is sea level).
    """
    masks = []
    for band, v in zip(stack, values, strict=True):
        if v.nodata is not None and math.isnan(v.nodata):
            masks.append(np.isnan(band))
        elif v.nodata is not None:
            masks.append(band == v.nodata)
        elif band.dtype.kind == "f":
            masks.append(np.isnan(band))
        else:
            masks.append(band == 0)
    return np.logical_and.reduce(masks)


def _scaled(stack: np.ndarray, values: list[BandValues], nodata: np.ndarray
            ) -> tuple[np.ndarray, list[BandValues]]:
    """``stored * scale + offset`` per band as float32, nodata as NaN; the values now say so."""
    out = stack.astype(np.float32)
    for i, v in enumerate(values):
        out[i] = out[i] * np.float32(1.0 if v.scale is None else v.scale) + np.float32(
            v.offset or 0.0)
    out[:, nodata] = np.nan
    return out, [BandValues(1.0, 0.0, math.nan, v.unit) for v in values]


def _file_nodata(stack: np.ndarray, values: list[BandValues]) -> float | None:
    """The stored GeoTIFF's nodata: the bands' common one, NaN for float data, else 0."""
    declared = {v.nodata for v in values if v.nodata is not None and not math.isnan(v.nodata)}
    if stack.dtype.kind == "f":
        return next(iter(declared)) if len(declared) == 1 else math.nan
    return next(iter(declared)) if len(declared) == 1 else 0
