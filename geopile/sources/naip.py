"""NAIP patches sampled from a STAC API (the Planetary Computer's, or any with NAIP-shaped items).

One configuration of :class:`geopile.sources.stac.StacSource` (its round-robin plan, signer and
quotas), with NAIP's own strata, tile search and window reads. Sampling is planned from catalog
metadata alone (item shape, transform, GSD) and a seed, so the
plan is the same on every run against the same catalog: a killed ingest resumes by key and ends
with the same records. Strata are (state, year) pairs, each with an equal share of ``count``;
within a stratum, windows are drawn uniformly over items and positions. Windows are read (never
whole tiles) and resampled to ``target_gsd`` when the tile's native GSD differs. Every setting
comes from ``sources.naip`` in ``params.yaml``, which holds the only defaults.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

import numpy as np
from pydantic import Field
from rasterio.windows import Window

from geopile.cog import Grid, encode_geotiff, read_window
from geopile.imagestats import BadImage, pixel_stats
from geopile.records import make_key
from geopile.schema import Number, Omit, Workers, Year
from geopile.sources.base import Candidate, Processed
from geopile.sources.published import Publication
from geopile.sources.stac import StacSearch, StacSource, snapped, split_quota
from geopile.stac import SkippedItem, StacError, TileRef, search_tiles
from geopile.urls import strip_secrets

log = logging.getLogger(__name__)


class NaipSettings(StacSearch):
    """``sources.naip``: patches sampled from a STAC API (geopile/sources/naip.py)."""

    states: list[Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]] = Field(
        description="two-letter state codes; [] for every state")
    years: list[Year] = Field(
        description="years; [] for every year")
    gsds: list[Annotated[Number, Field(gt=0)]] = Field(description="native tile GSDs accepted")
    count: int = Field(ge=1, description="a patch count")
    patch_size: int = Field(ge=1, description="patch side in pixels")
    target_gsd: Number = Field(gt=0, description="metres per output pixel")
    max_nodata: Number = Field(ge=0, le=1, description="a fraction of all-zero pixels")
    min_entropy: Number = Field(ge=0, le=8, description="bits of grayscale entropy")
    max_draws_factor: int = Field(ge=1, description="draws per stratum, x its quota")
    workers: Workers = Field(ge=1, description="parallel window reads (threads)")
    retries: int = Field(ge=0, description="retries of a failed window read")
    max_error_fraction: Number = Field(
        ge=0, le=1, description="share of unreadable windows that stops the ingest")
    page_size: int = Field(ge=1, description="STAC items per page")
    seed: Omit[int] = Field(None, ge=0, description="overrides the top-level seed for NAIP")
    backoff_s: Omit[Number] = Field(None, ge=0, description="seconds before the first retry")
    gdal_env: Omit[dict[str, str | int | float | bool]] = Field(
        None, description="GDAL configuration options for the COG reads")


@dataclass(frozen=True)
class WindowTask:
    """One planned window: the tile, where in it, and how large to read it."""

    tile: TileRef
    col_off: int
    row_off: int
    size: int  # native pixels per side


__all__ = ["Naip", "WindowTask", "split_quota"]


class Naip(StacSource):
    """NAIP (R, G, B, NIR) patches, stored as lossless GeoTIFF, keyed ``naip/<st>_<yr>_N``.

    The stac source's plan with strata ``naip:state`` + ``naip:year``, the ``image`` asset and a
    native-GSD filter; windows are drawn in tile pixels (not on a ground grid) and the records
    keep NAIP's columns (state, year), so they are the same as before the generalisation.
    """

    kind = "naip"
    settings = NaipSettings
    # no files to download: windows of the COGs a STAC search finds are read on demand
    publication = Publication(
        name="NAIP",
        licence="public domain (USDA Farm Service Agency NAIP imagery)",
        gsd_m=(0.3, 1.0),  # native tiles; patches are resampled to sources.naip.target_gsd
        homepage="https://planetarycomputer.microsoft.com/dataset/naip",
    )
    expected_bands = 4
    executor = "thread"
    writes_raw_dir = True
    bibtex = """@misc{usda2024naip,
  title        = {National Agriculture Imagery Program (NAIP)},
  author       = {{USDA Farm Service Agency}},
  howpublished = {Microsoft Planetary Computer},
  url          = {https://planetarycomputer.microsoft.com/dataset/naip}
}"""

    def origin_lines(self) -> list[str]:
        """The STAC search the patches were sampled from (for the dataset card)."""
        s = self.settings
        return [f"STAC {strip_secrets(s.stac_url)} collection `{s.collection}`, bbox {s.bbox}, "
                f"{s.datetime}"]

    def inputs(self) -> dict[str, list[str]]:
        """The STAC API the windows are planned from (their COGs are read on demand)."""
        return {"stac_api": [self.settings.stac_url]}

    @cached_property
    def searched(self) -> tuple[dict[str, list[TileRef]], list[SkippedItem]]:
        """Matching tiles per stratum ``<state>_<year>``, sorted by item id; tiles skipped."""
        p = self.settings
        where = f"sources.{self.ctx.name}"
        by_stratum: dict[str, list[TileRef]] = {}
        skipped: list[SkippedItem] = []
        for tile in search_tiles(
            p.stac_url,
            collection=p.collection,
            bbox=p.bbox,
            datetime=p.datetime,
            states=p.states,
            years=p.years,
            gsds=p.gsds,
            page_size=p.page_size,
            setting=f"{where}.stac_url",
            gsds_setting=f"{where}.gsds",
        ):
            if isinstance(tile, SkippedItem):
                skipped.append(tile)
            else:
                by_stratum.setdefault(f"{tile.state}_{tile.year}", []).append(tile)
        self._warn_lost_strata(skipped, by_stratum)
        if not by_stratum:
            raise StacError(
                f"the STAC search at {p.stac_url} found no items of collection "
                f"{p.collection!r} for bbox={p.bbox}, datetime={p.datetime}, "
                f"states={p.states}, years={p.years}, gsds={p.gsds}. Check {where}.collection and "
                "those filters"
            )
        return ({k: sorted(v, key=lambda t: t.item_id) for k, v in sorted(by_stratum.items())},
                skipped)

    def _warn_lost_strata(self, skipped: list[SkippedItem],
                          kept: Mapping[str, list[TileRef]]) -> None:
        """Name each (state, year) whose every tile the GSD filter dropped."""
        lost = Counter(f"{str(s.properties.get('naip:state')).lower()}_"
                       f"{s.properties.get('naip:year')}" for s in skipped)
        for stratum, n in sorted(lost.items()):
            if stratum not in kept:
                log.warning("%s: stratum %s is left out: its %d tiles are all of a GSD not in "
                            "sources.%s.gsds (add it to keep them)", self.ctx.name, stratum, n,
                            self.ctx.name)

    @property
    def tiles(self) -> dict[str, list[TileRef]]:
        """Matching tiles per stratum ``<state>_<year>``, sorted by item id."""
        return self.searched[0]

    def skipped(self) -> list[dict[str, Any]]:
        """Tiles of a GSD not asked for, as reject rows."""
        return [{"key": make_key(self.ctx.name, "skipped", s.item_id), "origin": s.item_id,
                 "stac_item": s.item_id, "stratum": None,
                 "reject_reason": f"item skipped: {s.reason}"} for s in self.searched[1]]

    def quotas(self) -> Mapping[str, int]:
        """Patches to accept per (state, year) stratum."""
        return split_quota(self.settings.count, list(self.tiles))

    def fetch(self) -> None:
        """Nothing to download up front: windows are read on demand."""
        self.tiles  # noqa: B018 - search now, so a bad catalog fails before any work

    def _draw(self, stratum: str, rng: np.random.Generator) -> WindowTask | None:
        tiles = self.tiles[stratum]
        tile = tiles[int(rng.integers(len(tiles)))]
        size = math.ceil(snapped(self.patch_size * self.target_gsd / tile.res))
        rows, cols = tile.shape
        if rows < size or cols < size:
            return None
        return WindowTask(
            tile, int(rng.integers(cols - size + 1)), int(rng.integers(rows - size + 1)), size
        )

    def _origin(self, task: WindowTask) -> str:
        """The tile's unsigned href."""
        return task.tile.href

    def process(self, cand: Candidate) -> Processed:
        """Read, filter (nodata, entropy), encode and measure one window."""
        task: WindowTask = cand.task
        tile = task.tile
        window = Window(task.col_off, task.row_off, task.size, task.size)
        patch = read_window(
            tile.href,
            window,
            self.patch_size,
            self.signer,
            retries=self.settings.retries,
            backoff_s=self.backoff_s,
            env=self.settings.gdal_env,
            grid=Grid(tile.shape, tile.transform),
        )
        pixels = np.moveaxis(patch.pixels, 0, -1)
        if pixels.shape[2] != self.expected_bands:
            raise BadImage(f"wrong band count: {pixels.shape[2]}, expected {self.expected_bands}")
        data = encode_geotiff(patch)
        stats = pixel_stats(pixels, data, "tiff", nodata=0)
        max_nodata = self.settings.max_nodata
        if stats.nodata_fraction > max_nodata:
            raise BadImage(f"nodata fraction {stats.nodata_fraction:.3f} > max_nodata {max_nodata}")
        min_entropy = self.settings.min_entropy
        if stats.entropy_global < min_entropy:
            raise BadImage(f"entropy {stats.entropy_global:.2f} < min_entropy {min_entropy}")
        name = cand.key.split("/", 1)[1]
        row = {
            **stats.as_row(),
            "gsd_min": self.target_gsd,
            "gsd_max": self.target_gsd,
            "licence": self.licence,
            "path": f"raw/{self.ctx.name}/{tile.item_id}/{name}.tif",
            "origin": tile.href,
            "stac_item": tile.item_id,
            "asset_href": tile.href,
            "window": [task.col_off, task.row_off, task.size, task.size],
            "crs": patch.crs,
            "bounds": list(patch.bounds),
            "year": tile.year,
            "state": tile.state,
        }
        return Processed(row, payload=data)
