"""The dense tasks: metrics on hand-made arrays, and a few CPU iterations of each on the world."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from pipelines.dense import predict_tiled
from pipelines.dense_tasks import DENSE_TASKS, IGNORE
from pipelines.finetune import run_finetune
from tests.conftest import torchrun

CPU = torch.device("cpu")


def _logits(pred: list[list[int]], classes: int) -> torch.Tensor:
    """One-hot "logits" (1, C, H, W) that argmax back to ``pred``."""
    return torch.nn.functional.one_hot(torch.tensor([pred]), classes).permute(0, 3, 1, 2).float()


def test_segmentation_iou_f1_against_hand_counts():
    task = DENSE_TASKS["whu"]
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
    task = DENSE_TASKS["vaihingen"]
    metrics = task.metrics(CPU)
    target = torch.tensor([[[0, 1, 2, 3, 4, 5]]])
    task.update(metrics, _logits([[0, 1, 2, 3, 4, 4]], 6), target)
    got = task.compute(metrics)
    # classes 0-3 perfect; tree: tp 1, fp 1 -> 1/2; car: tp 0 -> 0
    assert got["miou"] == pytest.approx((4 + 0.5 + 0) / 6 * 100)


def test_change_precision_recall_f1_against_hand_counts():
    task = DENSE_TASKS["oscd"]
    metrics = task.metrics(CPU)
    target = torch.tensor([[[1, 1, 1, 0, 0, 0, 0, IGNORE]]])
    task.update(metrics, _logits([[1, 1, 0, 1, 0, 0, 0, 1]], 2), target)
    got = task.compute(metrics)
    # tp 2, fp 1, fn 1 (the ignored pixel counts for nothing)
    assert got["precision"] == pytest.approx(200 / 3)
    assert got["recall"] == pytest.approx(200 / 3)
    assert got["f1"] == pytest.approx(200 / 3)


def test_psnr_and_ssim_against_closed_forms():
    task = DENSE_TASKS["sn2"]
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


def test_tiled_prediction_covers_the_image_exactly():
    image = torch.arange(2 * 70 * 90, dtype=torch.float32).reshape(2, 70, 90)
    same = predict_tiled(lambda x: x * 2, image, crop=32)  # noqa: E731 - a stand-in model
    assert torch.equal(same, image * 2)
    up = predict_tiled(lambda x: torch.nn.functional.interpolate(x, scale_factor=4), image,
                       crop=16, scale=4)
    assert up.shape == (2, 280, 360)
    assert torch.equal(up[:, ::4, ::4], image)


@pytest.mark.parametrize("task", ["whu", "vaihingen", "oscd", "dsifn", "sn2"])
def test_each_task_trains_on_the_world(curated, tmp_path, task):
    out = tmp_path / task
    metrics = run_finetune(curated, task, "random", iterations=8, progress=False, out=out)
    assert metrics["task"] == task and metrics["iterations"] == 8
    assert set(metrics["scores"]) == set(DENSE_TASKS[task].scores)
    assert all(math.isfinite(v) for v in metrics["scores"].values())
    config = json.loads((out / "config.json").read_text())
    assert config["crop"] == 128 and (out / "checkpoints" / "last.pt").exists()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    if task == "sn2":  # the adapted patch embedding: 8 bands in
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert state["encoder.patch_embed.proj.weight"].shape[1] == 8


def test_a_complete_run_resumed_writes_its_history_again(curated, tmp_path):
    out = tmp_path / "whu"
    metrics = run_finetune(curated, "whu", "random", iterations=8, progress=False, out=out)
    whole = (out / "history.csv").read_text()
    assert len(whole.splitlines()) > 1
    (out / "history.csv").unlink()  # as `dvc repro` does before running the stage again
    again = run_finetune(curated, "whu", "random", iterations=8, resume=True, progress=False,
                         out=out)
    assert (out / "history.csv").read_text() == whole and again == metrics


def test_segmentation_learns_buildings(curated, tmp_path, truth):
    task = DENSE_TASKS["whu"]
    test = task.datasets(curated)["test"]
    assert {s: len(ds) for s, ds in task.datasets(curated).items()} == \
        truth["downstream"]["whu"]["splits"]
    share = float(torch.cat([test[i]["mask"].flatten() for i in range(len(test))])
                  .float().mean())
    metrics = run_finetune(curated, "whu", "random", progress=False, out=tmp_path / "whu")
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
    assert metrics["world_size"] == 2 and metrics["iterations"] == 4
