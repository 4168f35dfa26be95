"""The encoder a finetuning run starts from: ``--init ours|RUN_DIR|imagenet22k|random``.

``ours`` is the pretraining run of the first build of ``ablation``; a run directory is any
pretraining run (its exported ``encoder/``); ``imagenet22k`` is the paper's baseline (timm's
name, or the local file in ``finetune.imagenet22k.file`` on an offline machine); ``random`` is
untrained.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file

from geopile.settings import Finetune
from model.configs import SwinSpec, get_config
from model.export import exported_timm_args
from model.student import create_swin


class Init(NamedTuple):
    """Where a finetuning run's encoder comes from."""

    spec: SwinSpec  # the architecture, at the task's size and window
    file: str | None  # local weights, if any
    fetch: bool  # timm downloads the weights by name
    name: str  # the run's name for it: random, imagenet22k, ours-BUILD

    def build(self, num_classes: int, drop_path: float) -> torch.nn.Module:
        """The encoder (with a ``num_classes`` head; 0: none), its weights checked."""
        return build_classifier(self.spec, self.file, self.fetch, num_classes, drop_path)


def resolve_init(init: str, settings: Finetune, img_size: int, window_size: int,
                 runs_root: str | Path = "runs", ours: str | None = None) -> Init:
    """(architecture, weights file, fetch from timm?, a name for the run) for ``--init``.

    ``ours`` is ``runs_root/<ours>`` (the first build of ``ablation``); any other path is a
    pretraining run.
    """
    config = get_config(settings.model)
    if init == "ours":
        if ours is None:
            raise ValueError("--init ours needs a build (the first of ablation)")
        init = str(Path(runs_root) / ours)
    if init == "random":
        return Init(dataclasses.replace(config.student, img_size=img_size,
                                        window_size=window_size), None, False, "random")
    if init == "imagenet22k":
        spec = config.teacher
        if settings.imagenet22k.name:
            spec = dataclasses.replace(spec, name=settings.imagenet22k.name)
        spec = dataclasses.replace(spec, img_size=img_size, window_size=window_size)
        return Init(spec, settings.imagenet22k.file, settings.imagenet22k.file is None,
                    "imagenet22k")
    path = Path(init)
    for card in (path / "encoder" / "encoder.json", path / "encoder.json"):
        if card.is_file():
            break
    else:
        raise FileNotFoundError(f"--init {init}: neither random, imagenet22k nor a run with "
                                "encoder/encoder.json (written by geopile pretrain)")
    timm_args = exported_timm_args(card.parent)
    arch = {k: v for k, v in timm_args.items()
            if k not in ("model_name", "num_classes", "img_size", "window_size")}
    spec = SwinSpec(timm_args["model_name"], img_size, window_size, arch)
    name = path.name if path.name != "encoder" else path.parent.name
    return Init(spec, str(card.parent / "encoder.timm.safetensors"), False, f"ours-{name}")


def build_classifier(spec: SwinSpec, file: str | None, fetch: bool, num_classes: int,
                     drop_path: float) -> torch.nn.Module:
    """A timm Swin classifier; pretrained weights are checked to have arrived."""
    try:
        model = create_swin(spec, pretrained=fetch, file=file, num_classes=num_classes,
                            drop_path_rate=drop_path)
    except OSError as err:  # no network for the hub, or an unreadable local file
        where = file or f"timm's hub copy of {spec.name}"
        hint = (" Offline? Download the ImageNet-22k weights (swin_base_patch4_window7_224_22k.pth"
                " or timm's safetensors) and set finetune.imagenet22k.file" if fetch else "")
        raise RuntimeError(f"could not load the weights from {where}: {str(err).rstrip('.')}."
                           f"{hint}") from err
    if file and file.endswith(".safetensors"):
        # a new head makes timm load non-strictly: make sure the encoder really came in
        saved = load_file(file)
        key = "patch_embed.proj.weight"
        if key in saved and not torch.equal(saved[key], model.state_dict()[key]):
            raise RuntimeError(f"{file}: the encoder's weights did not load into {spec.name}")
    return model
