"""`type: stac` sources: the world's Sentinel-2 L2A through `geopile ingest`, the query filter
and strata, lossless 12-band uint16 patches, the cloud filter, resume, and no token recorded."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import yaml
from rasterio.enums import Resampling

from geopile.imagestats import band_names, decode, rgb_preview
from geopile.ingest import ingest
from geopile.records import read_records, records_path, rejects_path
from geopile.sources.stac import Harmonize, query_filter, stratum_of
from geopile.stac import ItemRef
from geopile.world.sentinel2 import BOA_ADD_OFFSET, S2_PREFIX
from tests.conftest import make_source, source_of
from tests.killing import kill_once

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


# --- units ---------------------------------------------------------------------------------------

def test_query_filter_has_the_query_extension_semantics():
    keep = query_filter({"eo:cloud_cover": {"lt": 10}, "platform": {"in": ["Sentinel-2A"]}})
    assert keep({"eo:cloud_cover": 9.99, "platform": "Sentinel-2A"})
    assert not keep({"eo:cloud_cover": 10, "platform": "Sentinel-2A"})  # lt is strict
    assert not keep({"eo:cloud_cover": 5, "platform": "Sentinel-2B"})
    assert not keep({"platform": "Sentinel-2A"})  # a missing property never matches
    assert query_filter({"x": {"lte": 10}})({"x": 10})
    assert query_filter({"x": {"gte": 3, "lt": 5}})({"x": 3})
    assert not query_filter({"x": {"gt": 3}})({"x": 3})
    assert query_filter({"x": {"neq": "a"}})({"x": "b"})
    assert not query_filter({"x": {"neq": "a"}})({"x": "a"})
    assert query_filter({"x": "a"})({"x": "a"})  # a bare value is eq
    assert not query_filter({"x": {"lt": 3}})({"x": "text"})  # incomparable: no match
    assert query_filter(None)({})
    with pytest.raises(ValueError, match="sources.s2.query.x: unknown operator 'like'"):
        query_filter({"x": {"like": 1}}, "sources.s2.query")


def test_harmonize_shifts_only_later_baselines():
    rule = Harmonize(property="s2:processing_baseline", since="04.00", offset=1000)
    for baseline, shifted in (("02.12", False), ("03.01", False), ("04.00", True),
                              ("05.09", True)):
        assert rule.applies({"s2:processing_baseline": baseline}) is shifted, baseline
    assert not rule.applies({})  # no baseline recorded: left as published
    dn = np.array([[[0, 999, 1000, 1001, 11000]]], dtype=np.uint16)
    out = rule.undo(dn)
    assert out.dtype == np.uint16 and out.tolist() == [[[0, 0, 0, 1, 10000]]]


def test_stratum_keys():
    item = ItemRef("id", "2023-07-15T18:50:19Z", 32610, (-123.4, 37.2, -123.2, 37.4),
                   {"s2:mgrs_tile": "10SEG", "sat:relative_orbit": 113}, {})
    assert stratum_of(item, ["s2:mgrs_tile", "month"]) == "10SEG_07"
    assert stratum_of(item, ["year", "sat:relative_orbit"]) == "2023_113"
    assert stratum_of(item, ["grid:1"]) == "37_m124"  # centre (-123.3, 37.3), cells floored
    assert stratum_of(item, ["grid:0.5"]) == "37_m123p5"
    assert stratum_of(item, []) == "all"
    with pytest.raises(KeyError):
        stratum_of(item, ["naip:state"])


# --- the world's Sentinel-2 --------------------------------------------------------------------

def _ingest(params: dict, **overrides) -> tuple:
    sp = {**params["sources"]["sentinel2"], **overrides}
    data = Path(params["paths"]["data"])
    source = source_of("sentinel2", sp, data, progress=False)
    summary = ingest(source, workers=4, progress=False)
    return source, summary, read_records(records_path(data, "sentinel2")).to_pylist()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _direct(world_dir: Path, rel: str, window: rasterio.windows.Window, size: int,
            resampling: Resampling) -> np.ndarray:
    with rasterio.open(world_dir / rel) as src:
        return src.read(1, window=window, out_shape=(size, size), resampling=resampling)


@pytest.mark.slow
def test_sentinel2_patches_are_lossless_filtered_and_stratified(params, world_dir, truth):
    source, summary, rows = _ingest(params)
    s2 = truth["sentinel2"]
    items = {t["item_id"]: t for t in s2["item_truth"]}
    size = source.patch_size
    # the query (eo:cloud_cover < 50) drops the overcast date: 2 tiles x 2 dates remain
    kept = {i for i, t in items.items() if t["eo:cloud_cover"] < 50}
    assert len(kept) == 4 and {r["stac_item"] for r in rows} <= kept
    assert {r["stac_item"] for r in rows} == kept
    # the strata (mgrs tile, month) each get their equal share
    quotas = source.quotas()
    assert sorted(quotas) == ["10SEG_06", "10SEG_07", "10SFG_06", "10SFG_07"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["key"].split("/", 1)[1].rsplit("_", 1)[0]] = counts.get(
            r["key"].split("/", 1)[1].rsplit("_", 1)[0], 0) + 1
    assert counts == dict(quotas) and len(rows) == summary.images == source.settings.count

    data = Path(params["paths"]["data"])
    for row in rows:
        assert row["bands"] == 12 and row["dtype"] == "uint16" and row["format"] == "tiff"
        assert row["band_names"] == S2 and row["width"] == row["height"] == size
        assert row["cloud_fraction"] <= source.settings.max_cloud
        assert _when(row["datetime"]) == _when(items[row["stac_item"]]["datetime"])
        assert row["asset_href"].startswith(S2_PREFIX) and "?" not in row["asset_href"]
        raw = (data / row["path"]).read_bytes()
        pixels, fmt = decode(raw)
        assert fmt == "tiff" and pixels.dtype == np.uint16 and pixels.shape == (size, size, 12)
        assert band_names(raw) == S2
        assert row["nodata_fraction"] == 0  # max_nodata 0: every pixel is data
        vals = pixels.reshape(-1, 12).astype(np.float64)
        assert np.allclose(row["band_mean"], vals.mean(axis=0), rtol=1e-5)
        assert np.allclose(row["band_std"], vals.std(axis=0), rtol=1e-5, atol=1e-3)
        # each band equals a direct read of the source COG's window, resampled (average)
        item = items[row["stac_item"]]
        with rasterio.open(data / row["path"]) as stored:
            assert stored.dtypes[0] == "uint16" and stored.descriptions == tuple(S2)
            assert stored.crs.to_string() == row["crs"] == "EPSG:32610"
            left, top = stored.transform.c, stored.transform.f
        for b, name in enumerate(S2):
            gsd = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10}.get(name, 20)
            tile_west = 499980 if item["mgrs"] == "10SEG" else 600000
            window = rasterio.windows.Window((left - tile_west) / gsd, (4200000 - top) / gsd,
                                             size * 10 / gsd, size * 10 / gsd)
            direct = _direct(world_dir, item["bands"][name], window, size, Resampling.average)
            # the world's items are baseline 05.09 (DN + 1000): harmonized to the old scale
            direct = np.maximum(direct, BOA_ADD_OFFSET) - BOA_ADD_OFFSET
            assert np.array_equal(pixels[..., b], direct), (row["key"], name)
    preview = rgb_preview(pixels, S2)
    assert preview.dtype == np.uint8 and preview.shape == (size, size, 3)


@pytest.mark.slow
def test_cloud_filter_rejects_exactly_the_cloudy_windows(params, world_dir, truth):
    source, _, rows = _ingest(params, count=16)
    data = Path(params["paths"]["data"])
    rejects = pq.read_table(rejects_path(data, "sentinel2")).to_pylist()
    cloudy = [r for r in rejects if "cloud fraction" in r["reason"]]
    assert cloudy, "the partly cloudy date should have rejected some windows"
    items = {t["item_id"]: t for t in truth["sentinel2"]["item_truth"]}
    classes = truth["sentinel2"]["cloud_classes"]
    max_cloud = source.settings.max_cloud
    by_key = {c.key: c for c in source.candidates()}
    for outcome, rejected in [(r, False) for r in rows] + [(r, True) for r in cloudy]:
        task = by_key[outcome["key"]].task
        item = items[task.item.item_id]
        window = source.window(task, "SCL")
        scl = _direct(world_dir, item["scl"], window, source.patch_size, Resampling.nearest)
        share = float(np.isin(scl, classes).mean())
        assert (share > max_cloud) == rejected, outcome["key"]
        if not rejected:
            assert outcome["cloud_fraction"] == pytest.approx(share)


def test_query_setting_is_validated(params):
    from pydantic import ValidationError

    from geopile.sources.stac import StacSettings

    block = params["sources"]["sentinel2"]
    StacSettings.model_validate(block)  # the world's overlay (sentinel2 on) is valid
    with pytest.raises(ValidationError, match="below"):
        StacSettings.model_validate({**block, "query": {"eo:cloud_cover": {"below": 10}}})


RUNNER = """
import sys, yaml
from pathlib import Path
from geopile.ingest import ingest
from tests.conftest import make_source
params = yaml.safe_load(open(sys.argv[1]))
src = make_source(params, "sentinel2", Path(params["paths"]["data"]),
                    progress=False)
ingest(src, workers=1, chunk_size=2, flush_every=2, progress=False)
"""


@pytest.mark.slow
def test_killed_ingest_resumes_to_identical_records(params, tmp_path):
    params["sources"]["sentinel2"]["count"] = 16
    clean = tmp_path / "clean"
    source = make_source(params, "sentinel2", clean, progress=False)
    ingest(source, workers=2, progress=False)
    want = pq.read_table(records_path(clean, "sentinel2")).to_pylist()
    killed = tmp_path / "killed"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**params, "paths": {"data": str(killed)}}))
    parts = killed / "records" / ".parts" / "sentinel2"
    kill_once(RUNNER, [str(params_file)], parts, "part-*.parquet", 3)
    source = make_source(params, "sentinel2", killed,
                           progress=False)
    ingest(source, workers=2, progress=False)
    got = pq.read_table(records_path(killed, "sentinel2")).to_pylist()
    assert [r["key"] for r in got] == [r["key"] for r in want]
    assert got == want


@pytest.mark.slow
def test_no_record_holds_a_token(params):
    _, _, rows = _ingest(params, signer="tests.signers:fake_sas", count=8)
    data = Path(params["paths"]["data"])
    for path in (records_path(data, "sentinel2"), rejects_path(data, "sentinel2")):
        for row in pq.read_table(path).to_pylist():
            text = repr(row)
            assert "SECRETSIGNATURE" not in text and "sig=" not in text and "?" not in text
    assert rows


def test_twelve_band_tiff_decodes_and_previews(tmp_path):
    from geopile.cog import Patch, encode_geotiff
    from geopile.curate import _grey, rgb_thumbnail
    from geopile.imagestats import luma

    px = np.random.default_rng(0).integers(1, 6000, (12, 40, 40)).astype(np.uint16)
    path = tmp_path / "p.tif"
    path.write_bytes(encode_geotiff(Patch(px, "EPSG:32610", (10, 0, 0, 0, -10, 0),
                                          (0, 0, 400, 400)), S2))
    pixels, fmt = decode(path.read_bytes())
    assert fmt == "tiff" and pixels.dtype == np.uint16
    assert np.array_equal(pixels, np.moveaxis(px, 0, -1))
    preview = rgb_preview(pixels, S2)  # B04, B03, B02 over 0..3000 DN
    want = np.clip(np.moveaxis(px[[3, 2, 1]], 0, -1) * (255 / 3000) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(preview, want)
    assert np.array_equal(_grey(path.read_bytes()), luma(preview))
    assert rgb_thumbnail(path.read_bytes(), 20).size == (20, 20)


def test_a_worker_writes_its_payload_and_sends_back_only_the_record(params, tmp_path):
    """Issue 31: the driver needs the facts, not the candidate (a STAC one holds its whole
    item: 7.7 KB of the 8.9 KB a Sentinel-2 outcome weighed before) nor the payload (the
    worker writes it to the payload store itself)."""
    import pickle
    from itertools import islice

    from geopile.imagestats import decode
    from geopile.ingest import decide
    from geopile.payloads import LocalPayloads

    store = LocalPayloads(tmp_path / "store")
    source = source_of("sentinel2", params["sources"]["sentinel2"], Path(params["paths"]["data"]),
                       progress=False)
    source.ctx.payloads = store
    source.fetch()
    cands = list(islice(source.candidates(), 6))
    assert len(pickle.dumps(cands[0])) > 4096  # what no longer travels back
    kept = 0
    for cand in cands:
        outcome = decide(source, cand)
        # the record row of 12 bands (names, means, stds, scales, ...) is about 2 KB
        assert len(pickle.dumps(outcome)) < 2560, cand.key
        if outcome[0] is not None:
            assert outcome[0].payload is None
            pixels, _ = decode(store.read(outcome[0].row["path"]))
            assert pixels.shape[-1] == 12 and outcome[0].row["nbytes"] == len(
                store.read(outcome[0].row["path"]))
            kept += 1
    assert kept
