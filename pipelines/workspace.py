"""DVC workspaces: run the project's ``dvc.yaml`` against other parameters, untouched.

``dvc repro`` reads ``params.yaml`` beside ``dvc.yaml``. To run the same pipeline against the
offline world (or a mirror, or a 1% experiment) without editing the real ``params.yaml``, a
workspace is a directory holding a copy of ``dvc.yaml`` and a ``params.yaml`` that is the merge
of the given parameter files; its data, reports and shards live inside it. (``dvc exp run -S``
rewrites params.yaml and needs one flag per key; ``--temp`` copies the whole workspace.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from geopile.params import load_params
from pipelines.common import checked

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "dvc.yaml"


def dvc_env(workspace: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for DVC in a workspace: no analytics, site cache inside, our tools on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        **(extra or {}),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(workspace.resolve() / ".dvc" / "site"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }


def dvc(workspace: Path, *args: str, capture: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``dvc ARGS`` in the workspace (``env``: extra variables); raises if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workspace, env=dvc_env(workspace, env),
        capture_output=capture, text=True, check=False,
    )
    if proc.returncode != 0:
        detail = f":\n{proc.stderr or proc.stdout}" if capture else ""
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {workspace}{detail}")
    return proc


def make_workspace(workspace: Path, params_files: list[str | Path]) -> Path:
    """Create or refresh a workspace: ``dvc.yaml`` copied, ``params.yaml`` merged, DVC set up."""
    workspace.mkdir(parents=True, exist_ok=True)
    params = load_params(params_files)
    checked(params, params_files, with_tasks=True)  # a bad overlay stops here, before DVC runs
    header = "# Written by geopile: the merge of " + ", ".join(map(str, params_files)) + "\n"
    for name, text in (("params.yaml", header + yaml.safe_dump(params, sort_keys=False)),
                       ("dvc.yaml", PIPELINE.read_text())):
        target = workspace / name
        if not target.exists() or target.read_text() != text:
            tmp = workspace / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, target)
    if not (workspace / ".dvc").is_dir():
        dvc(workspace, "init", "--no-scm", "--quiet", capture=True)
    return workspace

