"""Dense heads on a Swin encoder: UperNet segmentation, Siamese change detection, super-resolution.

The encoder is any timm Swin (ours, the ImageNet-22k baseline, or random); its four stage
outputs (strides 4 to 32, channels-first through timm's ``forward_intermediates``) feed
segmentation-models-pytorch's UperNet decoder (PPM on the last stage, FPN over the others) and
its segmentation head.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn
from torch.nn import functional as F


def stage_features(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The four stage outputs of a timm Swin, (N, C_i, H / 2^(i+2), W / 2^(i+2)).

    The last goes through the encoder's final (pretrained) norm, so every encoder parameter is
    used (DDP requires it); the decoder normalises each stage itself.
    """
    return encoder.forward_intermediates(images, norm=True, intermediates_only=True)


def _stage_channels(encoder: nn.Module) -> list[int]:
    return [info["num_chs"] for info in encoder.feature_info]


class UperNetHead(nn.Module):
    """smp's UPerNet decoder and segmentation head over four stride-4..32 feature maps."""

    def __init__(self, channels: list[int], num_classes: int, decoder_channels: int = 512):
        super().__init__()
        # smp counts features from stride 1 and skips the first two (stride 1 and 2)
        self.decoder = UPerNetDecoder([3, 0, *channels], encoder_depth=5,
                                      decoder_channels=decoder_channels)
        self.head = SegmentationHead(decoder_channels, num_classes, kernel_size=1, upsampling=4)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits at ``size`` from the four stage features."""
        logits = self.head(self.decoder([features[0], features[0], *features]))
        return logits if logits.shape[-2:] == size else F.interpolate(
            logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Swin + UperNet: (N, 3, H, W) images to (N, classes, H, W) logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, decoder_channels: int = 512):
        super().__init__()
        self.encoder = encoder
        self.decoder = UperNetHead(_stage_channels(encoder), num_classes, decoder_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits."""
        return self.decoder(stage_features(self.encoder, images), images.shape[-2:])


class ChangeDetector(nn.Module):
    """A Siamese Swin (one encoder, shared weights) and a decoder over |f(t1) - f(t2)| per stage.

    Input (N, 6, H, W): the two dates' RGB stacked; output (N, 2, H, W) logits (no change,
    change). The absolute difference keeps the prediction symmetric in the dates.
    """

    def __init__(self, encoder: nn.Module, decoder_channels: int = 256):
        super().__init__()
        self.encoder = encoder
        self.decoder = UperNetHead(_stage_channels(encoder), 2, decoder_channels)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """Per-pixel change logits."""
        before, after = pair[:, :3], pair[:, 3:]
        both = stage_features(self.encoder, torch.cat([before, after]))
        diff = [(a - b).abs() for a, b in (f.chunk(2) for f in both)]
        return self.decoder(diff, pair.shape[-2:])


def adapt_patch_embed(encoder: nn.Module, in_chans: int, rgb: tuple[int, int, int]) -> None:
    """Widen the first patch-embedding conv to ``in_chans`` bands, RGB weights on ``rgb``.

    The other bands start at zero, so the adapted encoder first sees exactly what the
    pretrained one saw and learns what the extra bands add.
    """
    old = encoder.patch_embed.proj
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride,
                    bias=old.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        for src, dst in enumerate(rgb):
            new.weight[:, dst] = old.weight[:, src]
        if old.bias is not None:
            new.bias.copy_(old.bias)
    encoder.patch_embed.proj = new


class SuperResolver(nn.Module):
    """Multispectral (N, B, h, w) to RGB (N, 3, s*h, s*w).

    The input is upsampled bicubically to the target grid and encoded by the Swin; UperNet
    predicts a residual over the upsampled RGB bands.
    """

    def __init__(self, encoder: nn.Module, rgb: tuple[int, int, int], scale: int,
                 decoder_channels: int = 256):
        super().__init__()
        self.encoder, self.rgb, self.scale = encoder, rgb, scale
        self.decoder = UperNetHead(_stage_channels(encoder), 3, decoder_channels)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        """The RGB image at ``scale`` times the input's resolution."""
        up = F.interpolate(bands, scale_factor=self.scale, mode="bicubic", align_corners=False)
        base = up[:, list(self.rgb)]
        return base + self.decoder(stage_features(self.encoder, up), up.shape[-2:])
