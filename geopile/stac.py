"""STAC search for NAIP-like collections, with a pluggable URL signer.

The Planetary Computer serves NAIP assets from Azure Blob Storage behind short-lived SAS tokens;
other catalogs (and the offline world) need no signing. The signer is chosen by name in params.

pystac-client reports a catalog that is down, slow or not a STAC API with whatever its HTTP
stack raised (a ``requests`` traceback, an ``orjson`` decode error); :func:`search_tiles` turns
each into one :class:`StacError` line: which URL, what failed, what to check.
"""

from __future__ import annotations

import importlib
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
    gsd: float
    epsg: int
    shape: tuple[int, int]  # rows, cols
    transform: tuple[float, ...]  # the first six proj:transform numbers (affine)


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
) -> Iterator[TileRef]:
    """Items of ``collection`` in ``bbox``/``datetime``, filtered by state, year and GSD.

    State, year and GSD are filtered here rather than with the API's ``query``: not every STAC
    server implements it (rustac does not, FACTS.md §4), and filtering locally costs nothing.

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
                continue
            yield tile
    except StacError:
        raise
    except Exception as err:  # pystac-client raises whatever its stack raised
        what, check = _diagnose(err, timeout_s, setting, collection)
        raise StacError(f"STAC search at {url} failed: {what}. Check {check}.") from None


@dataclass(frozen=True)
class AssetRef:
    """One asset's grid, from the item (Sentinel-2: each band has its own 10/20/60 m grid)."""

    href: str  # unsigned
    gsd: float
    shape: tuple[int, int]  # rows, cols
    transform: tuple[float, ...]  # affine, six numbers


@dataclass(frozen=True)
class ItemRef:
    """What generic STAC sampling needs of one item: properties and the grids of its assets."""

    item_id: str
    datetime: str
    epsg: int
    bbox: tuple[float, ...]  # EPSG:4326
    properties: dict[str, Any]
    assets: dict[str, AssetRef]


def _asset_ref(item: Any, key: str) -> AssetRef:
    """An asset's grid: its own proj:shape/proj:transform/gsd, else the item's."""
    asset = item.assets[key]
    fields = {**item.properties, **asset.extra_fields}
    transform = tuple(float(v) for v in fields["proj:transform"][:6])
    return AssetRef(
        href=strip_secrets(asset.href),
        gsd=float(fields.get("gsd", abs(transform[0]))),
        shape=(int(fields["proj:shape"][0]), int(fields["proj:shape"][1])),
        transform=transform,
    )


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
) -> Iterator[ItemRef]:
    """Items of ``collection`` in ``bbox``/``datetime`` whose properties pass ``keep``.

    ``keep`` (the query filter) runs here, not on the server: rustac ignores ``query``
    (FACTS.md §4) and the result must not depend on which server answers.

    Raises:
        StacError: the API could not be searched, or an item lacks one of ``assets`` or its grid.
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
                epsg = _epsg(item.properties)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise StacError(
                    f"STAC item {item.id!r} of collection {collection!r} at {url} lacks asset "
                    f"or grid {err} (needs assets {list(assets)} with proj:shape and "
                    f"proj:transform). Check {setting}, the collection and its assets setting"
                ) from None
            yield ItemRef(
                item_id=item.id,
                datetime=str(item.properties.get("datetime")),
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
