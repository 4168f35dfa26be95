"""``geopile arp``: ARP against a hand computation, score files, the CLI."""

from __future__ import annotations

import json

import pytest

from pipelines.arp import PAPER, arp, paper_arp, read_scores
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


def test_paper_arp_over_its_nine_scores():
    pairs = [(59.82, 52.35), (71.24, 69.62), (99.0, 99.0), (86.3, 85.7), (80.7, 79.5),
             (90.7, 90.4), (75.3, 74.7), (22.599, 21.655), (0.638, 0.612)]
    by_hand = sum((g - b) / b for g, b in pairs) / 9
    assert len(PAPER) == 9
    assert paper_arp().arp == pytest.approx(by_hand)


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
    assert "ARP over 2 scores: +95.00%" in table and "paper GFM" in table
    assert json.loads(out.read_text())["arp"] == pytest.approx((45 / 50 + 43 / 43) / 2)
    _run(tmp_path / "ours", "ucm-again", "ucm", {"top1": 96.0})
    assert main(["arp", "--model", str(tmp_path / "ours"), "--baseline",
                 str(tmp_path / "random")]) == 2
    assert "a second score for ucm/top1" in capsys.readouterr().err
