"""The downstream tasks: one registry, iterated by the CLI, dvc, ARP, the report and the tests.

A new task is one file here: a module-level :class:`~pipelines.tasks.base.Task` of its family,
with its published files, reader and paper scores (the offline world's copy of its files is
``geopile.world.downstream.FIXTURES``). The registry finds it.
"""

from __future__ import annotations

import importlib
import pkgutil

from geopile.downstream import DownstreamSet
from pipelines.tasks.base import Task

FAMILIES = ("base", "classification", "dense")  # the contract and the kinds, not tasks


def _discover() -> dict[str, Task]:
    """Every module-level ``Task`` of the package's task files, by name."""
    found: dict[str, Task] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in FAMILIES:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Task):
                if found.get(value.name, value) is not value:
                    raise RuntimeError(f"two tasks are called {value.name!r} ({module.__name__})")
                found[value.name] = value
    return found


TASKS: dict[str, Task] = _discover()


def list_tasks() -> list[str]:
    """Every task's name (by task file)."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error listing the others."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {list_tasks()}") from None


def downstream_sets() -> dict[str, DownstreamSet]:
    """The published sets ``geopile fetch`` gets, by dataset (BigEarthNet once for two tasks)."""
    return {t.dataset: t.published for t in TASKS.values() if t.published is not None}
