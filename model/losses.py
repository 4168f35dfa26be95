"""The two GFM losses, exactly as FACTS.md section 1 states them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """A token-grid mask (N, h, w) at pixel resolution (N, 1, h*patch, w*patch)."""
    return mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)


def mim_loss(images: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor,
             patch: int) -> torch.Tensor:
    """L1 on masked pixels only: ``sum(|x - x_rec| * m) / (sum(m) * C)``.

    ``images`` are the ImageNet-normalised inputs; ``mask`` is on the model-patch grid.
    """
    # computed in float32 whatever autocast produced: sums over millions of pixels
    images, reconstruction = images.float(), reconstruction.float()
    m = pixel_mask(mask, patch).float()
    masked = m.sum()
    if masked == 0:
        raise ValueError("the mask hides no pixel: SimMIM's loss is undefined")
    error = (images - reconstruction).abs()
    return (error * m).sum() / (masked * images.shape[1])


def feat_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity to the (detached) teacher feature, averaged over the batch."""
    return -F.cosine_similarity(projected.float(), target.detach().float(), dim=-1).mean()
