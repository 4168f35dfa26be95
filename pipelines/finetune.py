"""``geopile finetune TASK --init ...``: any registered task, on the training engine.

``--init`` is a pretraining run of ours (its ``encoder/``), ``imagenet22k`` (the baseline: the
ImageNet-22k Swin-B, from timm or ``finetune.imagenet22k.file``) or ``random``
(:mod:`pipelines.encoders`). The task (:mod:`pipelines.tasks`) brings its data, head, recipe,
step and evaluation; the engine (:mod:`pipelines.engine`) trains, checkpoints and resumes;
this module joins them and scores the selected checkpoint on test.

A run directory (``paths.runs``/finetune/TASK/INIT) holds ``config.json``,
``checkpoints/last.pt`` (resumable), ``checkpoints/best.pt`` (best validation score, where the
task has a validation split), ``metrics.json`` (``{"task", "dataset", "init", "scores": {metric:
test score}}``, read by ``geopile arp``) and ``history.csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geopile.settings import Settings
from pipelines.encoders import resolve_init
from pipelines.engine import (
    Run,
    file_digest,
    fingerprint,
    init_distributed,
    rank0_first,
    seed_everything,
    write_json,
)
from pipelines.tasks import get_task

log = logging.getLogger(__name__)


def run_dir(settings: Settings, task: str, init_name: str) -> Path:
    """Where a finetuning run lives."""
    return settings.paths.runs / "finetune" / task / init_name


def run_finetune(settings: Settings, task_name: str, init: str, *, resume: bool = False,
                 length: int | None = None, progress: bool = True,
                 out: Path | None = None) -> dict[str, Any]:
    """Finetune ``init`` on ``task_name``; returns rank 0's metrics.

    ``length`` overrides the recipe's epochs (classification) or iterations (dense tasks).
    """
    task = get_task(task_name)
    recipe = settings.finetune
    seed = settings.seed
    where = init_distributed()
    img_size, window = task.geometry(recipe)
    encoder = resolve_init(init, recipe, img_size, window, settings.paths.runs,
                           ours=settings.ablation[0])
    root = out or run_dir(settings, task.name, encoder.name)

    seed_everything(seed)
    splits = rank0_first(where, lambda: task.splits(settings))
    prepared = task.prepare(recipe, splits, encoder, where, seed, length)
    override = recipe.tasks.get(task.name)  # e.g. Vaihingen's ground truth
    stamp = fingerprint(task=task.name, weights=file_digest(encoder.file),
                        window=window, seed=seed, world=where.world,
                        override=override.model_dump() if override else None,
                        **prepared.identity)
    run = Run(root, where, prepared.model, prepared.optimizer, prepared.scheduler,
              prepared.batches, prepared.loop, stamp, prepared.columns,
              desc=f"finetune {task.name} ({encoder.name})", tag="finetune",
              progress=progress)
    if resume:
        run.resume()
    if where.main:
        write_json(root / "config.json", {
            "task": task.name, "dataset": task.dataset, "family": task.family, "init": init,
            "init_name": encoder.name, "weights": encoder.file,
            "architecture": encoder.spec.name, "arch": encoder.spec.arch, "img_size": img_size,
            "window_size": window, "world_size": where.world, "seed": seed,
            "protocol": task.protocol, "settings": recipe.model_dump(), **prepared.config})
        for name, data in prepared.files.items():
            write_json(root / name, data)

    validate = prepared.evaluate if prepared.loop.eval_every else None
    run.fit(prepared.step, (lambda model: validate(model, "val")) if validate else None)
    run.load_best()
    results = prepared.evaluate(prepared.model, "test")
    metrics: dict[str, Any] = {}
    if where.main:
        metrics = {"task": task.name, "dataset": task.dataset, "init": encoder.name,
                   "scores": {k: results[k] for k in task.scores},
                   "details": {k: v for k, v in results.items() if k not in task.scores},
                   "val": run.best, "steps": run.step,
                   "epochs": round(run.step / prepared.loop.steps_per_epoch, 3),
                   "train_samples": prepared.config["train"], "world_size": where.world,
                   "weights": encoder.file}
        write_json(root / "metrics.json", metrics)
    return metrics
