"""The offline world's teacher: a tiny Swin classifier, briefly trained, saved as a local file.

No ImageNet weights exist offline (or at all for a Swin this small), yet the pretraining path a
user takes with the real 22k checkpoint is "a timm name plus a local file". The world provides
such a file: the ``tiny`` configuration's teacher architecture trained for a few dozen steps to
tell the world's scene classes apart (rendered by the same generator as the world's archives),
so its features carry real, if modest, information for the student to distil.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geopile.augment import IMAGENET_MEAN, IMAGENET_STD
from geopile.sources.resisc45 import Resisc45
from geopile.world.scenes import render_scene
from geopile.world.world import TEACHER_FILE
from model.configs import get_config
from model.student import create_swin
from pipelines.engine import atomic_torch_save


def _images(classes: list[str], per_class: int, size: int, seed: int) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    rng = np.random.default_rng(seed)
    pixels, labels = [], []
    for label, name in enumerate(classes):
        for _ in range(per_class):
            pixels.append(render_scene(name, rng, (size, size)))
            labels.append(label)
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def make_world_teacher(world_dir: Path, *, classes: int = 16, per_class: int = 12,
                       steps: int = 40, batch: int = 16, seed: int = 0) -> Path:
    """Train and save the ``tiny`` teacher under ``world_dir``; returns the file."""
    target = Path(world_dir) / TEACHER_FILE
    spec = get_config("tiny").teacher
    torch.manual_seed(seed)
    names = list(Resisc45.classes)[:: max(1, len(Resisc45.classes) // classes)][:classes]
    x, y = _images(names, per_class, spec.img_size, seed)
    net = create_swin(spec, num_classes=len(names))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        pick = torch.randint(len(x), (batch,), generator=generator)
        images = x[pick]
        flip = torch.rand(batch, generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        loss = F.cross_entropy(net(images), y[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x).argmax(1) == y).float().mean())
    atomic_torch_save(net.state_dict(), target)
    card = {"architecture": spec.name, "img_size": spec.img_size,
            "window_size": spec.window_size, **spec.arch,
            "classes": names, "images": len(x), "steps": steps,
            "train_accuracy": round(accuracy, 3),
            "note": "a stand-in for the ImageNet-22k teacher, trained on rendered world scenes"}
    target.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return target
