"""The building blocks of GeoPile's typed settings: a leaf that any module may import.

Every params block is a :class:`Block`: unknown keys are errors (a typo gets a suggestion), types
are strict (``"ten"`` is not a count, ``true`` is not a number) and values are read-only. The
value types here carry their own checks and messages (an md5 YAML read as a number, a worker
count past the machine, a GSD range). Each source declares its own settings model beside its
publication (``geopile/sources/<name>.py``, on :class:`SourceSettings`); the whole file's model
is :class:`geopile.settings.Settings`.

``params.yaml`` holds the only defaults. A field is therefore required when ``params.yaml`` sets
it, and optional (``None``: the code's own fallback applies) only where a valid file may leave it
out: a user's ``folder`` source, NAIP's ``seed`` / ``backoff_s`` / ``gdal_env``, a mirror's
``urls`` / ``md5s``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from geopile.sources.published import Publication

T = TypeVar("T")


class Block(BaseModel):
    """One params block: unknown keys and loose types are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------------------------------------
# value types


def invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as written (``KEY: VALUE is invalid: WHY``)."""
    return PydanticCustomError("geopile", message)


def _not_null(value: Any) -> Any:
    if value is None:
        raise invalid("must not be null: leave the key out to use the default")
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
        raise invalid("must be an md5: 32 hexadecimal digits, quoted")
    return value


Md5 = Annotated[str | None, BeforeValidator(_md5)]


def _urls(value: Any) -> Any:
    if value is None or (isinstance(value, str) and value) or (
            isinstance(value, list) and value and all(isinstance(u, str) and u for u in value)):
        return value
    raise invalid("must be a URL (or local path), or a list of them")


Urls = Annotated[str | list[str] | None, BeforeValidator(_urls)]


def _cap(value: Any) -> Any:
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise invalid("must be an image count >= 1, or 'all'")


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
        raise invalid(why)
    return value


Workers = Annotated[int, AfterValidator(_workers)]


def _gsd(value: Any) -> Any:
    pair = value if isinstance(value, list) else [value]
    if (len(pair) in (1, 2)
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                    for v in pair) and pair[0] <= pair[-1]):
        return value
    raise invalid("must be a GSD in metres > 0, or [min, max]")


def _year(value: Any) -> Any:
    if isinstance(value, bool) or not re.fullmatch(r"\d{4}", str(value)):
        raise invalid("must be a four-digit year")
    return value


Year = Annotated[int | str, BeforeValidator(_year)]


Gsd = Annotated[Any, BeforeValidator(_gsd)]


def _path(value: Any) -> Any:
    if isinstance(value, str) and value:
        return Path(value)
    if isinstance(value, Path):
        return value
    raise invalid("must be text: a path")


# a path given as text; stages read a Path
PathText = Annotated[Path, BeforeValidator(_path)]


# ---------------------------------------------------------------------------------------------
# sources: every kind's common settings, and a published archive's


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


def _files_model(name: str, keys: Iterable[str], value: Any, what: str) -> type[Block]:
    """A block whose keys are the published files (so a misspelt file name is caught)."""
    return create_model(name, __base__=Block, __doc__=f"{what} per published file.",
                        **{k: (value, Field(None, description=what)) for k in keys})


def archive_settings(publication: Publication, title: str,
                     **extra: tuple[Any, Any]) -> type[SourceSettings]:
    """The settings of a published archive source: its files' URLs and md5s are overridable.

    ``title`` names the model (``Resisc45`` -> ``Resisc45Settings``); ``extra`` adds the fields
    one source reads beyond the others, as ``name=(type, Field(...))``.
    """
    downloads = list(publication.downloads)
    urls = _files_model(f"{title}Urls", downloads, Urls, "your mirrors, tried first")
    md5s = _files_model(f"{title}Md5s", downloads, Md5, "null: no check")
    return create_model(
        f"{title}Settings", __base__=SourceSettings,
        __doc__=f"A {publication.name} source's settings: its published files, downloaded.",
        urls=(Omit[urls], Field(None, description="your mirrors by file")),
        md5s=(Omit[md5s], Field(None, description="md5s by file")),
        mirror_root=(Omit[Text], Field(None, description="a copy of the web as <root>/<host>/"
                                                         "<path> (the offline world)")),
        gsd_m=(Omit[Gsd], Field(None, description="GSD range")),
        **extra,
    )
