"""Every registered task through the same battery: it reads, trains, evaluates, resumes, scores.

The battery iterates the registry (``pipelines.tasks.TASKS``): a new task file is tested here
without a line of test code, and a task that cannot go through it fails.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from geopile.world.downstream import FIXTURES
from pipelines.arp import dataset_of, paper_scores
from pipelines.finetune import run_finetune
from pipelines.tasks import TASKS, downstream_sets, list_tasks
from pipelines.tasks.base import read_sample
from tests.conftest import typed


def test_the_registry_holds_each_paper_task_once():
    assert sorted(list_tasks()) == sorted(
        ["ucm", "ben10", "ben1", "whu", "vaihingen", "oscd", "dsifn", "sn2"])
    # the paper's seven datasets: BigEarthNet's two subsets are one
    assert len({t.dataset for t in TASKS.values()}) == 7
    assert set(downstream_sets()) == {t.dataset for t in TASKS.values() if t.published}


@pytest.mark.parametrize("name", list_tasks())
def test_task_declares_its_facts(name):
    task = TASKS[name]
    assert task.family in ("classification", "dense")
    assert set(task.scores) == set(task.paper) and task.select in task.scores
    assert len(task.protocol.split()) > 15, "state the evaluation protocol and its source"
    if task.published is not None:
        assert task.dataset in FIXTURES, "a published set needs its world fixture"
        assert task.published.licence and task.published.homepage
        for item in task.published.files.values():
            assert item.filename and all(u.startswith("https://") for u in item.mirrors)
    # the ARP row: the paper's scores, under the task's dataset
    for metric, score in task.paper.items():
        assert paper_scores()[name, metric] == (score.gfm, score.baseline)
    assert dataset_of(name) == task.dataset


@pytest.mark.parametrize("name", list_tasks())
def test_task_reads_its_world_copy(curated, truth, name):
    task = TASKS[name]
    splits = task.splits(typed(curated))
    assert {"train", "test"} <= set(splits) and all(len(d) > 0 for d in splits.values())
    made = truth["sources"]["ucmerced"] if name == "ucm" else truth["downstream"][task.dataset]
    sizes = {s: len(d) for s, d in splits.items()}
    if "splits" in made:  # published splits
        assert sizes == made["splits"]
    else:  # split by the task itself (SpaceNet2: seeded 80/10/10 of the pairs)
        assert sum(sizes.values()) == made["pairs"] and sizes["test"] == made["pairs"] // 10
    sample = read_sample(splits["test"], 0)
    assert sample["image"].ndim in (3, 4) and torch.isfinite(sample["image"]).all()


@pytest.mark.parametrize("name", list_tasks())
def test_task_trains_evaluates_and_resumes_exactly(curated, tmp_path, name):
    task = TASKS[name]
    steps = 2  # epochs or iterations, by the task's family
    straight = run_finetune(typed(curated), name, "random", length=steps, progress=False,
                            out=tmp_path / "straight")
    assert straight["task"] == name and straight["dataset"] == task.dataset
    assert set(straight["scores"]) == set(task.scores)
    assert all(math.isfinite(v) for v in straight["scores"].values())
    # stopped after one epoch (or iteration) and resumed: the same weights as the straight run
    run_finetune(typed(curated), name, "random", length=1, progress=False, out=tmp_path / "resumed")
    resumed = run_finetune(typed(curated), name, "random", length=steps, resume=True,
                           progress=False, out=tmp_path / "resumed")
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=False)
               ["model"] for run in ("straight", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert resumed["steps"] == straight["steps"]
    # resumed when complete (what `dvc repro` does): nothing trained, every output again
    out = tmp_path / "straight"
    history = (out / "history.csv").read_text()
    (out / "history.csv").unlink()
    (out / "metrics.json").unlink()
    again = run_finetune(typed(curated), name, "random", length=steps, resume=True, progress=False,
                         out=out)
    assert again == straight and (out / "history.csv").read_text() == history
    assert json.loads((out / "config.json").read_text())["protocol"] == task.protocol
