"""``geopile arp``: ARP against hand computations and the paper's Table 1, score files, the CLI."""

from __future__ import annotations

import json

import pytest

from pipelines.arp import arp, from_rows, paper_arp, paper_scores, read_scores
from pipelines.cli import main


def test_arp_matches_a_hand_computation():
    model = {("ucm", "top1"): 90.0, ("ben10", "micro_ap"): 80.0, ("whu", "iou"): 50.0}
    base = {("ucm", "top1"): 80.0, ("ben10", "micro_ap"): 80.0, ("oscd", "f1"): 40.0}
    result = arp(model, base)
    # shared: ucm (+10/80 = 0.125) and ben10 (0): mean 0.0625; whu and oscd are left out
    assert result.arp == pytest.approx(0.0625)
    rows = [(r["task"], r["metric"]) for r in result.rows]
    assert rows == [("ben10", "micro_ap"), ("ucm", "top1")]
    assert arp({}, base).arp is None
    zero = arp(model, {("ucm", "top1"): 0.0, ("ben10", "micro_ap"): 40.0})
    assert zero.rows[1]["relative"] is None and zero.arp == pytest.approx(1.0)


def test_paper_arp_is_table_1s_over_seven_datasets():
    table = paper_scores()  # from the task files
    gain = {k: (g - b) / b for k, (g, b) in table.items()}
    per_dataset = [gain["oscd", "f1"], gain["dsifn", "f1"], gain["ucm", "top1"],
                   (gain["ben10", "micro_ap"] + gain["ben1", "micro_ap"]) / 2,
                   gain["whu", "iou"], gain["vaihingen", "miou"],
                   (gain["sn2", "psnr"] + gain["sn2", "ssim"]) / 2]
    assert len(table) == 9
    result = paper_arp()
    assert result.arp == pytest.approx(sum(per_dataset) / 7)
    assert round(100 * result.arp, 2) == 3.31  # the paper's Table 1
    assert round(100 * sum(gain.values()) / 9, 2) == 3.17  # a flat mean over nine scores is not
    assert set(result.datasets) == {"oscd", "dsifn", "ucm", "bigearthnet", "whu", "vaihingen",
                                    "sn2"}


def test_scores_of_one_dataset_are_averaged_first():
    model = {("ben10", "micro_ap"): 110.0, ("ben1", "micro_ap"): 130.0, ("ucm", "top1"): 100.0}
    base = {("ben10", "micro_ap"): 100.0, ("ben1", "micro_ap"): 100.0, ("ucm", "top1"): 100.0}
    result = arp(model, base)
    assert result.datasets == pytest.approx({"bigearthnet": 0.2, "ucm": 0.0})
    assert result.arp == pytest.approx(0.1)  # not (0.1 + 0.3 + 0) / 3
    assert from_rows(result.rows) == result


def _run(root, name, task, scores):
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"task": task, "scores": scores}))


def test_scores_from_run_directories_and_the_cli(tmp_path, capsys):
    _run(tmp_path / "ours", "ucm", "ucm", {"top1": 95.0})
    _run(tmp_path / "ours", "ben10", "ben10", {"micro_ap": 86.0})
    _run(tmp_path / "random", "ucm", "ucm", {"top1": 50.0})
    _run(tmp_path / "random", "ben10", "ben10", {"micro_ap": 43.0})
    (tmp_path / "ours" / "pretrain").mkdir()
    (tmp_path / "ours" / "pretrain" / "metrics.json").write_text(json.dumps({"loss": 0.1}))
    assert read_scores([tmp_path / "ours"]) == {("ucm", "top1"): 95.0, ("ben10", "micro_ap"): 86.0}
    out = tmp_path / "arp.json"
    assert main(["arp", "--model", str(tmp_path / "ours"), "--baseline",
                 str(tmp_path / "random"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ARP over 2 datasets (2 scores): +95.00%" in table and "paper GFM" in table
    assert json.loads(out.read_text())["arp"] == pytest.approx((45 / 50 + 43 / 43) / 2)
    _run(tmp_path / "ours", "ucm-again", "ucm", {"top1": 96.0})
    assert main(["arp", "--model", str(tmp_path / "ours"), "--baseline",
                 str(tmp_path / "random")]) == 2
    assert "a second score for ucm/top1" in capsys.readouterr().err


def test_the_ablation_table_per_build_beside_the_papers_row(params, tmp_path, capsys):
    """Runs keyed by build; ARP of each against the last baseline; the paper's row by the
    sources a build lacks relative to the first build of the ablation."""
    from pipelines.ablation import ablation, ablation_table
    from tests.conftest import typed

    runs = tmp_path / "runs" / "finetune"
    for init, ucm, ben in (("paper", 90.0, 80.0), ("paper_no_naip", 85.0, 80.0),
                           ("random", 50.0, 40.0), ("imagenet22k", 80.0, 80.0)):
        _run(runs / "ucm", init, "ucm", {"top1": ucm})
        _run(runs / "ben10", init, "ben10", {"micro_ap": ben})
    p = {**params, "paths": {**params["paths"], "runs": str(tmp_path / "runs"),
                             "shards": str(tmp_path / "none")},
         "ablation": ["paper", "paper_no_naip", "paper_no_labeled"],
         "finetune_tasks": ["ucm", "ben10"], "finetune_baselines": ["random", "imagenet22k"]}
    study = ablation(typed(p))
    assert study["baseline"] == "imagenet22k"  # the last baseline
    paper, no_naip, labeled = study["builds"]
    assert paper["arp"] == pytest.approx((10 / 80 + 0) / 2) and paper["scores"] == 2
    assert no_naip["datasets"] == pytest.approx({"bigearthnet": 0.0, "ucm": 5 / 80})
    assert (paper["paper"]["row"], paper["paper"]["arp"]) == ("GeoPile", 0.0331)
    assert no_naip["paper"] == {"row": "w/o NAIP", "arp": 0.0265, "images": 260_954}
    assert labeled["dropped"] == ["mlrsnet", "patternnet", "resisc45", "rsd46"]
    assert labeled["paper"]["row"] == "w/o curated datasets" and labeled["arp"] is None
    table = ablation_table(study)
    assert "paper_no_naip" in table and "w/o NAIP" in table and "+2.65%" in table
