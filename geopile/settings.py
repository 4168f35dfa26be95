"""Typed settings for every block of ``params.yaml``, checked once before any stage starts.

``params.yaml`` holds the only defaults. A field here is therefore required when
``params.yaml`` sets it, and optional (``None``: the code's own fallback applies) only where a
valid file may leave it out today: a user's ``folder`` source, NAIP's ``seed`` / ``backoff_s`` /
``gdal_env``, a mirror's ``urls`` / ``md5s``. Every model forbids unknown keys, so a typo is an
error with a suggestion instead of a silently ignored setting, and types are strict: ``"ten"``
is not a count and ``true`` is not a number.

An md5 that YAML read as an integer (an all-digit md5 written unquoted) is refused, not
repaired: YAML 1.1 reads such a string as decimal, or as *octal* when it starts with ``0``, so
the integer alone does not say which digits were written; the fix (quote it) is in the message.

:func:`check_params` turns every problem into one line, ``KEY: VALUE is invalid: WHY (WHAT)``,
and raises them together as one :class:`~geopile.params.ParamsError`.
"""

from __future__ import annotations

import datetime
import difflib
import os
import re
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from geopile.params import ParamsError
from geopile.sources import SOURCES
from geopile.stac import SIGNERS

T = TypeVar("T")


class Block(BaseModel):
    """One params block: unknown keys and loose types are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# value types


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("geopile", message)


def _not_null(value: Any) -> Any:
    if value is None:
        raise _fail("must not be null: leave the key out to use the default")
    return value


# a key a file may leave out (the code's fallback applies), but not set to null
Omit = Annotated[T | None, BeforeValidator(_not_null)]

# PyYAML (YAML 1.1) reads 1e-8 and 1.0e8 as strings: a float field takes them as numbers
_YAML_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any) -> Any:
    if isinstance(value, str) and _YAML_FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


Number = Annotated[float, BeforeValidator(_number)]
Text = Annotated[str, Field(min_length=1)]


def _md5(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise PydanticCustomError("md5_number", "an md5 must be quoted: YAML read it as a number")
    if isinstance(value, str) and not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        raise _fail("must be an md5: 32 hexadecimal digits, quoted")
    return value


Md5 = Annotated[str | None, BeforeValidator(_md5)]


def _urls(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value) or (
            isinstance(value, list) and value and all(isinstance(u, str) and u for u in value)):
        return value
    raise _fail("must be a URL (or local path), or a list of them: your mirrors, tried first")


Urls = Annotated[str | list[str] | None, BeforeValidator(_urls)]


def _cap(value: Any) -> Any:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise _fail("must be an image count >= 1, or 'all'")


Cap = Annotated[int | str, BeforeValidator(_cap)]

WORKERS_PER_CPU = 16  # threads for network reads go this far; processes far less


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, as taskset and cgroups set it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def too_many_workers(value: int) -> str | None:
    """Why a worker count is more than this machine can run (a typo, a paste), or None."""
    cpus = cpu_count()
    if value > WORKERS_PER_CPU * cpus:
        return (f"more than {WORKERS_PER_CPU} workers per CPU: this machine has {cpus} CPUs, "
                f"so at most {WORKERS_PER_CPU * cpus}")
    return None


def _workers(value: int) -> int:
    if (why := too_many_workers(value)) is not None:
        raise _fail(why)
    return value


Workers = Annotated[int, AfterValidator(_workers)]


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

    @model_validator(mode="after")
    def _names_a_source(self) -> Build:
        if not self.__pydantic_extra__:
            raise ValueError("must name at least one source: {source: count or 'all'}")
        return self


def _gsd(value: Any) -> Any:
    pair = value if isinstance(value, list) else [value]
    if (len(pair) in (1, 2)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                    for v in pair) and pair[0] <= pair[-1]):
        return value
    raise _fail("must be a GSD in metres > 0, or [min, max]")


def _year(value: Any) -> Any:
    if isinstance(value, bool) or not re.fullmatch(r"\d{4}", str(value)):
        raise _fail("must be a four-digit year")
    return value


def _signer(value: Any) -> Any:
    if value is None or (isinstance(value, str)
                         and (value in SIGNERS or re.fullmatch(r"[\w.]+:\w+", value))):
        return value
    raise _fail(f"must be one of {', '.join(sorted(SIGNERS))} or 'package.module:function'")


def _bbox(value: Any) -> Any:
    ok = (isinstance(value, list) and len(value) == 4
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))
    if value is None or (ok and value[0] < value[2] and value[1] < value[3]):
        return value
    raise _fail("must be [west, south, east, north] in degrees, west < east and south < north")


def _datetime(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise _fail("must be text (YAML reads an unquoted date as a date): quote it, "
                "e.g. datetime: '2020-01-01/2020-12-31'")


# ---------------------------------------------------------------------------------------------
# top-level blocks


class Paths(Block):
    """``paths:`` where each stage reads and writes."""

    data: Text = Field(description="records, downloads and original bytes")
    reports: Text = Field(description="curate's metrics and plots")
    shards: Text = Field(description="shards/BUILD")
    runs: Text = Field(description="pretraining and finetuning runs")


class Ingest(Block):
    """``ingest:`` shared by every source."""

    workers: Workers = Field(ge=1, description="decode/hash processes")
    engine: Literal["local", "ray"] = Field(
        description="local: a pool on this machine; ray: Ray tasks (ingest and shard)")
    ray_address: str | None = Field(
        None, description="the Ray cluster: null starts one here; auto, host:port, ray://...")


# ---------------------------------------------------------------------------------------------
# sources: one model per kind; the kind is ``type:`` or the source's name


class SourceSettings(Block):
    """What every source kind accepts."""

    type: Omit[str] = Field(None, description="the source kind")
    enabled: bool = Field(description="false: ingest writes empty records")
    role: Literal["pretrain", "eval"] = Field(
        description="pretrain: in the shards; eval: only for decontamination")
    workers: Omit[Workers] = Field(None, ge=1, description="parallel workers for this source")
    licence: Omit[Text] = Field(None, description="overrides the published licence")
    citation: Omit[Text] = Field(None, description="how to cite the images (text or BibTeX)")
    origin: Omit[Text] = Field(None, description="where the images come from, for the card")
    homepage: Omit[Text] = Field(None, description="where the images come from, for the card")
    max_error_fraction: Omit[Number] = Field(
        None, ge=0, le=1, description="share of unreadable images that stops the ingest")


class StacSearch(SourceSettings):
    """What every STAC-sampled source searches: the API, collection, signer, area and time."""

    stac_url: Annotated[str, Field(pattern=r"^https?://")] = Field(
        description="the STAC API's URL")
    collection: Text = Field(description="the STAC collection")
    signer: Annotated[str | None, BeforeValidator(_signer)] = Field(
        description="signs asset hrefs at read time")
    bbox: Annotated[list[float] | None, BeforeValidator(_bbox)] = Field(
        description="search area, EPSG:4326")
    datetime: Annotated[str | None, BeforeValidator(_datetime)] = Field(
        description="STAC datetime interval")


class NaipSettings(StacSearch):
    """``sources.naip``: patches sampled from a STAC API (geopile/sources/naip.py)."""

    states: list[Annotated[str, Field(pattern=r"^[A-Za-z]{2}$")]] = Field(
        description="two-letter state codes; [] for every state")
    years: list[Annotated[int | str, BeforeValidator(_year)]] = Field(
        description="years; [] for every year")
    gsds: list[Annotated[Number, Field(gt=0)]] = Field(description="native tile GSDs accepted")
    count: int = Field(ge=1, description="a patch count")
    patch_size: int = Field(ge=1, description="patch side in pixels")
    target_gsd: Number = Field(gt=0, description="metres per output pixel")
    max_nodata: Number = Field(ge=0, le=1, description="a fraction of all-zero pixels")
    min_entropy: Number = Field(ge=0, le=8, description="bits of grayscale entropy")
    max_draws_factor: int = Field(ge=1, description="draws per stratum, x its quota")
    workers: Workers = Field(ge=1, description="parallel window reads (threads)")
    retries: int = Field(ge=0, description="retries of a failed window read")
    max_error_fraction: Number = Field(
        ge=0, le=1, description="share of unreadable windows that stops the ingest")
    page_size: int = Field(ge=1, description="STAC items per page")
    seed: Omit[int] = Field(None, ge=0, description="overrides the top-level seed for NAIP")
    backoff_s: Omit[Number] = Field(None, ge=0, description="seconds before the first retry")
    gdal_env: Omit[dict[str, str | int | float | bool]] = Field(
        None, description="GDAL configuration options for the COG reads")


def _query(value: Any) -> Any:
    """The STAC query extension's ``{property: {op: value}}``, checked like the source does."""
    from geopile.sources.stac import QUERY_OPS  # noqa: PLC0415 - the operators live there

    if value is None:
        return value
    if not isinstance(value, dict):
        raise ValueError(f"expected {{property: {{op: value}}}}, got {_show(value)}")
    for prop, cond in value.items():
        for op in cond if isinstance(cond, dict) else ():
            if op not in QUERY_OPS:
                raise ValueError(f"{prop}: unknown operator {op!r}; use one of "
                                 f"{', '.join(QUERY_OPS)}")
    return value


class Harmonize(Block):
    """A collection's change of scale: subtract ``offset`` from the bands of later items."""

    property: Text = Field(description="the item property that dates the change")
    since: Text = Field(description="items whose property is >= this (as text) are shifted")
    offset: int = Field(gt=0, description="added to every band value by later processing")


class StacSettings(StacSearch):
    """``type: stac``: multi-band patches of any STAC collection (geopile/sources/stac.py)."""

    query: Annotated[dict[str, Any] | None, BeforeValidator(_query)] = Field(
        description="item property filters (STAC query extension: eq/neq/lt/lte/gt/gte/in)")
    assets: list[Text] = Field(min_length=1, description="asset keys stacked as bands, in order")
    strata: list[Annotated[str, Field(pattern=r"^(month|year|grid:[0-9.]+|[A-Za-z0-9:_.-]+)$")]
                 ] = Field(description="item properties, month, year or grid:<degrees>")
    count: int = Field(ge=1, description="a patch count")
    patch_size: int = Field(ge=1, description="patch side in pixels")
    target_gsd: Number = Field(gt=0, description="metres per output pixel")
    max_nodata: Number = Field(ge=0, le=1, description="a fraction of nodata pixels")
    min_entropy: Number = Field(ge=0, le=8, description="bits of preview grayscale entropy")
    max_cloud: Number | None = Field(ge=0, le=1, description="a fraction of cloud pixels")
    cloud_asset: str | None = Field(description="scene classification asset (SCL); null: none")
    cloud_classes: list[int] = Field(description="cloud_asset classes counted as cloud")
    max_draws_factor: int = Field(ge=1, description="draws per stratum, x its quota")
    retries: int = Field(ge=0, description="retries of a failed window read")
    page_size: int = Field(ge=1, description="STAC items per page")
    requester_pays: bool = Field(False, description="S3 requester-pays buckets")
    aws_profile: Omit[Text] = Field(None, description="AWS profile for requester-pays reads")
    seed: Omit[int] = Field(None, ge=0, description="overrides the top-level seed")
    backoff_s: Omit[Number] = Field(None, ge=0, description="seconds before the first retry")
    gdal_env: Omit[dict[str, str | int | float | bool]] = Field(
        None, description="GDAL configuration options for the COG reads")
    harmonize: Omit[Harmonize] = Field(
        None, description="put items of a later processing baseline on the earlier scale")


class Rsd46Settings(SourceSettings):
    """``sources.rsd46``: a user-supplied archive (no public URL)."""

    archive: str | None = Field(description="path of your RSD46-WHU zip or tar")
    md5: Md5 = Field(None, description="checks the archive when given")
    image_root: Omit[Text] = Field(None, description="top folder inside the archive")
    gsd_m: Annotated[Omit[Any], BeforeValidator(_gsd)] = Field(None, description="GSD range")


class FolderSettings(SourceSettings):
    """``sources.NAME: {type: folder, path: ...}``: your own ImageFolder directory or archive."""

    enabled: Omit[bool] = Field(None, description="false: ingest writes empty records")
    role: Omit[Literal["pretrain", "eval"]] = Field(
        None, description="pretrain: in the shards; eval: only for decontamination")
    path: Text = Field(description="a directory or zip/tar of <class>/<image>")
    md5: Md5 = Field(None, description="checks an archive when given")
    image_root: Omit[Text] = Field(None, description="sub-folder holding the class folders")
    classes: Omit[list[Text]] = Field(None, description="the class order")
    gsd_m: Annotated[Omit[Any], BeforeValidator(_gsd)] = Field(None, description="GSD range")


def _files_model(name: str, keys: Iterable[str], value: Any, what: str) -> type[Block]:
    """A block whose keys are the published files (so a misspelt file name is caught)."""
    return create_model(name, __base__=Block, __doc__=f"{what} per published file.",
                        **{k: (value, Field(None, description=what)) for k in keys})


def _archive_model(kind: str) -> type[SourceSettings]:
    """The settings of a published archive source: its files' URLs and md5s are overridable."""
    downloads = list(SOURCES[kind].publication.downloads)
    title = "".join(part.title() for part in kind.split("_"))
    urls = _files_model(f"{title}Urls", downloads, Urls, "your mirrors, tried first")
    md5s = _files_model(f"{title}Md5s", downloads, Md5, "null: no check")
    return create_model(
        f"{title}Settings", __base__=SourceSettings,
        __doc__=f"``sources.{kind}``: {SOURCES[kind].publication.name}, downloaded.",
        urls=(Omit[urls], Field(None, description="your mirrors by file")),
        md5s=(Omit[md5s], Field(None, description="md5s by file")),
        mirror_root=(Omit[Text], Field(None, description="a copy of the web as <root>/<host>/"
                                                         "<path> (the offline world)")),
        gsd_m=(Annotated[Omit[Any], BeforeValidator(_gsd)], Field(None, description="GSD range")),
        **_KIND_FIELDS.get(kind, {}),
    )


# what one archive kind reads beyond the others
_KIND_FIELDS: dict[str, dict[str, Any]] = {
    "mlrsnet": {"require_category": (Omit[bool], Field(
        None, description="false: rows without a scene category are rejects, not a stop"))},
}


# the kinds with settings of their own; every other kind downloads published files
SOURCE_SETTINGS: dict[str, type[SourceSettings]] = {
    "naip": NaipSettings, "stac": StacSettings, "rsd46": Rsd46Settings, "folder": FolderSettings,
    **{kind: _archive_model(kind) for kind, cls in SOURCES.items()
       if cls.publication is not None and cls.publication.downloads},
}


def _kind(value: Any) -> str | None:
    return value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)


AnySource = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in SOURCE_SETTINGS.items())],  # noqa: UP007
    Discriminator(_kind),
]


# ---------------------------------------------------------------------------------------------
# the other blocks


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
    pretrained: Text = Field(description="a build: --init ours is its pretraining run")
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
    pretrain_builds: list[Text] = Field(description="builds dvc repro pretrains on")
    pretrain: Pretrain = Field(description="pretraining")
    finetune_tasks: list[Text] = Field(description="tasks dvc repro finetunes on")
    downstream_sets: list[Text] = Field(description="sets geopile fetch --all gets")
    finetune_inits: list[Text] = Field(description="ours, imagenet22k, random or a run dir")
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
        problems = [_describe(e, params) for e in err.errors(include_url=False)]
    problems = list(dict.fromkeys(problems + _cross_checks(params, tasks, sets)))
    if settings is not None and not problems:
        return settings
    where = " + ".join(str(f) for f in files) or "the params"
    if len(problems) == 1:  # one line, as every other error of the CLI
        raise ParamsError(f"{where}: {problems[0]}", problems=problems)
    lines = "\n".join(f"  {p}" for p in problems)
    raise ParamsError(f"{where}: {len(problems)} invalid parameters (nothing was run):\n{lines}",
                      problems=problems)


_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxdict = 6
_SHOW.maxlevel = 3


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime.date):
        return value.isoformat()
    return _SHOW.repr(value)  # cut while rendering: a value may be huge


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)``, ``(known: ...)`` or nothing."""
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known else ""


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """The type under ``Annotated`` and ``X | None``, and the Annotated metadata."""
    meta: list[Any] = []
    while True:
        if get_origin(tp) is Annotated:
            tp, *extra = get_args(tp)
            for item in extra:
                meta += item.metadata if isinstance(item, FieldInfo) else [item]
        elif get_origin(tp) in (Union, type(int | None)):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp, meta
            tp = args[0]
        else:
            return tp, meta


def _walk(loc: Sequence[str | int]) -> tuple[list[str | int], type[BaseModel] | None,
                                             FieldInfo | None, list[Any]]:
    """Follow a pydantic ``loc`` through the models.

    Returns the path as a user writes it (union tags dropped), the model holding the last
    step, that step's field and its type's constraints.
    """
    tp: Any = Settings
    path: list[str | int] = []
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    meta: list[Any] = []
    for step in loc:
        tp, meta = _strip(tp)
        if get_origin(tp) is Union:  # the tagged union of source kinds: this step is a tag
            tagged = {m.tag: a for a in get_args(tp) for m in _strip(a)[1] if isinstance(m, Tag)}
            tp = tagged.get(step)
            continue
        path.append(step)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            # a model with typed extra keys (a build's sources) declares them as SOURCE_FIELD
            owner = tp
            info = tp.model_fields.get(str(step)) or getattr(tp, "SOURCE_FIELD", None)
            if info is None:
                return path, owner, None, []
            tp, meta = info.annotation, list(info.metadata)
        elif get_origin(tp) is dict:
            owner, info, tp = None, info, get_args(tp)[1]
        elif get_origin(tp) is list:
            owner, tp = None, get_args(tp)[0]
        else:
            owner, tp = None, Any
    if tp is not Any:
        meta += _strip(tp)[1]
    return path, owner, info, meta


def field_at(path: Sequence[str], params: Mapping[str, Any]) -> FieldInfo | None:
    """The schema field for a key path of ``params`` (``None``: no field declares it)."""
    loc: list[str | int] = list(path)
    if len(path) >= 2 and path[0] == "sources":
        block = (params.get("sources") or {}).get(path[1]) or {}
        loc.insert(2, block.get("type", path[1]) if isinstance(block, Mapping) else path[1])
    _, owner, info, _ = _walk(loc)
    return None if owner is not None and info is None else info


def _bounds(meta: Iterable[Any]) -> str:
    words = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"),
             annotated_types.Le: ("<=", "le"), annotated_types.Lt: ("<", "lt")}
    out = []
    for m in meta:
        for kind, (word, attr) in words.items():
            if isinstance(m, kind):
                out.append(f"{word} {getattr(m, attr)}")
    return " and ".join(out)


_TYPES = {
    "int_type": "must be a whole number", "int_from_float": "must be a whole number",
    "float_type": "must be a number", "string_type": "must be text",
    "bool_type": "must be true or false", "list_type": "must be a list, e.g. [a, b]",
    "dict_type": "must be a mapping of key: value", "model_type": "must be a mapping of "
    "key: value", "model_attributes_type": "must be a mapping of key: value",
}


def _describe(err: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """One pydantic error as ``KEY: VALUE is invalid: WHY (WHAT)``."""
    try:
        return _explain(err, params)
    except Exception:  # noqa: BLE001 - a message, however plain, beats a traceback here
        return f"{_dotted(err['loc'])}: {_show(err.get('input'))} is invalid: {err['msg']}"


def _explain(err: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx") or {}
    path, owner, info, meta = _walk(loc)
    key = _dotted(path)
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner else []
        return f"{key}: unknown key{_suggest(str(loc[-1]), known)}"
    what = f" ({info.description})" if info is not None and info.description else ""
    if kind == "missing":
        return (f"{key}: missing{what}: params.yaml sets it; pass --params params.yaml before "
                "any overlay, or add it back")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(SOURCE_SETTINGS)
        name = str(path[-1])
        block = (params.get("sources") or {}).get(name)
        if not isinstance(block, Mapping):
            return f"{key}: {_show(block)} is invalid: must be a mapping of key: value"
        if "type" in block:
            return f"{key}.type: {_show(block['type'])} is invalid: must be one of {kinds}"
        return f"{key}: no source kind {name!r}: set {key}.type to one of {kinds}"
    value = _show(err.get("input"))
    if kind == "md5_number":
        why = (f"YAML read this md5 as a number, dropping any leading zeros: quote it, "
               f"{path[-1]}: '<the 32 characters as published>'")
        return f"{key}: {value} is invalid: {why}"
    if kind == "geopile":
        why = err["msg"]
    elif kind in _TYPES:
        bounds = _bounds(meta)
        why = _TYPES[kind] + (f" {bounds}" if bounds else "")
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
                "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}[kind]
        why = f"must be {sign[0]} {_show(ctx[sign[1]])}"
    elif kind == "literal_error":
        why = f"must be one of {ctx['expected']}"
    elif kind == "string_pattern_mismatch":
        why = f"must match {ctx['pattern']}"
    elif kind in ("too_short", "too_long"):
        lo = next((m.min_length for m in meta if isinstance(m, annotated_types.MinLen)), None)
        hi = next((m.max_length for m in meta if isinstance(m, annotated_types.MaxLen)), None)
        n = lo if kind == "too_short" else hi
        why = (f"must hold exactly {n} items" if lo == hi else
               f"must hold at {'least' if kind == 'too_short' else 'most'} {n} "
               f"item{'s' * (n != 1)}")
    else:
        why = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {value} is invalid: {why}{what}"


def _cross_checks(params: Mapping[str, Any], tasks: Iterable[str] | None,
                  sets: Mapping[str, Iterable[str]] | None) -> list[str]:
    """Names that must refer to something elsewhere in the params.

    Works on the raw params, so that it reports alongside the schema's errors; a block of the
    wrong type is skipped (the schema reports it once).
    """
    problems: list[str] = []

    def block(name: str) -> Mapping[str, Any] | None:
        value = params.get(name)
        return value if isinstance(value, Mapping) else None

    def names(value: Any) -> list[tuple[int, str]]:
        return [(i, v) for i, v in enumerate(value if isinstance(value, list) else [])
                if isinstance(v, str)]

    def need(key: str, value: str, known: Iterable[str] | None, noun: str, where: str) -> None:
        if known is None:  # the block itself is wrong: the schema says so, once
            return
        known = set(known)
        if value not in known:
            place = f" under {where}" if where else ""
            problems.append(f"{key}: no {noun} {value!r}{place}{_suggest(value, known)}")

    sources, builds = block("sources"), block("builds")
    curate, finetune = block("curate") or {}, block("finetune") or {}
    options = list(Build.model_fields)  # allow_short: never a source (offered for a typo)
    for build, caps in (builds or {}).items():
        for source in caps if isinstance(caps, Mapping) else {}:
            if source not in options:
                need(f"builds.{build}.{source}", source,
                     None if sources is None else [*sources, *options], "source", "sources")
    for i, build in names(params.get("pretrain_builds")):
        need(f"pretrain_builds[{i}]", build, builds, "build", "builds")
    if isinstance(finetune.get("pretrained"), str):
        need("finetune.pretrained", finetune["pretrained"], builds, "build", "builds")
    for i, source in names(curate.get("priority")):
        need(f"curate.priority[{i}]", source, sources, "source", "sources")
    eval_sets = curate.get("eval_sets")
    for source in eval_sets if isinstance(eval_sets, Mapping) else {}:
        need(f"curate.eval_sets.{source}", source, sources, "source", "sources")
    for key, known, noun in (("finetune_tasks", tasks, "task"),
                             ("downstream_sets", sets, "downstream set")):
        for i, name in names(params.get(key)) if known is not None else []:
            need(f"{key}[{i}]", name, known, noun, "pipelines/tasks")
    overrides = finetune.get("tasks")
    for task in overrides if isinstance(overrides, Mapping) and tasks is not None else {}:
        need(f"finetune.tasks.{task}", task, tasks, "task", "pipelines/tasks")
    if sets is not None:
        downstream = block("downstream") or {}
        for name, files in downstream.items():
            need(f"downstream.{name}", name, sets, "downstream set", "pipelines/tasks")
            for key in ("urls", "md5s"):
                given = files.get(key) if isinstance(files, Mapping) else None
                for which in given if isinstance(given, Mapping) and name in sets else {}:
                    need(f"downstream.{name}.{key}.{which}", which, sets[name], "file",
                         f"the {name} set")
    return problems
