"""Offline NAIP: small COGs and a Planetary-Computer-shaped STAC collection for the test world.

The real NAIP tiles are ~12k px quarter quadrangles behind a STAC API. Here each tile is ~600 m of
ground drawn from one procedural landscape per state, evaluated in UTM ground coordinates, so that
neighbouring tiles agree pixel for pixel in their overlap and the 2016 (1.0 m) and 2020 (0.6 m)
tiles show the same place with a season shift and a few new buildings. Items copy the shape of
`shared/reference/naip-item-planetary-computer.json`; the first Texas tile is that very item's
origin, id and href. Quarter-quad names follow the USGS numbering of a scaled-down grid: adjacent
tiles get adjacent quarter quads, so names are unique and realistic but not geodetically exact.
"""

import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds, transform_geom

AZURE_PREFIX = "https://naipeuwest.blob.core.windows.net/"
PC_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

GRID_ROWS, GRID_COLS = 2, 3
TILE_W, TILE_H, OVERLAP = 600, 630, 30  # metres; real tiles are also taller than wide
AREA_W = GRID_COLS * (TILE_W - OVERLAP) + OVERLAP
AREA_H = GRID_ROWS * (TILE_H - OVERLAP) + OVERLAP
GSD = {"2016": 1.0, "2020": 0.6}
BANDS = ("Red", "Green", "Blue", "NIR")
EO_BANDS = [
    {"name": "Red", "common_name": "red"},
    {"name": "Green", "common_name": "green"},
    {"name": "Blue", "common_name": "blue"},
    {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
]
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
]


@dataclass(frozen=True)
class _State:
    """One state's patch of ground: a UTM-aligned grid of tiles and its flight dates."""

    code: str
    zone: int
    west: int  # easting of the grid's west edge; a multiple of 3 m fits both GSDs' pixel grids
    north: int
    dates: dict[str, date]  # first flight day per year; later columns are flown a day apart
    dryness: dict[str, float]  # 0 = lush summer green, 1 = dormant winter brown

    @property
    def epsg(self) -> int:
        """NAD83 / UTM zone code, as NAIP uses."""
        return 26900 + self.zone


STATES = (
    _State("tx", 14, 630384, 2952762, {"2016": date(2016, 10, 6), "2020": date(2020, 12, 17)},
           {"2016": 0.45, "2020": 0.65}),
    _State("ca", 10, 629928, 4262970, {"2016": date(2016, 6, 12), "2020": date(2020, 5, 29)},
           {"2016": 0.55, "2020": 0.2}),
)

# Class colours as R, G, B, NIR digital numbers (NIR high on vegetation, low on water/asphalt).
# "veg" is re-mixed per state and year towards dry grass; roof k is _K["roof0"] + k.
_PALETTE = {
    "veg": (70, 102, 52, 200), "soil": (138, 116, 90, 120), "pale_soil": (178, 164, 138, 155),
    "forest": (46, 72, 42, 175), "water": (34, 54, 62, 16), "sand": (186, 174, 146, 160),
    "asphalt": (92, 94, 96, 78), "concrete": (176, 174, 168, 150), "shadow": (30, 36, 40, 34),
    "lawn": (86, 118, 66, 190), "roof0": (150, 150, 150, 128), "roof1": (168, 96, 78, 112),
    "roof2": (214, 214, 208, 190), "roof3": (88, 90, 96, 72), "roof4": (118, 128, 140, 100),
}
_DRY = np.array((152, 138, 100, 135), dtype=np.float32)
_K = {name: i for i, name in enumerate(_PALETTE)}
_N_ROOFS = 5


def _noise(u: np.ndarray, v: np.ndarray, scale: float, key: tuple[int, ...]) -> np.ndarray:
    """Smooth value noise in [0, 1] on ground coordinates (u east, v south, metres).

    The lattice depends only on the area and the key, never on the pixel grid, so every GSD and
    every tile samples the same continuous field. Bilinear interpolation is done separably
    (rows first), which is exact and far cheaper than four 2-D gathers.
    """
    lattice = np.random.default_rng(key).random(
        (int(AREA_H / scale) + 3, int(AREA_W / scale) + 3), dtype=np.float32)
    gu, gv = u / scale, v / scale
    iu, iv = np.floor(gu).astype(np.intp), np.floor(gv).astype(np.intp)
    fu, fv = (gu - iu).astype(np.float32), (gv - iv).astype(np.float32)
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    rows = lattice[iv] * (1 - fv)[:, None] + lattice[iv + 1] * fv[:, None]
    return rows[:, iu] * (1 - fu) + rows[:, iu + 1] * fu


def _cells(p: np.ndarray, q: np.ndarray, size_p: float, size_q: float, seed: tuple[int, ...],
           salts: tuple[int, ...]) -> list[np.ndarray]:
    """Uniform values, one per (size_p x size_q) cell and salt, looked up at coordinates p, q.

    Tables span every cell the rotated area can touch and are fixed by the area, not the pixels,
    so both years and all tiles agree on each cell's value.
    """
    r = int(math.hypot(AREA_W, AREA_H) / min(size_p, size_q)) + 2
    flat = (np.floor(p / size_p).astype(np.intp) + r) * (2 * r + 1)
    flat += np.floor(q / size_q).astype(np.intp) + r
    return [np.random.default_rng((*seed, salt)).random((2 * r + 1) ** 2, dtype=np.float32)
            .take(flat) for salt in salts]


def _landscape(st: _State, year: str, gsd: float, seed: int) -> np.ndarray:
    """Render the whole state area at `gsd` as uint8 (4, rows, cols) digital numbers.

    Layers set a class, a blend towards bare soil (crop rows) and a shade, back to
    front: fields, forest, town, river and lake, roads. The mix gives bland zones (water, bare
    soil) and busy ones (town, striped crops). Everything keyed by (seed, state) is shared by
    both years; only crop rotation, new buildings, season and grain are keyed by the year.
    """
    s, yk = STATES.index(st), int(year)
    u = ((np.arange(round(AREA_W / gsd)) + 0.5) * gsd).astype(np.float32)
    v = ((np.arange(round(AREA_H / gsd)) + 0.5) * gsd).astype(np.float32)
    uc, vc = u[None, :], v[:, None]
    lay = np.random.default_rng([seed, s, 0]).random(12).tolist()
    n_low = _noise(u, v, 260, (seed, s, 1))
    n_mid = _noise(u, v, 45, (seed, s, 2))
    crowns = _noise(u, v, 3.5, (seed, s, 3))
    tex = 0.9 + 0.12 * n_mid + 0.08 * _noise(u, v, 7, (seed, s, 4))
    cls = np.full(n_low.shape, _K["veg"], dtype=np.uint8)
    blend = np.zeros_like(n_low)
    shade = (0.8 + 0.3 * n_low) * tex

    def put(mask: np.ndarray, k: str, value: np.ndarray | None = None) -> None:
        cls[mask] = _K[k]
        blend[mask] = 0
        if value is not None:
            shade[mask] = value[mask]

    # Fields: a rotated grid of parcels, each crop rows, bare soil, pasture or orchard, some
    # rotating crops between years.
    th = math.radians(-12 + 24 * lay[0])
    p = uc * math.cos(th) + vc * math.sin(th)
    q = vc * math.cos(th) - uc * math.sin(th)
    salts = (10, 11 + yk, 12, 13, 14)
    rotate, kind_y, kind, period, dirn = _cells(p, q, 170, 130, (seed, s), salts)
    kind = np.where(rotate < 0.25, kind_y, kind)
    crop = kind < 0.45
    along = np.where(dirn < 0.5, p, q)[crop]
    blend[crop] = 1 - (0.5 + 0.5 * np.sin(2 * np.pi * along / (4 + 4 * period[crop]))) ** 2
    bland = 0.97 + 0.06 * n_mid
    put((kind >= 0.45) & (kind < 0.62), "soil", bland)
    put((kind >= 0.62) & (kind < 0.7), "pale_soil", bland)
    orchard = kind >= 0.9
    orchard[orchard] = np.hypot(np.mod(p[orchard], 7) - 3.5, np.mod(q[orchard], 7) - 3.5) < 2.4
    put(orchard, "forest")
    put((np.mod(p, 170) < 2.5) | (np.mod(q, 130) < 2.5), "pale_soil")

    # Forest where a coarse field is high; crowns and gaps from a 3.5 m noise.
    canopy = 0.45 + 0.9 * crowns
    put(n_low + 0.25 * _noise(u, v, 60, (seed, s, 20)) > 0.82, "forest", canopy)

    # Town: an irregular ellipse of 73 x 49 m blocks (9 m streets, 4 x 2 lots of 16 x 20 m), a
    # house on a lot when its value is under the year's density, so 2020 adds a few.
    cu, cv = AREA_W * (0.55 + 0.3 * lay[1]), AREA_H * (0.2 + 0.2 * lay[2])
    town = ((uc - cu) / 330) ** 2 + ((vc - cv) / 230) ** 2 + 0.6 * n_mid < 1.1
    pt, qt = p[town], q[town]
    rp, rq = np.mod(pt, 73) - 9, np.mod(qt, 49) - 9
    lot_p, lot_q = pt - np.maximum(rp, 0) % 16, qt - np.maximum(rq, 0) % 20
    house, inset, repaint, roof_k = _cells(lot_p + 0.5, lot_q + 0.5, 16, 20, (seed, s),
                                           (30, 31, 32, 33))
    inset = 2 + 3 * inset
    fp, fq = np.maximum(rp, 0) % 16, np.maximum(rq, 0) % 20
    built = (house < (0.55 if yk < 2018 else 0.64)) & (rp >= 0) & (rq >= 0)

    def inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return built & (a > inset) & (a < 16 - inset) & (b > inset) & (b < 20 - inset)

    roof = inside(fp, fq)
    roof_ix = (roof_k * _N_ROOFS).astype(np.uint8) + ((repaint < 0.06) & (yk > 2018))
    town_cls = np.where(roof, _K["roof0"] + roof_ix % _N_ROOFS, _K["lawn"])
    town_cls[inside(fp - 2, fq - 2) & ~roof] = _K["shadow"]
    town_cls[(rp < 0) | (rq < 0)] = _K["asphalt"]
    cls[town], blend[town] = town_cls, 0
    shade[town] = np.where(town_cls == _K["lawn"], canopy[town], bland[town])

    # River (meandering, with sand banks and riparian trees) and a lake with a ragged shore.
    centre = AREA_H * (0.62 + 0.1 * lay[3]) + 110 * np.sin(2 * np.pi * (u / 1100 + lay[4]))
    dist = np.abs(vc - (centre + 30 * np.sin(2 * np.pi * u / 310))[None, :])
    half = 16 + 12 * n_low
    put((dist < half + 35) & (crowns > 0.45), "forest", canopy)
    put(dist < half + 5, "sand", bland)
    lu, lv = AREA_W * (0.05 + 0.15 * lay[5]), AREA_H * (0.05 + 0.2 * lay[6])
    lake = ((uc - lu) / 300) ** 2 + ((vc - lv) / 210) ** 2 + 0.5 * n_mid < 1.2
    put((dist < half) | lake, "water", bland)

    # Roads last, so they bridge the river: a highway, a side road and a dirt track.
    for ang, pos, width, k in ((lay[7] * 0.3 - 0.15, 0.35 + 0.2 * lay[8], 11, "asphalt"),
                               (1.45 + 0.2 * lay[9], 0.25 + 0.5 * lay[10], 7, "asphalt"),
                               (1.6 + 0.3 * lay[11], 0.2, 4, "pale_soil")):
        d = np.abs((uc - AREA_W * pos) * math.sin(ang) - (vc - AREA_H * pos) * math.cos(ang))
        put(d < width / 2 + 1.5, "concrete", tex)
        put(d < width / 2, k, bland)

    # Compose band by band straight to uint8 to keep peak memory and time down; valid pixels
    # are clipped to >= 1 so that only collars read as nodata.
    dry = st.dryness[year]
    palette = np.array(list(_PALETTE.values()), dtype=np.float32)
    palette[_K["veg"]] = (1 - dry) * palette[_K["veg"]] + dry * _DRY
    palette[_K["lawn"]] = (1 - dry / 2) * palette[_K["lawn"]] + dry / 2 * _DRY
    shade *= 1.0 + 0.04 * (dry - 0.5)
    grain = 6 * (_noise(u, v, 1.2, (seed, s, 40, yk)) - 0.5)
    out = np.empty((4, *cls.shape), dtype=np.uint8)
    for band, pal in enumerate(palette.T):
        img = pal.take(cls)
        img += (pal[_K["soil"]] - img) * blend
        img *= shade
        img += grain
        np.clip(np.rint(img, out=img), 1, 255, out=img)
        out[band] = img
    return out


def _collar(tile_u: np.ndarray, tile_v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nodata wedge along one edge, as where a quarter quad misses its UTM rectangle.

    Drawn in tile ground coordinates, so the same tile of both years has the same collar.
    """
    f0 = rng.uniform(0.15, 0.45)
    f1 = f0 * rng.uniform(0.3, 0.9)
    edge = rng.integers(4)
    along = (tile_v / TILE_H)[:, None] if edge < 2 else (tile_u / TILE_W)[None, :]
    across = (tile_u / TILE_W)[None, :] if edge < 2 else (tile_v / TILE_H)[:, None]
    if edge % 2:
        across = 1 - across
    return across < f0 + (f1 - f0) * along


def _quarter_name(st: _State, row: int, col: int) -> tuple[str, int, str]:
    """USGS 5-digit cell, quad number (1-64, from the NW) and quarter for grid tile (row, col)."""
    lon, lat = warp_points(f"EPSG:{st.epsg}", "EPSG:4326",
                           [st.west + TILE_W / 2], [st.north - TILE_H / 2])
    lat_top, lon_west = math.floor(lat[0]) + 1, math.floor(lon[0])
    qr = int((lat_top - lat[0]) / 0.0625) + row
    qc = int((lon[0] - lon_west) / 0.0625) + col
    quad5 = f"{lat_top - 1:02d}{-lon_west - 1:03d}"
    return quad5, (qr // 2) * 8 + qc // 2 + 1, "ns"[qr % 2] + "we"[qc % 2]


def _write_cog(path: Path, data: np.ndarray, epsg: int, transform: rasterio.Affine) -> None:
    """Write a NAIP-like COG atomically (temp name, then rename) so readers never see a stub."""
    tmp = path.with_name(path.name + ".part")
    profile = {
        "driver": "COG", "width": data.shape[2], "height": data.shape[1], "count": 4,
        "dtype": "uint8", "crs": CRS.from_epsg(epsg), "transform": transform, "nodata": 0,
        "blocksize": 256, "compress": "DEFLATE", "predictor": 2,
        "overview_resampling": "average",
    }
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                           ColorInterp.undefined]
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
    os.replace(tmp, path)


def _write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _item(st: _State, year: str, stem: str, href: str, bounds: tuple[float, ...],
          shape: tuple[int, int], when: date) -> dict:
    """A STAC item shaped exactly like the Planetary Computer's NAIP items."""
    gsd = GSD[year]
    left, bottom, right, top = bounds
    ring = [[(right, bottom), (right, top), (left, top), (left, bottom), (right, bottom)]]
    geom = transform_geom(f"EPSG:{st.epsg}", "EPSG:4326", {"type": "Polygon", "coordinates": ring})
    geom = {"type": "Polygon",
            "coordinates": [[[round(x, 6), round(y, 6)] for x, y in geom["coordinates"][0]]]}
    w, s, e, n = transform_bounds(f"EPSG:{st.epsg}", "EPSG:4326", *bounds)
    item_id = f"{st.code}_{stem}"
    collection_href = f"{PC_STAC}/collections/naip"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": item_id,
        "collection": "naip",
        "bbox": [math.floor(w * 1e6) / 1e6, math.floor(s * 1e6) / 1e6,
                 math.ceil(e * 1e6) / 1e6, math.ceil(n * 1e6) / 1e6],
        "geometry": geom,
        "properties": {
            "gsd": gsd,
            "datetime": f"{when.isoformat()}T00:00:00Z",
            "naip:year": year,
            "naip:state": st.code,
            "proj:epsg": st.epsg,
            "proj:bbox": [int(left), int(bottom), int(right), int(top)],
            "proj:shape": list(shape),
            "proj:transform": [gsd, 0, int(left), 0, -gsd, int(top), 0, 0, 1],
        },
        "links": [
            {"rel": "collection", "type": "application/json", "href": collection_href},
            {"rel": "parent", "type": "application/json", "href": collection_href},
            {"rel": "root", "type": "application/json", "href": f"{PC_STAC}/"},
            {"rel": "self", "type": "application/geo+json",
             "href": f"{PC_STAC}/collections/naip/items/{item_id}"},
        ],
        "assets": {
            "image": {"href": href, "type": COG_TYPE, "roles": ["data"],
                      "title": "RGBIR COG tile", "eo:bands": EO_BANDS},
            "thumbnail": {"href": href[: -len(".tif")] + ".200.jpg", "type": "image/jpeg",
                          "roles": ["thumbnail"], "title": "Thumbnail"},
        },
    }


def _collection(items: list[dict], bbox: list[float]) -> dict:
    """A minimal valid STAC 1.0 Collection whose extent and summaries cover `items`."""
    times = sorted(it["properties"]["datetime"] for it in items)
    summary = {k: sorted({it["properties"][k] for it in items})
               for k in ("gsd", "naip:year", "naip:state", "proj:epsg")}
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "naip",
        "title": "NAIP: National Agriculture Imagery Program",
        "description": "Offline miniature of the Planetary Computer NAIP collection: 4-band "
                       "(R, G, B, NIR) uint8 COG tiles at 0.6 m and 1.0 m.",
        "license": "proprietary",
        "keywords": ["NAIP", "Aerial", "Imagery", "USDA", "AFPO", "Agriculture", "United States"],
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": summary,
        "links": [
            {"rel": "root", "type": "application/json", "href": f"{PC_STAC}/"},
            {"rel": "self", "type": "application/json", "href": f"{PC_STAC}/collections/naip"},
        ],
    }


def _write_tile(world_dir: Path, st: _State, year: str, row: int, col: int, data: np.ndarray,
                seed: int) -> tuple[dict, dict]:
    """Cut one tile's collar, write its COG and thumbnail; return its STAC item and tile record."""
    gsd = GSD[year]
    th, tw = data.shape[1:]
    rng = np.random.default_rng([seed, STATES.index(st), row, col, 7])
    if rng.random() < 0.5:  # about half the tiles get a collar, the same one in every year
        data[:, _collar((np.arange(tw) + 0.5) * gsd, (np.arange(th) + 0.5) * gsd, rng)] = 0
    quad5, quad, quarter = _quarter_name(st, row, col)
    when = st.dates[year] + timedelta(days=col)
    res3 = f"{round(gsd * 100):03d}"
    stem = f"m_{quad5}{quad:02d}_{quarter}_{st.zone}_{res3}_{when:%Y%m%d}"
    key = f"naip/v002/{st.code}/{year}/{st.code}_{res3}cm_{year}/{quad5}/{stem}"
    base = world_dir / "http" / AZURE_PREFIX.removeprefix("https://") / key
    base.parent.mkdir(parents=True, exist_ok=True)
    left = st.west + col * (TILE_W - OVERLAP)
    top = st.north - row * (TILE_H - OVERLAP)
    _write_cog(base.with_name(stem + ".tif"), data, st.epsg, from_origin(left, top, gsd, gsd))
    thumb = Image.fromarray(np.moveaxis(data[:3], 0, -1))
    thumb.thumbnail((200, 200), Image.Resampling.BOX)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    _write_bytes(base.with_name(stem + ".200.jpg"), buf.getvalue())
    bounds = (left, top - TILE_H, left + TILE_W, top)
    item = _item(st, year, stem, f"{AZURE_PREFIX}{key}.tif", bounds, (th, tw), when)
    tile = {
        "item_id": item["id"], "href": item["assets"]["image"]["href"],
        "path": base.with_name(stem + ".tif").relative_to(world_dir).as_posix(),
        "state": st.code, "year": year, "gsd": gsd, "epsg": st.epsg, "shape": [th, tw],
        "nodata_fraction": float((data == 0).all(axis=0).mean()),
    }
    return item, tile


def _build_mosaic(world_dir: Path, st: _State, year: str, seed: int) -> list[tuple[dict, dict]]:
    """Render one state and year once and cut its overlapping tiles, so overlaps match exactly."""
    gsd = GSD[year]
    mosaic = _landscape(st, year, gsd, seed)
    th, tw = round(TILE_H / gsd), round(TILE_W / gsd)
    out = []
    for row in range(GRID_ROWS):
        for col in range(GRID_COLS):
            y0, x0 = round(row * (TILE_H - OVERLAP) / gsd), round(col * (TILE_W - OVERLAP) / gsd)
            data = mosaic[:, y0:y0 + th, x0:x0 + tw].copy()
            out.append(_write_tile(world_dir, st, year, row, col, data, seed))
    return out


def build_naip(world_dir: Path, seed: int = 0) -> dict:
    """Write the NAIP miniature (COGs, thumbnails, STAC collection and items) under `world_dir`.

    COGs sit at `world_dir/http/<host>/<path>` of their Azure hrefs, so a static server rooted at
    `world_dir/http` plus an href rewrite reproduces the real URLs. Same seed, same bytes.

    Args:
        world_dir: Root of the offline world; created if missing, files overwritten.
        seed: Seeds the landscape, collars and crop/building changes.

    Returns:
        Paths of the STAC files (relative to `world_dir`), one record per tile (item id, Azure
        href, relative path, state, year, gsd, epsg, shape, nodata fraction), the EPSG:4326 union
        bbox, states, years, and sha256/size of every file written.
    """
    world_dir = Path(world_dir)
    jobs = [(st, year) for st in STATES for year in GSD]
    # Two workers: numpy and GDAL release the GIL, so rendering one mosaic overlaps writing
    # another; each job is deterministic on its own, and map() keeps the output order.
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda job: _build_mosaic(world_dir, *job, seed), jobs))
    items = [item for pairs in done for item, _ in pairs]
    tiles = [tile for pairs in done for _, tile in pairs]

    boxes = np.array([it["bbox"] for it in items])
    bbox = [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]
    stac = world_dir / "stac"
    stac.mkdir(parents=True, exist_ok=True)
    _write_bytes(stac / "collection.json", json.dumps(_collection(items, bbox), indent=2).encode())
    fc = {"type": "FeatureCollection", "features": items}
    _write_bytes(stac / "items.json", json.dumps(fc, indent=1).encode())

    files = {}
    for rel in [t["path"] for t in tiles] + [t["path"][:-4] + ".200.jpg" for t in tiles] + [
            "stac/collection.json", "stac/items.json"]:
        data = (world_dir / rel).read_bytes()
        files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return {
        "collection": "stac/collection.json",
        "items": "stac/items.json",
        "tiles": tiles,
        "bbox": bbox,
        "states": [st.code for st in STATES],
        "years": list(GSD),
        "files": files,
    }
