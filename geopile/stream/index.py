"""The gate for a build: its ``index.json`` parsed and validated before anything is read.

A build is someone else's input as soon as it leaves the machine that wrote it: a bucket's
``index.json`` decides which files the loader opens, which objects the shard cache fetches and
deletes, and which files ``geopile push`` uploads. So every reader (the loader, the shard cache,
``geopile push``, ``geopile verify``, the report) goes through :func:`parse_index`, and nothing
downstream re-checks or trusts a raw field:

- shard names are plain file names (``NAME.tar``: no separator, no ``..``, not absolute, not a
  URL), unique within the build, so a name can only ever mean a file of the build itself;
- sizes, offsets and sample counts are whole numbers that agree with each other: offsets start
  at 0, rise by whole tar blocks and end inside their shard; the per-shard and per-source counts
  add up to ``samples``; keys are unique across the build;
- checksums have their digests' shapes; the optional ``bands`` and ``curation`` blocks have the
  types their readers expect;
- the text itself is bounded (:data:`MAX_INDEX_BYTES`), strict JSON (no NaN, no duplicate
  keys) and not nested deeper than an index is.

A refused index raises :class:`BuildIndexError` naming the index (path or URL), the build, the
field, its value (cut short) and the fix. Written by hand: the check is the format's own
definition (GeoPile writes it, :func:`geopile.shards.write_build`), and a schema library would
cost more than the whole check for a build of half a million samples.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

INDEX = "index.json"
INDEX_VERSION = 2  # 2: per-sample "xxh3" (version 1 indexes still stream, unverified)
READABLE_VERSIONS = (1, 2)
# present while a writer replaces the build (shard, push): the old index is gone, the new one
# not yet written; a reader that finds no index but this says so, naming the writer
PUBLISHING = "PUBLISHING.json"
TAR_BLOCK = 512
# 560,954 samples take about 45 MB of index; a limit keeps a hostile object from filling memory
MAX_INDEX_BYTES = 1 << 30
MAX_KEY_CHARS = 1024
MAX_SAMPLE_BYTES = 1 << 30  # one sample's tar members (a 256 px 12-band uint16 patch: 1.6 MB)
# NAME.tar: a leading letter, digit or underscore, then these; never a path or a URL
_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_XXH3 = re.compile(r"[0-9a-f]{16}")
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxdict = 4


class StreamError(RuntimeError):
    """A build cannot be read as its index says (a shard or the index missing or damaged)."""


class BuildIndexError(StreamError):
    """A build's ``index.json`` is missing, not JSON, or not a valid GeoPile index."""


def show(value: Any) -> str:
    """A value for a message, cut short: a hostile index may hold anything, of any size."""
    return _SHOW.repr(value)


def fix_hint(url: str) -> str:
    """How to repair the build at ``url`` (its last path component is the build's name)."""
    if url.startswith("s3://"):
        build = PurePosixPath(urlparse(url).path).name or "BUILD"
        return (f"re-push the build with `geopile push {build}` (after `geopile shard {build}` "
                "if the local copy is damaged too), or ask whoever published it")
    build = Path(url).name or "BUILD"
    return f"rebuild it with `geopile shard {build}` (or restore it with `dvc pull`)"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file as the index records a shard's, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_shard_name(name: Any) -> bool:
    """Whether ``name`` is a plain shard file name (``NAME.tar``, nothing that leaves the build)."""
    return isinstance(name, str) and bool(_SHARD_NAME.fullmatch(name)) and ".." not in name


class _Refuse:
    """Raises :class:`BuildIndexError` for one field, naming the index, the build and the fix."""

    def __init__(self, where: str, fix: str) -> None:
        self.where, self.fix, self.build = where, fix, None

    def __call__(self, field: str, value: Any, why: str) -> BuildIndexError:
        build = f" (build {show(self.build)})" if self.build is not None else ""
        return BuildIndexError(f"{self.where}{build}: {field}: {show(value)} is invalid: {why}; "
                               f"the index was refused before anything was read; {self.fix}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {show(key)} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _whole(value: Any) -> bool:
    return type(value) is int  # bool and float are not counts


def parse_index(data: str | bytes, where: str, fix: str) -> dict[str, Any]:
    """A build's index from its bytes, validated (see the module); the index as a dict.

    ``where`` (the index's path or URL) and ``fix`` (how to repair the build) go into every
    :class:`BuildIndexError`: not JSON (an interrupted copy or upload leaves it cut short), too
    large, or a field that is missing, of the wrong type, or disagrees with another.
    """
    size = len(data)
    if size > MAX_INDEX_BYTES:
        raise BuildIndexError(f"{where} is {size:,} bytes, over the limit of "
                              f"{MAX_INDEX_BYTES:,} for an index: refused unread; {fix}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        index = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise BuildIndexError(f"{where} is not valid JSON ({err.msg} at line {err.lineno} "
                              f"column {err.colno}, {size} characters in all): it is "
                              f"truncated or damaged; {fix}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise BuildIndexError(f"{where} is not a valid index ({why}); {fix}") from None
    return validate_index(index, where, fix)


def validate_index(index: Any, where: str, fix: str) -> dict[str, Any]:
    """Check a parsed index (see the module); returns it unchanged or raises."""
    refuse = _Refuse(where, fix)
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise BuildIndexError(f"{where} has no 'shards' list: it is not a GeoPile index; {fix}")
    if isinstance(index.get("build"), str):
        refuse.build = index["build"]
    version = index.get("version", 1)
    if not _whole(version) or version not in READABLE_VERSIONS:
        raise refuse("version", version, f"this GeoPile reads index versions "
                     f"{', '.join(map(str, READABLE_VERSIONS))} (a newer GeoPile wrote it?)")
    for field, kind in (("build", str), ("samples", int)):
        if field not in index or type(index[field]) is not kind:
            raise refuse(field, index.get(field), f"must be {kind.__name__}")
    if "seed" in index and not _whole(index["seed"]):
        raise refuse("seed", index["seed"], "must be a whole number")
    names: set[str] = set()
    keys: set[str] = set()
    total = 0
    for i, shard in enumerate(index["shards"]):
        total += _check_shard(shard, f"shards[{i}]", refuse, names, keys)
    if index["samples"] != total:
        raise refuse("samples", index["samples"],
                     f"the shards hold {total} samples (the counts disagree)")
    _check_sources(index, total, refuse)
    if index.get("bands") is not None:
        _check_bands(index["bands"], refuse)
    curation = index.get("curation")
    if curation is not None and not (isinstance(curation, dict) and all(
            isinstance(v, dict) for v in curation.values())):
        raise refuse("curation", curation, "must map each source to its counts")
    return index


def _check_shard(shard: Any, at: str, refuse: _Refuse, names: set[str], keys: set[str]) -> int:
    """One shard entry; returns its sample count."""
    if not isinstance(shard, dict):
        raise refuse(at, shard, "must be a shard entry {name, bytes, sha256, keys, offsets}")
    name = shard.get("name")
    if not is_shard_name(name):
        raise refuse(f"{at}.name", name, "a shard is a plain file name NAME.tar beside "
                     "index.json (no '/', '\\', '..', absolute path or URL)")
    if name in names:
        raise refuse(f"{at}.name", name, "names a shard listed earlier")
    names.add(name)
    size, digest = shard.get("bytes"), shard.get("sha256")
    if not _whole(size) or size < 0:
        raise refuse(f"{at}.bytes", size, "must be a whole number of bytes >= 0")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise refuse(f"{at}.sha256", digest, "must be 64 lowercase hexadecimal digits")
    shard_keys, offsets = shard.get("keys"), shard.get("offsets")
    if not isinstance(shard_keys, list):
        raise refuse(f"{at}.keys", shard_keys, "must be a list of sample keys")
    if not isinstance(offsets, list) or len(offsets) != len(shard_keys):
        raise refuse(f"{at}.offsets", offsets,
                     f"must be a list of {len(shard_keys)} byte offsets, one per key")
    if "samples" in shard and shard["samples"] != len(shard_keys):
        raise refuse(f"{at}.samples", shard["samples"],
                     f"the shard lists {len(shard_keys)} keys (the counts disagree)")
    if "xxh3" in shard:
        _check_digests(shard["xxh3"], len(shard_keys), f"{at}.xxh3", refuse)
    _check_offsets(offsets, size, f"{at}.offsets", refuse)
    for key in shard_keys:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS or "\0" in key:
            raise refuse(f"{at}.keys", key, f"a key is text of 1 to {MAX_KEY_CHARS} characters")
        if key in keys:
            raise refuse(f"{at}.keys", key, "a key appears twice in the build")
        keys.add(key)
    return len(shard_keys)


def _check_digests(hashes: Any, count: int, at: str, refuse: _Refuse) -> None:
    """The optional per-sample xxh3 digests: one per key, each 16 lowercase hex digits."""
    if not isinstance(hashes, list) or len(hashes) != count:
        raise refuse(at, hashes, f"must be a list of {count} digests")
    for h in hashes:
        if not isinstance(h, str) or not _XXH3.fullmatch(h):
            raise refuse(at, h, "a digest is 16 lowercase hexadecimal digits")


def _check_offsets(offsets: list[Any], size: int, at: str, refuse: _Refuse) -> None:
    """Whole tar blocks inside the shard, from 0 and rising; no sample over the limit."""
    previous = -TAR_BLOCK
    for i, offset in enumerate(offsets):
        if not _whole(offset) or offset < 0 or offset % TAR_BLOCK:
            raise refuse(f"{at}[{i}]", offset,
                         f"an offset is a whole number >= 0 of {TAR_BLOCK}-byte tar blocks")
        if offset + TAR_BLOCK > size:
            raise refuse(f"{at}[{i}]", offset,
                         f"the sample starts past the end of its shard ({size} bytes)")
        if (i == 0 and offset != 0) or offset <= previous:
            raise refuse(f"{at}[{i}]", offset, "offsets start at 0 and rise (each sample "
                         "begins where the one before it ends)")
        previous = offset
    ends = [*offsets[1:], size]
    for i, (start, end) in enumerate(zip(offsets, ends, strict=True)):
        if end - start > MAX_SAMPLE_BYTES:
            raise refuse(f"{at}[{i}]", start, f"the sample would span {end - start:,} bytes, "
                         f"over the limit of {MAX_SAMPLE_BYTES:,} for one sample")


def _check_sources(index: Mapping[str, Any], total: int, refuse: _Refuse) -> None:
    sources = index.get("sources")
    if sources is None:
        return
    if not isinstance(sources, dict) or not all(
            isinstance(k, str) and _whole(v) and v >= 0 for k, v in sources.items()):
        raise refuse("sources", sources, "must map each source to its sample count")
    if sum(sources.values()) != total:
        raise refuse("sources", sources,
                     f"the counts add up to {sum(sources.values())}, the shards hold {total}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and value == value and abs(value) != float("inf")


def _check_bands(bands: Any, refuse: _Refuse) -> None:
    if not isinstance(bands, dict):
        raise refuse("bands", bands, "must be {names, mean, std}")
    names = bands.get("names")
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise refuse("bands.names", names, "must be a list of distinct band names")
    for field in ("mean", "std"):
        values = bands.get(field)
        if not isinstance(values, list) or len(values) != len(names) or not all(
                _finite(v) and (field == "mean" or v >= 0) for v in values):
            raise refuse(f"bands.{field}", values,
                         f"must be {len(names)} finite numbers (one per band)")
    # what the stored numbers mean (optional): a number or null per band; nodata may be "nan"
    for field in ("scale", "offset", "nodata"):
        values = bands.get(field)
        if values is not None and (not isinstance(values, list) or len(values) != len(names)
                                   or not all(v is None or _finite(v) or (field == "nodata"
                                              and v in ("nan", "inf", "-inf")) for v in values)):
            raise refuse(f"bands.{field}", values,
                         f"must be {len(names)} finite numbers or nulls (one per band)")
    units = bands.get("unit")
    if units is not None and (not isinstance(units, list) or len(units) != len(names) or not all(
            u is None or (isinstance(u, str) and len(u) <= 100) for u in units)):
        raise refuse("bands.unit", units, f"must be {len(names)} short texts or nulls")
