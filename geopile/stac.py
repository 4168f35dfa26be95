"""STAC search for NAIP-like collections, with a pluggable URL signer.

The Planetary Computer serves NAIP assets from Azure Blob Storage behind short-lived SAS tokens;
other catalogs (and the offline world) need no signing. The signer is chosen by name in params.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pystac_client import Client

from geopile.urls import strip_secrets

Signer = Callable[[str], str]


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
) -> Iterator[TileRef]:
    """Items of ``collection`` in ``bbox``/``datetime``, filtered by state, year and GSD.

    State, year and GSD are filtered here rather than with the API's ``query``: not every STAC
    server implements it (rustac does not, FACTS.md §4), and filtering locally costs nothing.
    """
    client = Client.open(url)
    search = client.search(
        collections=[collection],
        bbox=list(bbox) if bbox else None,
        datetime=datetime,
        limit=page_size,
    )
    want_states = {s.lower() for s in states}
    want_years = {str(y) for y in years}
    want_gsds = {round(float(g), 3) for g in gsds}
    for item in search.items():
        tile = _tile_ref(item, asset)
        if want_states and tile.state not in want_states:
            continue
        if want_years and tile.year not in want_years:
            continue
        if want_gsds and round(tile.gsd, 3) not in want_gsds:
            continue
        yield tile
