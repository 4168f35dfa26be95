"""The ``geopile`` commands, one module each: ``NAME``, ``HELP``, ``add_arguments``, ``run``.

A command module is cheap to import (the CLI builds its parser from all of them); what its
``run`` needs it imports there: DVC runs one process per stage, and torch, timm and friends cost
seconds to import. ``PARAMS`` says what the CLI hands ``run``: ``"none"`` (the command reads no
params, or only names their files), ``"settings"`` (the params validated once, typed) or
``"tasks"`` (validated against the task registry too, which imports torch).
"""

from __future__ import annotations

from types import ModuleType

from pipelines.commands import (
    arp,
    curate,
    demo,
    fetch,
    finetune,
    ingest,
    pretrain,
    push,
    report,
    shard,
    sources,
    stac,
    summary,
    verify,
    workspace,
    world,
)

# in the order ``geopile --help`` lists them
COMMANDS: dict[str, ModuleType] = {module.NAME: module for module in (
    world, ingest, summary, stac, curate, shard, push, verify, pretrain, fetch, sources, finetune,
    arp, report, demo, workspace)}
