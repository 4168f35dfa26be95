"""AdamW parameter groups as the SimMIM/GFM reference builds them."""

from __future__ import annotations

from torch import nn

# names that never decay, whatever their shape (the reference's skip list and keywords)
NO_DECAY_NAMES = ("mask_token", "absolute_pos_embed", "relative_position_bias_table")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and 1-D parameters, biases, mask token and position tables."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim == 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
