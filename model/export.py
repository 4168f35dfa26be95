"""Encoder exports: timm's format, and the reference GFM layout (``encoder.*`` keys).

timm: a headless ``SwinTransformer`` state dict (safetensors) that
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...), num_classes=0,
img_size=..., window_size=..., **arch)`` loads; timm resizes the position tables for another
window. GFM: ``{"model": {"encoder.<key>": ...}}`` in the original Swin layout, where a stage
downsamples at its end (timm's ``layers.{i}.downsample`` is the original's
``layers.{i-1}.downsample``), which is what the reference finetuning code and benchmarks that
load GFM checkpoints (PANGAEA, terratorch) read.
"""

from __future__ import annotations

import re

import torch

from model.student import MaskedSwin


def timm_state_dict(student: MaskedSwin) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm's names (no classifier, no non-persistent buffers)."""
    return {k: v.detach().cpu().contiguous() for k, v in student.encoder.state_dict().items()
            if "relative_position_index" not in k and "attn_mask" not in k}


def gfm_state_dict(student: MaskedSwin) -> dict[str, torch.Tensor]:
    """The encoder in the reference layout, mask token included."""
    out = {}
    for key, value in timm_state_dict(student).items():
        key = re.sub(r"layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[f"encoder.{key}"] = value
    out["encoder.mask_token"] = student.mask_token.detach().cpu().reshape(1, 1, -1)
    return out


def timm_from_gfm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`gfm_state_dict` (without the mask token), for round-trip checks."""
    out = {}
    for key, value in state.items():
        if not key.startswith("encoder.") or key == "encoder.mask_token":
            continue
        key = re.sub(r"layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key[len("encoder."):])
        out[key] = value
    return out
