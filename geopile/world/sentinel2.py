"""The offline world's Sentinel-2 L2A: a few items shaped like the Planetary Computer's.

Two MGRS tiles x three dates, each item with twelve single-band uint16 COGs on their own grids
(10, 20 and 60 m, as the real granules) and an SCL (scene classification) COG at 20 m. Reflectance
is stored as processing baseline 04.00 and later store it: DN = 10000 x reflectance + 1000
(BOA_ADD_OFFSET), 0 = nodata. Clouds, their shadows and thin cirrus are planted in SCL and in the
bands, heavier on later dates, so the query filter (``eo:cloud_cover``) and the window cloud
filter both have something to reject; one tile has a nodata wedge (the swath edge). The tiles are
small (720 px at 10 m) so the whole world still builds in seconds. Same seed, same bytes.

The items' fields, names and JSON types follow a real item of the PC's API
(``tests/data/pc_sentinel2_l2a_item.json``; ``tests/test_s2_reference.py`` compares them). Like
the PC's, they carry no ``raster:bands``: the offset is known only from ``s2:processing_baseline``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import date, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.warp import transform as reproject_points
from scipy.ndimage import gaussian_filter

S2_PREFIX = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/"
PC_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
COLLECTION = "sentinel-2-l2a"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
SIDE_M = 7200  # ground side of a miniature tile (real ones: 109,800 m)
BOA_ADD_OFFSET = 1000
BASELINE = "05.09"  # s2:processing_baseline: 04.00 and later carry BOA_ADD_OFFSET
LICENSE = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"
# band, common name, description, centre and width (um), gsd: the PC's eo:bands (its B09 has
# no common_name; tests/data/pc_sentinel2_l2a_item.json is a real item to compare with)
BANDS = (
    ("B01", "coastal", "Band 1 - Coastal aerosol", 0.443, 0.027, 60),
    ("B02", "blue", "Band 2 - Blue", 0.49, 0.098, 10),
    ("B03", "green", "Band 3 - Green", 0.56, 0.045, 10),
    ("B04", "red", "Band 4 - Red", 0.665, 0.038, 10),
    ("B05", "rededge", "Band 5 - Vegetation red edge 1", 0.704, 0.019, 20),
    ("B06", "rededge", "Band 6 - Vegetation red edge 2", 0.74, 0.018, 20),
    ("B07", "rededge", "Band 7 - Vegetation red edge 3", 0.783, 0.028, 20),
    ("B08", "nir", "Band 8 - NIR", 0.842, 0.145, 10),
    ("B8A", "rededge", "Band 8A - Vegetation red edge 4", 0.865, 0.033, 20),
    ("B09", None, "Band 9 - Water vapor", 0.945, 0.026, 60),
    ("B11", "swir16", "Band 11 - SWIR (1.6)", 1.61, 0.143, 20),
    ("B12", "swir22", "Band 12 - SWIR (2.2)", 2.19, 0.242, 20),
)
BAND_NAMES = tuple(b[0] for b in BANDS)
# surface reflectance per band (order of BANDS) of the classes the landscape mixes
_SPECTRA = {
    4: (.03, .04, .07, .04, .10, .28, .34, .38, .40, .40, .20, .10),  # vegetation
    5: (.08, .10, .14, .18, .21, .23, .25, .27, .28, .28, .33, .28),  # not vegetated (soil)
    6: (.06, .06, .05, .03, .02, .015, .012, .01, .01, .01, .005, .003),  # water
}
_CLOUD = np.array((.45, .48, .50, .52, .53, .55, .56, .57, .57, .40, .35, .25), np.float32)
CLOUD_CLASSES = (3, 8, 9, 10)  # cloud shadow, cloud medium / high probability, thin cirrus
# (mgrs tile, EPSG, west, north, relative orbit, nodata wedge: share of columns)
TILES = (("10SEG", 32610, 499980, 4200000, 113, 0.0),
         ("10SFG", 32610, 600000, 4200000, 13, 0.12))
DATES = (date(2023, 6, 10), date(2023, 7, 15), date(2023, 8, 19))
# share of the tile under cloud on each date: clear, partly cloudy, overcast
CLOUDINESS = (0.03, 0.3, 0.75)


def _field(rng: np.random.Generator, side: int, sigma: float) -> np.ndarray:
    """A smooth random field in 0..1 (ranked, so thresholds give exact shares)."""
    f = gaussian_filter(rng.standard_normal((side, side)).astype(np.float32), sigma)
    ranks = np.empty(f.size, np.float32)
    ranks[np.argsort(f, axis=None, kind="stable")] = np.arange(f.size, dtype=np.float32) / f.size
    return ranks.reshape(side, side)


def _down(a: np.ndarray, k: int) -> np.ndarray:
    """Block mean by ``k`` (10 m to 20 or 60 m)."""
    s = a.shape[0] // k
    return a.reshape(s, k, s, k, *a.shape[2:]).mean(axis=(1, 3))


def _scene(tile: int, when: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance at 10 m (side, side, 12) and SCL at 20 m of one item."""
    side = SIDE_M // 10
    ground = np.random.default_rng([seed, 2, tile])  # the same ground on every date
    f = _field(ground, side, 18.0)
    classes = np.where(f < 0.12, 6, np.where(f < 0.55, 4, 5)).astype(np.uint8)
    refl = np.stack([np.choose(classes - 4, [_SPECTRA[4][b], _SPECTRA[5][b], _SPECTRA[6][b]])
                     for b in range(12)], axis=-1).astype(np.float32)
    refl *= 1 + 0.15 * (_field(ground, side, 3.0)[..., None] - 0.5)
    sky = np.random.default_rng([seed, 3, tile, when])
    scl_side = side // 2
    cloud_f = _field(sky, scl_side, 12.0)
    share = CLOUDINESS[when]
    thick = cloud_f > 1 - share * 0.8
    thin = (cloud_f > 1 - share) & ~thick
    shadow = np.roll(thick, (12, 12), axis=(0, 1)) & ~thick & ~thin
    scl = _down(classes.astype(np.float32), 2).round().astype(np.uint8)  # 4, 5 or 6
    scl[shadow] = 3
    scl[thin] = 10
    scl[thick & (cloud_f > 1 - share * 0.4)] = 9
    scl[thick & (cloud_f <= 1 - share * 0.4)] = 8
    up = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
    refl[up == 3] *= 0.35
    refl[np.isin(up, (8, 9))] = _CLOUD
    refl[up == 10] = 0.5 * refl[up == 10] + 0.5 * _CLOUD * 0.6
    wedge = TILES[tile][5]
    if wedge:
        cols = np.arange(side)[None, :] < wedge * side * (1 - np.arange(side)[:, None] / side)
        refl[cols] = -1  # nodata
        scl[cols[::2, ::2]] = 0
    return refl, scl


def _dn(refl: np.ndarray) -> np.ndarray:
    """uint16 DN with the baseline-04.00 offset; negative reflectance marks nodata (0)."""
    dn = np.clip(np.rint(refl * 10000 + BOA_ADD_OFFSET), 1, 65535).astype(np.uint16)
    dn[refl < 0] = 0
    return dn


def _write_cog(path: Path, data: np.ndarray, epsg: int, transform: rasterio.Affine,
               name: str) -> None:
    """A single-band uint16 (or uint8 SCL) COG, written to a temp name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    profile = {"driver": "COG", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype.name, "crs": CRS.from_epsg(epsg), "transform": transform,
               "nodata": 0, "blocksize": 256, "compress": "DEFLATE", "predictor": 2,
               "overviews": "NONE"}
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, name)
    os.replace(tmp, path)


def _asset(href: str, title: str, gsd: int, west: int, north: int, extra: dict) -> dict:
    """A band asset as the PC writes it: its own grid, numbers as floats."""
    n = SIDE_M // gsd
    bbox = [west, north - SIDE_M, west + SIDE_M, north]
    return {"href": href, "type": COG_TYPE, "title": title, "roles": ["data"], "gsd": float(gsd),
            "proj:shape": [n, n], "proj:bbox": [float(v) for v in bbox],
            "proj:transform": [float(v) for v in (gsd, 0, west, 0, -gsd, north)], **extra}


def _earth_sun_factor(day: date) -> float:
    """``s2:reflectance_conversion_factor``: the Earth-Sun distance correction of the day."""
    doy = day.timetuple().tm_yday
    return round(1 / (1 - 0.01673 * math.cos(0.0172 * (doy - 4))) ** 2, 14)


def _footprint(epsg: int, west: int, north: int, wedge: float) -> list[list[float]]:
    """The data footprint's ring in lon/lat, as the PC's geometry (7 decimals).

    The tile's corners (NW, NE, SE, SW) reprojected, with the nodata wedge (a triangle at the NW
    corner) cut off.
    """
    east, south = west + SIDE_M, north - SIDE_M
    xs, ys = [west, east, east, west], [north, north, south, south]
    if wedge:
        xs[0] = west + wedge * SIDE_M  # the wedge spans the top row to here, the left column
    lons, lats = reproject_points(f"EPSG:{epsg}", "EPSG:4326", xs, ys)
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)]
    return [*ring, ring[0]]


def _item(tile: int, when: int, world_dir: Path, seed: int) -> tuple[dict, dict]:
    mgrs, epsg, west, north, orbit, wedge = TILES[tile]
    day = DATES[when]
    platform = "Sentinel-2A" if (tile + when) % 2 else "Sentinel-2B"
    sat = f"S2{platform[-1]}"
    stamp = f"{day:%Y%m%d}T18{50 + tile}19"  # the sensing start: the item's datetime
    generated = f"{day:%Y%m%d}T23{tile}221"  # the product discriminator: its generation time
    baseline = f"N{BASELINE.replace('.', '')}"
    product = f"{sat}_MSIL2A_{stamp}_{baseline}_R{orbit:03d}_T{mgrs}_{generated}"
    item_id = f"{sat}_MSIL2A_{stamp}_R{orbit:03d}_T{mgrs}_{generated}"
    absolute_orbit = 41642 + 10 * when + tile
    granule = f"L2A_T{mgrs}_A{absolute_orbit:06d}_{stamp}"
    ground = f"2{platform[-1]}PS"  # ESA's processing centre of baseline 04.00+ (Esri's: ESRI)
    base = (f"{S2_PREFIX}{mgrs[:2]}/{mgrs[2]}/{mgrs[3:]}/{day:%Y/%m/%d}/{product}.SAFE/"
            f"GRANULE/{granule}/IMG_DATA")
    refl, scl = _scene(tile, when, seed)
    dn = _dn(refl)
    assets: dict[str, dict] = {}
    files = []
    for b, (name, common, title, centre, width, gsd) in enumerate(BANDS):
        href = f"{base}/R{gsd}m/T{mgrs}_{stamp}_{name}_{gsd}m.tif"
        band = dn[..., b] if gsd == 10 else _down(
            np.where(refl[..., b] < 0, np.nan, refl[..., b]), gsd // 10)
        if gsd != 10:
            band = _dn(np.nan_to_num(band, nan=-1.0))
        transform = rasterio.Affine(gsd, 0, west, 0, -gsd, north)
        rel = "http/" + href.split("://", 1)[1]
        _write_cog(world_dir / rel, band, epsg, transform, name)
        files.append(rel)
        eo = {"name": name, **({"common_name": common} if common else {}),
              "description": title, "center_wavelength": centre, "full_width_half_max": width}
        assets[name] = _asset(href, f"{title} - {gsd}m", gsd, west, north, {"eo:bands": [eo]})
    href = f"{base}/R20m/T{mgrs}_{stamp}_SCL_20m.tif"
    rel = "http/" + href.split("://", 1)[1]
    _write_cog(world_dir / rel, scl, epsg, rasterio.Affine(20, 0, west, 0, -20, north), "SCL")
    files.append(rel)
    assets["SCL"] = _asset(href, "Scene classfication map (SCL)", 20, west, north, {})

    valid = scl != 0
    pct = {c: round(100 * float((scl[valid] == c).mean()), 6) for c in range(12)}
    cloud_cover = round(pct[8] + pct[9] + pct[10], 6)
    nodata_pct = round(100 * float((~valid).mean()), 6)
    ring = _footprint(epsg, west, north, wedge)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    collection_href = f"{PC_STAC}/collections/{COLLECTION}"
    gen_time = datetime.strptime(generated, "%Y%m%dT%H%M%S")
    item = {
        "type": "Feature", "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.0.0/schema.json",
                            "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.0.0/schema.json"],
        "id": item_id, "collection": COLLECTION,
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "datetime": f"{day.isoformat()}T18:{50 + tile}:19.024000Z",
            "platform": platform, "constellation": "Sentinel 2", "instruments": ["msi"],
            "proj:epsg": epsg, "s2:mgrs_tile": mgrs, "eo:cloud_cover": cloud_cover,
            "s2:granule_id": (f"{sat}_OPER_MSI_L2A_TL_{ground}_{generated}_A{absolute_orbit:06d}"
                              f"_T{mgrs}_N{BASELINE}"),
            "s2:datatake_id": f"G{sat}_{stamp}_{absolute_orbit:06d}_N{BASELINE}",
            "s2:datastrip_id": (f"{sat}_OPER_MSI_L2A_DS_{ground}_{generated}_S{stamp}"
                                f"_N{BASELINE}"),
            "s2:product_uri": f"{product}.SAFE", "s2:product_type": "S2MSI2A",
            "s2:generation_time": f"{gen_time:%Y-%m-%dT%H:%M:%S}.000Z",
            "s2:processing_baseline": BASELINE, "s2:datatake_type": "INS-NOBS",
            "sat:orbit_state": "descending", "sat:relative_orbit": orbit,
            "s2:nodata_pixel_percentage": nodata_pct, "s2:degraded_msi_data_percentage": 0.0,
            "s2:saturated_defective_pixel_percentage": 0.0, "s2:dark_features_percentage": 0.0,
            "s2:cloud_shadow_percentage": pct[3], "s2:vegetation_percentage": pct[4],
            "s2:not_vegetated_percentage": pct[5], "s2:water_percentage": pct[6],
            "s2:unclassified_percentage": 0.0, "s2:medium_proba_clouds_percentage": pct[8],
            "s2:high_proba_clouds_percentage": pct[9], "s2:thin_cirrus_percentage": pct[10],
            "s2:snow_ice_percentage": 0.0, "s2:mean_solar_zenith": 25.0 + 5 * when,
            "s2:mean_solar_azimuth": 140.0 + tile,
            "s2:reflectance_conversion_factor": _earth_sun_factor(day),
        },
        "links": [
            {"rel": "collection", "type": "application/json", "href": collection_href},
            {"rel": "parent", "type": "application/json", "href": collection_href},
            {"rel": "root", "type": "application/json", "href": f"{PC_STAC}/"},
            {"rel": "self", "type": "application/geo+json",
             "href": f"{collection_href}/items/{item_id}"},
            {"rel": "license", "href": LICENSE},
        ],
        "assets": assets,
    }
    up = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
    truth = {"item_id": item_id, "mgrs": mgrs, "datetime": item["properties"]["datetime"],
             "eo:cloud_cover": cloud_cover, "nodata_pct": nodata_pct,
             "cloud_fraction": float(np.isin(up, CLOUD_CLASSES).mean()),
             "files": files, "scl": files[-1],
             "bands": {name: files[b] for b, name in enumerate(BAND_NAMES)}}
    return item, truth


def build_sentinel2(world_dir: Path, seed: int = 0) -> dict:
    """Write the Sentinel-2 L2A miniature (COGs, STAC collection and items) under ``world_dir``.

    COGs sit at ``world_dir/http/<host>/<path>`` of their Azure hrefs (as NAIP's). Returns the
    STAC files' paths, per item its id, tile, datetime, ``eo:cloud_cover``, cloud fraction (SCL
    cloud classes over the whole tile) and files, the bbox, and sha256/size of every file.
    """
    world_dir = Path(world_dir)
    made = [_item(t, d, world_dir, seed) for t in range(len(TILES)) for d in range(len(DATES))]
    items = [i for i, _ in made]
    boxes = np.array([it["bbox"] for it in items])
    bbox = [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]
    times = sorted(it["properties"]["datetime"] for it in items)
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": COLLECTION,
        "title": "Sentinel-2 Level-2A",
        "description": "Offline miniature of the Planetary Computer sentinel-2-l2a collection: "
                       "12 bands (uint16, BOA_ADD_OFFSET 1000) and SCL per item, COGs.",
        "license": "proprietary",
        "keywords": ["Sentinel", "Copernicus", "ESA", "Satellite", "Global", "Imagery",
                     "Reflectance"],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": {"platform": sorted({i["properties"]["platform"] for i in items})},
        "links": [{"rel": "root", "type": "application/json", "href": f"{PC_STAC}/"},
                  {"rel": "self", "type": "application/json",
                   "href": f"{PC_STAC}/collections/{COLLECTION}"}],
    }
    stac = world_dir / "stac"
    stac.mkdir(parents=True, exist_ok=True)
    for name, doc in (("sentinel2.collection.json", collection),
                      ("sentinel2.items.json", {"type": "FeatureCollection", "features": items})):
        tmp = stac / f".{name}.part"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, stac / name)
    truth_items = [t for _, t in made]
    files = {}
    for rel in [f for t in truth_items for f in t["files"]] + [
            "stac/sentinel2.collection.json", "stac/sentinel2.items.json"]:
        data = (world_dir / rel).read_bytes()
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {"collection": "stac/sentinel2.collection.json", "items": "stac/sentinel2.items.json",
            "item_truth": truth_items, "bbox": bbox, "bands": list(BAND_NAMES),
            "cloud_classes": list(CLOUD_CLASSES), "files": files}
