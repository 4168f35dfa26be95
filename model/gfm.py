"""GFM's student side: masked Swin, SimMIM decoder and distillation projector in one module.

The teacher is a separate :class:`model.teacher.FrozenTeacher`: its features are computed
outside this module, so that DDP (which wraps only what trains) never sees its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from model.configs import GfmConfig
from model.losses import feat_loss, mim_loss
from model.student import MaskedSwin


class GFM(nn.Module):
    """``L = L_MIM + alpha * L_feat`` for a batch, its masks and the teacher's features."""

    def __init__(self, config: GfmConfig, *, teacher_features: int, alpha: float = 1.0,
                 distill_stage: int = 3, in_chans: int = 3) -> None:
        super().__init__()
        self.config, self.alpha = config, alpha
        self.student = MaskedSwin(config.student, distill_stage=distill_stage, in_chans=in_chans)
        stride = config.mask_patch  # the encoder's total stride
        # SimMIM's decoder: a 1x1 conv to stride^2 * in_chans values per cell, then PixelShuffle
        self.decoder = nn.Sequential(
            nn.Conv2d(self.student.num_features, stride * stride * in_chans, kernel_size=1),
            nn.PixelShuffle(stride),
        )
        self.projector = nn.Linear(self.student.distill_features, teacher_features)

    def forward(self, images: torch.Tensor, mask: torch.Tensor,
                teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses for normalised ``images``, token ``mask`` (1 = masked) and teacher features.

        ``images`` are (N, in_chans, H, W): RGB, or the bands the loader streams.
        """
        final, distilled = self.student(images, mask)
        reconstruction = self.decoder(final)
        l_mim = mim_loss(images, reconstruction, mask, self.config.model_patch)
        projected = self.projector(distilled.mean(dim=(2, 3)))
        l_feat = feat_loss(projected, teacher)
        return {"loss": l_mim + self.alpha * l_feat, "mim": l_mim.detach(),
                "feat": l_feat.detach()}
