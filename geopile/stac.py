"""STAC search for NAIP-like collections, with a pluggable URL signer.

The Planetary Computer serves NAIP assets from Azure Blob Storage behind short-lived SAS tokens;
other catalogs (and the offline world) need no signing. The signer is chosen by name in params.

pystac-client reports a catalog that is down, slow or not a STAC API with whatever its HTTP
stack raised (a ``requests`` traceback, an ``orjson`` decode error); :func:`search_tiles` turns
each into one :class:`StacError` line: which URL, what failed, what to check.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from pystac import STACError
from pystac_client import Client
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.warnings import DoesNotConformTo

from geopile.urls import redact, strip_secrets

Signer = Callable[[str], str]
DEFAULT_TIMEOUT_S = 60.0  # per request; pystac-client's default is to wait forever


class StacError(RuntimeError):
    """A STAC API could not be searched: unreachable, too slow, an HTTP error, or not STAC.

    The message is one line, redacted: the URL, what failed, and what to check.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(" ".join(message.split())))


def no_signing(href: str) -> str:
    """The identity signer, for public assets."""
    return href


def planetary_computer_signer(href: str) -> str:
    """Sign an Azure blob href with a (cached, auto-renewed) Planetary Computer SAS token."""
    import planetary_computer

    return planetary_computer.sign(href)


SIGNERS: dict[str, Signer] = {"none": no_signing, "planetary_computer": planetary_computer_signer}


def resolve_signer(name: str | None) -> Signer:
    """A signer by registered name, or ``"package.module:function"`` for your own."""
    name = name or "none"
    if name in SIGNERS:
        return SIGNERS[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"unknown signer {name!r}: use one of {sorted(SIGNERS)} or 'module:function'")


@dataclass(frozen=True)
class TileRef:
    """What sampling needs of one NAIP item, with the asset href stored unsigned."""

    item_id: str
    href: str  # unsigned
    state: str
    year: str
    gsd: float  # as declared (the gsd filter reads it)
    epsg: int
    shape: tuple[int, int]  # rows, cols
    transform: tuple[float, ...]  # the first six proj:transform numbers (affine)

    @property
    def res(self) -> float:
        """The pixel size, from the grid (real 0.6 m tiles say 0.5999999999999951)."""
        return abs(self.transform[0])


def _epsg(props: dict[str, Any]) -> int:
    """EPSG code from ``proj:epsg`` (v1, as the API serves it) or ``proj:code`` (v2, pystac's)."""
    if props.get("proj:epsg") is not None:
        return int(props["proj:epsg"])
    code = str(props.get("proj:code", ""))
    if code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    raise ValueError(f"item has neither proj:epsg nor an EPSG proj:code: {code!r}")


def _tile_ref(item: Any, asset: str) -> TileRef:
    props = item.properties
    return TileRef(
        item_id=item.id,
        href=strip_secrets(item.assets[asset].href),
        state=str(props["naip:state"]).lower(),
        year=str(props["naip:year"]),
        gsd=float(props["gsd"]),
        epsg=_epsg(props),
        shape=(int(props["proj:shape"][0]), int(props["proj:shape"][1])),
        transform=tuple(float(v) for v in props["proj:transform"][:6]),
    )


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling.

    pystac-client re-raises ``requests`` errors as ``APIError(str(err))``, keeping the original
    only as the context.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _connection_failure(err: requests.ConnectionError) -> str:
    text = str(err)
    if "refused" in text.lower():
        return "connection refused"
    if any(s in text for s in ("NameResolution", "Failed to resolve", "Name or service not known",
                               "nodename nor servname", "getaddrinfo")):
        return "host name not found"
    if "SSL" in text or "certificate" in text.lower():
        return "TLS/certificate error"
    return "connection failed"


def _diagnose(err: BaseException, timeout_s: float, setting: str, collection: str
              ) -> tuple[str, str]:
    """What failed, in a few words, and what to check, for a failed open or search."""
    reach = (f"that the server is up and reachable from this machine (network, proxy, VPN) and "
             f"that {setting} is right")
    api_root = (f"that {setting} is a STAC API root (the Planetary Computer's is "
                f"https://planetarycomputer.microsoft.com/api/stac/v1), not a web page or a "
                f"static catalog")
    for cause in _chain(err):
        if isinstance(cause, requests.Timeout):
            return f"no answer within {timeout_s:g}s (timed out)", reach
        if isinstance(cause, requests.ConnectionError):
            return _connection_failure(cause), reach
    if isinstance(err, APIError) and getattr(err, "status_code", None) is not None:
        body = " ".join(str(err).split())[:120]
        what = f"HTTP {err.status_code}" + (f" ({body})" if body else "")
        if err.status_code in (401, 403):
            return what, f"{setting} and any key or token the API needs"
        return what, f"{setting} and the collection name ({collection!r})"
    if isinstance(err, APIError):
        return f"request failed ({' '.join(str(err).split())[:160]})", reach
    if isinstance(err, DoesNotConformTo):
        return "the API does not support item search (no ITEM_SEARCH conformance)", api_root
    if isinstance(err, ValueError | ClientTypeError | STACError | KeyError | TypeError):
        kind = "not JSON" if isinstance(err, ValueError) else "not a STAC catalog"
        return f"the response is {kind}: not a STAC API", api_root
    return f"{type(err).__name__}: {err}", reach


def search_tiles(
    url: str,
    *,
    collection: str,
    bbox: Sequence[float] | None,
    datetime: str | None,
    states: Sequence[str] = (),
    years: Sequence[str | int] = (),
    gsds: Sequence[float] = (),
    asset: str = "image",
    page_size: int = 1000,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    setting: str = "stac_url",
    gsds_setting: str = "gsds",
) -> Iterator[TileRef | SkippedItem]:
    """Items of ``collection`` in ``bbox``/``datetime``, filtered by state, year and GSD.

    State, year and GSD are filtered here rather than with the API's ``query``: not every STAC
    server implements it (rustac does not, FACTS.md §4), and filtering locally costs nothing.
    A tile of another GSD comes back as a :class:`SkippedItem` (a counted reject, not silence:
    a state flown at 0.3 m in 2021 would otherwise vanish from the corpus unseen).

    Raises:
        StacError: the API could not be opened or searched (``setting`` names the parameter
            that holds ``url``, for the message), or an item lacks a NAIP property.
    """
    want_states = {s.lower() for s in states}
    want_years = {str(y) for y in years}
    want_gsds = {round(float(g), 3) for g in gsds}
    try:
        client = Client.open(url, timeout=timeout_s)
        search = client.search(
            collections=[collection],
            bbox=list(bbox) if bbox else None,
            datetime=datetime,
            limit=page_size,
        )
        items = search.items()
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            try:
                tile = _tile_ref(item, asset)
            except (KeyError, TypeError, ValueError) as err:
                raise StacError(
                    f"STAC item {item.id!r} of collection {collection!r} at {url} is not "
                    f"NAIP-shaped: missing or bad {err}. Check {setting} and the collection name"
                ) from None
            if want_states and tile.state not in want_states:
                continue
            if want_years and tile.year not in want_years:
                continue
            if want_gsds and round(tile.gsd, 3) not in want_gsds:
                yield SkippedItem(tile.item_id, dict(item.properties),
                                  f"native gsd {tile.gsd:g} m is not in {gsds_setting} "
                                  f"{sorted(want_gsds)}")
                continue
            yield tile
    except StacError:
        raise
    except Exception as err:  # pystac-client raises whatever its stack raised
        what, check = _diagnose(err, timeout_s, setting, collection)
        raise StacError(f"STAC search at {url} failed: {what}. Check {check}.") from None


@dataclass(frozen=True)
class BandInfo:
    """One band of an asset as the catalog publishes it (``raster:bands``, ``eo:bands``).

    ``physical = stored * scale + offset``; ``None``: not published.
    """

    data_type: str | None = None
    nodata: float | None = None
    scale: float | None = None
    offset: float | None = None
    unit: str | None = None
    common_name: str | None = None
    spatial_resolution: float | None = None


@dataclass(frozen=True)
class AssetRef:
    """One asset's grid and bands, from the item (Sentinel-2: each band has its own grid).

    The grid is the asset's ``proj:transform``/``proj:shape``, else the item's (at the asset's
    ``raster:bands`` ``spatial_resolution`` where that differs), never a ``gsd`` alone: Landsat's
    ``lwir11`` says ``gsd: 100`` and lies on the item's 30 m grid. ``grid`` says which; the
    opened COG's own header is checked against it at read time (:func:`geopile.cog.read_window`).
    """

    href: str  # unsigned
    shape: tuple[int, int]  # rows, cols
    transform: tuple[float, ...]  # affine, six numbers
    grid: str = "asset"  # where the grid came from: asset, item, or spatial_resolution
    gsd: float | None = None  # as declared; informational only
    epsg: int | None = None  # the asset's own, where it differs from the item's
    bands: tuple[BandInfo, ...] = ()
    categorical: bool = False  # classification:classes / bitfields: never averaged

    @property
    def res(self) -> float:
        """The pixel width in CRS units, from the grid."""
        return abs(self.transform[0])

    @property
    def res_y(self) -> float:
        """The pixel height (Copernicus DEM's polar tiles: a tenth of the width)."""
        return abs(self.transform[4])


@dataclass(frozen=True)
class ItemRef:
    """What generic STAC sampling needs of one item: properties and the grids of its assets."""

    item_id: str
    datetime: str
    epsg: int
    bbox: tuple[float, ...]  # EPSG:4326
    properties: dict[str, Any]
    assets: dict[str, AssetRef]


@dataclass(frozen=True)
class SkippedItem:
    """An item the search found that cannot be sampled as asked, and why (a counted reject)."""

    item_id: str
    properties: dict[str, Any]
    reason: str


class ItemSkip(ValueError):
    """Why one item cannot be read as asked; the search skips it and goes on."""


def _has_crs(fields: dict[str, Any]) -> bool:
    return fields.get("proj:epsg") is not None or fields.get("proj:code") is not None


def _number(value: Any) -> float | None:
    return None if value is None or isinstance(value, bool) else float(value)


def _bands(fields: dict[str, Any]) -> tuple[BandInfo, ...]:
    """The asset's bands from ``raster:bands`` (values) and ``eo:bands`` (common names)."""
    raster = fields.get("raster:bands")
    eo = fields.get("eo:bands")
    raster = raster if isinstance(raster, list) else []
    eo = eo if isinstance(eo, list) else []
    out = []
    for i in range(max(len(raster), len(eo))):
        r = raster[i] if i < len(raster) and isinstance(raster[i], dict) else {}
        e = eo[i] if i < len(eo) and isinstance(eo[i], dict) else {}
        nodata = r.get("nodata")
        if isinstance(nodata, str):  # the raster extension's "nan", "inf", "-inf"
            nodata = float(nodata)
        out.append(BandInfo(
            data_type=r.get("data_type"), nodata=_number(nodata), scale=_number(r.get("scale")),
            offset=_number(r.get("offset")), unit=r.get("unit"),
            common_name=e.get("common_name"),
            spatial_resolution=_number(r.get("spatial_resolution"))))
    return tuple(out)


def _grid(fields: dict[str, Any], props: dict[str, Any], bands: tuple[BandInfo, ...],
          key: str) -> tuple[tuple[int, int], tuple[float, ...], str]:
    """(shape, transform, where from) of one asset; see :class:`AssetRef`."""
    def read(source: dict[str, Any]) -> tuple[tuple[int, int], tuple[float, ...]] | None:
        if source.get("proj:transform") is None or source.get("proj:shape") is None:
            return None
        transform = tuple(float(v) for v in source["proj:transform"][:6])
        shape = (int(source["proj:shape"][0]), int(source["proj:shape"][1]))
        if (len(transform) != 6 or not all(map(math.isfinite, transform)) or transform[0] == 0
                or transform[4] == 0 or min(shape) < 1):
            raise ItemSkip(f"asset {key!r}: proj:transform {list(transform)} / proj:shape "
                           f"{list(shape)} is not a north-up grid")
        return shape, transform

    own = read(fields)
    if own is not None:
        return *own, "asset"
    item = read(props)
    res = next((b.spatial_resolution for b in bands if b.spatial_resolution), None)
    if item is not None:
        (rows, cols), t = item
        if res is None or math.isclose(res, abs(t[0]), rel_tol=1e-3):
            return (rows, cols), t, "item"
        # the item's extent on the asset's own pixel size
        if not math.isfinite(res) or res <= 0:
            raise ItemSkip(f"asset {key!r}: raster:bands spatial_resolution {res} is not a size")
        shape = (round(rows * abs(t[4]) / res), round(cols * abs(t[0]) / res))
        if min(shape) < 1:
            raise ItemSkip(f"asset {key!r}: spatial_resolution {res} is coarser than the item")
        return shape, (res, t[1], t[2], t[3], -res, t[5]), "spatial_resolution"
    bbox = fields.get("proj:bbox") or props.get("proj:bbox")
    if res is not None and isinstance(bbox, list) and len(bbox) == 4:
        west, south, east, north = (float(v) for v in bbox)
        if not (math.isfinite(res) and res > 0 and all(map(math.isfinite, bbox))
                and north - south >= res and east - west >= res):
            raise ItemSkip(f"asset {key!r}: proj:bbox {bbox} at {res} is no grid")
        shape = (round((north - south) / res), round((east - west) / res))
        return shape, (res, 0.0, west, 0.0, -res, north), "spatial_resolution"
    raise ItemSkip(f"asset {key!r} has no grid: no proj:transform/proj:shape on it or the item, "
                   "and no raster:bands spatial_resolution with a proj:bbox (a gsd alone "
                   "does not place pixels)")


def _asset_ref(item: Any, key: str) -> AssetRef:
    """An asset's grid and bands (see :class:`AssetRef`); :class:`ItemSkip` if it lacks one."""
    if key not in item.assets:
        raise ItemSkip(f"no asset {key!r} (it has {', '.join(sorted(item.assets)) or 'none'})")
    asset = item.assets[key]
    fields = dict(asset.extra_fields)
    bands = _bands(fields)
    shape, transform, grid = _grid(fields, item.properties, bands, key)
    try:
        epsg = _epsg(fields) if _has_crs(fields) else None
    except ValueError as err:
        raise ItemSkip(f"asset {key!r}: {err}") from None
    return AssetRef(
        href=strip_secrets(asset.href), shape=shape, transform=transform, grid=grid,
        gsd=_number(fields.get("gsd", item.properties.get("gsd"))), epsg=epsg, bands=bands,
        categorical=bool(fields.get("classification:classes")
                         or fields.get("classification:bitfields")))


def search_items(
    url: str,
    *,
    collection: str,
    bbox: Sequence[float] | None,
    datetime: str | None,
    assets: Sequence[str],
    keep: Callable[[dict[str, Any]], bool] = lambda props: True,
    page_size: int = 1000,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    setting: str = "stac_url",
) -> Iterator[ItemRef | SkippedItem]:
    """Items of ``collection`` in ``bbox``/``datetime`` whose properties pass ``keep``.

    ``keep`` (the query filter) runs here, not on the server: rustac ignores ``query``
    (FACTS.md §4) and the result must not depend on which server answers. An item that lacks
    one of ``assets``, a grid for it or an EPSG code comes as a :class:`SkippedItem` (a search
    over mixed items, such as Landsat's L2SR without ``lwir11``, goes on).

    Raises:
        StacError: the API could not be searched.
    """
    try:
        client = Client.open(url, timeout=timeout_s)
        search = client.search(collections=[collection], bbox=list(bbox) if bbox else None,
                               datetime=datetime, limit=page_size)
        for item in search.items():
            if not keep(item.properties):
                continue
            try:
                refs = {key: _asset_ref(item, key) for key in assets}
                epsg = _epsg(item.properties) if _has_crs(item.properties) else None
                epsg = epsg or next((r.epsg for r in refs.values() if r.epsg), None)
                if epsg is None:
                    raise ItemSkip("no proj:epsg or EPSG proj:code on the item or its assets")
            except (ItemSkip, ValueError, TypeError, IndexError, KeyError, ArithmeticError) as err:
                yield SkippedItem(item.id, dict(item.properties), str(err))
                continue
            yield ItemRef(
                item_id=item.id,
                # a product of a period (ESA WorldCover) has start_datetime, datetime null
                datetime=str(item.properties.get("datetime")
                              or item.properties.get("start_datetime")),
                epsg=epsg,
                bbox=tuple(float(v) for v in item.bbox),
                properties=dict(item.properties),
                assets=refs,
            )
    except StacError:
        raise
    except Exception as err:  # pystac-client raises whatever its stack raised
        what, check = _diagnose(err, timeout_s, setting, collection)
        raise StacError(f"STAC search at {url} failed: {what}. Check {check}.") from None
