"""The dense tasks: metrics on hand-made arrays, and a few CPU iterations of each on the world."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from pipelines.finetune import run_finetune
from pipelines.tasks import TASKS
from pipelines.tasks.dense import IGNORE, predict_slide
from tests.conftest import REPO, torchrun, typed

CPU = torch.device("cpu")


def _logits(pred: list[list[int]], classes: int) -> torch.Tensor:
    """One-hot "logits" (1, C, H, W) that argmax back to ``pred``."""
    return torch.nn.functional.one_hot(torch.tensor([pred]), classes).permute(0, 3, 1, 2).float()


def test_segmentation_iou_f1_against_hand_counts():
    task = TASKS["whu"]
    metrics = task.metrics(CPU)
    target = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, IGNORE]]])
    task.update(metrics, _logits([[1, 0, 1, 0], [1, 1, 0, 1]], 2), target)
    got = task.compute(metrics)
    # building: tp 3, fp 1, fn 1 -> IoU 3/5; background: tp 2, fp 1, fn 1 -> 2/4 (ignored pixel out)
    assert got["iou"] == pytest.approx(60.0) and got["iou_0"] == pytest.approx(50.0)
    assert got["miou"] == pytest.approx(55.0)
    # F1 per class: building 2*3/(2*3+1+1) = 0.75, background 2*2/(4+2) = 2/3; macro mean
    assert got["f1"] == pytest.approx((0.75 + 2 / 3) / 2 * 100)
    assert got["accuracy"] == pytest.approx(5 / 7 * 100)


def test_vaihingen_miou_over_six_classes():
    task = TASKS["vaihingen"]
    metrics = task.metrics(CPU)
    target = torch.tensor([[[0, 1, 2, 3, 4, 5]]])
    task.update(metrics, _logits([[0, 1, 2, 3, 4, 4]], 6), target)
    got = task.compute(metrics)
    # classes 0-3 perfect; tree: tp 1, fp 1 -> 1/2; car: tp 0 -> 0
    assert got["miou"] == pytest.approx((4 + 0.5 + 0) / 6 * 100)


def test_change_precision_recall_f1_against_hand_counts():
    task = TASKS["oscd"]
    metrics = task.metrics(CPU)
    target = torch.tensor([[[1, 1, 1, 0, 0, 0, 0, IGNORE]]])
    task.update(metrics, _logits([[1, 1, 0, 1, 0, 0, 0, 1]], 2), target)
    got = task.compute(metrics)
    # tp 2, fp 1, fn 1 (the ignored pixel counts for nothing)
    assert got["precision"] == pytest.approx(200 / 3)
    assert got["recall"] == pytest.approx(200 / 3)
    assert got["f1"] == pytest.approx(200 / 3)


def test_psnr_and_ssim_against_closed_forms():
    task = TASKS["sn2"]
    target = torch.full((1, 3, 32, 32), 0.5)
    metrics = task.metrics(CPU)
    task.update(metrics, target + 0.1, target)  # mse 0.01 -> 20 dB
    got = task.compute(metrics)
    assert got["psnr"] == pytest.approx(20.0, abs=1e-4)
    # constant images: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2
    c1 = 0.01**2
    assert got["ssim"] == pytest.approx((2 * 0.6 * 0.5 + c1) / (0.36 + 0.25 + c1), abs=1e-4)
    metrics = task.metrics(CPU)
    task.update(metrics, target, target)
    assert math.isinf(task.compute(metrics)["psnr"]) or task.compute(metrics)["psnr"] > 80
    # two test images (20 dB and 40 dB): the mean of per-image PSNR, not one pooled MSE
    # (which gives 22.97 dB)
    metrics = task.metrics(CPU)
    task.update(metrics, target + 0.1, target)
    task.update(metrics, target + 0.01, target)
    assert task.compute(metrics)["psnr"] == pytest.approx(30.0, abs=1e-4)


def test_sliding_windows_cover_the_image_and_average_overlaps():
    image = torch.arange(2 * 70 * 90, dtype=torch.float32).reshape(2, 70, 90)
    same = predict_slide(lambda x: x * 2, image, crop=32, stride=21)  # a stand-in
    assert torch.equal(same, image * 2)  # every pixel, overlaps averaged back to itself
    up = predict_slide(lambda x: torch.nn.functional.interpolate(x, scale_factor=4), image,
                       crop=16, stride=10, scale=4)
    assert up.shape == (2, 280, 360)
    assert torch.equal(up[:, ::4, ::4], image)
    # each window answers its own left edge: a pixel gets the mean over the windows covering
    # it. mmseg's grid for width 90, crop 32, stride 21: 4 windows at 0, 21, 42 and 58 (the
    # last moved back inside the image)
    columns = torch.arange(90, dtype=torch.float32).expand(1, 32, 90)
    edges = predict_slide(lambda x: x[:, :, :1, :1].expand_as(x).clone(), columns, crop=32,
                          stride=21)[0, 0]
    assert edges[10] == 0 and edges[30] == 10.5 and edges[50] == 31.5 and edges[60] == 50
    assert edges[89] == 58
    small = predict_slide(lambda x: x + 1, torch.zeros(3, 10, 12), crop=16, stride=10)
    assert small.shape == (3, 10, 12) and torch.equal(small, torch.ones(3, 10, 12))


@pytest.mark.parametrize("task", ["whu", "vaihingen", "oscd", "dsifn", "sn2"])
def test_each_task_trains_on_the_world(curated, tmp_path, task):
    out = tmp_path / task
    metrics = run_finetune(typed(curated), task, "random", length=8, progress=False, out=out)
    assert metrics["task"] == task and metrics["steps"] == 8
    assert set(metrics["scores"]) == set(TASKS[task].scores)
    assert all(math.isfinite(v) for v in metrics["scores"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["crop"] == 128 and (out / "checkpoints" / "last.pt").exists()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    if task == "sn2":  # the adapted patch embedding: 8 bands in
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert state["encoder.patch_embed.proj.weight"].shape[1] == 8


def test_a_complete_run_resumed_writes_its_history_again(curated, tmp_path):
    out = tmp_path / "whu"
    metrics = run_finetune(typed(curated), "whu", "random", length=8, progress=False, out=out)
    whole = (out / "history.csv").read_text()
    assert len(whole.splitlines()) > 1
    (out / "history.csv").unlink()  # as `dvc repro` does before running the stage again
    again = run_finetune(typed(curated), "whu", "random", length=8, resume=True, progress=False,
                         out=out)
    assert (out / "history.csv").read_text() == whole and again == metrics


def test_segmentation_learns_buildings(curated, tmp_path, truth):
    task = TASKS["whu"]
    test = task.splits(typed(curated))["test"]
    assert {s: len(ds) for s, ds in task.splits(typed(curated)).items()} == \
        truth["downstream"]["whu"]["splits"]
    share = float(torch.cat([test[i]["mask"].flatten() for i in range(len(test))])
                  .float().mean())
    metrics = run_finetune(typed(curated), "whu", "random", progress=False, out=tmp_path / "whu")
    # predicting "building" everywhere scores IoU = the building share
    assert metrics["scores"]["iou"] > 100 * share + 20, (metrics, share)


def test_torchrun_two_processes_on_gloo(curated, tmp_path):
    overlay = tmp_path / "params.yaml"
    overlay.write_text(yaml.safe_dump(curated))
    out = tmp_path / "dsifn"
    proc = torchrun(["finetune", "dsifn", "--init", "random", "--iterations", "4",
                     "--out", str(out), "--params", str(overlay), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]  # includes the ranks' weight check
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4


def test_vaihingen_reader_matches_torchgeo_on_torchgeos_fixture(tmp_path):
    """torchgeo's own Vaihingen fixture through our fetch and reader: torchgeo's masks."""
    from torchgeo.datasets import Vaihingen2D

    from geopile.downstream import DownstreamSet, fetch
    from geopile.sources.published import Mirrors
    from pipelines.tasks.vaihingen import PUBLISHED, VaihingenTiles

    fixture = REPO / "tests" / "data" / "torchgeo" / "vaihingen"
    complete = DownstreamSet(PUBLISHED.name, PUBLISHED.licence, PUBLISHED.homepage,
                             {k: PUBLISHED.files[k] for k in ("images", "labels")})
    mirrors = Mirrors({k: str(fixture / f.filename) for k, f in complete.files.items()},
                      dict.fromkeys(complete.files))  # torchgeo's fixture, not the ISPRS files
    root = fetch("vaihingen", complete, mirrors, tmp_path / "data", progress=False)
    for split in ("train", "test"):
        ours, theirs = VaihingenTiles(root, split, eroded=False), Vaihingen2D(str(root), split)
        assert len(ours) == len(theirs) == 2
        for i in range(len(ours)):
            a, b = ours[i], theirs[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_vaihingen_scores_the_boundary_eroded_labels(curated):
    from geopile.params import deep_merge

    task = TASKS["vaihingen"]
    full_params = deep_merge(curated, {"finetune": {"tasks": {"vaihingen": {
        "ground_truth": "full"}}}})
    eroded, full = task.splits(typed(curated))["test"], task.splits(typed(full_params))["test"]
    for i in range(len(full)):
        e, f = eroded[i]["mask"], full[i]["mask"]
        ignored = e == IGNORE
        assert not (f == IGNORE).any() and 0.02 < float(ignored.float().mean()) < 0.6
        assert torch.equal(e[~ignored], f[~ignored])
        # every ignored pixel has another class within 3 px in the complete labels
        pad = torch.nn.functional.pad(f[None, None].float(), (3, 3, 3, 3), mode="replicate")
        near = torch.zeros_like(ignored)
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                if dy * dy + dx * dx <= 9:
                    shifted = pad[0, 0, 3 + dy:3 + dy + f.shape[0], 3 + dx:3 + dx + f.shape[1]]
                    near |= shifted != f
        assert torch.equal(near, ignored)
