"""The GFM model on the CPU with the ``tiny`` configuration: losses, masking, teacher, exports."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from model.configs import get_config
from model.export import gfm_state_dict, timm_from_gfm, timm_state_dict
from model.gfm import GFM
from model.losses import feat_loss, mim_loss
from model.optim import param_groups
from model.student import MaskedSwin
from model.teacher import FrozenTeacher

TINY = get_config("tiny")


def test_losses_match_an_independent_computation():
    rng = np.random.default_rng(0)
    n, c, size, patch = 2, 3, 8, 4
    x = rng.normal(size=(n, c, size, size))
    rec = rng.normal(size=(n, c, size, size))
    mask = np.array([[[1, 0], [0, 1]], [[0, 0], [1, 0]]])
    # by hand: per pixel, masked where its 4x4 patch is masked
    total, count = 0.0, 0
    for i in range(n):
        for yy in range(size):
            for xx in range(size):
                if mask[i, yy // patch, xx // patch]:
                    total += np.abs(x[i, :, yy, xx] - rec[i, :, yy, xx]).sum()
                    count += 1
    expected = total / (count * c)
    got = mim_loss(torch.tensor(x), torch.tensor(rec), torch.tensor(mask), patch)
    assert got.item() == pytest.approx(expected, rel=1e-6)

    p, t = rng.normal(size=(4, 16)), rng.normal(size=(4, 16))
    cos = (p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1)
    assert feat_loss(torch.tensor(p), torch.tensor(t)).item() == pytest.approx(-cos.mean())


def test_gfm_total_is_mim_plus_alpha_feat():
    torch.manual_seed(0)
    model = GFM(TINY, teacher_features=64, alpha=0.5).eval()
    x = torch.randn(2, 3, 96, 96)
    mask = torch.zeros(2, 24, 24)
    mask[:, :8] = 1
    out = model(x, mask, torch.randn(2, 64))
    assert out["loss"].item() == pytest.approx(out["mim"].item() + 0.5 * out["feat"].item())


def test_masked_pixels_do_not_reach_the_student():
    torch.manual_seed(0)
    student = MaskedSwin(TINY.student).eval()
    x = torch.randn(2, 3, 96, 96)
    mask = torch.zeros(2, 24, 24)
    mask[:, 8:16, 0:8] = 1  # one 32 px SimMIM cell
    y = x.clone()
    y[:, :, 32:64, 0:32] = torch.randn(2, 3, 32, 32) * 10  # only pixels inside it change
    with torch.no_grad():
        a, da = student(x, mask)
        b, db = student(y, mask)
        c, _ = student(y, torch.zeros_like(mask))
        d, _ = student(x, torch.zeros_like(mask))
    assert torch.equal(a, b) and torch.equal(da, db)
    assert not torch.allclose(c, d)  # unmasked, the same change does matter


def test_teacher_is_frozen_and_untouched_by_training():
    torch.manual_seed(0)
    teacher = FrozenTeacher(TINY.teacher, pretrained=False)
    model = GFM(TINY, teacher_features=teacher.distill_features)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-2)
    model.train()
    teacher.train()  # a careless caller: it must stay in eval mode
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x = torch.randn(4, 3, 96, 96, requires_grad=True)
    mask = torch.zeros(4, 24, 24)
    mask[:, ::2] = 1
    for _ in range(3):
        target = teacher(x)
        assert not target.requires_grad
        model(x, mask, target)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}


def test_teacher_has_no_drop_path():
    from timm.layers import DropPath

    teacher = FrozenTeacher(TINY.teacher, pretrained=False)
    rates = [m.drop_prob for m in teacher.modules() if isinstance(m, DropPath)]
    assert all(rate == 0.0 for rate in rates)
    teacher.encoder.train()  # even switched on behind its back, it computes the same features
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(teacher(x), teacher(x))


def test_teacher_sees_its_own_resolution_and_stage_three():
    teacher = FrozenTeacher(TINY.teacher, pretrained=False)
    feats = teacher(torch.randn(2, 3, 96, 96))  # resized to 128 inside
    # stage 3 including its PatchMerging: embed 32 x 8 channels
    assert feats.shape == (2, 256) and teacher.distill_features == 256


def test_parameter_groups_follow_the_reference():
    model = GFM(TINY, teacher_features=256)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "student.mask_token" in skipped
    assert any("relative_position_bias_table" in n for n in skipped)
    assert all(p.ndim > 1 for p in decay["params"])
    assert not any(names[id(p)].endswith(".bias") for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


def test_world_teacher_loads_through_timms_local_file_path(world_dir):
    from geopile.world.world import TEACHER_FILE

    file = world_dir / TEACHER_FILE
    teacher = FrozenTeacher(TINY.teacher, file=str(file))
    saved = torch.load(file, map_location="cpu")
    state = teacher.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if not k.startswith("head"))
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        FrozenTeacher(TINY.teacher, file=str(world_dir / "does-not-exist.pth"))


def test_exports_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    student = MaskedSwin(TINY.student)
    timm_sd = timm_state_dict(student)
    gfm_sd = gfm_state_dict(student)
    # the reference layout: a stage downsamples at its end, so stage 0 has the first merge
    assert "encoder.layers.0.downsample.reduction.weight" in gfm_sd
    assert "encoder.layers.3.downsample.reduction.weight" not in gfm_sd
    back = timm_from_gfm(gfm_sd)
    assert back.keys() == timm_sd.keys()
    assert all(torch.equal(back[k], v) for k, v in timm_sd.items())
    save_file(timm_sd, str(tmp_path / "enc.safetensors"))
    spec = TINY.student
    net = timm.create_model(spec.name, pretrained=True, num_classes=0,
                            pretrained_cfg_overlay={"file": str(tmp_path / "enc.safetensors")},
                            **spec.kwargs())
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in load_file(tmp_path / "enc.safetensors")
               .items())
