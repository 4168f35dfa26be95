"""Typed settings for the whole of ``params.yaml``, checked once before any stage starts.

Each block is a :class:`geopile.schema.Block`; each source's block is the settings model its
own file declares (``Source.settings``), and the sources' union is built from the source
registry, so a new source is one file here too. :func:`check_params` validates the merged
params once, with the names that must refer to something elsewhere (:func:`_cross_checks`),
and returns the typed :class:`Settings` every stage then reads; every problem becomes one line
(:mod:`geopile.settings_messages`) and they are raised together as one
:class:`~geopile.params.ParamsError`.

An md5 that YAML read as an integer (an all-digit md5 written unquoted) is refused, not
repaired: YAML 1.1 reads such a string as decimal, or as *octal* when it starts with ``0``, so
the integer alone does not say which digits were written; the fix (quote it) is in the message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from geopile.params import ParamsError
from geopile.payloads import PayloadStore, open_payloads
from geopile.schema import (
    Block,
    Cap,
    Md5,
    Number,
    Omit,
    PathText,
    SourceSettings,
    Text,
    Urls,
    Workers,
)
from geopile.settings_messages import describe, suggest
from geopile.settings_messages import field_at as _field_at
from geopile.sources import SOURCES


class Build(Block):
    """One entry of ``builds:``: ``source: cap`` for each of its sources, and its options.

    Any key but an option is a source, so the sources are the model's extra keys, each a
    :data:`Cap` (:func:`_cross_checks` checks that they name sources). ``allow_short`` is a
    reserved key: never a source, and only ``true`` or ``false``.
    """

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    __pydantic_extra__: dict[str, Cap] = Field(init=False)
    # what a source's key is, for error messages and field_at (pydantic keeps no field for it)
    SOURCE_FIELD: ClassVar[FieldInfo] = FieldInfo.from_annotated_attribute(
        Cap, Field(description="a source of the build: its image count, or 'all'"))

    allow_short: Omit[bool] = Field(
        None, description="true: write the build even where a source has fewer images left "
        "than its cap asks; the shortfall goes into index.json and the card")

    @property
    def caps(self) -> dict[str, int | str]:
        """``source -> cap`` (an image count, or ``all``), in the order written."""
        return dict(self.__pydantic_extra__ or {})

    @model_validator(mode="after")
    def _names_a_source(self) -> Build:
        if not self.__pydantic_extra__:
            raise ValueError("must name at least one source: {source: count or 'all'}")
        return self


# ---------------------------------------------------------------------------------------------
# top-level blocks


class Paths(Block):
    """``paths:`` where each stage reads and writes."""

    data: PathText = Field(description="records, downloads and original bytes")
    reports: PathText = Field(description="curate's metrics and plots")
    shards: PathText = Field(description="shards/BUILD")
    runs: PathText = Field(description="pretraining and finetuning runs")
    payloads: str | None = Field(
        None, description="image payloads (raw/...): null: under data; a directory, or "
        "s3://bucket/prefix so that cluster nodes share nothing but object storage")

    @field_validator("payloads")
    @classmethod
    def _payloads(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not re.fullmatch(r"s3://[^/]+(/.*)?", value):
            raise ValueError("a directory or s3://bucket/prefix")
        return value

    def payload_store(self) -> PayloadStore:
        """Where the payloads are read and written (:mod:`geopile.payloads`)."""
        return open_payloads(self.payloads, self.data)


class Ingest(Block):
    """``ingest:`` shared by every source."""

    workers: Workers = Field(ge=1, description="decode/hash processes")
    engine: Literal["local", "ray"] = Field(
        description="local: a pool on this machine; ray: Ray tasks (ingest and shard)")
    ray_address: str | None = Field(
        None, description="the Ray cluster: null starts one here; auto, host:port, ray://...")


# ---------------------------------------------------------------------------------------------
# sources: each kind's model is its source file's (``Source.settings``); the kind is ``type:``
# or the source's name


SOURCE_SETTINGS: dict[str, type[SourceSettings]] = {kind: cls.settings
                                                    for kind, cls in SOURCES.items()}


def _kind(value: Any) -> str | None:
    return value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)


AnySource = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in SOURCE_SETTINGS.items())],  # noqa: UP007
    Discriminator(_kind),
]


class ContactSheet(Block):
    """``curate.contact_sheet``."""

    samples: int = Field(ge=1, description="images per sheet")
    thumb: int = Field(ge=1, description="thumbnail side in pixels")


class Curate(Block):
    """``curate:`` deduplication, decontamination and filters."""

    radius: int = Field(ge=0, le=63, description="crop-hash word-1 radius, of 63 bits")
    total_radius: int = Field(ge=0, le=120, description="both crop-hash words, of 120 bits")
    min_correlation: Number = Field(gt=0, le=1, description="aligned thumbnail correlation")
    priority: list[Text] = Field(description="source names, the copy kept first")
    eval_sets: dict[str, list[Text]] = Field(description="source: [splits]")
    min_entropy: Number | None = Field(ge=0, le=8, description="bits; null keeps everything")
    max_nodata: Number | None = Field(ge=0, le=1, description="a fraction; null keeps all")
    contact_sheet: ContactSheet = Field(description="the contact sheets per source")


class Shard(Block):
    """``shard:`` how builds are written."""

    max_samples: int = Field(ge=1, description="samples per shard")
    max_bytes: int = Field(ge=1, description="bytes per shard")
    naip_bands: Literal[3, 4] = Field(description="3: RGB JPEG; 4: R,G,B,NIR GeoTIFF")
    jpeg_quality: int = Field(ge=1, le=100, description="for images not JPEG already")
    mtime: int = Field(ge=0, description="tar member mtime")
    cap_scale: Number = Field(gt=0, description="multiplies every build's caps: 0.01, a 1% build")


class DownstreamFiles(Block):
    """``downstream.SET``: a downstream set's URLs and md5s by published file.

    The file names are the task files' (``pipelines/tasks``); the pipelines check them against
    the registry (:func:`check_params`'s ``sets``).
    """

    urls: Omit[dict[str, Urls]] = Field(None, description="your mirrors (or a local path) by "
                                        "file, tried first")
    md5s: Omit[dict[str, Md5]] = Field(None, description="md5s by file; null: no check")
    mirror_root: Omit[Text] = Field(None, description="a copy of the web as <root>/<host>/<path>")


class Weights(Block):
    """A timm name or a local checkpoint (``pretrain.teacher``, ``finetune.imagenet22k``)."""

    name: Text | None = Field(description="a timm model name; null: the model's")
    file: Text | None = Field(description="a local checkpoint; null: timm downloads it")


class Stream(Block):
    """``pretrain.stream``: where the shards are read from."""

    url: Annotated[str, Field(pattern=r"^s3://[^/]+")] | None = Field(
        description="s3://bucket/prefix; null: the local shards")
    cache_dir: Text | None = Field(description="local cache of whole S3 shards")
    cache_bytes: int = Field(ge=0, description="the cache's size in bytes")
    max_bad_per_shard: int = Field(
        ge=0, description="samples failing their xxh3 skipped per shard before the run stops")


class Energy(Block):
    """``pretrain.energy``: codecarbon's offline tracker."""

    enabled: bool = Field(description="measure energy and CO2e")
    country: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = Field(
        description="ISO 3166 alpha-3, e.g. USA")
    pue: Number = Field(ge=1, description="power usage effectiveness, >= 1")
    carbon_intensity: Number | None = Field(ge=0, description="g CO2e/kWh")
    interval_s: Number = Field(gt=0, description="seconds between power samples")


class Pretrain(Block):
    """``pretrain:`` GFM continual pretraining."""

    launcher: Text = Field(description="the command dvc.yaml starts runs with")
    model: Text = Field(description="swin-b or tiny")
    teacher: Weights = Field(description="the frozen teacher")
    alpha: Number = Field(ge=0, description="weight of L_feat")
    distill_stage: int = Field(ge=1, le=4, description="the distilled stage")
    bands: list[Text] | None = Field(min_length=1, description="band names; null: RGB")
    teacher_bands: list[Text] | None = Field(
        min_length=3, max_length=3, description="the teacher's 3 bands; null: bands[:3]")
    batch_size: int = Field(ge=1, description="images per process")
    accumulate: int = Field(ge=1, description="gradient accumulation steps")
    epochs: int = Field(ge=1, description="passes over the build")
    warmup_epochs: int = Field(ge=0, description="epochs of linear warm-up")
    steps: int | None = Field(ge=1, description="optimiser steps; null: from epochs")
    base_lr: Number = Field(gt=0, description="per 512 images of global batch")
    warmup_lr: Number = Field(ge=0, description="per 512 images of global batch")
    min_lr: Number = Field(ge=0, description="per 512 images of global batch")
    weight_decay: Number = Field(ge=0, description="AdamW weight decay")
    betas: list[Annotated[Number, Field(ge=0, lt=1)]] = Field(
        min_length=2, max_length=2, description="AdamW betas")
    eps: Number = Field(gt=0, description="AdamW eps")
    clip_grad: Number = Field(gt=0, description="gradient norm clip")
    compile: bool = Field(description="torch.compile on the GPU")
    workers: Workers = Field(ge=0, description="DataLoader workers per process")
    checkpoint_every: int = Field(ge=1, description="optimiser steps")
    log_every: int = Field(ge=1, description="optimiser steps")
    trace: bool = Field(description="log sample keys and weight digests per step")
    stream: Stream = Field(description="where the shards come from")
    energy: Energy = Field(description="energy and carbon accounting")


class TaskOverride(Block):
    """``finetune.tasks.TASK``: overrides of what the task file declares."""

    img_size: Omit[int] = Field(None, ge=1, description="input (or crop) size in pixels")
    window_size: Omit[int] = Field(None, ge=1, description="Swin window")
    ground_truth: Omit[Literal["eroded", "full"]] = Field(
        None, description="segmentation reference with an eroded variant (vaihingen)")


class Dense(Block):
    """``finetune.dense``: segmentation, change detection, super-resolution (UperNet)."""

    iterations: int = Field(ge=1, description="training iterations")
    warmup_iters: int = Field(ge=0, description="warm-up iterations")
    batch_size: int = Field(ge=1, description="per process")
    lr: Number = Field(gt=0, description="learning rate")
    warmup_ratio: Number = Field(ge=0, description="warm-up start, x lr")
    power: Number = Field(ge=0, description="poly decay power")
    min_lr: Number = Field(ge=0, description="learning rate floor")
    weight_decay: Number = Field(ge=0, description="AdamW weight decay")
    layer_decay: Number = Field(gt=0, le=1, description="per-layer lr decay")
    drop_path: Number = Field(ge=0, lt=1, description="stochastic depth")
    decoder_channels: int = Field(ge=1, description="UperNet channels")
    eval_every: int = Field(ge=1, description="iterations between validations")
    workers: Workers = Field(ge=0, description="DataLoader workers")


class Finetune(Block):
    """``finetune:`` the reference downstream recipe."""

    model: Text = Field(description="architecture of --init random / imagenet22k")
    imagenet22k: Weights = Field(description="the baseline's weights")
    epochs: int = Field(ge=1, description="training epochs")
    warmup_epochs: int = Field(ge=0, description="warm-up epochs")
    batch_size: int = Field(ge=1, description="per process")
    base_lr: Number = Field(gt=0, description="per 512 images of global batch")
    warmup_lr: Number = Field(ge=0, description="per 512 images of global batch")
    min_lr: Number = Field(ge=0, description="per 512 images of global batch")
    weight_decay: Number = Field(ge=0, description="AdamW weight decay")
    layer_decay: Number = Field(gt=0, le=1, description="per-layer lr decay")
    drop_path: Number = Field(ge=0, lt=1, description="stochastic depth")
    mixup: Number = Field(ge=0, description="mixup alpha; 0: off")
    cutmix: Number = Field(ge=0, description="cutmix alpha; 0: off")
    label_smoothing: Number = Field(ge=0, lt=1, description="label smoothing")
    clip_grad: Number = Field(gt=0, description="gradient norm clip")
    workers: Workers = Field(ge=0, description="DataLoader workers")
    tasks: dict[str, TaskOverride] = Field(description="per task: overrides of its task file")
    dense: Dense = Field(description="the dense tasks' schedule")


class Settings(Block):
    """All of ``params.yaml`` (after overlays), typed."""

    seed: int = Field(ge=0, description="the seed of every sample and shuffle")
    paths: Paths = Field(description="where stages read and write")
    ingest: Ingest = Field(description="ingest settings shared by sources")
    sources: dict[str, AnySource] = Field(description="the sources, by name")
    downstream: dict[str, DownstreamFiles] = Field(description="downstream sets' URLs and md5s")
    curate: Curate = Field(description="curation")
    shard: Shard = Field(description="shard writing")
    builds: dict[str, Build] = Field(
        description="build: {source: count or 'all', allow_short: true or false}")
    ablation: list[Text] = Field(
        min_length=1, description="builds dvc repro pretrains on and finetunes every task from; "
        "the first is --init ours and the report's model")
    pretrain: Pretrain = Field(description="pretraining")
    finetune_tasks: list[Text] = Field(description="tasks dvc repro finetunes on")
    downstream_sets: list[Text] = Field(description="sets geopile fetch --all gets")
    finetune_baselines: list[Text] = Field(
        min_length=1, description="inits finetuned once per task to compare the builds with "
        "(imagenet22k, random); ARP is against the last")
    finetune: Finetune = Field(description="finetuning")

    @model_validator(mode="before")
    @classmethod
    def _source_kinds(cls, data: Any) -> Any:
        """A source's kind is its ``type:``, or else its name (as in geopile.sources)."""
        if isinstance(data, Mapping) and isinstance(data.get("sources"), Mapping):
            data = {**data, "sources": {
                name: {**block, "type": name} if isinstance(block, Mapping)
                and "type" not in block else block
                for name, block in data["sources"].items()}}
        return data


# ---------------------------------------------------------------------------------------------
# checking


def check_params(params: Mapping[str, Any], files: Sequence[str | Path] = (), *,
                 tasks: Iterable[str] | None = None,
                 sets: Mapping[str, Iterable[str]] | None = None) -> Settings:
    """Validate merged params; every problem in one :class:`ParamsError`, none on success.

    Call it once, after loading and before any stage does work: a bad value must never get as
    far as deleting or overwriting earlier output. ``files`` are named in the error. ``tasks``
    and ``sets`` (downstream set -> its file keys) are the pipelines' task registry: names
    under ``finetune_tasks``, ``finetune.tasks``, ``downstream`` and ``downstream_sets`` must be
    among them.
    """
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(dict(params))
    except ValidationError as err:
        problems = [describe(e, params, Settings, SOURCE_SETTINGS)
                    for e in err.errors(include_url=False)]
    renamed = _renamed(params)
    if renamed:  # the schema's "not a known key" would say less
        problems = [p for p in problems if not any(p.startswith(r.split(":")[0]) for r in renamed)]
    problems = list(dict.fromkeys(renamed + problems + _cross_checks(params, tasks, sets)))
    if settings is not None and not problems:
        return settings
    where = " + ".join(str(f) for f in files) or "the params"
    if len(problems) == 1:  # one line, as every other error of the CLI
        raise ParamsError(f"{where}: {problems[0]}", problems=problems)
    lines = "\n".join(f"  {p}" for p in problems)
    raise ParamsError(f"{where}: {len(problems)} invalid parameters (nothing was run):\n{lines}",
                      problems=problems)


def field_at(path: Sequence[str], params: Mapping[str, Any]) -> FieldInfo | None:
    """The schema field for a key path of ``params`` (``None``: no field declares it)."""
    return _field_at(Settings, path, params)


class _References:
    """Names in the params that must refer to something: each miss becomes one problem line.

    Works on the raw params, so that it reports alongside the schema's errors; a block of the
    wrong type is skipped (the schema reports it once).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params
        self.problems: list[str] = []

    def block(self, name: str, within: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
        value = (self.params if within is None else within).get(name)
        return value if isinstance(value, Mapping) else None

    @staticmethod
    def listed(value: Any) -> list[tuple[int, str]]:
        return [(i, v) for i, v in enumerate(value if isinstance(value, list) else [])
                if isinstance(v, str)]

    def need(self, key: str, value: str, known: Iterable[str] | None, noun: str,
             where: str) -> None:
        if known is None:  # the block itself is wrong: the schema says so, once
            return
        known = set(known)
        if value not in known:
            place = f" under {where}" if where else ""
            self.problems.append(f"{key}: no {noun} {value!r}{place}{suggest(value, known)}")

    def builds_and_sources(self) -> None:
        """Builds, curate.priority and curate.eval_sets name sources; others name builds."""
        sources, builds = self.block("sources"), self.block("builds")
        curate = self.block("curate") or {}
        options = list(Build.model_fields)  # allow_short: never a source (offered for a typo)
        for build, caps in (builds or {}).items():
            for source in caps if isinstance(caps, Mapping) else {}:
                if source not in options:
                    self.need(f"builds.{build}.{source}", source,
                              None if sources is None else [*sources, *options], "source",
                              "sources")
        for i, build in self.listed(self.params.get("ablation")):
            self.need(f"ablation[{i}]", build, builds, "build", "builds")
        for i, init in self.listed(self.params.get("finetune_baselines")):
            if init not in BASELINES:
                self.problems.append(f"finetune_baselines[{i}]: {init!r} is not a baseline "
                                     f"(one of {', '.join(BASELINES)})")
        for name in BASELINES & set(builds or {}):  # runs/finetune/TASK/<build or baseline>
            self.problems.append(f"builds.{name}: a build may not be named like a baseline")
        for i, source in self.listed(curate.get("priority")):
            self.need(f"curate.priority[{i}]", source, sources, "source", "sources")
        for source in self.block("eval_sets", curate) or {}:
            self.need(f"curate.eval_sets.{source}", source, sources, "source", "sources")

    def tasks(self, tasks: Iterable[str] | None, sets: Mapping[str, Iterable[str]] | None,
              ) -> None:
        """finetune_tasks and finetune.tasks name tasks; downstream_sets name sets."""
        for key, known, noun in (("finetune_tasks", tasks, "task"),
                                 ("downstream_sets", sets, "downstream set")):
            for i, name in self.listed(self.params.get(key)) if known is not None else []:
                self.need(f"{key}[{i}]", name, known, noun, "pipelines/tasks")
        overrides = self.block("tasks", self.block("finetune") or {})
        for task in (overrides or {}) if tasks is not None else {}:
            self.need(f"finetune.tasks.{task}", task, tasks, "task", "pipelines/tasks")

    def downstream(self, sets: Mapping[str, Iterable[str]] | None) -> None:
        """downstream.SET names a set; its urls and md5s name the set's files."""
        if sets is None:
            return
        for name, files in (self.block("downstream") or {}).items():
            self.need(f"downstream.{name}", name, sets, "downstream set", "pipelines/tasks")
            for key in ("urls", "md5s"):
                given = files.get(key) if isinstance(files, Mapping) else None
                for which in given if isinstance(given, Mapping) and name in sets else {}:
                    self.need(f"downstream.{name}.{key}.{which}", which, sets[name], "file",
                              f"the {name} set")


BASELINES = {"imagenet22k", "random"}  # inits that need no pretraining run
# keys an earlier GeoPile read, and what took their place
RENAMED = {"pretrain_builds": "ablation (each build is pretrained and every task finetuned "
                              "from it; the first is --init ours)",
           "finetune_inits": "finetune_baselines (ours is now every build of ablation)",
           "finetune.pretrained": "ablation (its first build is --init ours)"}


def _renamed(params: Mapping[str, Any]) -> list[str]:
    found = []
    for old, new in RENAMED.items():
        block, _, key = old.rpartition(".")
        holder = params.get(block) if block else params
        if isinstance(holder, Mapping) and key in holder:
            found.append(f"{old}: renamed; use {new}")
    return found


def _cross_checks(params: Mapping[str, Any], tasks: Iterable[str] | None,
                  sets: Mapping[str, Iterable[str]] | None) -> list[str]:
    """Names that must refer to something elsewhere in the params, as problem lines."""
    refs = _References(params)
    refs.builds_and_sources()
    refs.tasks(tasks, sets)
    refs.downstream(sets)
    return refs.problems
