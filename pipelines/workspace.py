"""DVC workspaces: run the project's ``dvc.yaml`` against other parameters, untouched.

``dvc repro`` reads ``params.yaml`` beside ``dvc.yaml``. To run the same pipeline against the
offline world (or a mirror, or a 1% experiment) without editing the real ``params.yaml``, a
workspace is a directory holding a copy of ``dvc.yaml`` and a ``params.yaml`` that is the merge
of the given parameter files; its data, reports and shards live inside it. (``dvc exp run -S``
rewrites params.yaml and needs one flag per key; ``--temp`` copies the whole workspace.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
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


_STAGE = re.compile(r"^Running stage '([^']+)'")
_SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping")


@dataclass
class ReproTimes:
    """What ``dvc repro`` ran, each stage's wall time (its start to the next one's), skipped."""

    ran: list[tuple[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        """The stages that ran, slowest first, and the total."""
        if not self.ran:
            return (f"stage times: no stage ran ({len(self.skipped)} unchanged), "
                    f"dvc repro {self.seconds:.1f} s")
        width = max(len(name) for name, _ in self.ran)
        lines = [f"stage times (wall clock; {len(self.ran)} ran, {len(self.skipped)} unchanged):"]
        lines += [f"  {name:<{width}} {sec:>8.1f} s" for name, sec in
                  sorted(self.ran, key=lambda r: -r[1])]
        lines.append(f"  {'total (dvc repro)':<{width}} {self.seconds:>8.1f} s")
        return "\n".join(lines)


def repro(workspace: Path, env: dict[str, str] | None = None) -> ReproTimes:
    """``dvc repro`` in the workspace, its output passed through, each stage timed."""
    times = ReproTimes()
    started = time.perf_counter()
    current, since = None, started
    with subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=workspace,
                          env=dvc_env(workspace, env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if match := _STAGE.match(line):
                now = time.perf_counter()
                if current is not None:
                    times.ran.append((current, now - since))
                current, since = match.group(1), now
            elif match := _SKIPPED.match(line):
                times.skipped.append(match.group(1))
    now = time.perf_counter()
    if current is not None:
        times.ran.append((current, now - since))
    times.seconds = now - started
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc repro` failed in {workspace} (its output is above)")
    return times


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

