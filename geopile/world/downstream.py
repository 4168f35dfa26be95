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
from collections.abc import Callable, Mapping

import numpy as np
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from geopile.downstream import DownstreamSet
from geopile.world.corpora import zip_bytes

# a set's world copy: seed -> (files by published name, what the tests may check)
Fixture = Callable[[int], tuple[dict[str, bytes], dict]]

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


def build_bigearthnet(seed: int) -> tuple[dict[str, bytes], dict]:
    """The world's BigEarthNet files; and its split sizes and per-split 43-class labels."""
    rng = np.random.default_rng([seed, 4200])
    out: dict[str, bytes] = {}
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
            out[f"bigearthnet-{split}.csv"] = ("\n".join(rows) + "\n").encode()
            truth["splits"][split] = count
    out["BigEarthNet-S2-v1.0.tar.gz"] = _tar_gz(files)
    return out, truth


# -- dense tasks: one scene renderer (Vaihingen's six classes) for all five sets ----------------
# class -> (R, G, B, NIR) in 0..255; 0 clutter, 1 impervious, 2 building, 3 low vegetation,
# 4 tree, 5 car
_SCENE_COLOURS = np.array([[200, 40, 40, 90], [150, 150, 150, 60], [190, 120, 90, 70],
                           [110, 170, 80, 200], [30, 100, 40, 230], [230, 220, 30, 50]], float)
VAIHINGEN_COLOURS = ((255, 0, 0), (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0),
                     (255, 255, 0))  # torchgeo's Vaihingen2D colormap, in class order


def scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(4, h, w) R, G, B, NIR in 0..255 and the (h, w) class map of a small aerial scene."""
    classes = np.full((h, w), 1, np.uint8)
    classes[:, : w // 2] = 3
    for cls, count, size in ((2, max(2, h * w // 3000), (12, 30)), (4, max(2, h * w // 4000),
                                                                     (6, 14)),
                             (5, max(2, h * w // 5000), (3, 6)), (0, 1, (5, 10))):
        for _ in range(count):
            a, b = rng.integers(*size, size=2)
            y, x = rng.integers(0, max(1, h - a)), rng.integers(0, max(1, w - b))
            classes[y:y + a, x:x + b] = cls
    pixels = _SCENE_COLOURS[classes].transpose(2, 0, 1)
    pixels = pixels + rng.normal(0, 8, size=pixels.shape)
    return np.clip(pixels, 0, 255), classes


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def erode_boundaries(classes: np.ndarray, radius: int = 3) -> np.ndarray:
    """Pixels within ``radius`` (a disc) of another class.

    ISPRS's eroded ground truth blacks them out so that uncertain boundaries count for nothing.
    """
    h, w = classes.shape
    padded = np.pad(classes, radius, mode="edge")
    near = np.zeros((h, w), bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                shifted = padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
                near |= shifted != classes
    return near


def build_vaihingen(seed: int) -> tuple[dict[str, bytes], dict]:
    """The three ISPRS zips: IRRG tiles, colour-coded labels, boundary-eroded labels.

    ``top/top_mosaic_09cm_areaN.tif``, ``top_mosaic_09cm_areaN.tif`` and
    ``top_mosaic_09cm_areaN_noBoundary.tif`` (boundaries black).
    """
    rng = np.random.default_rng([seed, 4300])
    images, labels, eroded = {}, {}, {}
    areas = {"train": (1, 3, 5, 7), "test": (2, 4, 6)}  # names from torchgeo's split lists
    for split_areas in areas.values():
        for area in split_areas:
            pixels, classes = scene(192, 256, rng)
            irrg = pixels[[3, 0, 1]].transpose(1, 2, 0).astype(np.uint8)  # NIR, R, G
            name = f"top_mosaic_09cm_area{area}.tif"
            images[f"top/{name}"] = _png(irrg, "TIFF")
            coloured = np.array(VAIHINGEN_COLOURS, np.uint8)[classes]
            labels[name] = _png(coloured, "TIFF")
            coloured[erode_boundaries(classes)] = 0
            eroded[name.replace(".tif", "_noBoundary.tif")] = _png(coloured, "TIFF")
    files = {"ISPRS_semantic_labeling_Vaihingen.zip": zip_bytes(images),
             "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip": zip_bytes(labels),
             "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip":
                 zip_bytes(eroded)}
    return files, {"splits": {k: len(v) for k, v in areas.items()}}


def build_whu(seed: int) -> tuple[dict[str, bytes], dict]:
    """``whu-aerial.zip``: ``{train,val,test}/{image,label}/N.tif`` (label: building 255)."""
    rng = np.random.default_rng([seed, 4301])
    files, counts = {}, {"train": 12, "val": 4, "test": 6}
    for split, count in counts.items():
        for i in range(count):
            pixels, classes = scene(128, 128, rng)
            rgb = pixels[:3].transpose(1, 2, 0).astype(np.uint8)
            files[f"WHU/{split}/image/{i:04d}.tif"] = _png(rgb, "TIFF")
            files[f"WHU/{split}/label/{i:04d}.tif"] = _png(((classes == 2) * 255).astype(np.uint8),
                                                           "TIFF")
    return {"whu-aerial.zip": zip_bytes(files)}, {"splits": counts}


def _changed_pair(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """Two dates of one scene (R, G, B, NIR) and the change mask: buildings built in between."""
    before, _ = scene(h, w, rng)
    after = before + rng.normal(0, 4, size=before.shape)
    change = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(2, 5)):
        a, b = rng.integers(10, 28, size=2)
        y, x = rng.integers(0, h - a), rng.integers(0, w - b)
        after[:, y:y + a, x:x + b] = _SCENE_COLOURS[2][:, None, None]
        change[y:y + a, x:x + b] = 1
    return np.clip(before, 0, 255), np.clip(after, 0, 255), change


def build_dsifn(seed: int) -> tuple[dict[str, bytes], dict]:
    """``DSIFN.zip``: ``{train,val,test}/{t1,t2}/N.jpg`` and ``mask/N.png`` (change 255)."""
    rng = np.random.default_rng([seed, 4303])
    files, counts = {}, {"train": 12, "val": 3, "test": 4}
    for split, count in counts.items():
        for i in range(count):
            before, after, change = _changed_pair(128, 128, rng)
            for date, pixels in (("t1", before), ("t2", after)):
                rgb = pixels[:3].transpose(1, 2, 0).astype(np.uint8)
                files[f"DSIFN/{split}/{date}/{i}.jpg"] = _png(rgb, "JPEG")
            files[f"DSIFN/{split}/mask/{i}.png"] = _png(change * 255)
    return {"DSIFN.zip": zip_bytes(files)}, {"splits": counts}


_OSCD_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
               "B11", "B12")


def build_oscd(seed: int) -> tuple[dict[str, bytes], dict]:
    """The three OSCD zips: 13 single-band uint16 TIFFs per date, ``dates.txt``, ``cm/cm.png``."""
    rng = np.random.default_rng([seed, 4302])
    top = "Onera Satellite Change Detection dataset - "
    images, labels = {}, {"Train": {}, "Test": {}}
    cities = {"Train": ("aguasclaras", "bercy", "bordeaux"), "Test": ("brasilia", "chongqing")}
    for split, names in cities.items():
        for city in names:
            before, after, change = _changed_pair(96, 128, rng)
            for date, pixels in ((1, before), (2, after)):
                reflectance = {"B04": pixels[0], "B03": pixels[1], "B02": pixels[2],
                               "B08": pixels[3]}
                for band in _OSCD_BANDS:  # stretched back to Sentinel-2 DNs
                    dn = reflectance.get(band, pixels[3] * 0.5) / 255 * 2000 + 50
                    images[f"{top}Images/{city}/imgs_{date}_rect/{band}.tif"] = _png(
                        dn.astype(np.uint16), "TIFF")
            images[f"{top}Images/{city}/dates.txt"] = b"date_1: 20151203\ndate_2: 20171021\n"
            labels[split][f"{top}{split} Labels/{city}/cm/cm.png"] = _png(change * 255)
    files = {f"{top}Images.zip": zip_bytes(images),
             f"{top}Train Labels.zip": zip_bytes(labels["Train"]),
             f"{top}Test Labels.zip": zip_bytes(labels["Test"])}
    return files, {"splits": {"train": 3, "test": 2}}


def _multiband_tif(arr: np.ndarray) -> bytes:
    profile = {"driver": "GTiff", "dtype": "uint16", "count": arr.shape[0],
               "height": arr.shape[1], "width": arr.shape[2], "crs": _CRS,
               "transform": from_origin(600000, 4000000, 1.24, 1.24)}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(arr)
        return mem.read()


def build_sn2(seed: int) -> tuple[dict[str, bytes], dict]:
    """Four SpaceNet2 training tarballs of 5 pairs each: 8-band MUL and RGB-PanSharpen.

    MUL (32 px) is the pan-sharpened scene (128 px, 11-bit) averaged over 4x4 blocks.
    """
    rng = np.random.default_rng([seed, 4304])
    tarballs = {}
    for aoi, city in ((2, "Vegas"), (3, "Paris"), (4, "Shanghai"), (5, "Khartoum")):
        files = {}
        for i in range(1, 6):
            pixels, _ = scene(128, 128, rng)
            sharp = (pixels / 255 * 1800 + 100).astype(np.uint16)
            coarse = sharp.reshape(4, 32, 4, 32, 4).mean(axis=(2, 4))
            r, g, b, nir = coarse
            mul = np.stack([b * 0.9, b, g, 0.5 * (r + g), r, 0.5 * (r + nir), nir, nir * 0.95])
            stem = f"AOI_{aoi}_{city}_img{i}"
            files[f"AOI_{aoi}_{city}_Train/MUL/MUL_{stem}.tif"] = _multiband_tif(
                mul.astype(np.uint16))
            files[f"AOI_{aoi}_{city}_Train/RGB-PanSharpen/RGB-PanSharpen_{stem}.tif"] = \
                _multiband_tif(sharp[:3])
        tarballs[f"SN2_buildings_train_AOI_{aoi}_{city}.tar.gz"] = _tar_gz(files)
    return tarballs, {"pairs": 20}


def user_path(filename: str) -> str:
    """Where the world keeps a file with no public URL (the user would download it by hand)."""
    return f"user/downstream/{filename}"


# each published downstream set's world copy, by dataset (the tasks' ``dataset``)
FIXTURES: dict[str, Fixture] = {
    "bigearthnet": build_bigearthnet, "vaihingen": build_vaihingen, "whu": build_whu,
    "dsifn": build_dsifn, "oscd": build_oscd, "sn2": build_sn2,
}


def build_downstream(writer, sets: Mapping[str, tuple[DownstreamSet, Fixture]],
                     seed: int = 0) -> dict:
    """Every set at its published URL's mirror path or (no URL) under ``user/``.

    ``sets``: each dataset's published files and the fixture that makes the world's copy (the
    task files hold both). The truth records where each file went, for the params overlay.
    """
    truth = {}
    for name, (published, fixture) in sets.items():
        files, summary = fixture(seed)
        by_name = {item.filename: (which, item) for which, item in published.files.items()}
        placed = {}
        for filename, data in files.items():
            which, item = by_name[filename]
            if item.mirrors:
                placed[which] = {"mirrors": list(item.mirrors), "md5": bool(item.md5)}
                writer.write_url(name, item.mirrors, data)
            else:
                placed[which] = {"path": user_path(filename), "md5": bool(item.md5)}
                writer.write(name, user_path(filename), data)
        truth[name] = {**summary, "placed": placed, "files": writer.files[name]}
    return truth
