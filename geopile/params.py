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

# params.yaml is about 14 KB and 1,300 values once expanded; an overlay is smaller. The limits
# keep a hostile or broken file (a YAML alias bomb expands to billions of values from a few
# lines) from taking minutes and gigabytes before any check can name it.
MAX_PARAMS_BYTES = 1 << 20
MAX_PARAMS_VALUES = 100_000


class ParamsError(ValueError):
    """A parameter file is missing, unreadable, or holds a wrong value.

    ``problems`` lists each bad key on its own (``geopile.settings.check_params`` collects
    them all at once, so one run shows every fix to make).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class _Delete:
    """The value of ``!delete`` in an overlay: the key goes (``null`` is a value: it stays)."""

    def __repr__(self) -> str:
        return "!delete"

    def __deepcopy__(self, memo: dict) -> _Delete:  # one marker: compared by identity
        return self


DELETE = _Delete()


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, plus the overlay tag ``!delete``."""


_Loader.add_constructor("!delete", lambda loader, node: DELETE)


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``; mappings merge, everything else replaces.

    A key whose overlay value is ``!delete`` (:data:`DELETE`) is removed, so an overlay can drop
    a source from a build (``builds: {full: {resisc45: !delete}}``); deleting an absent key is
    no error.
    """
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _without_deletes(copy.deepcopy(value))
    return out


def _without_deletes(value: Any) -> Any:
    """A value with every ``!delete`` inside it gone (it deletes nothing in a new value)."""
    if isinstance(value, dict):
        return {k: _without_deletes(v) for k, v in value.items() if v is not DELETE}
    if isinstance(value, list):
        return [_without_deletes(v) for v in value if v is not DELETE]
    return value


def expanded_size(data: Any, limit: int) -> int:
    """How many values ``data`` holds once every YAML alias is written out, up to ``limit``.

    YAML aliases share one object, so the count is memoised by identity: a bomb is measured
    in the time its few distinct nodes take. A value that contains itself has no size.

    Raises:
        ValueError: for a value that contains itself.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise ValueError("a value contains itself (a recursive YAML alias)")
        open_.add(id(node))
        total = 1
        for child in (node.values() if isinstance(node, dict) else node):
            total += size(child)
            if total > limit:  # no need to know by how much
                break
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(data)


def _read_yaml(path: Path) -> Any:
    """One parameter file's data, within the limits (see :data:`MAX_PARAMS_VALUES`)."""
    size = path.stat().st_size
    if size > MAX_PARAMS_BYTES:
        raise ParamsError(f"parameter file {path} is {size:,} bytes, over the limit of "
                          f"{MAX_PARAMS_BYTES:,} for a params file: refused unread")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}  # a SafeLoader, plus !delete
        values = expanded_size(data, MAX_PARAMS_VALUES)
    except yaml.YAMLError as err:
        raise ParamsError(f"parameter file {path} is not valid YAML: {err}") from err
    except (ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ParamsError(f"parameter file {path}: {why}; refused") from None
    if values > MAX_PARAMS_VALUES:
        raise ParamsError(f"parameter file {path} expands to more than {MAX_PARAMS_VALUES:,} "
                          "values (YAML aliases repeating aliases: a 'billion laughs' bomb?); "
                          "refused before checking it")
    return data


def load_params(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Read each YAML file in order and deep-merge them (later files win)."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"parameter file {path} does not exist (pass --params FILE)")
        data = _read_yaml(path)
        if not isinstance(data, Mapping):
            raise ParamsError(f"parameter file {path} must hold a mapping at the top level")
        merged = deep_merge(merged, data)
    return merged
