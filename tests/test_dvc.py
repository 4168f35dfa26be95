"""``dvc repro`` runs the pipeline on the offline world; one source's params re-run only it;
``dvc push``/``pull`` through the world's S3 server restore identical shards."""

import io
import json
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from geopile.stream.index import INDEX
from geopile.world.world import world_down
from pipelines.cli import main
from pipelines.workspace import dvc

REPO = Path(__file__).resolve().parents[1]


def _shard_digests(ws: Path) -> dict[str, str]:
    out = {}
    for index_file in sorted((ws / "shards").glob(f"*/{INDEX}")):
        for shard in json.loads(index_file.read_text())["shards"]:
            out[f"{index_file.parent.name}/{shard['name']}"] = shard["sha256"]
    return out


@pytest.fixture(scope="module")
def demo(world_dir, tmp_path_factory):
    """`geopile demo` on a copy of the session's small world: it starts and stops its own
    servers; an overlay keeps the pretraining and finetuning short."""
    root = tmp_path_factory.mktemp("demo")
    world = root / "world"  # without run/: the session's servers stay the session's
    shutil.copytree(world_dir, world, ignore=lambda d, _: ["run"] if Path(d) == world_dir else [])
    # a short pretraining on the paper build and on one ablation, streamed from the world's S3
    short = root / "short.yaml"
    short.write_text(yaml.safe_dump({"ablation": ["paper", "paper_no_naip"],
                                     "pretrain": {"steps": 6, "batch_size": 8, "log_every": 2},
                                     "finetune_tasks": ["ucm", "ben1", "dsifn"],
                                     "finetune": {"epochs": 2, "dense": {"iterations": 4}}}))
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["demo", "--world", str(world), "--workspace", str(root / "geopile"),
                     "--params", str(REPO / "params.yaml"), "--overlay", str(short)])
    assert code == 0
    return root / "geopile", world, printed.getvalue()


@pytest.fixture(scope="module")
def repro(demo):
    """The demo's DVC workspace."""
    return demo[0]


def test_demo_ends_with_the_report_and_stops_its_servers(demo):
    workspace, world, printed = demo
    assert f"report    {workspace / 'reports' / 'report.html'}" in printed
    assert "ARP over 3 datasets (3 scores)" in printed and "pretrained 6 steps" in printed
    for build in ("paper", "paper_no_naip"):  # a pretraining summary per build of the ablation
        assert f"loss curve  {(workspace / 'runs' / build).resolve() / 'loss.png'}" in printed
    # the ablation table, a row per build with the paper's beside it, and the stage times
    assert "ablation: ARP of each build against random" in printed
    assert re.search(r"^paper_no_naip .*\| w/o NAIP +\+2\.65%", printed, re.M)
    assert re.search(r"^  pretrain@paper_no_naip +\d+\.\d s$", printed, re.M)
    times = json.loads((workspace / "reports" / "demo.json").read_text())
    assert {name for name, _ in times["stages"]} >= {"pretrain@paper", "baseline@ucm-random"}
    assert "dvc push  the shards of 9 builds -> s3://world/dvc" in printed
    assert world_down(world) == []  # nothing of the demo's world is left running


def test_repro_runs_from_ingest_to_shards(repro):
    params = yaml.safe_load((repro / "params.yaml").read_text())
    for name in params["sources"]:
        assert (repro / "data" / "records" / f"{name}.parquet").exists()
    assert (repro / "data" / "curated.parquet").exists()
    for build in params["builds"]:
        index = json.loads((repro / "shards" / build / INDEX).read_text())
        assert index["samples"] > 0
    status = dvc(repro, "status", "--json", capture=True).stdout
    assert json.loads(status) == {}
    metrics = dvc(repro, "metrics", "show", "--json", capture=True).stdout
    assert "counts" in metrics and "kg_co2e" in metrics
    # each pretraining run streamed its own build from S3 and exported an encoder
    for build in params["ablation"]:
        run = repro / "runs" / build
        config = json.loads((run / "config.json").read_text())
        assert config["shards"] == f"{params['pretrain']['stream']['url']}/{build}"
        assert json.loads((run / "metrics.json").read_text())["steps"] == 6
        assert (run / "encoder" / "encoder.timm.safetensors").exists()
    # BigEarthNet fetched from the world's S3 and recorded
    fetched = json.loads((repro / "data" / "fetched" / "bigearthnet.json").read_text())
    assert set(fetched["files"]) == {"s2", "split_train", "split_val", "split_test"}
    assert sorted(p.stem for p in (repro / "data" / "fetched").iterdir()) == sorted(
        params["downstream_sets"])
    # every task finetuned from each build and from the random baseline, then ARP
    for task in ("ucm", "ben1", "dsifn"):
        for init in ("paper", "paper_no_naip", "random"):
            scores = json.loads((repro / "runs" / "finetune" / task / init / "metrics.json")
                                .read_text())
            assert scores["task"] == task
            # classification: 2 epochs; dsifn (dense): 4 iterations
            assert (scores["steps"] if task == "dsifn" else scores["epochs"]) in (2, 4)
    arp = json.loads((repro / "reports" / "arp.json").read_text())
    assert sorted((r["task"], r["metric"]) for r in arp["rows"]) == [
        ("ben1", "micro_ap"), ("dsifn", "f1"), ("ucm", "top1")]


def test_a_world_restart_leaves_nothing_stale_and_a_second_demo_runs_nothing(demo):
    """On 9298ec4 `world up` picked new ports: every stage was stale and `dvc push` lost its
    remote. Records name the published URLs; the world comes back on its ports."""
    from geopile.world.world import PARAMS_OVERLAY, world_up
    from pipelines.readme_blocks import demo_block
    from pipelines.workspace import make_workspace

    workspace, world, _ = demo
    assert json.loads(dvc(workspace, "status", "--json", capture=True).stdout) == {}
    world_up(world)
    try:
        make_workspace(workspace, [REPO / "params.yaml", world / PARAMS_OVERLAY,
                                   workspace.parent / "short.yaml"])
        assert json.loads(dvc(workspace, "status", "--json", capture=True).stdout) == {}
    finally:
        world_down(world)
    records = pq.read_table(workspace / "data" / "records" / "naip.parquet").to_pylist()
    assert all(r["asset_href"].startswith("https://naipeuwest.blob.core.windows.net/")
               for r in records)
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["demo", "--world", str(world), "--workspace", str(workspace),
                     "--params", str(REPO / "params.yaml"),
                     "--overlay", str(workspace.parent / "short.yaml")])
    assert code == 0
    assert "Running stage" not in printed.getvalue()
    assert "stage times: no stage ran" in printed.getvalue()
    assert world_down(world) == []
    # the README's figures keep the run that ran the stages, and add the rerun's
    times = json.loads((workspace / "reports" / "demo.json").read_text())
    assert times["stages"] and times["rerun"]["unchanged"] == len(times["stages"])
    block = demo_block(workspace)
    assert "ran no stage" in block and "| `pretrain@paper` |" in block


def test_one_source_change_reruns_only_what_depends_on_it(repro):
    params_file = repro / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["sources"]["patternnet"]["licence"] = "CC-BY-4.0 (changed)"
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = set(json.loads(dvc(repro, "status", "--json", capture=True).stdout))
    finally:
        params_file.write_text(original)
    assert "ingest@patternnet" in changed
    assert not {c for c in changed if c.startswith(("ingest@", "shard@"))} - {"ingest@patternnet"}


def test_pretrain_change_reruns_only_pretraining(repro):
    params_file = repro / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["pretrain"]["alpha"] = 0.5
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        changed = set(json.loads(dvc(repro, "status", "--json", capture=True).stdout))
    finally:
        params_file.write_text(original)
    assert changed == {"pretrain@paper", "pretrain@paper_no_naip"}


def test_push_and_pull_through_world_s3(repro, world):
    before = _shard_digests(repro)
    assert before
    dvc(repro, "remote", "add", "--force", "-d", "world", f"s3://{world['bucket']}/dvc",
        capture=True)
    dvc(repro, "remote", "modify", "world", "endpointurl", world["s3"], capture=True)
    for key, value in (("access_key_id", "geopile"), ("secret_access_key", "offline-world")):
        dvc(repro, "remote", "modify", "--local", "world", key, value, capture=True)
    dvc(repro, "push", capture=True)
    for path in ("shards", "data", ".dvc/cache"):
        shutil.rmtree(repro / path)
    dvc(repro, "pull", capture=True)
    assert _shard_digests(repro) == before
    assert json.loads(dvc(repro, "status", "--json", capture=True).stdout) == {}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium (Debian: apt-get install chromium; .ci/run installs it)")
    return found


def test_report_renders_in_chromium(repro, tmp_path):
    report = repro / "reports" / "report.html"
    markdown = (repro / "reports" / "report.md").read_text()
    assert "data:image/png;base64," in report.read_text()  # self-contained
    images = markdown.count("](report_files/")
    assert images >= 10 and len(list((repro / "reports" / "report_files").glob("*.png"))) == images
    for section in ("Curation: per source", "Duplicates removed", "Contaminants removed",
                    "Pretraining", "Downstream: ARP"):
        assert section in markdown
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browser, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=180, check=True).stdout
    check = re.search(r'id="selfcheck">images (\d+)/(\d+) loaded, (\d+) tables<', dom)
    assert check, dom[-2000:]
    loaded, total, tables = map(int, check.groups())
    assert loaded == total == images and tables >= 3
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1280,2400",
                    report.as_uri()], capture_output=True, timeout=180, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 20  # text, tables and images drawn
