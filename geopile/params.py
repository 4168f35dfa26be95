"""Load ``params.yaml`` and overlays on it.

Configuration is data: the paper's setup lives in ``params.yaml``; the offline world (or a user's
experiment) writes a small overlay that is deep-merged on top, so ``params.yaml`` itself is never
edited to point somewhere else.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A parameter file is missing, unreadable, or holds a wrong value.

    ``problems`` lists each bad key on its own (``geopile.settings.check_params`` collects
    them all at once, so one run shows every fix to make).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``; mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Read each YAML file in order and deep-merge them (later files win)."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"parameter file {path} does not exist (pass --params FILE)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"parameter file {path} is not valid YAML: {err}") from err
        if not isinstance(data, Mapping):
            raise ParamsError(f"parameter file {path} must hold a mapping at the top level")
        merged = deep_merge(merged, data)
    return merged


def source_params(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``sources.<name>`` block, with a clear error when it is missing."""
    sources = params.get("sources") or {}
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none"
        raise ParamsError(f"no source {name!r} under 'sources:' in the params (known: {known})")
    return dict(sources[name] or {})


def path_of(params: Mapping[str, Any], key: str) -> Path:
    """``paths.<key>``: the one place every stage finds where it reads and writes.

    ``params.yaml`` holds the values (``data``, ``reports``, ``shards``, ``runs``); there is no
    fallback in code, so a params file without one is an error naming the key.
    """
    try:
        return Path((params.get("paths") or {})[key])
    except KeyError:
        raise ParamsError(f"paths.{key} is not set in the params (params.yaml sets it)") from None
