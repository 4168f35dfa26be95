"""``geopile finetune`` on the world's UC Merced with the ``tiny`` model, on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geopile.params import deep_merge
from pipelines.finetune import FinetuneSettings, build_classifier, resolve_init, run_finetune
from pipelines.pretrain import run_pretrain
from pipelines.shard import run_shard
from pipelines.tasks import get_task


@pytest.fixture(scope="module")
def pretrained(curated, tmp_path_factory) -> tuple[dict, Path]:
    """Params and a short ``tiny`` pretraining run on the world's ``paper`` build."""
    root = tmp_path_factory.mktemp("finetune")
    params = deep_merge(curated, {
        "paths": {"shards": str(root / "shards"), "runs": str(root / "runs")},
        "pretrain": {"batch_size": 8, "workers": 0, "energy": {"enabled": False},
                     "stream": {"url": None}},
    })
    run_shard(params, "paper", Path(params["paths"]["data"]), progress=False)
    run_pretrain(params, "paper", steps=10, progress=False)
    return params, root / "runs" / "paper"


def test_ucm_splits_are_the_published_ones(pretrained, truth):
    params, _ = pretrained
    splits = get_task("ucm").datasets(params)
    sizes = {name: len(ds) for name, ds in splits.items()}
    assert sizes == truth["sources"]["ucmerced"]["splits"]
    files = {name: {Path(f).name for f, _ in ds.samples} for name, ds in splits.items()}
    assert not files["train"] & files["test"] and not files["val"] & files["test"]


def test_export_loads_with_the_window_change(pretrained):
    params, run = pretrained
    settings = FinetuneSettings.from_params(params)
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


def test_finetuning_beats_chance_and_resumes(pretrained, tmp_path):
    params, run = pretrained
    out = tmp_path / "ucm"
    run_finetune(params, "ucm", str(run), epochs=4, progress=False, out=out)
    metrics = run_finetune(params, "ucm", str(run), epochs=7, resume=True, progress=False,
                           out=out)
    with (out / "history.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 8))
    assert metrics["epochs"] == 7 and metrics["task"] == "ucm"
    chance = 100 / 21
    assert metrics["scores"]["top1"] > 3 * chance, metrics
    config = json.loads((out / "config.json").read_text())
    assert (config["img_size"], config["window_size"]) == (128, 8)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "checkpoints" / "best.pt").exists()
