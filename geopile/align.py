"""Pixel confirmation of a candidate near copy: align, then correlate.

Hashes only propose pairs. A pair is a near copy when one image, under one of the eight
symmetries of the square and a crop of at most ``max_margin`` a side (rescaled back), matches
the other: the normalised correlation of their grayscale thumbnails is at least
``min_correlation``. The crop is refined from the one the hash matched by coordinate descent on
the four margins, so a 7% crop is compared with a 7% crop, not the nearest grid crop. Two
half-overlapping tiles do not pass: no crop within the margin lines their contents up.

Hand-written: image-registration libraries (scikit-image's ``phase_cross_correlation``,
OpenCV's ECC) estimate shifts or affine warps, not "which crop of A is B", and cost more per
pair than this search on 32 px thumbnails.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image

from geopile.dedup import DIHEDRAL, DIHEDRAL_NAMES

THUMB = 32
WORK = 128  # images are box-filtered to this side once; crops are taken from it
STEPS = (0.02, 0.01, 0.005)


@dataclass(frozen=True)
class Match:
    """The best alignment found: ``b ~ symmetry(crop(a, margins))``."""

    correlation: float
    symmetry: int  # index into geopile.dedup.DIHEDRAL
    margins: tuple[float, float, float, float]  # left, top, right, bottom, fractions of a's side
    gain: float  # contrast ratio std(b) / std(a)
    offset: float  # mean(b) - mean(a), in grey levels


def working_image(gray: np.ndarray) -> Image.Image:
    """A float image of side ``WORK`` (aspect kept as the original's box)."""
    img = Image.fromarray(gray).convert("F")
    return img.resize((WORK, WORK), Image.Resampling.BOX)


def _unit(values: np.ndarray) -> np.ndarray:
    values = values.ravel().astype(np.float64)
    values = values - values.mean()
    norm = np.linalg.norm(values)
    return values / norm if norm > 0 else values


def _thumb(img: Image.Image, margins: tuple[float, ...]) -> np.ndarray:
    left, top, right, bottom = margins
    box = (left * WORK, top * WORK, WORK - right * WORK, WORK - bottom * WORK)
    return np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BOX, box=box))


def undo_symmetry(thumb: np.ndarray, symmetry: int) -> np.ndarray:
    """The inverse of symmetry ``symmetry`` (transpose, then mirror) applied to ``thumb``."""
    t, h, v = DIHEDRAL[symmetry]
    if v:
        thumb = thumb[::-1, :]
    if h:
        thumb = thumb[:, ::-1]
    return thumb.T if t else thumb


def align(a: Image.Image, b: Image.Image, symmetry: int,
          start: tuple[float, float, float, float], max_margin: float = 0.15,
          enough: float = 1.0) -> Match:
    """Refine the crop of ``a`` that best matches ``b`` seen through ``symmetry``.

    The search stops as soon as the correlation reaches ``enough``: a pair that clearly passes
    needs no better alignment (most candidates are copies, so this is most of the time saved),
    while one near the threshold is refined in full.
    """
    target_raw = undo_symmetry(_thumb(b, (0.0, 0.0, 0.0, 0.0)), symmetry)
    target = _unit(target_raw)
    margins = list(start)

    def score(m: list[float]) -> float:
        return float(_unit(_thumb(a, tuple(m))) @ target)

    best = score(margins)
    for step in STEPS:
        improved = True
        while improved and best < enough:
            improved = False
            for k, sign in product(range(4), (-1.0, 1.0)):
                trial = margins.copy()
                trial[k] = min(max(trial[k] + sign * step, 0.0), max_margin)
                if trial[k] != margins[k] and (s := score(trial)) > best + 1e-6:
                    best, margins, improved = s, trial, True
                    if best >= enough:
                        break
    source = _thumb(a, tuple(margins))
    std_a = float(source.std())
    return Match(best, symmetry, tuple(round(m, 4) for m in margins),
                 float(target_raw.std()) / std_a if std_a > 0 else 1.0,
                 float(target_raw.mean() - source.mean()))


def edit_kind(match: Match) -> str:
    """What the alignment says was done to make one image from the other, ``+``-joined."""
    kinds = []
    if max(match.margins) >= 0.01:
        kinds.append("crop")
    if match.symmetry:
        kinds.append(DIHEDRAL_NAMES[match.symmetry])
    if abs(match.gain - 1) > 0.04 or abs(match.offset) > 4:
        kinds.append("colour")
    return "+".join(kinds) or "re-encode/rescale"
