"""Multi-band shards (12-band uint16 GeoTIFFs kept losslessly) and the loader's ``bands``.

Synthetic Sentinel-2-like records are written here (rasterio, the shared contract's layout)
and sharded with :func:`geopile.shards.write_build`; the loader's pixels are checked against an
independent computation (rasterio read, the transform's crop box, cv2 resize, the stretch).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from geopile.augment import STRETCH_K, BandError, GfmTransform
from geopile.params import deep_merge, load_params
from geopile.settings import Build, Shard
from geopile.shards import BuildError, caps, write_build
from geopile.stream.index import INDEX
from pipelines.loader import GeoPileLoader
from pipelines.shard import check_sources, run_shard
from tests.conftest import shard_members, typed

REPO = Path(__file__).resolve().parents[1]
# params.yaml's commented sentinel2 build (uncommented once the source is enabled and ingested)
SENTINEL2_BUILD = {"sentinel2": 1300000, "allow_short": True}

S2 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
SIDE = 160
COUNT = 24
CONFIG = Shard(max_samples=10, max_bytes=1 << 30, naip_bands=3, jpeg_quality=90,
                     mtime=0, cap_scale=1.0)


def _tiff(pixels: np.ndarray, names: tuple[str, ...]) -> bytes:
    """A lossless GeoTIFF as the contract stores it (deflate, predictor 2, descriptions)."""
    bands = pixels.shape[2]
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=pixels.shape[1], height=pixels.shape[0],
                      count=bands, dtype=str(pixels.dtype), crs="EPSG:32633", nodata=0,
                      transform=from_origin(500000, 4000000, 10, 10), compress="deflate",
                      predictor=2, interleave="pixel") as dst:
            dst.write(pixels.transpose(2, 0, 1))
            dst.descriptions = names
        return mem.read()


def _record(key: str, path: str, pixels: np.ndarray, i: int) -> dict:
    flat = pixels.reshape(-1, pixels.shape[2]).astype(np.float64)
    return {
        "key": key, "source": "sentinel2", "path": path, "format": "tiff", "bands": len(S2),
        "width": SIDE, "height": SIDE, "label": None, "label_id": None, "multilabels": None,
        "split": None, "nodata_fraction": 0.0, "xxh3_pixels": f"{i:016x}", "phash": i,
        "band_names": list(S2), "dtype": "uint16", "band_mean": flat.mean(0).tolist(),
        "band_std": flat.std(0).tolist(), "cloud_fraction": 0.1, "datetime": "2020-06-01T10:00:00Z",
    }


@pytest.fixture(scope="module")
def s2(tmp_path_factory) -> dict:
    """A 24-sample 12-band uint16 build: its dir, records and tiff bytes by key."""
    root = tmp_path_factory.mktemp("s2")
    data = root / "data"
    (data / "raw").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    records, tiffs = [], {}
    for i in range(COUNT):
        base = (np.sin(xx / (7 + i)) + np.cos(yy / 11))[..., None] * 400
        scale = np.arange(1, len(S2) + 1) * 150
        pixels = (base + scale + rng.integers(0, 200, (SIDE, SIDE, len(S2)))).clip(1, 10000)
        pixels = pixels.astype(np.uint16)
        names = S2
        if i == 5:  # band descriptions disagree with the record: B8A is missing in the file
            names = tuple("B8X" if n == "B8A" else n for n in S2)
        key = f"sentinel2/p{i:03d}"
        path = f"raw/p{i:03d}.tif"
        tiffs[key] = _tiff(pixels, names)
        (data / path).write_bytes(tiffs[key])
        records.append(_record(key, path, pixels, i))
    out = root / "shards" / "s2"
    index = write_build(pa.Table.from_pylist(records), data, out, "s2", 0, CONFIG)
    return {"dir": out, "records": records, "tiffs": tiffs, "index": index, "data": data}


def test_tif_members_are_the_ingested_bytes_and_json_carries_bands(s2):
    members = shard_members(s2["dir"])
    assert set(members) == set(s2["tiffs"])
    for key, m in members.items():
        assert m["tif"] == s2["tiffs"][key]
        meta = json.loads(m["json"])
        assert meta["band_names"] == list(S2) and meta["dtype"] == "uint16"
        assert len(meta["band_mean"]) == len(meta["band_std"]) == len(S2)
        assert meta["datetime"] == "2020-06-01T10:00:00Z"
        assert meta["cloud_fraction"] == pytest.approx(0.1)


def test_index_band_summary_equals_numpy(s2):
    index = json.loads((s2["dir"] / INDEX).read_text())
    assert index["bands"]["names"] == list(S2)
    stack = np.concatenate([
        rasterio.open(io.BytesIO(t)).read().reshape(len(S2), -1).astype(np.float64)
        for t in s2["tiffs"].values()], axis=1)
    np.testing.assert_allclose(index["bands"]["mean"], stack.mean(1), rtol=1e-9)
    np.testing.assert_allclose(index["bands"]["std"], stack.std(1), rtol=1e-9)


def _expected(transform: GfmTransform, tiff: bytes, bands: list[str], summary: dict,
              epoch: int, index: int) -> np.ndarray:
    """The sample's uint8 image computed apart: rasterio, crop box, per-band resize, stretch."""
    rng = transform.rng(epoch, index)
    with rasterio.open(io.BytesIO(tiff)) as src:
        names = list(src.descriptions)
        pixels = src.read([names.index(b) + 1 for b in bands]).astype(np.float32)
    top, left, h, w = transform.crop_box(pixels.shape[1], pixels.shape[2], rng)
    out = []
    for c, band in enumerate(bands):
        band_px = cv2.resize(pixels[c, top:top + h, left:left + w], (transform.size,) * 2,
                             interpolation=cv2.INTER_LINEAR)
        j = summary["names"].index(band)
        lo = summary["mean"][j] - STRETCH_K * summary["std"][j]
        hi = summary["mean"][j] + STRETCH_K * summary["std"][j]
        out.append(np.clip(np.rint((band_px - lo) * (255 / (hi - lo))), 0, 255))
    image = np.stack(out, -1).astype(np.uint8)
    return image[:, ::-1] if rng.random() < transform.flip else image


@pytest.mark.parametrize("bands", [["B04", "B03", "B02"], ["B08", "B04", "B03", "B02", "B11"]])
def test_loader_streams_the_named_bands(s2, bands):
    transform = GfmTransform(size=64, seed=3)
    loader = GeoPileLoader(str(s2["dir"]), batch_size=4, workers=0, seed=3,
                           transform=transform, bands=bands)
    summary = s2["index"]["bands"]
    checked = 0
    for batch in loader:
        images = batch["image"]
        assert images.dtype == torch.uint8 and tuple(images.shape) == (4, len(bands), 64, 64)
        for slot, (key, index) in enumerate(zip(batch["key"], batch["index"].tolist(),
                                                strict=True)):
            want = _expected(loader.transform, s2["tiffs"][key], bands, summary, 0, index)
            got = images[slot].permute(1, 2, 0).numpy()
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, key
            checked += 1
    assert checked == COUNT - COUNT % 4


def test_a_tif_lacking_a_band_names_the_shard_and_sample(s2):
    loader = GeoPileLoader(str(s2["dir"]), batch_size=4, workers=0, bands=["B8A"])
    with pytest.raises(BandError, match=r"shard-\d{6}\.tar sample sentinel2/p005: .*no band B8A"):
        for _ in loader:
            pass


def test_bands_the_build_lacks_fail_at_start(s2):
    with pytest.raises(BandError, match="no band B13"):
        GeoPileLoader(str(s2["dir"]), batch_size=4, bands=["B04", "B13"])


def test_a_jpeg_build_asked_for_bands_fails_clearly(tmp_path):
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    records = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(buf, "JPEG")
        (data / f"raw/{i}.jpg").write_bytes(buf.getvalue())
        records.append({"key": f"rgb/{i}", "source": "rgb", "path": f"raw/{i}.jpg",
                        "format": "jpeg", "bands": 3, "width": 64, "height": 64,
                        "label_id": None, "xxh3_pixels": f"{i:016x}", "phash": i})
    index = write_build(pa.Table.from_pylist(records), data, tmp_path / "rgb", "rgb", 0, CONFIG)
    assert "bands" not in index
    meta = json.loads(shard_members(tmp_path / "rgb")["rgb/0"]["json"])
    assert "band_names" not in meta and "dtype" not in meta  # existing JSON unchanged
    with pytest.raises(BandError, match="holds no multi-band samples.*pretrain.bands"):
        GeoPileLoader(str(tmp_path / "rgb"), batch_size=2, bands=["B04", "B03", "B02"])
    rgb = next(iter(GeoPileLoader(str(tmp_path / "rgb"), batch_size=2)))["image"]
    assert tuple(rgb.shape) == (2, 3, 192, 192)


def test_the_sentinel2_build_needs_its_source_enabled_and_ingested(tmp_path):
    params = load_params([REPO / "params.yaml"])
    assert params["sources"]["sentinel2"]["enabled"] is False  # off by default
    assert "sentinel2" not in params["builds"]  # dvc repro shards every build: not by default
    params = deep_merge(params, {"builds": {"sentinel2": SENTINEL2_BUILD}})
    with pytest.raises(BuildError, match=r"sources\.sentinel2, which is disabled.*enabled: true"
                                         r".*geopile ingest sentinel2"):
        run_shard(typed(params), "sentinel2", progress=False)
    on = deep_merge(params, {"sources": {"sentinel2": {"enabled": True}}})
    check_sources(typed(on), "sentinel2")  # enabled: passes before curate
    with pytest.raises(BuildError, match=r"sources\.sentinel2, which has no curated images.*"
                                         r"geopile ingest sentinel2"):
        check_sources(typed(on), "sentinel2", {"naip", "rsd46"})
    assert caps(Build.model_validate(SENTINEL2_BUILD), 0.001) == {"sentinel2": 1300}


@pytest.mark.slow
@pytest.mark.parametrize("bands,teacher", [(["B04", "B03", "B02"], None),
                                           (["B08", "B04", "B03", "B02", "B11"],
                                            ["B04", "B03", "B02"])])
def test_pretraining_on_the_multiband_build(s2, params, tmp_path, bands, teacher):
    from pipelines.pretrain import run_pretrain

    run = deep_merge(params, {"pretrain": {
        "batch_size": 8, "workers": 0, "log_every": 1, "checkpoint_every": 1000,
        "energy": {"enabled": False}, "stream": {"url": None}, "bands": bands,
        "teacher_bands": teacher}})
    run["paths"] = {**run["paths"], "runs": str(tmp_path / "runs")}
    metrics = run_pretrain(typed(run), "s2", steps=3, progress=False, shards=str(s2["dir"]))
    assert metrics["steps"] == 3
    losses = (tmp_path / "runs" / "s2" / "loss.csv").read_text().splitlines()
    assert len(losses) == 4 and "nan" not in "".join(losses[1:])
    config = json.loads((tmp_path / "runs" / "s2" / "config.json").read_text())
    assert config["settings"]["bands"] == bands
