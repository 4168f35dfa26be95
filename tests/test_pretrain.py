"""``geopile pretrain`` on the CPU with the ``tiny`` model against the offline world's shards."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from geopile.params import deep_merge
from geopile.world.world import world_env
from model.export import load_exported
from pipelines.pretrain import run_pretrain
from pipelines.push import push_build
from pipelines.shard import run_shard
from tests.conftest import typed
from tests.killing import kill_once

REPO = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 8, "workers": 2, "log_every": 1, "checkpoint_every": 1000,
        "energy": {"enabled": False}, "stream": {"url": None}}


@pytest.fixture(scope="module")
def paper(curated, tmp_path_factory) -> dict:
    """Params whose ``paths.shards`` holds the world's ``paper`` build."""
    params = {**curated, "paths": {**curated["paths"],
                                   "shards": str(tmp_path_factory.mktemp("pretrain-shards"))}}
    run_shard(typed(params), "paper", progress=False)
    return params


def _params(base: dict, runs: Path, **pretrain) -> dict:
    out = deep_merge(base, {"pretrain": deep_merge(FAST, pretrain)})
    out["paths"] = {**out["paths"], "runs": str(runs)}
    return out


def _losses(run: Path) -> list[dict]:
    with (run / "loss.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(paper, tmp_path_factory) -> Path:
    """12 uninterrupted steps (the reference for the resume and S3 tests)."""
    runs = tmp_path_factory.mktemp("straight")
    run_pretrain(typed(_params(paper, runs)), "paper", steps=12, progress=False)
    return runs / "paper"


def test_same_seed_same_bytes(paper, straight, tmp_path):
    """A rerun with the same params writes the same loss.csv, metrics.json and weights, byte
    for byte (on the CPU; what the machine measured, images/s and energy, is in speed.csv and
    energy.json)."""
    run_pretrain(typed(_params(paper, tmp_path)), "paper", steps=12, progress=False)
    for name in ("loss.csv", "metrics.json", "encoder/encoder.timm.safetensors"):
        assert (tmp_path / "paper" / name).read_bytes() == (straight / name).read_bytes(), name
    assert "images_per_s" not in (straight / "loss.csv").read_text()
    assert (straight / "speed.csv").read_text().startswith("step,images_per_s\n")


def test_loss_falls_and_run_writes_its_outputs(paper, tmp_path):
    params = _params(paper, tmp_path, energy={"enabled": True, "interval_s": 1.0})
    metrics = run_pretrain(typed(params), "paper", steps=50, progress=False)
    run = tmp_path / "paper"
    rows = _losses(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 51))
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < first - 0.1, (first, last)
    assert sum(r["mim"] for r in rows[-10:]) < sum(r["mim"] for r in rows[:10])
    # the schedule: linear warm-up (5 of 50 steps), then cosine down to min_lr
    lrs = [r["lr"] for r in rows]
    peak = max(lrs)
    assert lrs.index(peak) == 4 and lrs[-1] < lrs[10] < peak
    config = json.loads((run / "config.json").read_text())
    assert config["teacher"]["source"].endswith("swin-tiny-teacher.pth")
    assert config["lr"] == pytest.approx(params["pretrain"]["base_lr"] * 8 / 512)
    assert metrics["steps"] == 50 and metrics["teacher"] == config["teacher"]["source"]
    energy = json.loads((run / "energy.json").read_text())
    assert energy["kwh"] > 0 and energy["kg_co2e"] > 0
    assert energy["assumptions"]["country"] == "USA" and energy["assumptions"]["pue"] == 1.0
    assert (run / "loss.png").stat().st_size > 10_000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    # the exported encoder loads in timm, weights intact
    net = load_exported(run / "encoder")  # the call encoder.json gives a timm user
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    state = net.state_dict()
    assert all(torch.equal(state[k[len("student.encoder."):]], v) for k, v in trained.items()
               if k.startswith("student.encoder.") and "relative_position_index" not in k)
    gfm = torch.load(run / "encoder" / "encoder.gfm.pth", weights_only=False)["model"]
    assert torch.equal(gfm["encoder.norm.weight"], state["norm.weight"])


def test_kill_and_resume_gives_the_same_losses(paper, straight, tmp_path):
    params = _params(paper, tmp_path, checkpoint_every=6)
    overlay = tmp_path / "params.json"
    overlay.write_text(json.dumps(params))
    script = ("import json, sys; from pipelines.pretrain import run_pretrain; "
              "from tests.conftest import typed; "
              "run_pretrain(typed(json.load(open(sys.argv[1]))), 'paper', steps=12, "
              "progress=False)")
    kill_once(script, [str(overlay)], tmp_path / "paper" / "checkpoints", "last.pt", 1)
    done = _losses(tmp_path / "paper")
    assert 6 <= len(done) < 12  # it was killed between the checkpoint and the end
    run_pretrain(typed(params), "paper", steps=12, resume=True, progress=False)
    resumed, reference = _losses(tmp_path / "paper"), _losses(straight)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for a, b in zip(resumed, reference, strict=True):
        for key in ("loss", "mim", "feat", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    # resuming a finished run trains nothing and reports the same metrics
    again = run_pretrain(typed(params), "paper", steps=12, resume=True, progress=False)
    assert again["steps"] == 12 and again["loss"] == pytest.approx(reference[-1]["loss"], abs=1e-5)
    assert len(_losses(tmp_path / "paper")) == 12
    # a checkpoint from other settings is not resumed
    other = _params(paper, tmp_path, checkpoint_every=6, alpha=0.5)
    run_pretrain(typed(other), "paper", steps=2, resume=True, progress=False)
    assert [r["step"] for r in _losses(tmp_path / "paper")] == [1, 2]


def test_training_streams_from_s3(paper, straight, world, tmp_path, monkeypatch):
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    url = f"s3://{world['bucket']}/pretrain-test"
    done = push_build(Path(paper["paths"]["shards"]) / "paper", f"{url}/paper", progress=False)
    assert done["sent"] == done["shards"] > 1
    again = push_build(Path(paper["paths"]["shards"]) / "paper", f"{url}/paper", progress=False)
    assert again["sent"] == 0 and again["skipped"] == done["shards"]
    params = _params(paper, tmp_path, stream={"url": url})
    run_pretrain(typed(params), "paper", steps=12, progress=False)
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["shards"] == f"{url}/paper"
    # the same samples in the same order as from local disk: the same losses
    for a, b in zip(_losses(tmp_path / "paper"), _losses(straight), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_torchrun_two_processes_on_gloo(paper, tmp_path):
    params = _params(paper, tmp_path, workers=0, trace=True)
    overlay = tmp_path / "params.yaml"
    overlay.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "pipelines.cli", "pretrain", "paper", "--steps", "4",
         "--shards", str(Path(paper["paths"]["shards"]) / "paper"),
         "--params", str(overlay), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = [[json.loads(line) for line in (tmp_path / "paper" / "trace" / f"rank{r}.jsonl")
               .read_text().splitlines()] for r in (0, 1)]
    assert [t["step"] for t in traces[0]] == [t["step"] for t in traces[1]] == [1, 2, 3, 4]
    seen: list[str] = []
    for a, b in zip(*traces, strict=True):
        assert len(a["keys"]) == len(b["keys"]) == 8  # equal data per rank
        assert not set(a["keys"]) & set(b["keys"])  # disjoint
        assert a["weights"] == b["weights"]  # identical weights after every step
        seen += a["keys"] + b["keys"]
    assert len(seen) == len(set(seen))
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 16


def test_resume_on_another_world_size_with_the_same_global_batch(paper, tmp_path):
    """Killed at 2 processes, resumed on 1 with accumulate 2: the run continues, not restarts."""
    params = _params(paper, tmp_path, workers=1, checkpoint_every=2)
    overlay = tmp_path / "params.yaml"
    overlay.write_text(yaml.safe_dump(params))
    shards = Path(paper["paths"]["shards"]) / "paper"
    args = ["pretrain", "paper", "--steps", "8", "--shards", str(shards),
            "--params", str(overlay), "--no-progress", "--resume"]
    # preempted as a cluster does it: SIGTERM to torchrun, which stops its workers (they run in
    # sessions of their own, so a SIGKILL to its group would leave them training)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                             "2", "--standalone", "-m", "pipelines.cli", *args], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "paper" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before it could be stopped"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    stopped = torch.load(tmp_path / "paper" / "checkpoints" / "last.pt", weights_only=False)
    assert 2 <= stopped["step"] < 8

    overlay.write_text(yaml.safe_dump(_params(paper, tmp_path, workers=1, accumulate=2)))
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming {tmp_path / 'paper' / 'checkpoints' / 'last.pt'} at step " \
           f"{stopped['step']}" in proc.stderr
    assert [int(r["step"]) for r in _losses(tmp_path / "paper")] == list(range(1, 9))
    config = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert config["world_size"] == 1 and config["global_batch"] == 16
