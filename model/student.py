"""The masked Swin student: timm's Swin with SimMIM's learnable mask token.

timm's ``SwinTransformer`` has no mask token and no way to read a stage's PatchMerging output,
so the forward pass is rewritten here over timm's own modules (patch_embed, layers, norm);
the weights stay exactly timm's, which is what lets the encoder export load in timm unchanged.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from model.configs import SwinSpec


def create_swin(spec: SwinSpec, *, pretrained: bool = False, file: str | None = None,
                **overrides: object) -> nn.Module:
    """A headless timm Swin for ``spec``; ``file``: weights from a local checkpoint."""
    kwargs = {**spec.kwargs(), "num_classes": 0, **overrides}
    if file is not None:
        # timm's own local-file path: the same call loads a downloaded 22k checkpoint
        return timm.create_model(spec.name, pretrained=True,
                                 pretrained_cfg_overlay={"file": str(file)}, **kwargs)
    return timm.create_model(spec.name, pretrained=pretrained, **kwargs)


def distill_channels(encoder: nn.Module, stage: int) -> int:
    """Channels of a Swin's ``stage`` feature (see :class:`MaskedSwin`): student and teacher."""
    if stage == len(encoder.layers):
        return encoder.num_features
    return encoder.layers[stage].downsample.out_dim


class MaskedSwin(nn.Module):
    """A Swin encoder whose masked patch embeddings are replaced by a learnable token.

    ``forward`` returns the final normalised feature map (N, C, H/32, W/32) and the output of
    ``distill_stage`` (1-3: that stage's PatchMerging, i.e. the first ``distill_stage`` stages
    of the original Swin, which downsamples at a stage's end; 4: the last stage's output)
    as (N, C', h, w), both channels-first.
    """

    def __init__(self, spec: SwinSpec, distill_stage: int = 3, in_chans: int = 3) -> None:
        super().__init__()
        # in_chans: the bands the student sees (multi-band pretraining); RGB by default
        self.encoder = create_swin(spec, drop_path_rate=0.0, in_chans=in_chans)
        if not 1 <= distill_stage <= len(self.encoder.layers):
            raise ValueError(f"distill_stage must be 1..{len(self.encoder.layers)}")
        self.distill_stage = distill_stage
        # 1-D: torch.compile returns a broadcast parameter's gradient unbroadcast (torch 2.11)
        self.mask_token = nn.Parameter(torch.zeros(self.encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def num_features(self) -> int:
        """Channels of the final feature map."""
        return self.encoder.num_features

    @property
    def distill_features(self) -> int:
        """Channels of the distilled feature."""
        return distill_channels(self.encoder, self.distill_stage)

    def forward(self, images: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``images`` with the patches where ``mask`` (N, H/4, W/4) is 1 hidden."""
        enc = self.encoder
        x = enc.patch_embed(images)  # N, H, W, C (timm's Swin is channels-last inside)
        if mask is not None:
            weight = mask.unsqueeze(-1).to(x.dtype)
            x = x * (1.0 - weight) + self.mask_token.to(x.dtype) * weight
        if getattr(enc, "absolute_pos_embed", None) is not None:
            x = x + enc.absolute_pos_embed
        distilled = None
        for i, stage in enumerate(enc.layers):
            if i == self.distill_stage:
                x = stage.downsample(x)
                distilled = x
                x = stage.blocks(x)
            else:
                x = stage(x)
        if distilled is None:
            distilled = x
        x = enc.norm(x)
        return x.permute(0, 3, 1, 2), distilled.permute(0, 3, 1, 2)
