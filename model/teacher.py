"""The frozen teacher: a pretrained timm Swin whose stage features the student imitates."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.configs import SwinSpec
from model.student import create_swin, distill_channels


class FrozenTeacher(nn.Module):
    """A timm Swin that never trains: eval mode always, no gradients, unmasked input.

    The reference code left its teacher in train mode and froze it only when a path held the
    word "finetune" (FACTS.md section 1); here ``train()`` cannot switch it out of eval mode
    and its parameters never require gradients.
    """

    def __init__(self, spec: SwinSpec, *, file: str | None = None, pretrained: bool = True,
                 distill_stage: int = 3) -> None:
        super().__init__()
        self.spec = spec
        self.source = str(file) if file else (spec.name if pretrained else "random")
        if file is not None and not Path(file).is_file():
            raise FileNotFoundError(f"teacher checkpoint {file} does not exist")
        try:
            # no drop-path: inert in eval mode already, but a teacher that someone switches to
            # train mode through the encoder must still not drop residual branches
            self.encoder = create_swin(spec, pretrained=pretrained and file is None, file=file,
                                       drop_path_rate=0.0)
        except (OSError, RuntimeError) as err:
            where = file or f"timm's hub copy of {spec.name}"
            raise RuntimeError(f"could not load the teacher from {where}: {err}. Offline? "
                               "Download the weights and set pretrain.teacher.file") from err
        self.distill_stage = distill_stage
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever ``mode`` says (and so does every parent's ``train()``)."""
        del mode
        return super().train(False)

    @property
    def distill_features(self) -> int:
        """Channels of the distilled feature."""
        return distill_channels(self.encoder, self.distill_stage)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Globally pooled (no norm) features of ``distill_stage``, from normalised images."""
        size = self.spec.img_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   align_corners=True)
        enc = self.encoder
        x = enc.patch_embed(images)
        if getattr(enc, "absolute_pos_embed", None) is not None:
            x = x + enc.absolute_pos_embed
        for i, stage in enumerate(enc.layers):
            if i == self.distill_stage:
                return stage.downsample(x).mean(dim=(1, 2))
            x = stage(x)
        return x.mean(dim=(1, 2))
