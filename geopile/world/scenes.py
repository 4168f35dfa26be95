"""Procedural aerial-looking scenes for the offline world.

The offline world needs images that behave like remote-sensing tiles for every stage downstream:
ingest must decode them, deduplication must tell unrelated tiles apart (so within-class images
vary in layout, not only in noise), filters see a realistic spread of texture (smooth water and
snow at a few bits of entropy, cities at 7+ bits) and a tiny CNN must be able to learn the class
labels. So each class name maps to a scene *kind* (crop fields, roads, roofs, water, ...) and to
class-specific parameters (tint, orientation, density, scale) derived from a stable CRC32 of the
name, while the per-image ``rng`` varies the layout.

Speed (a few ms per 256x256 tile) shapes the implementation: scenes are laid out at half
resolution (feature sizes below are in those half-resolution pixels) and upsampled, as much
published imagery was, with full-resolution grain added by PIL afterwards; layouts are built
channel-first (3, H, W) in float32 with arithmetic masks, because numpy's boolean-mask paths and
inner loops over a trailing axis of 3 are several times slower than plain 2-D arithmetic.
"""

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

SCENE_KINDS: tuple[str, ...] = (
    "field", "pivot", "road", "roof", "urban", "water", "shore", "river", "forest", "grass",
    "bare", "sand", "snow", "court", "tank", "object",
)

# Ordered (kind, keywords): the first keyword found as a substring of the lower-cased class name
# wins, so specific words come before generic ones ("shipping" before "ship", "airport" before
# "port", "parking" before "park", "oil" before "field").
_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("urban", ("shipping", "storage land", "steelworks", "transformer")),
    ("road", ("airport",)),
    ("roof", ("mobile", "home", "residential")),
    ("snow", ("snow", "ice", "cloud")),
    ("pivot", ("circular",)),
    ("court", ("court", "baseball", "football", "track", "stadium", "golf", "playground",
               "swimm", "pool")),
    ("tank", ("tank", "refinery", "oil", "sewage", "wastewater", "thermal")),
    ("object", ("airplane", "ship", "turbine", "tower")),
    ("river", ("river", "bridge")),
    ("shore", ("beach", "coast", "island", "harbor", "port", "dock", "ferry", "wetland")),
    ("water", ("lake", "pond", "water", "sea")),
    ("field", ("farm", "agricult", "terrace", "vegetable", "greenhouse", "solar", "graff")),
    ("road", ("road", "freeway", "intersection", "overpass", "crosswalk", "rail", "runway",
              "parking", "roundabout", "parkway")),
    ("forest", ("forest", "tree", "park")),
    ("grass", ("meadow", "grass", "chaparral", "cemetery")),
    ("sand", ("desert", "sand", "dune")),
    ("bare", ("bare", "mountain", "eroded", "construction")),
    ("roof", ("building", "mansion", "house", "church", "palace", "nursing")),
    ("urban", ("dense", "commercial", "industrial", "station", "square", "factory", "plant")),
)
_DEFAULT_KIND = "bare"

# Base palettes (RGB) per kind; a class tints and rotates its kind's palette.
_PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "field": ((112, 142, 72), (158, 150, 92), (122, 102, 72), (88, 122, 62), (176, 164, 112)),
    "pivot": ((150, 128, 98), (92, 132, 64), (128, 150, 80), (170, 160, 110)),
    "road": ((118, 126, 92), (92, 92, 96), (214, 214, 200), (140, 120, 96)),
    "roof": ((104, 124, 84), (168, 82, 64), (142, 142, 150), (96, 96, 104), (196, 176, 150)),
    "urban": ((120, 120, 124), (170, 166, 160), (90, 92, 100), (196, 190, 178)),
    "water": ((36, 70, 92), (28, 58, 72), (44, 84, 96)),
    "shore": ((34, 72, 96), (212, 198, 160), (96, 120, 72)),
    "river": ((46, 78, 88), (104, 126, 78), (150, 136, 104)),
    "forest": ((52, 86, 44), (36, 62, 34), (84, 104, 58)),
    "grass": ((126, 146, 82), (150, 150, 92), (104, 124, 70)),
    "bare": ((150, 124, 96), (118, 98, 80), (176, 152, 120)),
    "sand": ((214, 188, 142), (194, 164, 120)),
    "snow": ((236, 238, 242), (40, 56, 72), (210, 218, 226)),
    "court": ((104, 134, 76), (64, 128, 92), (176, 80, 64), (60, 110, 170)),
    "tank": ((150, 148, 140), (226, 226, 222), (110, 108, 104)),
    "object": ((128, 128, 126), (226, 228, 230), (40, 70, 96)),
}
# Per-pixel grain (standard deviation in grey levels): smooth kinds stay at low entropy.
_GRAIN: dict[str, float] = {
    "water": 1.2, "snow": 1.5, "sand": 3.0, "shore": 2.5, "river": 3.0, "grass": 5.0,
    "urban": 14.0, "forest": 8.0,
}
_DEFAULT_GRAIN = 6.0
# Amplitude of the broad per-image illumination field; kept small where low entropy is the point.
_LIGHT: dict[str, float] = {"water": 0.06, "snow": 0.04, "sand": 0.06}
_DEFAULT_LIGHT = 0.14


@dataclass(frozen=True)
class _Style:
    """Per-class rendering parameters, fixed by the class name."""

    kind: str
    angle: float  # dominant orientation, degrees
    scale: float  # multiplies feature sizes, 0.6-1.4
    density: float  # how full the scene is, 0-1
    palette: np.ndarray  # (n, 3, 1, 1) float32 RGB, ready to broadcast over (3, H, W)
    variant: str  # keyword-driven sub-layout ("oval", "rail", "hull", ...) or ""


def scene_kind_for(class_name: str) -> str:
    """Map a published class name to a scene kind by keywords.

    Args:
        class_name: Any class name (RESISC45, PatternNet, MLRSNet, RSD46, UC Merced styles).

    Returns:
        One of ``SCENE_KINDS``; ``"bare"`` when no keyword matches.
    """
    name = class_name.lower().replace("_", " ")
    for kind, words in _KEYWORDS:
        if any(word in name for word in words):
            return kind
    return _DEFAULT_KIND


_DENSITY_WORDS = (("dense", 0.92), ("medium", 0.6), ("sparse", 0.25), ("scattered", 0.3),
                  ("low", 0.3))
_VARIANTS = (("track", "oval"), ("stadium", "oval"), ("playground", "oval"), ("rail", "rail"),
             ("bridge", "bridge"), ("ship", "hull"), ("plane", "plane"), ("round", "round"))


@lru_cache(maxsize=512)
def _style(class_name: str) -> _Style:
    """Derive the class style from a CRC32 of the name (stable across runs, unlike ``hash``)."""
    kind = scene_kind_for(class_name)
    prng = np.random.default_rng(zlib.crc32(class_name.encode("utf-8")))
    palette = np.array(_PALETTES[kind], dtype=np.float32)
    if kind in ("field", "roof", "urban", "court"):
        palette = np.roll(palette, int(prng.integers(len(palette))), axis=0)
    spread = 0.03 if kind == "snow" else 0.2  # white must stay white, not pink
    tint = prng.uniform(1 - spread, 1 + spread, size=3).astype(np.float32)
    palette = np.clip(palette * tint, 0, 255)
    name = class_name.lower()
    density = float(prng.uniform(0.35, 0.8))
    density = next((value for word, value in _DENSITY_WORDS if word in name), density)
    return _Style(
        kind=kind,
        angle=float(prng.uniform(0, 180)),
        scale=float(prng.uniform(0.6, 1.4)),
        density=density,
        palette=palette.reshape(-1, 3, 1, 1),
        variant=next((v for word, v in _VARIANTS if word in name), ""),
    )


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred pixel coordinates (y, x), cached because every renderer needs them."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return y - h / 2, x - w / 2


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random lattice every ``cell`` px, bilinearly upsampled.

    Upsampled by PIL in 8-bit mode: its single-threaded resize is about as fast as a pair of
    small matrix products and, unlike multithreaded BLAS, never stalls waiting for worker threads
    when other processes hold the CPUs.
    """
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    small = Image.fromarray(rng.integers(0, 256, (gh, gw), dtype=np.uint8))
    up = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return up * np.float32(1 / 255)


def _rotated(st: _Style, rng: np.random.Generator, h: int, w: int,
             jitter: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates rotated to the class orientation plus a per-image jitter and shift."""
    a = math.radians(st.angle + rng.uniform(-jitter, jitter))
    y, x = _grid(h, w)
    du, dv = rng.uniform(-32, 32, size=2).astype(np.float32)
    c, s = np.float32(math.cos(a)), np.float32(math.sin(a))
    return x * c + y * s + du, y * c - x * s + dv


def _cells(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cu: float, cv: float,
           k: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Tile the (u, v) plane into cu x cv cells.

    Returns:
        Local coordinates in [-0.5, 0.5) within each cell, and ``k`` per-cell uniform values
        (a 64x64 random table indexed by the cell number, so no two nearby cells repeat).
    """
    fu = u * np.float32(1 / cu) + np.float32(4096)  # positive, so truncation is floor
    fv = v * np.float32(1 / cv) + np.float32(4096)
    iu, iv = np.floor(fu), np.floor(fv)
    idx = (iu.astype(np.intp) & 63) * 64 + (iv.astype(np.intp) & 63)
    table = rng.random((k, 4096), dtype=np.float32)
    return fu - iu - np.float32(0.5), fv - iv - np.float32(0.5), [t[idx] for t in table]


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [-1, 1] with period 1: a cheap stand-in for a sine."""
    return np.abs(x - np.floor(x) - np.float32(0.5)) * np.float32(4) - np.float32(1)


def _f(mask: np.ndarray) -> np.ndarray:
    """Boolean mask as float32 0/1, for blending by arithmetic."""
    return mask.astype(np.float32)


def _mix(base: np.ndarray, top: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``top`` over ``base`` where the float ``mask`` is 1."""
    out = top - base
    out *= mask
    out += base
    return out


def _pick(palette: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Per-pixel palette colour chosen by ``sel`` in [0, 1): a (3, H, W) image."""
    ci = (sel * np.float32(len(palette))).astype(np.intp)
    return np.stack([np.take(palette[:, ch, 0, 0], ci) for ch in range(3)])


def _ground(st: _Style, rng: np.random.Generator, h: int, w: int, color: np.ndarray,
            amp: float = 0.18) -> np.ndarray:
    """A mottled surface: two octaves of smooth noise modulating one colour."""
    n = 0.6 * _noise(rng, h, w, 24 * st.scale) + 0.4 * _noise(rng, h, w, 5)
    return color * ((1 - amp) + (2 * amp) * n)


def _to_pil(img: np.ndarray) -> Image.Image:
    """(3, H, W) float image to a PIL RGB image."""
    return Image.fromarray(np.dstack(np.clip(img, 0, 255).astype(np.uint8)))


def _from_pil(img: Image.Image) -> np.ndarray:
    """PIL RGB image back to (3, H, W) float32."""
    return np.asarray(img).transpose(2, 0, 1).astype(np.float32)


def _rgb(color: np.ndarray) -> tuple[int, int, int]:
    """A (3, 1, 1) palette colour as a PIL fill tuple."""
    r, g, b = (int(c) for c in color.ravel())
    return r, g, b


def _field(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Patchwork parcels, each a crop colour with ploughing stripes in one of two directions."""
    u, v = _rotated(st, rng, h, w)
    size = 18 + 30 * st.scale
    lu, lv, (col, dirn, phase) = _cells(rng, u, v, size, size * rng.uniform(0.6, 1.4), 3)
    along = _f(dirn < 0.5)
    stripe = _tri((v + along * (u - v)) * np.float32(1 / (2 + 3 * st.scale)) + phase)
    edge = _f(np.maximum(np.abs(lu), np.abs(lv)) > 0.46)
    shade = (0.9 + 0.12 * st.density * stripe) * (1 - 0.3 * edge)
    img = _pick(st.palette, col)
    img *= shade
    return img


def _pivot(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Centre-pivot irrigation circles on bare ground."""
    u, v = _rotated(st, rng, h, w, jitter=45)
    cell = 35 + 30 * st.scale
    lu, lv, (col, fill) = _cells(rng, u, v, cell, cell, 2)
    r2 = lu * lu + lv * lv
    inside = _f((r2 < 0.21) & (fill < 0.85))
    crop = _pick(st.palette[1:], col)
    crop *= 0.92 + 0.08 * _tri(r2 * 20)
    return _mix(_ground(st, rng, h, w, st.palette[0]), crop, inside)


def _road(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Roads (or rail tracks) across mottled ground, with lane markings and parked cars."""
    img = _to_pil(_ground(st, rng, h, w, st.palette[0]))
    draw = ImageDraw.Draw(img)
    a = math.radians(st.angle + rng.uniform(-10, 10))
    width = int(4 + 11 * st.scale)
    cross = st.density > 0.5 or st.variant == "round"
    for i in range(1 + int(st.density * 3)):
        b = a + (math.pi / 2 if cross and i % 2 else 0)
        dx, dy = math.cos(b), math.sin(b)
        off = rng.uniform(-0.35, 0.35) * min(h, w)
        cx, cy = w / 2 - dy * off, h / 2 + dx * off
        ends = [(cx - dx * 200, cy - dy * 200), (cx + dx * 200, cy + dy * 200)]
        if st.variant == "rail":
            draw.line(ends, fill=_rgb(st.palette[3]), width=width)
            for k in (-0.25, 0.25):
                ox, oy = -dy * width * k, dx * width * k
                draw.line([(x + ox, y + oy) for x, y in ends], fill=(60, 56, 52), width=1)
            continue
        draw.line(ends, fill=_rgb(st.palette[1]), width=width)
        for t in range(-200, 200, 12):
            p = (cx + dx * t, cy + dy * t)
            draw.line([p, (p[0] + dx * 5, p[1] + dy * 5)], fill=(220, 220, 210), width=1)
        for t in rng.uniform(-90, 90, size=int(6 * st.density)):
            side = width * 0.25 * (1 if t > 0 else -1)
            px, py = cx + dx * t - dy * side, cy + dy * t + dx * side
            r, g, bl = (int(c) for c in rng.integers(40, 230, 3))
            draw.rectangle([px - 1.5, py - 1.5, px + 1.5, py + 1.5], fill=(r, g, bl))
    if st.variant == "round":
        r = 15 + 10 * st.scale
        draw.ellipse([w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r],
                     outline=_rgb(st.palette[1]), width=width // 2)
    return _from_pil(img)


def _roof(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Houses on a rotated grid: gabled roofs (two shades) casting shadows on gardens."""
    u, v = _rotated(st, rng, h, w)
    cell = (30 - 19 * st.density) * (0.8 + 0.3 * st.scale)
    lu, lv, (occ, sx, sy, col) = _cells(rng, u, v, cell, cell * 1.15, 4)
    hw, hh = 0.2 + 0.18 * sx, 0.2 + 0.18 * sy
    occupied = occ < 0.35 + 0.6 * st.density
    house = (np.abs(lu) < hw) & (np.abs(lv) < hh) & occupied
    shadow = _f((np.abs(lu - 0.12) < hw) & (np.abs(lv - 0.12) < hh) & occupied & ~house)
    roof = _pick(st.palette[1:], col)
    roof *= 0.8 + 0.2 * _f(lu > 0)
    img = _ground(st, rng, h, w, st.palette[0], amp=0.25)
    img *= 1 - 0.55 * shadow
    return _mix(img, roof, _f(house))


def _urban(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """City blocks of many tones separated by streets, with building shadows: high entropy."""
    u, v = _rotated(st, rng, h, w, jitter=20)
    block = 20 + 20 * st.scale
    bu, bv, _ = _cells(rng, u, v, block, block, 0)
    street = _f(np.maximum(np.abs(bu), np.abs(bv)) > 0.44)
    cell = 4.5 + 6 * (1 - st.density)
    lu, lv, (tone, height, col) = _cells(rng, u, v, cell, cell * 1.3, 3)
    shadow = _f((lu > 0.5 - 0.5 * height) | (lv > 0.42))
    img = _pick(st.palette, col)
    img *= (0.55 + 0.8 * tone) * (1 - 0.5 * shadow)
    return _mix(img, st.palette[2] * 0.9, street)


def _water(st: _Style, rng: np.random.Generator, h: int, w: int,
           color: np.ndarray | None = None) -> np.ndarray:
    """Open water: a smooth gradient with faint ripples; low texture.

    Water scenes pick one of their palette's blues per image; shores pass their water colour.
    """
    u, v = _rotated(st, rng, h, w, jitter=30)
    n = _noise(rng, h, w, 48 * st.scale)
    ripple = _tri(v * np.float32(1 / (5 + 5 * st.scale)) + 0.7 * n)
    if color is None:
        color = st.palette[int(rng.integers(len(st.palette)))]
    return color * (0.85 + 0.3 * n + 0.025 * ripple)


def _shore(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Water meeting land along a wavy coastline, with a sand band between them."""
    u, v = _rotated(st, rng, h, w, jitter=40)
    edge = v + 30 * _noise(rng, h, w, 32) - (15 + rng.uniform(-30, 30))
    img = _mix(_ground(st, rng, h, w, st.palette[2], amp=0.3), _water(st, rng, h, w, st.palette[0]),
               _f(edge < 0))
    beach = _f((edge >= 0) & (edge < 3 + 10 * st.scale))
    return _mix(img, st.palette[1] * (0.95 + 0.05 * _tri(u * np.float32(0.3))), beach)


def _river(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A meandering river through farmland; bridge classes get a road across it."""
    u, v = _rotated(st, rng, h, w, jitter=60)
    v = v + rng.uniform(-25, 25)
    amp = rng.uniform(5, 15) * st.scale
    wave = amp * np.sin(u * np.float32(2 * np.pi / rng.uniform(60, 130))
                        + np.float32(rng.uniform(0, 6.3)))
    dist = np.abs(v - wave)
    half = 6 + 10 * st.density
    img = _mix(_ground(st, rng, h, w, st.palette[1], amp=0.25), st.palette[2],
               _f(dist < half + 2.5))
    water = st.palette[0] * (0.95 + 0.05 * _tri(u * np.float32(0.1)))
    img = _mix(img, water, _f(dist < half))
    if st.variant == "bridge":
        img = _mix(img, np.float32(150), _f(np.abs(u - rng.uniform(-20, 20)) < 3.5))
    return img


def _forest(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Tree crowns: fine blobby noise over a canopy gradient; sparse forests show ground."""
    crowns = _noise(rng, h, w, 1.5 + 2 * st.scale)
    canopy = _noise(rng, h, w, 30)
    green = st.palette[0] * ((0.5 + 0.8 * crowns) * (0.8 + 0.4 * canopy))
    gaps = _f(crowns < 0.6 - 0.55 * st.density)
    return _mix(green, st.palette[2] * (0.9 + 0.2 * canopy), gaps)


def _grass(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Meadow or shrubland: gentle mottling with a few darker bushes."""
    bushes = _f(_noise(rng, h, w, 3 + 3 * st.scale) > 0.93 - 0.2 * st.density)
    return _mix(_ground(st, rng, h, w, st.palette[0], amp=0.12), st.palette[2] * 0.7, bushes)


def _bare(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bare soil or rock: ridged multi-octave noise in earth tones."""
    ridged = 1 - 2 * np.abs(_noise(rng, h, w, 20 * st.scale) - 0.5)
    shade = 0.6 + 0.6 * st.density * ridged + 0.2 * _noise(rng, h, w, 2.5)
    return st.palette[int(rng.integers(len(st.palette)))] * shade


def _sand(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Desert dunes: warped parallel crests, smooth and bright."""
    u, v = _rotated(st, rng, h, w, jitter=40)
    warp = 40 * _noise(rng, h, w, 40)
    dunes = _tri((v + warp) * np.float32(1 / (15 + 20 * st.scale)))
    return st.palette[0] * (0.92 + 0.07 * st.density * dunes)


def _snow(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Snow, ice or cloud: bright, smooth patches covering dark water or ground."""
    cover = _f(_noise(rng, h, w, 20 * st.scale) < 0.25 + 0.8 * st.density)
    bright = st.palette[0] * (0.96 + 0.04 * _noise(rng, h, w, 45))
    return _mix(np.broadcast_to(st.palette[1], bright.shape), bright, cover)


def _court(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sports grounds: coloured courts (or an oval running track) with white line markings."""
    img = _to_pil(_ground(st, rng, h, w, st.palette[0], amp=0.1))
    draw = ImageDraw.Draw(img)
    color, white = _rgb(st.palette[2]), (240, 240, 240)
    if st.variant == "oval":
        rx, ry = rng.uniform(30, 55), rng.uniform(18, 35)
        if rng.random() < 0.5:
            rx, ry = ry, rx
        cx, cy = w * rng.uniform(0.25, 0.75), h * rng.uniform(0.25, 0.75)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=color)
        draw.ellipse([cx - rx + 7, cy - ry + 7, cx + rx - 7, cy + ry - 7],
                     fill=_rgb(st.palette[1]), outline=white, width=1)
        return _from_pil(img)
    cw, ch = 18 + 20 * st.scale, 10 + 10 * st.scale
    if st.angle > 90:
        cw, ch = ch, cw
    for _ in range(1 + int(5 * st.density * rng.uniform(0.5, 1.0))):
        x0, y0 = rng.uniform(-5, w - cw), rng.uniform(-5, h - ch)
        draw.rectangle([x0 - 2, y0 - 2, x0 + cw + 2, y0 + ch + 2], fill=_rgb(st.palette[3]))
        draw.rectangle([x0, y0, x0 + cw, y0 + ch], fill=color, outline=white, width=1)
        draw.line([(x0 + cw / 2, y0), (x0 + cw / 2, y0 + ch)], fill=white, width=1)
    return _from_pil(img)


def _tank(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Round tanks or clarifiers in rows on concrete, lit from one side with a shadow."""
    u, v = _rotated(st, rng, h, w, jitter=5)
    cell = 17 + 20 * st.scale
    lu, lv, (occ, size) = _cells(rng, u, v, cell, cell, 2)
    r2 = (0.25 + 0.15 * size) ** 2
    full = occ < 0.3 + 0.7 * st.density
    disc = (lu * lu + lv * lv < r2) & full
    su, sv = lu - 0.08, lv - 0.08
    shadow = _f((su * su + sv * sv < r2) & full & ~disc)
    img = _ground(st, rng, h, w, st.palette[0], amp=0.12)
    img *= 1 - 0.5 * shadow
    return _mix(img, st.palette[1] * (0.8 + 0.25 * (lu + lv + 0.5)), _f(disc))


_SHAPES = {
    "plane": ((-1, 0), (-0.1, -0.1), (-0.1, -0.9), (0.2, -0.9), (0.1, -0.1), (1, -0.05),
              (1, 0.05), (0.1, 0.1), (0.2, 0.9), (-0.1, 0.9), (-0.1, 0.1)),
    "hull": ((-1, -0.15), (0.7, -0.15), (1, 0), (0.7, 0.15), (-1, 0.15)),
    "": ((-0.06, -1), (0.06, -1), (0.06, 1), (-0.06, 1)),
}


def _object(st: _Style, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Airplanes on tarmac, ships on water, or masts (towers, turbines) with long shadows."""
    bg = st.palette[2] if st.variant == "hull" else st.palette[0]
    img = _to_pil(_ground(st, rng, h, w, bg, amp=0.15))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 3))):  # taxiways, piers or tracks, placed at random
        x0, y0, x1, y1 = rng.uniform(0, w, 2).tolist() + rng.uniform(0, h, 2).tolist()
        tone = int(rng.integers(-40, 40))
        draw.line([(x0, 0), (x1, h)] if rng.random() < 0.5 else [(0, y0), (w, y1)],
                  fill=tuple(int(np.clip(c + tone, 0, 255)) for c in bg.ravel()),
                  width=int(rng.integers(4, 14)))
    shape = _SHAPES.get(st.variant, _SHAPES[""])
    for _ in range(int(rng.integers(1, 2 + 4 * st.density))):
        a = math.radians(st.angle) + rng.uniform(-0.3, 0.3)
        s = (10 + 10 * st.scale) * rng.uniform(0.8, 1.2)
        cx, cy = rng.uniform(15, w - 15), rng.uniform(15, h - 15)
        c, si = math.cos(a) * s, math.sin(a) * s
        pts = [(cx + x * c - y * si, cy + x * si + y * c) for x, y in shape]
        draw.polygon([(x + 2.5, y + 2.5) for x, y in pts], fill=(40, 40, 44))
        draw.polygon(pts, fill=_rgb(st.palette[1]))
    return _from_pil(img)


_RENDERERS = {
    "field": _field, "pivot": _pivot, "road": _road, "roof": _roof, "urban": _urban,
    "water": _water, "shore": _shore, "river": _river, "forest": _forest, "grass": _grass,
    "bare": _bare, "sand": _sand, "snow": _snow, "court": _court, "tank": _tank,
    "object": _object,
}
assert set(_RENDERERS) == set(SCENE_KINDS)


def render_scene(class_name: str, rng: np.random.Generator,
                 size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Render one aerial-looking tile for a class.

    The class name fixes the scene kind and its style (palette tint, orientation, density,
    feature scale), so classes are separable; ``rng`` fixes the layout, so tiles of one class
    differ in structure and not only in noise (deduplication must not see them as copies).

    Args:
        class_name: Published class name; unknown names render as bare ground.
        rng: Source of all per-image randomness; the same generator state gives the same tile.
        size: Output ``(height, width)`` in pixels.

    Returns:
        A writable ``(height, width, 3)`` uint8 RGB array.
    """
    h, w = size
    st = _style(class_name)
    layout = _RENDERERS[st.kind](st, rng, (h + 1) // 2, (w + 1) // 2)
    # Per-image exposure and a broad illumination/haze field: real tiles differ most at low
    # spatial frequencies, which is what perceptual hashes compare, so unrelated tiles of one
    # class must not share them.
    amp = _LIGHT.get(st.kind, _DEFAULT_LIGHT)
    light = _noise(rng, *layout.shape[1:], 40)
    layout *= np.float32(rng.uniform(0.9, 1.1)) * ((1 - amp) + 2 * amp * light)
    img = _to_pil(layout).resize((w, h), Image.Resampling.BILINEAR)
    # Uniform monochrome grain, centred by ImageChops' offset: std = amp / sqrt(3).
    spread = _GRAIN.get(st.kind, _DEFAULT_GRAIN) * math.sqrt(3)
    raw = np.frombuffer(rng.bytes(h * w), dtype=np.uint8).reshape(h, w)
    grain = Image.fromarray((raw * np.float32(2 * spread / 255)).astype(np.uint8))
    img = ImageChops.add(img, Image.merge("RGB", (grain, grain, grain)), 1.0, -int(spread))
    return np.array(img)
