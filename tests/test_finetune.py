"""``geopile finetune`` on the world's UC Merced and BigEarthNet with ``tiny``, on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from geopile.downstream import downstream_root
from geopile.params import deep_merge, load_params
from geopile.world.downstream import covers as ben_covers
from pipelines.encoders import build_classifier, resolve_init
from pipelines.finetune import run_finetune
from pipelines.pretrain import run_pretrain
from pipelines.shard import run_shard
from pipelines.tasks import get_task
from pipelines.tasks.ben import ben_to_255
from pipelines.tasks.classification import subset_indices
from tests.conftest import REPO, torchrun, typed


@pytest.fixture(scope="module")
def pretrained(curated, tmp_path_factory) -> tuple[dict, Path]:
    """Params and a short ``tiny`` pretraining run on the world's ``paper`` build."""
    root = tmp_path_factory.mktemp("finetune")
    params = deep_merge(curated, {
        "paths": {"shards": str(root / "shards"), "runs": str(root / "runs")},
        "pretrain": {"batch_size": 8, "workers": 0, "energy": {"enabled": False},
                     "stream": {"url": None}},
    })
    run_shard(typed(params), "paper", progress=False)
    run_pretrain(typed(params), "paper", steps=10, progress=False)
    return params, root / "runs" / "paper"


def test_ucm_splits_are_the_published_ones(pretrained, truth):
    params, _ = pretrained
    splits = get_task("ucm").splits(typed(params))
    sizes = {name: len(ds) for name, ds in splits.items()}
    assert sizes == truth["sources"]["ucmerced"]["splits"]
    files = {name: {Path(f).name for f, _ in ds.samples} for name, ds in splits.items()}
    assert not files["train"] & files["test"] and not files["val"] & files["test"]


def test_export_loads_with_the_window_change(pretrained):
    params, run = pretrained
    settings = typed(params).finetune
    spec, file, fetch, name = resolve_init(str(run), settings, 128, 8)
    assert (spec.img_size, spec.window_size, fetch, name) == (128, 8, False, "ours-paper")
    model = build_classifier(spec, file, fetch, 21, 0.1)
    saved, state = load_file(file), model.state_dict()
    table = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert saved[table].shape == (11 * 11, 1)  # pretrained with window 6
    assert state[table].shape == (15 * 15, 1)  # resized for window 8
    same = [k for k in saved if "relative_position" not in k]
    assert same and all(torch.equal(saved[k], state[k]) for k in same)
    assert state["head.fc.weight"].shape == (21, 256)


def test_same_seed_same_bytes(pretrained, tmp_path):
    """Two finetunings from one encoder with the same params write the same history.csv and
    metrics.json, byte for byte (on the CPU; images/s is in speed.csv)."""
    params, run = pretrained
    for out in ("a", "b"):
        run_finetune(typed(params), "ucm", str(run), length=3, progress=False,
                     out=tmp_path / out)
    for name in ("history.csv", "metrics.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "images_per_s" in (tmp_path / "a" / "speed.csv").read_text()


def test_finetuning_beats_chance_and_resumes(pretrained, tmp_path):
    params, run = pretrained
    out = tmp_path / "ucm"
    run_finetune(typed(params), "ucm", str(run), length=4, progress=False, out=out)
    (out / "history.csv").unlink()  # `dvc repro` removes a stage's outputs, not its checkpoints
    metrics = run_finetune(typed(params), "ucm", str(run), length=7, resume=True, progress=False,
                           out=out)
    with (out / "history.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 8))
    assert metrics["epochs"] == 7 and metrics["task"] == "ucm"
    # resumed when already complete (what `dvc repro` does when an upstream file changed but
    # not the weights): nothing to train, and every output is written again
    whole = (out / "history.csv").read_text()
    (out / "history.csv").unlink()
    (out / "metrics.json").unlink()
    again = run_finetune(typed(params), "ucm", str(run), length=7, resume=True, progress=False,
                         out=out)
    assert (out / "history.csv").read_text() == whole and again == metrics
    chance = 100 / 21
    assert metrics["scores"]["top1"] > 3 * chance, metrics
    config = json.loads((out / "config.json").read_text())
    assert (config["img_size"], config["window_size"]) == (128, 8)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "checkpoints" / "best.pt").exists()


def test_subsets_are_seeded_without_replacement():
    for n, fraction in ((500, 0.10), (500, 0.01), (269_695, 0.10)):
        picked = subset_indices(n, fraction, seed=0)
        assert len(picked) == int(fraction * n) and len(set(picked)) == len(picked)
        assert picked == sorted(picked) and 0 <= picked[0] and picked[-1] < n
        assert picked == subset_indices(n, fraction, seed=0)
    assert subset_indices(500, 0.1, seed=0) != subset_indices(500, 0.1, seed=1)
    with pytest.raises(ValueError, match="empty"):
        subset_indices(50, 0.01, seed=0)


def test_ben_reads_the_reference_rgb_and_19_labels(pretrained, truth):
    from torchgeo.datasets import BigEarthNet

    params, _ = pretrained
    splits = get_task("ben10").splits(typed(params))
    ben = truth["downstream"]["bigearthnet"]
    assert {s: len(ds) for s, ds in splits.items()} == ben["splits"]
    sample = splits["test"][3]
    assert sample["image"].shape == (3, 120, 120)
    names = BigEarthNet.class_sets[43]
    expected = torch.zeros(19, dtype=torch.long)
    for label in ben["labels"]["test"][3]:
        index = BigEarthNet.label_converter.get(names.index(label))
        if index is not None:
            expected[index] = 1
    assert torch.equal(sample["label"], expected)
    # the reference's stretch: (x - q02) / (q98 - q02) * 255, clipped and truncated
    raw = torch.tensor([[[27.0, 2332.0, 1000.0]], [[61.0, 0.0, 1000.0]], [[50.0, 1862.0, 5000.0]]])
    # B04: 973 / 2305 * 255 = 107.6; B03: 939 / 1940 * 255 = 123.4
    assert ben_to_255(raw)[:, 0].tolist() == [[0.0, 255.0, 107.0], [0.0, 0.0, 123.0],
                                              [0.0, 255.0, 255.0]]


@pytest.mark.parametrize("task,epochs,size", [("ben10", 6, 50), ("ben1", 3, 5)])
def test_ben_finetuning_beats_chance_on_its_subset(pretrained, tmp_path, truth, task, epochs,
                                                   size):
    params, run = pretrained
    out = tmp_path / task
    metrics = run_finetune(typed(params), task, str(run), length=epochs, progress=False, out=out)
    subset = json.loads((out / "subset.json").read_text())
    assert subset["size"] == size == metrics["train_samples"] and not subset["replacement"]
    assert len(set(subset["samples"])) == size and subset["of"] == 500
    root = downstream_root(Path(params["paths"]["data"]), "bigearthnet")
    listed = (root / "bigearthnet-train.csv").read_text().split()
    train_patches = [line.split(",")[0] for line in listed]
    assert subset["samples"] == [train_patches[i] for i in subset["indices"]]
    score, chance = metrics["scores"]["micro_ap"], metrics["details"]["chance_micro_ap"]
    ben = truth["downstream"]["bigearthnet"]
    labels = [set(x) & set(ben_covers()) for x in ben["labels"]["test"]]
    assert abs(chance - 100 * sum(map(len, labels)) / (19 * len(labels))) < 1e-6
    margin = 25 if task == "ben10" else 5
    assert score > chance + margin, metrics


def test_torchrun_two_processes_on_gloo(pretrained, tmp_path):
    params, _ = pretrained
    overlay = tmp_path / "params.yaml"
    overlay.write_text(yaml.safe_dump(deep_merge(params, {"finetune": {"workers": 0}})))
    out = tmp_path / "ucm"
    proc = torchrun(["finetune", "ucm", "--init", "random", "--epochs", "2", "--out", str(out),
                     "--params", str(overlay), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]  # includes the ranks' weight check
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["world_size"] == metrics["world_size"] == 2
    per_rank = config["batch_size"]
    assert config["steps"] == 2 * (config["train"] // (2 * per_rank))
    with (out / "history.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]


def test_offline_imagenet22k_baseline_says_which_parameter_to_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = typed(load_params([REPO / "params.yaml"])).finetune
    spec, file, fetch, name = resolve_init("imagenet22k", settings.model_copy(
        update={"model": "tiny"}), 128, 4, Path("runs"))
    assert fetch and file is None and name == "imagenet22k"
    with pytest.raises(RuntimeError, match=r"hub copy of .*finetune\.imagenet22k\.file"):
        build_classifier(spec, file, fetch, 10, 0.0)
