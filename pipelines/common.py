"""What every ``geopile`` command shares: params, logging, the data directory."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Any

from geopile.params import ParamsError, load_params
from geopile.urls import install_redaction


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` (repeatable; later files are deep-merged over earlier ones)."""
    parser.add_argument(
        "--params",
        action="append",
        metavar="FILE",
        help="parameter file (default: params.yaml); repeat to overlay, e.g. "
        "--params params.yaml --params build/world/world.params.yaml",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Configure logging and load the params named on the command line.

    Every handler is redacted here, once (:func:`geopile.urls.install_redaction`): SAS tokens
    and presigned-URL signatures reach log records through GDAL, botocore and urllib3, and
    ``-v`` would print them all.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_redaction()
    return load_params(args.params or ["params.yaml"])


def data_dir(params: dict[str, Any]) -> Path:
    """The data directory from ``paths.data``."""
    return Path((params.get("paths") or {}).get("data", "data"))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class History:
    """A run's ``history.csv``, whose rows also travel in its checkpoint.

    A resumed run rewrites the file whole from the checkpoint's rows: ``dvc repro`` deletes a
    stage's outputs before running it again while its checkpoints persist, so a file only
    appended to would lose the rows before the resume, or not exist at all when the run was
    already complete.
    """

    def __init__(self, path: Path, header: list[str], rows: list[list[Any]] | None,
                 write: bool) -> None:
        self.path, self.rows, self.write = path, list(rows or []), write
        if write:
            atomic_write_text(path, self._csv([header, *self.rows]))

    @staticmethod
    def _csv(rows: list[list[Any]]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()

    def add(self, row: list[Any]) -> None:
        """Record one evaluation (every process keeps the rows; the main one writes them)."""
        self.rows.append(row)
        if self.write:
            with self.path.open("a", newline="") as f:
                f.write(self._csv([row]))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename it into place."""
    import torch  # not at module level: every command imports this module

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def coerce_floats(kind: type, block: dict[str, Any], name: str) -> dict[str, Any]:
    """Floats where dataclass ``kind`` wants floats: YAML 1.1 reads ``1e-8`` as a string."""
    out = dict(block)
    for f in dataclasses.fields(kind):
        value = out.get(f.name)
        if "float" in str(f.type) and isinstance(value, str):
            try:
                out[f.name] = float(value)
            except ValueError:
                raise ParamsError(f"{name}: {f.name} must be a number, got {value!r}") from None
    return out
