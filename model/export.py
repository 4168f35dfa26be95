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

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.configs import GfmConfig
from model.gfm import GFM
from model.student import MaskedSwin

TIMM_FILE, GFM_FILE, CARD_FILE = "encoder.timm.safetensors", "encoder.gfm.pth", "encoder.json"


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


def export_encoder(model: GFM, config: GfmConfig, out: Path, meta: dict[str, Any]) -> None:
    """The student encoder in timm's format and in the reference GFM layout, and its card.

    Each file is written to a temp name and renamed (model/ imports nothing of geopile's).
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{TIMM_FILE}.tmp"
    save_file(timm_state_dict(model.student), str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates it private
    os.replace(tmp, out / TIMM_FILE)
    tmp = out / f".{GFM_FILE}.tmp"
    torch.save({"model": gfm_state_dict(model.student), "meta": meta}, tmp)
    os.replace(tmp, out / GFM_FILE)
    spec = config.student
    load = {"model_name": spec.name, "num_classes": 0, "img_size": spec.img_size,
            "window_size": spec.window_size, **spec.arch}
    usage = (f"timm.create_model({spec.name!r}, pretrained=True, pretrained_cfg_overlay="
             f"dict(file='encoder.timm.safetensors'), num_classes=0, img_size={spec.img_size}, "
             f"window_size={spec.window_size}"
             + "".join(f", {k}={v!r}" for k, v in spec.arch.items()) + ")")
    tmp = out / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps({"timm": load, "usage": usage, **meta}, indent=1) + "\n")
    os.replace(tmp, out / CARD_FILE)


def exported_timm_args(encoder_dir: Path) -> dict[str, Any]:
    """``timm.create_model`` arguments of an exported encoder (``model_name`` included)."""
    card = json.loads((encoder_dir / CARD_FILE).read_text())
    # JSON has no tuples: depths and heads come back as lists
    return {k: tuple(v) if isinstance(v, list) else v for k, v in card["timm"].items()}


def load_exported(encoder_dir: Path) -> torch.nn.Module:
    """The exported encoder, loaded the way a timm user would (the call in encoder.json)."""
    import timm

    kwargs = exported_timm_args(encoder_dir)
    name = kwargs.pop("model_name")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={
        "file": str(encoder_dir / TIMM_FILE)}, **kwargs)
