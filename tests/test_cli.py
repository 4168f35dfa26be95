"""The ``geopile`` CLI: a helpful ``--help``; ``world up``/``down`` leave nothing running."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pipelines.cli import main

GEOPILE = [sys.executable, "-m", "pipelines.cli"]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv", [[], ["world"], ["world", "build"], ["world", "up"], ["ingest"], ["summary"], ["demo"]]
)
def test_every_command_explains_itself(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: geopile" in text
    if argv and argv != ["world"]:
        assert "--params FILE" in text


def test_unknown_source_is_a_clear_error(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("paths: {data: %s}\n" % (tmp_path / "data"))
    assert main(["ingest", "nosuch", "--params", str(REPO / "params.yaml"),
                 "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geopile: error:") and "nosuch" in err
    assert not (tmp_path / "data").exists()


def test_params_are_checked_before_any_command_runs(tmp_path, capsys):
    """A partial params file is refused by key (it once ran with silent defaults)."""
    params = tmp_path / "p.yaml"
    params.write_text("paths: {data: %s}\nsources: {}\n" % (tmp_path / "data"))
    assert main(["ingest", "--all", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"geopile: error: {params}: ") and "(nothing was run)" in err
    assert "  seed: missing" in err and "  shard: missing" in err
    assert not (tmp_path / "data").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it holds no ports, and its state says so
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_world_up_and_down_by_cli(world_dir, tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(world_dir, copy, ignore=shutil.ignore_patterns("run"))
    up = subprocess.run([*GEOPILE, "world", "up", str(copy)], capture_output=True, text=True,
                        timeout=180, check=False)
    run = copy / "run"
    try:
        assert up.returncode == 0, up.stderr
        endpoints = json.loads((run / "endpoints.json").read_text())
        pids = {name: int((run / f"{name}.pid").read_text()) for name in ("s3", "stac")}
        assert all(_alive(pid) for pid in pids.values())
        assert endpoints["stac"].startswith("http://127.0.0.1:")
        collection = requests.get(f"{endpoints['stac']}/collections/naip", timeout=10).json()
        assert collection["id"] == "naip"
        overlay = (copy / "world.params.yaml").read_text()
        assert endpoints["stac"] in overlay
    finally:
        down = subprocess.run([*GEOPILE, "world", "down", str(copy)], capture_output=True,
                              text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert "stac" in down.stdout and "s3" in down.stdout
    assert not any(_alive(pid) for pid in pids.values())
    assert not list(run.glob("*.pid"))
    port = int(endpoints["s3"].rsplit(":", 1)[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "S3 port still open after down"
