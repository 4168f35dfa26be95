"""NAIP through the STAC API: windows equal direct reads, resume is exact, tokens never leak."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from geopile.cog import read_window
from geopile.ingest import ingest
from geopile.records import read_records, records_path, rejects_path
from geopile.world.corpora import mirror_path
from geopile.world.naip import AZURE_PREFIX
from tests import signers
from tests.conftest import source_of
from tests.httpserver import FlakyServer


def _naip(params: dict, **overrides):
    sp = {**params["sources"]["naip"], **overrides}
    data = Path(params["paths"]["data"])
    source = source_of("naip", sp, data, progress=False)
    summary = ingest(source, workers=4, progress=False)
    return source, summary, read_records(records_path(data, "naip")).to_pylist()


def test_naip_patches_equal_direct_reads(params, world_dir, truth):
    source, summary, rows = _naip(params)
    assert len(rows) == source.settings.count == summary.images
    strata = {(r["state"], r["year"]) for r in rows}
    assert {s for s, _ in strata} == set(truth["naip"]["states"])
    assert {y for _, y in strata} == set(truth["naip"]["years"])
    data = Path(params["paths"]["data"])
    for row in rows:
        assert row["bands"] == 4 and row["width"] == row["height"] == source.patch_size
        assert row["nodata_fraction"] <= source.settings.max_nodata
        assert row["gsd_min"] == row["gsd_max"] == source.target_gsd
        # the published href, as a real run records it (the world maps it to its loopback twin)
        assert row["asset_href"].startswith(AZURE_PREFIX) and "?" not in row["asset_href"]
        # the multi-band STAC columns stay null for NAIP (its rows are as before them)
        assert all(row[c] is None for c in ("band_names", "dtype", "band_mean", "band_std",
                                            "cloud_fraction", "datetime"))
    checked = {0.6: 0, 1.0: 0}
    tiles = {t["item_id"]: t for t in truth["naip"]["tiles"]}
    for row in rows[:: max(1, len(rows) // 12)]:
        tile = tiles[row["stac_item"]]
        col, r0, w, h = row["window"]
        with rasterio.open(world_dir / tile["path"]) as src:  # the original COG, read locally
            direct = src.read(
                window=Window(col, r0, w, h),
                out_shape=(4, row["height"], row["width"]),
                resampling=Resampling.average,
            )
            assert row["crs"] == src.crs.to_string()
        with rasterio.open(data / row["path"]) as stored:
            assert np.array_equal(stored.read(), direct)
            assert stored.crs.to_string() == row["crs"]
            assert stored.bounds == pytest.approx(row["bounds"])
        checked[tile["gsd"]] += 1
    assert checked[0.6] and checked[1.0]  # resampled and native windows both verified


def test_no_record_holds_a_token(params, world):
    _, _, rows = _naip(params, signer="tests.signers:fake_sas", count=12)
    data = Path(params["paths"]["data"])
    for path in (records_path(data, "naip"), rejects_path(data, "naip")):
        for row in pq.read_table(path).to_pylist():
            text = repr(row)
            assert "SECRETSIGNATURE" not in text and "sig=" not in text and "?" not in text
    assert rows


def test_expired_token_is_resigned(world_dir, truth):
    tile = next(t for t in truth["naip"]["tiles"] if t["gsd"] == 1.0)
    rel = mirror_path(tile["href"])
    with FlakyServer(world_dir / "http") as srv:
        srv.valid_token = "t1"  # the signer's first token (t0) is already expired
        signers._counter = iter(range(10))
        patch = read_window(f"{srv.url}/{rel}", Window(0, 0, 64, 64), 64, signers.minting,
                            backoff_s=0.01)
        statuses = [s for _, _, s in srv.requests]
    assert statuses[0] == 403 and set(statuses[1:]) <= {200, 206}
    with rasterio.open(world_dir / tile["path"]) as src:
        assert np.array_equal(patch.pixels, src.read(window=Window(0, 0, 64, 64)))
