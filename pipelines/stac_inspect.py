"""``geopile stac inspect``: what a STAC source would sample, from the catalog alone.

A dry run: the search and the items' metadata, no pixel read. Per stratum the items found and the
quota; per asset the grid GeoPile will read (and where it came from: the asset, the item, or
``raster:bands`` ``spatial_resolution``), the pixel type, nodata, scale, offset, unit and common
name; the items that would be skipped, and why. The file headers are checked later, per read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from geopile.sources.stac import StacSource
from geopile.stac import AssetRef, BandInfo, ItemRef, TileRef


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _asset_line(key: str, ref: AssetRef) -> str:
    band = ref.bands[0] if ref.bands else BandInfo()
    res = f"{ref.res:g}" if ref.res == ref.res_y else f"{ref.res:g} x {ref.res_y:g}"
    gsd = "" if ref.gsd is None or abs(ref.gsd - ref.res) < 1e-9 else f" (says gsd {ref.gsd:g})"
    return (f"  {key:<12} {res + gsd:<22} {ref.shape[0]:>6} x {ref.shape[1]:<6} {ref.grid:<18} "
            f"{band.data_type or '?':<8} {_number(band.nodata):>7} {_number(band.scale):>9} "
            f"{_number(band.offset):>7} {band.unit or '-':<9} {band.common_name or '-':<8}"
            f"{' categorical (nearest)' if ref.categorical else ''}")


def _item_lines(item: ItemRef) -> list[str]:
    head = (f"  {'asset':<12} {'pixel size':<22} {'rows x cols':>15} {'grid from':<18} "
            f"{'dtype':<8} {'nodata':>7} {'scale':>9} {'offset':>7} {'unit':<9} {'common':<8}")
    return [f"item {item.item_id} (EPSG:{item.epsg}, {item.datetime})", head,
            *(_asset_line(k, ref) for k, ref in item.assets.items())]


def _tile_line(tile: TileRef) -> str:
    return (f"item {tile.item_id} (EPSG:{tile.epsg}): {tile.shape[0]} x {tile.shape[1]} px of "
            f"{tile.res:.16g} m (says gsd {tile.gsd:.16g})")


def inspect(source: StacSource, examples: int = 1) -> str:
    """The report: strata and quotas, each kind of grid met, and the items skipped."""
    groups, skipped = source.searched
    quotas = source.quotas()
    found = sum(len(v) for v in groups.values())
    s = source.settings
    lines = [f"{source.ctx.name}: STAC {s.stac_url} collection {s.collection!r}: {found} items "
             f"to sample, {len(skipped)} skipped", "",
             f"{'stratum':<28} {'items':>6} {'quota':>7}"]
    lines += [f"{k:<28} {len(v):>6} {quotas[k]:>7}" for k, v in groups.items()]
    seen: dict[Any, int] = {}
    for item in (i for v in groups.values() for i in v):
        if isinstance(item, TileRef):
            kind: Any = (round(item.res, 6), item.shape)
        else:
            kind = tuple((k, r.grid, round(r.res, 9), r.bands[:1]) for k, r in item.assets.items())
        if seen.get(kind, 0) < examples:
            seen[kind] = seen.get(kind, 0) + 1
            lines += ["", *(_item_lines(item) if isinstance(item, ItemRef)
                            else [_tile_line(item)])]
    if skipped:
        lines += ["", f"skipped ({len(skipped)}), by reason:"]
        for reason, n in Counter(i.reason for i in skipped).most_common():
            ids = [i.item_id for i in skipped if i.reason == reason][:3]
            lines.append(f"  {n:>6}  {reason}  (e.g. {', '.join(ids)})")
    return "\n".join(lines)
