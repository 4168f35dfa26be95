"""Sentinel-2 from the STAC catalog to the loader's batches, through the real chain.

``geopile ingest sentinel2`` (the world's STAC API and COGs, read through a signer that appends
SAS-like tokens), ``geopile curate`` and ``geopile shard`` of a build holding only sentinel2,
then :class:`pipelines.loader.GeoPileLoader` streaming chosen bands. Each link is checked
against what the link before it wrote: the shards' ``.tif`` members are the ingested bytes, the
index's band summary is numpy's over the ingested patches, the loader's pixels are an
independent rasterio read stretched with that summary, the cloud filters' rejects never reach
a shard, and no token reaches a shard or the index.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import yaml

from geopile.augment import GfmTransform
from geopile.params import load_params
from geopile.records import read_records, records_path, rejects_path
from geopile.stream.index import INDEX
from geopile.world.sentinel2 import S2_PREFIX
from geopile.world.world import PARAMS_OVERLAY
from pipelines.cli import main
from pipelines.curate import curated_path
from pipelines.loader import GeoPileLoader
from tests.conftest import shard_members

REPO = Path(__file__).resolve().parents[1]
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
BUILD = "s2test"
# the paper's other pretraining sources are off: this chain is Sentinel-2's alone
OTHERS = ("naip", "rsd46", "mlrsnet", "resisc45", "patternnet")
STRETCH_K = 3.0  # the loader maps a band's mean - 3 std to 0 and mean + 3 std to 255
TOKEN_MARKS = ("SECRETSIGNATURE", "sig=", "se=", "st=", "sp=rl")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _read(tiff: bytes, bands: list[str]) -> np.ndarray:
    """The named bands of a GeoTIFF as float64 ``C x H x W``, picked by description."""
    with rasterio.open(io.BytesIO(tiff)) as src:
        names = list(src.descriptions)
        return src.read([names.index(b) + 1 for b in bands]).astype(np.float64)


def _stretch(pixels: np.ndarray, bands: list[str], summary: dict) -> np.ndarray:
    """``C x H x W`` stored units -> uint8 ``H x W x C``: mean - 3 std -> 0, mean + 3 std -> 255."""
    out = []
    for c, band in enumerate(bands):
        j = summary["names"].index(band)
        lo = summary["mean"][j] - STRETCH_K * summary["std"][j]
        hi = summary["mean"][j] + STRETCH_K * summary["std"][j]
        out.append(np.clip(np.rint((pixels[c] - lo) * (255 / (hi - lo))), 0, 255))
    return np.stack(out, -1).astype(np.uint8)


def _expected(transform: GfmTransform, tiff: bytes, bands: list[str], summary: dict,
              epoch: int, index: int) -> np.ndarray:
    """The loader's image computed apart: the sample's crop box and flip, cv2 resize, stretch."""
    rng = transform.rng(epoch, index)
    pixels = _read(tiff, bands).astype(np.float32)
    top, left, h, w = transform.crop_box(pixels.shape[1], pixels.shape[2], rng)
    crop = np.stack([cv2.resize(np.ascontiguousarray(pixels[c, top:top + h, left:left + w]),
                                (transform.size,) * 2, interpolation=cv2.INTER_LINEAR)
                     for c in range(len(bands))])
    image = _stretch(crop.astype(np.float64), bands, summary)
    return image[:, ::-1] if rng.random() < transform.flip else image


def _close(got: torch.Tensor, want: np.ndarray, key: str) -> None:
    """Equal up to float32 rounding at a .5 boundary (1 level, on a sliver of the pixels)."""
    got_np = got.permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(got_np - want.astype(int))
    assert diff.max() <= 1, (key, diff.max())
    assert (diff == 0).mean() > 0.99, (key, (diff == 0).mean())


def _geopile(*argv: str, params: list[Path]) -> None:
    """``geopile ARGV --params ... --no-progress``, in this process; it must succeed."""
    files = [a for p in params for a in ("--params", str(p))]
    assert main([*argv, *files, "--no-progress"]) == 0, argv


def test_sentinel2_from_stac_to_loader_batches(world, world_dir, truth, tmp_path):
    overlay = tmp_path / "s2.params.yaml"
    overlay.write_text(yaml.safe_dump({
        "paths": {k: str(tmp_path / k) for k in ("data", "reports", "shards", "runs")},
        "sources": {**{s: {"enabled": False} for s in OTHERS},
                    # the Planetary Computer's signer appends a SAS token to every href it reads
                    "sentinel2": {"signer": "tests.signers:fake_sas"}},
        "curate": {"eval_sets": {"ucmerced": []}},  # no eval set ingested: nothing to decontaminate
        "shard": {"max_samples": 7},  # several shards, the last one short
        "builds": {BUILD: {"sentinel2": "all"}},
    }))
    files = [REPO / "params.yaml", world_dir / PARAMS_OVERLAY, overlay]
    source = load_params(files)["sources"]["sentinel2"]  # what the CLI runs with
    data, build = tmp_path / "data", tmp_path / "shards" / BUILD

    _geopile("ingest", "sentinel2", params=files)
    _geopile("curate", params=files)
    _geopile("shard", BUILD, params=files)

    records = {r["key"]: r for r in read_records(records_path(data, "sentinel2")).to_pylist()}
    assert len(records) == source["count"]
    curated = read_records(curated_path(data)).to_pylist()
    assert {r["source"] for r in curated} == {"sentinel2"}
    index = json.loads((build / INDEX).read_text())
    members = shard_members(build)

    # --- the shards hold one sample per curated cluster, each the ingested bytes ------------
    clusters = {r["cluster"] for r in curated}
    assert index["sources"] == {"sentinel2": len(clusters)} and len(clusters) > len(records) // 2
    assert index["samples"] == len(members) == sum(s["samples"] for s in index["shards"])
    assert len(index["shards"]) == -(-len(members) // 7)
    assert set(members) <= {r["key"] for r in curated}
    for key, m in members.items():
        assert set(m) == {"tif", "json", "cls"}, key
        assert m["tif"] == (data / records[key]["path"]).read_bytes(), key
        assert m["cls"] == b"-1"
        meta = json.loads(m["json"])
        assert meta["key"] == key and meta["band_names"] == S2 and meta["dtype"] == "uint16"
        assert meta["bands"] == 12 and meta["format"] == "tiff"
        assert meta["band_mean"] == pytest.approx(records[key]["band_mean"])

    # --- index.json's band summary is numpy's over the build's valid pixels -----------------
    summary = index["bands"]
    assert summary["names"] == S2 and summary["weight"] == "valid_pixels"
    assert "mixed" not in summary
    # max_nodata is 0: every pixel of a kept patch is data (after harmonizing, a dark pixel
    # may be 0 in every band and still count)
    assert all(records[k]["nodata_fraction"] == 0 for k in members)
    stack = np.concatenate([_read(members[k]["tif"], S2).reshape(len(S2), -1) for k in members],
                           axis=1)
    np.testing.assert_allclose(summary["mean"], stack.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(summary["std"], stack.std(axis=1), rtol=1e-7)

    # --- the cloud filters held: no overcast item, no window over max_cloud ------------------
    items = {t["item_id"]: t for t in truth["sentinel2"]["item_truth"]}
    overcast = {i for i, t in items.items() if t["eo:cloud_cover"] >= 50}
    partly = {i for i, t in items.items() if 10 < t["eo:cloud_cover"] < 50}
    assert len(overcast) == 2 and partly  # the world plants 75% cloud on its last date
    max_cloud = float(source["max_cloud"])
    assert 0 < max_cloud < 0.3  # the partly cloudy date's cloud share: some windows go
    rejects = pq.read_table(rejects_path(data, "sentinel2")).to_pylist()
    assert any("cloud fraction" in r["reason"] for r in rejects)  # the window filter had work
    cloudy = {r["key"] for r in rejects if "cloud fraction" in r["reason"]}
    seen_items = set()
    for key, m in members.items():
        meta = json.loads(m["json"])
        assert meta["cloud_fraction"] <= max_cloud, key
        assert meta["cloud_fraction"] == records[key]["cloud_fraction"]
        assert meta["stac_item"] == meta["origin"] and meta["stac_item"] in items
        assert _when(meta["datetime"]) == _when(items[meta["stac_item"]]["datetime"])
        seen_items.add(meta["stac_item"])
    assert not seen_items & overcast  # the query (eo:cloud_cover < 50) kept them out ...
    assert not {r["stac_item"] for r in records.values()} & overcast  # ... from ingest on
    assert not {r["origin"] for r in rejects} & overcast  # never even read
    assert seen_items & partly  # the partly cloudy date gave its clear windows
    assert not cloudy & set(members)

    # --- no token anywhere a shard or its index holds ----------------------------------------
    texts = {f"{key}.json": m["json"].decode() for key, m in members.items()}
    texts[INDEX] = (build / INDEX).read_text()
    for name, text in texts.items():
        for mark in TOKEN_MARKS:
            assert mark not in text, (name, mark)
        assert "?" not in text, name
    for key in members:
        # the published href, as a real run would record it; never the loopback twin read
        assert json.loads(texts[f"{key}.json"])["asset_href"].startswith(S2_PREFIX)
    card = (build / "README.md").read_text()
    assert "SECRETSIGNATURE" not in card and "sig=" not in card

    # --- the loader's pixels: no augmentation, then the random crops and flips ---------------
    tiffs = {key: m["tif"] for key, m in members.items()}
    size = records[next(iter(records))]["width"]
    plain = GfmTransform(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, seed=1)
    for bands, transform in ((["B08", "B04", "B03"], plain),
                             (S2, GfmTransform(size=48, seed=5))):
        loader = GeoPileLoader(str(build), batch_size=4, workers=0, seed=5, transform=transform,
                               bands=bands)
        for epoch in range(1 if transform is plain else 2):  # crops differ by epoch
            seen: list[str] = []
            for batch in loader:
                images = batch["image"]
                assert images.dtype == torch.uint8
                assert tuple(images.shape) == (4, len(bands), transform.size, transform.size)
                assert not batch["substitute"].any()
                for slot, (key, i) in enumerate(zip(batch["key"], batch["index"].tolist(),
                                                    strict=True)):
                    if transform is plain:  # the whole patch, as stored: nothing but the stretch
                        want = _stretch(_read(tiffs[key], bands), bands, summary)
                    else:
                        want = _expected(loader.transform, tiffs[key], bands, summary, epoch, i)
                    _close(images[slot], want, key)
                    seen.append(key)
            # every sample at most once an epoch, all but the remainder of the last batch
            assert len(set(seen)) == len(seen) == len(members) - len(members) % 4
