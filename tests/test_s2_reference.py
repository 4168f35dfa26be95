"""The world's Sentinel-2 L2A items against a real Planetary Computer item.

``tests/data/pc_sentinel2_l2a_item.json`` was served by the PC STAC API (provenance in
``pc_sentinel2_l2a_item.SOURCE.md``). We check two things. First, ``search_items`` (the code path
``type: stac`` sources take) reads the real item into the grids, EPSG and properties sampling
needs. Second, the world's items have the same fields, in the same JSON types and href and id
patterns, so code that passes on the world also reads the PC. Values differ by design: the
world's tiles are miniatures.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pystac
import pytest
import rasterio

import geopile.stac
from geopile.params import load_params
from geopile.sources.stac import BoxTask, query_filter, stratum_of
from geopile.stac import search_items
from geopile.world.sentinel2 import BOA_ADD_OFFSET, build_sentinel2
from tests.conftest import REPO, source_of

REAL = Path(__file__).resolve().parent / "data" / "pc_sentinel2_l2a_item.json"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
GSD = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10}  # others: 20 m
# what the code reads of an item: its properties (datetime and proj:epsg always; the rest as
# params.yaml's query and strata name them) and, per asset, href and grid
READ_PROPS = ["datetime", "proj:epsg", "eo:cloud_cover", "s2:mgrs_tile", "platform",
              "sat:relative_orbit", "s2:processing_baseline"]
READ_ASSET_FIELDS = ["href", "gsd", "proj:shape", "proj:transform"]
HREF = re.compile(
    r"^https://sentinel2l2a01\.blob\.core\.windows\.net/sentinel2-l2/"
    r"(?P<zone>\d{1,2})/(?P<band>[C-X])/(?P<square>[A-Z]{2})/(?P<y>\d{4})/(?P<m>\d\d)/(?P<d>\d\d)/"
    r"(?P<product>(?P<sat>S2[AB])_MSIL2A_(?P<start>\d{8}T\d{6})_N(?P<n>\d{4})_R(?P<orbit>\d{3})"
    r"_T(?P<tile>\d\d[A-Z]{3})_(?P<gen>\d{8}T\d{6}))\.SAFE/GRANULE/L2A_T(?P=tile)_A\d{6}_"
    r"\d{8}T\d{6}/IMG_DATA/R(?P<res>\d\d)m/T(?P=tile)_(?P=start)_(?P<key>\w{3})_(?P=res)m\.tif$")
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _real() -> dict:
    return json.loads(REAL.read_text())


@pytest.fixture(scope="module")
def world_s2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    """The world's Sentinel-2 alone (its COGs and items; seconds, no servers)."""
    world_dir = tmp_path_factory.mktemp("s2world")
    built = build_sentinel2(world_dir)
    items = json.loads((world_dir / built["items"]).read_text())["features"]
    return world_dir, built, items


class _Client:
    """Stands in for pystac-client's ``Client``: a search answers ``items`` (pystac Items)."""

    def __init__(self, items: list[dict]) -> None:
        self._items = items
        self.searches: list[dict] = []

    def open(self, url: str, timeout: float | None = None) -> _Client:
        return self

    def search(self, **kwargs: object) -> SimpleNamespace:
        self.searches.append(kwargs)
        return SimpleNamespace(items=lambda: iter(pystac.Item.from_dict(i) for i in self._items))


def _search(monkeypatch: pytest.MonkeyPatch, items: list[dict], **kwargs: object) -> list:
    client = _Client(items)
    monkeypatch.setattr(geopile.stac, "Client", client)
    refs = list(search_items("https://planetarycomputer.microsoft.com/api/stac/v1",
                             collection="sentinel-2-l2a", bbox=None, datetime=None,
                             assets=[*BANDS, "SCL"], **kwargs))
    assert client.searches and client.searches[0]["collections"] == ["sentinel-2-l2a"]
    return refs


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "list[" + ",".join(sorted({_json_type(v) for v in value})) + "]"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --- (a) our reader on the real item ------------------------------------------------------------

def test_search_items_reads_the_real_item(monkeypatch):
    raw = _real()
    [ref] = _search(monkeypatch, [raw])
    assert ref.item_id == raw["id"] == "S2A_MSIL2A_20190101T000001_R116_T59VMD_20201007T214704"
    assert ref.epsg == 32659 and ref.properties["s2:mgrs_tile"] == "59VMD"
    assert ref.datetime == "2019-01-01T00:00:01.024000Z"
    assert ref.bbox == tuple(raw["bbox"])
    assert set(ref.assets) == {*BANDS, "SCL"}  # 12 bands and SCL, nothing else asked for
    for key, asset in ref.assets.items():
        gsd = GSD.get(key, 20)
        side = {10: 10980, 20: 5490, 60: 1830}[gsd]
        assert asset.gsd == gsd and asset.shape == (side, side), key
        assert asset.transform == (gsd, 0.0, 399960.0, 0.0, -gsd, 6400020.0), key
        assert asset.href == raw["assets"][key]["href"] and "?" not in asset.href
        assert asset.href.endswith(f"_{key}_{gsd}m.tif")


def test_query_and_strata_work_on_the_real_item(monkeypatch):
    raw = _real()
    assert raw["properties"]["eo:cloud_cover"] == pytest.approx(38.1191)
    assert not _search(monkeypatch, [raw], keep=query_filter({"eo:cloud_cover": {"lt": 10}}))
    [ref] = _search(monkeypatch, [raw], keep=query_filter({"eo:cloud_cover": {"lt": 50},
                                                           "platform": {"in": ["Sentinel-2A"]}}))
    assert stratum_of(ref, ["s2:mgrs_tile", "month"]) == "59VMD_01"
    assert stratum_of(ref, ["year", "sat:relative_orbit"]) == "2019_116"


def test_boxes_on_the_real_grids_are_whole_pixels_on_every_band(monkeypatch):
    [ref] = _search(monkeypatch, [_real()])
    block = {**load_params([REPO / "params.yaml"])["sources"]["sentinel2"], "patch_size": 256,
             "target_gsd": 10}
    plan = source_of("sentinel2", block, Path("unused"), progress=False)
    plan.__dict__["searched"] = ({"all": [ref]}, [])  # the search, done above
    rng = np.random.default_rng(0)
    for _ in range(20):
        task = plan._draw("all", rng)
        assert isinstance(task, BoxTask)
        for key in [*BANDS, "SCL"]:
            win = plan.window(task, key)
            assert win.col_off == int(win.col_off) and win.row_off == int(win.row_off), key
            gsd = ref.assets[key].gsd
            assert win.width == win.height == 2560 / gsd
            assert 0 <= win.col_off and win.col_off + win.width <= 109800 / gsd
            assert 0 <= win.row_off and win.row_off + win.height <= 109800 / gsd


# --- (b) the world's items have the real item's shape ---------------------------------------------

def test_world_items_have_the_real_items_fields_and_types(world_s2):
    raw = _real()
    _, _, items = world_s2
    assert len(items) == 6
    real_props = {k: _json_type(v) for k, v in raw["properties"].items()}
    for item in items:
        assert set(item) == set(raw), item["id"]
        assert item["stac_version"] == raw["stac_version"]
        assert item["stac_extensions"] == raw["stac_extensions"]
        assert item["collection"] == raw["collection"]
        props = {k: _json_type(v) for k, v in item["properties"].items()}
        assert props == real_props, item["id"]  # same keys, same JSON types
        assert {link["rel"] for link in item["links"]} <= {link["rel"] for link in raw["links"]}
        for key in READ_PROPS:
            assert key in item["properties"] and key in raw["properties"]
        # assets: every world asset is a real one, with the same fields in the same types
        assert {*BANDS, "SCL"} <= set(item["assets"]) <= set(raw["assets"])
        for key, asset in item["assets"].items():
            real = raw["assets"][key]
            assert {k: _json_type(v) for k, v in asset.items()} == {
                k: _json_type(v) for k, v in real.items()}, (item["id"], key)
            assert set(READ_ASSET_FIELDS) <= set(asset)
            for field in ("type", "roles", "title"):
                assert asset[field] == real[field], (key, field)
            if "eo:bands" in real:  # same band metadata, field for field
                assert asset["eo:bands"] == real["eo:bands"], key
        assert "raster:bands" not in json.dumps(item) and "raster:bands" not in json.dumps(raw)


@pytest.mark.parametrize("which", ["real", "world"])
def test_ids_hrefs_grids_and_geometry_agree_with_the_properties(which, world_s2):
    items = [_real()] if which == "real" else world_s2[2]
    for item in items:
        props = item["properties"]
        assert DATETIME.match(props["datetime"]), props["datetime"]
        assert isinstance(props["proj:epsg"], int) and props["proj:epsg"] // 100 in (326, 327)
        assert re.fullmatch(r"\d\d[A-Z]{3}", props["s2:mgrs_tile"])
        assert re.fullmatch(r"\d\d\.\d\d", props["s2:processing_baseline"])
        assert props["platform"] in ("Sentinel-2A", "Sentinel-2B")
        assert props["constellation"] == "Sentinel 2" and props["instruments"] == ["msi"]
        assert props["eo:cloud_cover"] == pytest.approx(
            props["s2:medium_proba_clouds_percentage"] + props["s2:high_proba_clouds_percentage"]
            + props["s2:thin_cirrus_percentage"], abs=1e-5)
        product = props["s2:product_uri"].removesuffix(".SAFE")
        assert item["id"] == re.sub(r"_N\d{4}_", "_", product)
        for key in [*BANDS, "SCL"]:
            asset = item["assets"][key]
            m = HREF.match(asset["href"])
            assert m, asset["href"]
            assert m["product"] == product and m["key"] == key
            assert int(m["res"]) == asset["gsd"] == GSD.get(key, 20)
            assert f"{int(m['zone']):02d}{m['band']}{m['square']}" == props["s2:mgrs_tile"]
            assert m["tile"] == props["s2:mgrs_tile"] and m["n"] == props[
                "s2:processing_baseline"].replace(".", "")
            assert int(m["orbit"]) == props["sat:relative_orbit"]
            assert m["sat"][-1] == props["platform"][-1]
            start = datetime.strptime(m["start"], "%Y%m%dT%H%M%S")
            assert props["datetime"].startswith(start.strftime("%Y-%m-%dT%H:%M:%S"))
            assert f"{m['y']}-{m['m']}-{m['d']}" == props["datetime"][:10]
            # the grid: transform, shape and bbox describe the same tile on every band
            g = asset["gsd"]
            a, b, x0, d, e, y0 = asset["proj:transform"]
            rows, cols = asset["proj:shape"]
            assert (a, b, d, e) == (g, 0.0, 0.0, -g)
            assert asset["proj:bbox"] == [x0, y0 - rows * g, x0 + cols * g, y0]
            assert asset["proj:bbox"] == item["assets"]["B02"]["proj:bbox"]
        ring = item["geometry"]["coordinates"][0]
        assert item["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        assert item["bbox"] == [min(lons), min(lats), max(lons), max(lats)]


def test_world_dn_carry_the_boa_offset_its_baseline_implies(world_s2):
    """Baseline >= 04.00 means DN = 10000 x reflectance + 1000. No field of the item says so:
    the PC's items (and the world's) have no raster:bands offset."""
    world_dir, built, items = world_s2
    for item, truth in zip(items, built["item_truth"], strict=True):
        assert item["properties"]["s2:processing_baseline"] >= "04.00"
        with rasterio.open(world_dir / truth["bands"]["B12"]) as src:
            dn = src.read(1)
        assert src.nodata == 0 and dn.dtype == np.uint16
        assert dn[dn > 0].min() >= BOA_ADD_OFFSET  # water's ~0.3 % SWIR reads ~1030, not ~30
