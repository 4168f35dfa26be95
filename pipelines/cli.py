"""The ``geopile`` command line: a table of commands (:mod:`pipelines.commands`), one module each.

The params are loaded and validated once, here, into the typed settings every command's ``run``
receives (:func:`geopile.settings.check_params`); an error anywhere ends in one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from geopile.atomic import disk_error
from geopile.params import ParamsError
from geopile.urls import redact
from geopile.writelock import set_command
from pipelines.commands import COMMANDS
from pipelines.common import checked, setup

EPILOG = """examples:
  geopile world build build/world && geopile world up build/world
  geopile ingest --params params.yaml --params build/world/world.params.yaml --all
  geopile curate --params params.yaml --params build/world/world.params.yaml
  geopile shard paper --params params.yaml --params build/world/world.params.yaml
  geopile push paper --params params.yaml --params build/world/world.params.yaml
  geopile pretrain paper --params params.yaml --params build/world/world.params.yaml
  torchrun --nproc-per-node 8 -m pipelines.cli pretrain paper --resume
  geopile world down build/world
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geopile",
        description="Rebuild GeoPile (the GFM pretraining corpus) from its original sources.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP,
                                             description=getattr(command, "DESCRIPTION", None)))
    return parser


def _settings(args: argparse.Namespace, kind: str) -> Any:
    """The command's settings: none, or the params validated once (with the task registry)."""
    if kind == "none":
        return None
    return checked(setup(args), args.params or ["params.yaml"], with_tasks=kind == "tasks")


def _first_name(args: argparse.Namespace) -> list[str]:
    """The first source, build or task a command names, for the locks it leaves."""
    for field in ("sources", "builds", "build", "task", "world_command"):
        value = getattr(args, field, None)
        if value:
            return [value[0] if isinstance(value, list) else str(value)]
    return []


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``geopile`` console script."""
    args = _parser().parse_args(argv)
    command = COMMANDS[args.command]
    set_command(" ".join(["geopile", args.command, *_first_name(args)]))
    try:
        return command.run(args, _settings(args, command.PARAMS))
    except (ParamsError, FileNotFoundError, ValueError, RuntimeError) as err:
        # redacted: an error may quote a signed URL (a SAS token, a presigned S3 signature)
        print(f"geopile: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a full or read-only disk, wherever it is met: one line, no trace
        failed = disk_error(err, Path(err.filename or "."))
        if failed is None:
            raise
        print(f"geopile: error: {redact(str(failed))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
