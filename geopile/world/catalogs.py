"""Miniatures of real STAC items: their metadata as published, COGs shaped like theirs.

A real item (tests/data/stac: the Planetary Computer's Landsat, Sentinel-1 RTC, Copernicus DEM,
ESA WorldCover, Earth Search's Sentinel-2) names COGs of thousands of pixels a side. The world
keeps everything the item says, except that each grid is cut to ``px`` pixels (on the item's
finest asset grid) from the same origin: ``proj:shape`` and ``proj:bbox`` shrink, the pixel
sizes, CRS, dtypes, nodata, scale, offset, band names and every quirk stay. Each COG is written
where the real file lies: on the asset's own ``proj:transform``/``proj:shape``, else the
item's; a band whose ``gsd`` differs from that grid (Landsat's ``lwir11``, ``gsd: 100``) lies on
the item's 30 m grid, as USGS writes it. The pixel type is ``raster:bands`` ``data_type``, else
the one the real file has (``dtype``: Copernicus DEM's items publish none; its COGs are
float32). Values follow the band's published meaning (reflectance through scale and offset,
kelvin, dB of backscatter, metres, class codes), with a nodata wedge where nodata is declared.
Same item and seed, same bytes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from geopile.world import servers
from geopile.world.corpora import mirror_path
from geopile.world.world import BUCKET, upload_tree

MINI_PX = 256  # pixels a side of a miniature, on the item's finest grid


def _grid_of(item: dict, key: str) -> tuple[dict, tuple[float, ...], tuple[int, int]]:
    """The dict that holds the asset's grid (the asset's or the item's), transform, shape."""
    asset = item["assets"][key]
    holder = asset if asset.get("proj:transform") is not None else item["properties"]
    t = tuple(float(v) for v in holder["proj:transform"][:6])
    rows, cols = (int(v) for v in holder["proj:shape"])
    return holder, t, (rows, cols)


def _band(item: dict, key: str) -> dict:
    bands = item["assets"][key].get("raster:bands") or [{}]
    return bands[0]


def _values(band: dict, asset: dict, dtype: np.dtype, field: np.ndarray) -> np.ndarray:
    """``field`` (0..1) as the band's published numbers: classes, kelvin, dB, metres, ...."""
    classes = [c["value"] for c in asset.get("classification:classes") or []]
    scale, offset = band.get("scale"), band.get("offset") or 0.0
    unit = band.get("unit")
    if classes:
        picked = np.asarray(sorted(classes))[:6]
        return picked[np.minimum((field * len(picked)).astype(int), len(picked) - 1)]
    if asset.get("classification:bitfields"):
        return np.where(field > 0.8, 1 << 3, 0)  # a cloud bit over a fifth of the ground
    if unit == "kelvin":
        physical = 270.0 + 40.0 * field
    elif dtype.kind == "f" and band.get("nodata") == -32768:  # SAR backscatter, linear power
        physical = 10.0 ** ((-25.0 + 20.0 * field) / 10.0)
    elif dtype.kind == "f":  # elevation, metres
        physical = -20.0 + 2500.0 * field
    elif scale is not None:  # reflectance-like
        physical = 0.02 + 0.4 * field
    else:
        info = np.iinfo(dtype)
        return np.clip(field * min(info.max, 10000), info.min, info.max)
    return (physical - offset) / scale if scale else physical


def _field(xs: np.ndarray, ys: np.ndarray, side: tuple[float, float], seed: int,
           key: str) -> np.ndarray:
    """A smooth 0..1 field of the ground (the same on every grid) plus a little texture."""
    phases = np.random.default_rng([seed, 7]).uniform(0, 2 * np.pi, 4)
    u, v = xs[None, :] / side[0], ys[:, None] / side[1]
    f = (0.5 + 0.22 * np.sin(2 * np.pi * 2.3 * u + phases[0]) * np.cos(2 * np.pi * 1.7 * v
                                                                       + phases[1])
         + 0.18 * np.sin(2 * np.pi * (3.1 * u + 2.9 * v) + phases[2]))
    noise = np.random.default_rng([seed, zlib.crc32(key.encode()), len(xs)]).random(f.shape)
    return np.clip(f + 0.1 * (noise - 0.5), 0.0, 1.0)


def _write_cog(path: Path, data: np.ndarray, crs: CRS, transform: tuple[float, ...],
               nodata: float | None, name: str) -> None:
    """A COG of ``data`` (bands, rows, cols), written to a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    profile = {"driver": "COG", "width": data.shape[2], "height": data.shape[1],
               "count": data.shape[0], "dtype": data.dtype.name, "crs": crs,
               "transform": rasterio.Affine(*transform), "nodata": nodata, "blocksize": 256,
               "compress": "DEFLATE", "overviews": "NONE"}
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i in range(data.shape[0]):
            dst.set_band_description(i + 1, name if data.shape[0] == 1 else f"{name}{i + 1}")
    os.replace(tmp, path)


def miniature(item: dict, assets: list[str], world_dir: Path, *, seed: int = 0,
              px: int = MINI_PX, dtype: str | None = None,
              short_by: dict[str, int] | None = None) -> tuple[dict, list[str]]:
    """A copy of ``item`` cut to ``px`` pixels, and the COGs of ``assets`` under ``world_dir``.

    COGs go to ``world_dir/http/<host>/<path>`` of their hrefs. ``dtype``: the pixel type of
    assets whose ``raster:bands`` publish none. ``short_by``: asset -> pixels its COG is
    written short of the grid the item gives (a catalog whose ``proj:shape`` exceeds the file).
    Returns the item (hrefs as published) and the files written, relative to ``world_dir``.
    """
    out = copy.deepcopy(item)
    props = out["properties"]
    crs = CRS.from_epsg(int(props["proj:epsg"]))
    grids = {k: _grid_of(out, k) for k in assets}
    res_x = min(abs(t[0]) for _, t, _ in grids.values())
    res_y = min(abs(t[4]) for _, t, _ in grids.values())
    coarse_x = max(abs(t[0]) for _, t, _ in grids.values())
    coarse_y = max(abs(t[4]) for _, t, _ in grids.values())
    side = (math.ceil(px * res_x / coarse_x - 1e-9) * coarse_x,
            math.ceil(px * res_y / coarse_y - 1e-9) * coarse_y)
    shrunk: set[int] = set()
    files = []
    for key in assets:
        holder, t, (rows, cols) = grids[key]
        new_rows = min(rows, round(side[1] / abs(t[4])))
        new_cols = min(cols, round(side[0] / abs(t[0])))
        if id(holder) not in shrunk:
            holder["proj:shape"] = [new_rows, new_cols]
            if holder.get("proj:bbox") is not None:
                holder["proj:bbox"] = [t[2], t[5] - new_rows * abs(t[4]),
                                       t[2] + new_cols * abs(t[0]), t[5]]
            shrunk.add(id(holder))
        xs = (np.arange(new_cols) + 0.5) * abs(t[0])
        ys = (np.arange(new_rows) + 0.5) * abs(t[4])
        asset = out["assets"][key]
        band = _band(out, key)
        kind = np.dtype(band.get("data_type") or dtype or "uint16")
        count = len(asset.get("raster:bands") or asset.get("eo:bands") or [None])
        layers = []
        for i in range(count):  # NAIP's image: R, G, B, NIR
            field = _field(xs, ys, side, seed + i, key)
            layer = _values(band, asset, kind, field)
            nodata = band.get("nodata")
            if nodata is not None:  # a wedge of nodata at the north-west corner
                wedge = xs[None, :] / side[0] + ys[:, None] / side[1] < 0.3
                layer = np.where(wedge, nodata, layer)
            if kind.kind != "f":
                info = np.iinfo(kind)
                layer = np.clip(np.rint(layer), info.min, info.max)
            layers.append(layer)
        short = (short_by or {}).get(key, 0)
        data = np.stack(layers).astype(kind)[:, :new_rows - short, :new_cols - short]
        rel = "http/" + mirror_path(asset["href"])
        _write_cog(world_dir / rel, data, crs, t, nodata, key)
        files.append(rel)
    return out, files


def serve(world_dir: Path, items: list[dict]) -> dict[str, str]:
    """S3 with ``world_dir/http`` and a STAC API of ``items`` (hrefs moved onto that S3).

    Stop with :func:`stop`. Returns ``{"s3": url, "stac": url}``.
    """
    run = Path(world_dir) / "run"
    run.mkdir(parents=True, exist_ok=True)
    s3 = servers.start_s3(run, run / "s3data")
    try:
        upload_tree(s3.url, Path(world_dir) / "http")
        docs = []
        for collection in sorted({i["collection"] for i in items}):
            served = []
            for item in (i for i in items if i["collection"] == collection):
                item = copy.deepcopy(item)
                for asset in item["assets"].values():  # COGs onto S3; the rest as published
                    href = str(asset.get("href", ""))
                    if href.startswith(("http://", "https://")) and "?" not in href:
                        asset["href"] = f"{s3.url}/{BUCKET}/{mirror_path(href)}"
                served.append(item)
            meta = {"type": "Collection", "stac_version": "1.0.0", "id": collection,
                    "description": f"offline miniature of {collection}", "license": "various",
                    "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                               "temporal": {"interval": [[None, None]]}}, "links": []}
            for name, doc in ((f"{collection}.collection.json", meta),
                              (f"{collection}.items.json",
                               {"type": "FeatureCollection", "features": served})):
                (run / name).write_text(json.dumps(doc))
                docs.append(run / name)
        stac = servers.start_stac(run, docs)
    except BaseException:
        servers.stop(run, "s3")
        raise
    return {"s3": s3.url, "stac": stac.url}


def stop(world_dir: Path) -> None:
    """Stop what :func:`serve` started."""
    run = Path(world_dir) / "run"
    for name in ("stac", "s3"):
        servers.stop(run, name)
