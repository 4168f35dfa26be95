"""Offline-world copies of the downstream sets, in their published archive layouts.

BigEarthNet-S2 v1.0: ``BigEarthNet-v1.0/<patch>/<patch>_<band>.tif`` (12 bands at their native
10/20/60 m sizes, uint16 GeoTIFFs in UTM) and ``<patch>_labels_metadata.json`` (43-class CORINE
names), packed as the published ``.tar.gz``, plus the three BigEarthNet-MM split CSVs
(``s2_patch,s1_patch`` rows). Every patch is one to three strips of land covers with distinct
spectra and textures, so a tiny model learns its multi-labels from the RGB bands. Everything is
a pure function of ``seed`` (fixed tar and gzip timestamps), so two builds are byte-identical.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from geopile.downstream import DOWNSTREAM

# 43-class names the world's patches carry, with (B04, B03, B02, B08) reflectance x 10^4 and a
# texture. 'Burnt areas' has no 19-class label: torchgeo drops it, as it does for real patches.
_COVERS: dict[str, tuple[tuple[int, int, int, int], str]] = {
    "Discontinuous urban fabric": ((1500, 1350, 1250, 2000), "blocks"),
    "Non-irrigated arable land": ((1800, 1300, 800, 2800), "stripes"),
    "Pastures": ((500, 950, 450, 3500), "smooth"),
    "Coniferous forest": ((180, 380, 260, 2200), "speckle"),
    "Water bodies": ((150, 300, 520, 120), "smooth"),
    "Sea and ocean": ((90, 240, 760, 60), "waves"),
}
_RARE = "Burnt areas"
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_SIZE = {"B01": 20, "B09": 20, "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60,
         "B12": 60}  # px per 1.2 km patch; every other band is 120 (10 m)
_SPLITS = {"train": 500, "val": 50, "test": 100}  # ben1 trains on 5 of train, ben10 on 50
_CRS = CRS.from_epsg(32632)  # UTM 32N; made once (building it per file costs more than writing)


def covers() -> list[str]:
    """The 43-class names the world's patches are drawn with (each maps to a 19-class label)."""
    return list(_COVERS)


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative texture around 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "blocks":
        cells = rng.uniform(0.6, 1.4, size=(h // 12 + 1, w // 12 + 1))
        return cells[yy // 12, xx // 12]
    if kind == "stripes":
        return 1 + 0.25 * np.sign(np.sin(xx * 2 * np.pi / rng.uniform(8, 14)))
    if kind == "speckle":  # tree crowns, 3 px
        return rng.uniform(0.5, 1.5, size=(h // 3 + 1, w // 3 + 1))[yy // 3, xx // 3]
    if kind == "waves":
        return 1 + 0.2 * np.sin((xx + yy) * 2 * np.pi / rng.uniform(10, 20))
    return np.ones((h, w))


def _patch(labels: list[str], rng: np.random.Generator) -> np.ndarray:
    """(4, 120, 120) float reflectances (B04, B03, B02, B08) in strips, one per land cover."""
    covers = [c for c in labels if c in _COVERS] or ["Pastures"]
    cuts = np.sort(rng.choice(np.arange(30, 91), size=len(covers) - 1, replace=False))
    edges = [0, *cuts.tolist(), 120]
    out = np.zeros((4, 120, 120))
    for k, cover in enumerate(covers):
        spectrum, kind = _COVERS[cover]
        width = edges[k + 1] - edges[k]
        tex = _texture(kind, 120, width, rng)
        for b, value in enumerate(spectrum):
            out[b, :, edges[k]:edges[k + 1]] = value * tex
    if rng.random() < 0.5:
        out = out.transpose(0, 2, 1)
    # sensor noise in steps of 25, so that the archive compresses as real imagery does
    return out + 25 * rng.integers(-2, 3, size=out.shape)


def _bands(rgbn: np.ndarray) -> dict[str, np.ndarray]:
    """All 12 bands at their native sizes: 10 m ones as drawn, the rest block means of them."""
    red, green, blue, nir = rgbn
    mix = {"B01": blue, "B02": blue, "B03": green, "B04": red, "B05": 0.7 * red + 0.3 * nir,
           "B06": 0.3 * red + 0.7 * nir, "B07": nir, "B08": nir, "B8A": nir, "B09": 0.2 * nir,
           "B11": 0.6 * red + 0.2 * nir, "B12": 0.5 * red}
    out = {}
    for band, arr in mix.items():
        size = _SIZE.get(band, 120)
        f = 120 // size
        arr = arr.reshape(size, f, size, f).mean(axis=(1, 3))
        out[band] = np.clip(arr, 1, 20000).astype(np.uint16)
    return out


def _geotiff(arr: np.ndarray, x0: float, y0: float) -> bytes:
    """A single-band uint16 GeoTIFF in UTM 32N, as BigEarthNet publishes them."""
    res = 1200 / arr.shape[0]
    profile = {"driver": "GTiff", "dtype": "uint16", "count": 1, "height": arr.shape[0],
               "width": arr.shape[1], "crs": _CRS, "transform": from_origin(x0, y0, res, res)}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(arr, 1)
        return mem.read()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz: sorted members, directory entries, zero timestamps."""
    names = set(files)
    for name in files:
        parts = name.split("/")[:-1]
        names.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(names):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name in files:
                info.size, info.mode = len(files[name]), 0o644
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    return buf.getvalue()


def build_bigearthnet(write_url, seed: int = 0) -> dict:  # noqa: ANN001 - (set, url, bytes)
    """Write the world's BigEarthNet; returns its split sizes and per-split 43-class labels."""
    rng = np.random.default_rng([seed, 4200])
    published = DOWNSTREAM["bigearthnet"].files
    covers = list(_COVERS)
    files: dict[str, bytes] = {}
    truth: dict = {"splits": {}, "labels": {}}
    patch_id = 0
    with rasterio.Env():
        for split, count in _SPLITS.items():
            rows = []
            for _ in range(count):
                row, col = divmod(patch_id, 97)
                s2 = f"S2A_MSIL2A_20170613T101031_{row}_{col}"
                s1 = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{row}_{col}"
                patch_id += 1
                labels = sorted(rng.choice(covers, size=rng.integers(1, 4), replace=False))
                if rng.random() < 0.05:
                    labels.append(_RARE)
                x0, y0 = 500000 + 1200 * col, 5200000 - 1200 * row
                for band, arr in _bands(_patch(labels, rng)).items():
                    files[f"BigEarthNet-v1.0/{s2}/{s2}_{band}.tif"] = _geotiff(arr, x0, y0)
                meta = {"labels": labels, "coordinates": {"ulx": x0, "uly": y0,
                                                          "lrx": x0 + 1200, "lry": y0 - 1200},
                        "projection": "EPSG:32632", "tile_source": "S2A_MSIL1C_20170613T101031",
                        "acquisition_date": "2017-06-13 10:10:31"}
                files[f"BigEarthNet-v1.0/{s2}/{s2}_labels_metadata.json"] = \
                    json.dumps(meta).encode()
                rows.append(f"{s2},{s1}")
                truth["labels"].setdefault(split, []).append(labels)
            write_url("bigearthnet", published[f"split_{split}"].url,
                      ("\n".join(rows) + "\n").encode())
            truth["splits"][split] = count
    write_url("bigearthnet", published["s2"].url, _tar_gz(files))
    return truth
