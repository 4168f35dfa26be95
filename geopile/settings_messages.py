"""Settings errors in words: one line per problem, ``KEY: VALUE is invalid: WHY (WHAT)``.

A pydantic error names a location in the model tree (with union tags and list indices); this
turns it into the key a user writes in ``params.yaml``, the value (cut short: it may be huge),
why it is wrong in the schema's own terms (its bounds, its pattern, the kinds it accepts) and
what the key is for (the field's description), with a suggestion for a misspelt key.
"""

from __future__ import annotations

import datetime
import difflib
import reprlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, Tag
from pydantic.fields import FieldInfo

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxdict = 6
_SHOW.maxlevel = 3


def show(value: Any) -> str:
    """A value as a user wrote it in YAML, cut short (``null``, ``true``, ``2020-01-01``)."""
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


def suggest(key: str, known: Iterable[str]) -> str:
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


def _walk(root: type[BaseModel], loc: Sequence[str | int]
          ) -> tuple[list[str | int], type[BaseModel] | None, FieldInfo | None, list[Any]]:
    """Follow a pydantic ``loc`` through the models.

    Returns the path as a user writes it (union tags dropped), the model holding the last
    step, that step's field and its type's constraints.
    """
    tp: Any = root
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


def field_at(root: type[BaseModel], path: Sequence[str],
             params: Mapping[str, Any]) -> FieldInfo | None:
    """The schema field for a key path of ``params`` (``None``: no field declares it)."""
    loc: list[str | int] = list(path)
    if len(path) >= 2 and path[0] == "sources":
        block = (params.get("sources") or {}).get(path[1]) or {}
        loc.insert(2, block.get("type", path[1]) if isinstance(block, Mapping) else path[1])
    _, owner, info, _ = _walk(root, loc)
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


def describe(err: Mapping[str, Any], params: Mapping[str, Any], root: type[BaseModel],
             kinds: Iterable[str]) -> str:
    """One pydantic error as ``KEY: VALUE is invalid: WHY (WHAT)``.

    ``root`` is the model validated (the params file's), ``kinds`` the source kinds a
    ``sources.NAME.type`` may name.
    """
    try:
        return _explain(err, params, root, list(kinds))
    except Exception:  # a message, however plain, beats a traceback here
        return f"{_dotted(err['loc'])}: {show(err.get('input'))} is invalid: {err['msg']}"


def _explain(err: Mapping[str, Any], params: Mapping[str, Any], root: type[BaseModel],
             kinds: list[str]) -> str:
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx") or {}
    path, owner, info, meta = _walk(root, loc)
    key = _dotted(path)
    if kind == "extra_forbidden":
        known = list(owner.model_fields) if owner else []
        return f"{key}: unknown key{suggest(str(loc[-1]), known)}"
    what = f" ({info.description})" if info is not None and info.description else ""
    if kind == "missing":
        return (f"{key}: missing{what}: params.yaml sets it; pass --params params.yaml before "
                "any overlay, or add it back")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        listed = ", ".join(kinds)
        name = str(path[-1])
        block = (params.get("sources") or {}).get(name)
        if not isinstance(block, Mapping):
            return f"{key}: {show(block)} is invalid: must be a mapping of key: value"
        if "type" in block:
            return f"{key}.type: {show(block['type'])} is invalid: must be one of {listed}"
        return f"{key}: no source kind {name!r}: set {key}.type to one of {listed}"
    value = show(err.get("input"))
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
        why = f"must be {sign[0]} {show(ctx[sign[1]])}"
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
