"""The two model configurations: ``swin-b`` (the paper, FACTS.md section 1) and ``tiny``.

Architectures are timm model names plus keyword overrides, so a student, a teacher and an
exported encoder are all plain timm Swin Transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SwinSpec:
    """A timm Swin: a registered name, the input size, the window, architecture overrides."""

    name: str
    img_size: int
    window_size: int
    arch: dict[str, Any] = field(default_factory=dict)  # embed_dim, depths, num_heads, ...

    @property
    def embed_dim(self) -> int:
        """Channels of the first stage."""
        return int(self.arch.get("embed_dim", 128))

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model``."""
        return {"img_size": self.img_size, "window_size": self.window_size, **self.arch}


@dataclass(frozen=True)
class GfmConfig:
    """A student, its teacher, and the SimMIM geometry between them."""

    student: SwinSpec
    teacher: SwinSpec
    mask_patch: int = 32  # SimMIM mask cell in pixels (the encoder's total stride)
    model_patch: int = 4
    mask_ratio: float = 0.6

    @property
    def img_size(self) -> int:
        """The student's (and the loader's) input size."""
        return self.student.img_size


SWIN_B = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)}
# Small enough to step in ~0.1 s on two CPU cores (FACTS.md section 4).
TINY = {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}

CONFIGS: dict[str, GfmConfig] = {
    "swin-b": GfmConfig(
        student=SwinSpec("swin_base_patch4_window7_224", 192, 6, SWIN_B),
        # the ImageNet-22k Swin-B the paper distils from (= swin_base_patch4_window7_224_22k.pth)
        teacher=SwinSpec("swin_base_patch4_window7_224.ms_in22k", 224, 7),
    ),
    # No ImageNet weights exist for a Swin this small: the offline world trains one as the
    # teacher (`geopile world build`) and hands it over as a local file, like a user's 22k file.
    "tiny": GfmConfig(
        student=SwinSpec("swin_base_patch4_window7_224", 96, 6, TINY),
        teacher=SwinSpec("swin_base_patch4_window7_224", 128, 8, TINY),
    ),
}


def get_config(name: str) -> GfmConfig:
    """The configuration called ``name``; a clear error listing the others."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(CONFIGS)}") from None
