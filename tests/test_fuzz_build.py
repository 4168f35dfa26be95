"""Property-based fuzzing of the two parsers a bucket's writer controls: the index gate and the
tar reader (issue 27, item 8).

Whatever bytes arrive, the gate either returns an index whose every field holds what the readers
rely on (checked here by an independent statement of the invariants), or refuses it with a
``BuildIndexError``; the tar reader either returns members that lie inside the bytes it was
given or raises ``tarfile.ReadError``. Nothing else may escape either: no ``KeyError``,
``TypeError``, ``MemoryError`` or ``RecursionError``.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geopile.stream import parse_members, sample_refs
from geopile.stream.index import TAR_BLOCK, BuildIndexError, parse_index

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)


@st.composite
def valid_indexes(draw: st.DrawFn) -> dict[str, Any]:
    """An index as GeoPile writes it: plain names, rising whole-block offsets, unique keys."""
    shards, total, sources = [], 0, {}
    for s in range(draw(st.integers(0, 4))):
        n = draw(st.integers(1, 6))
        steps = draw(st.lists(st.integers(1, 8), min_size=n, max_size=n))
        offsets = [sum(steps[:i]) * TAR_BLOCK for i in range(n)]
        shards.append({
            "name": f"shard-{s:06d}.tar", "samples": n,
            "bytes": offsets[-1] + draw(st.integers(1, 8)) * TAR_BLOCK,
            "sha256": draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
            "keys": [f"src/k{s}_{i}" for i in range(n)], "offsets": offsets,
            "xxh3": [draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)) for _ in range(n)]})
        total += n
        sources["src"] = total
    return {"version": 2, "build": "b", "seed": 0, "samples": total, "sources": sources,
            "shards": shards}


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (for a mutation to land on)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_indexes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid index with a few of its values replaced by anything JSON can hold, or removed."""
    index = draw(valid_indexes())
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(index) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = index
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values | st.sampled_from(
                ["../x.tar", "/etc/hostname", "http://h/x.tar", "a/b.tar", -TAR_BLOCK, 10**13,
                 0, TAR_BLOCK, True]))
    return index


def _holds_invariants(index: dict[str, Any]) -> None:
    """What every reader relies on, stated apart from the gate's own code."""
    keys: set[str] = set()
    names: set[str] = set()
    for shard in index["shards"]:
        assert PLAIN.fullmatch(shard["name"]) and ".." not in shard["name"]
        assert shard["name"] not in names
        names.add(shard["name"])
        offsets, size = shard["offsets"], shard["bytes"]
        assert all(type(o) is int and o % TAR_BLOCK == 0 for o in offsets)
        assert offsets == sorted(set(offsets)) and (not offsets or offsets[0] == 0)
        assert not offsets or offsets[-1] + TAR_BLOCK <= size
        assert len(shard["keys"]) == len(offsets) == len(shard.get("xxh3", offsets))
        assert all(isinstance(k, str) and k not in keys for k in shard["keys"])
        keys.update(shard["keys"])
    assert index["samples"] == len(keys)
    refs = sample_refs(index)  # the reader's own view of it never fails
    assert all(0 <= r.start < r.end for r in refs)


@FUZZ
@given(mutated_indexes())
def test_gate_accepts_only_what_readers_can_trust(index):
    try:
        accepted = parse_index(json.dumps(index).encode(), "fuzz/index.json", "fix")
    except BuildIndexError as err:
        assert "fuzz/index.json" in str(err)
        return
    _holds_invariants(accepted)


@FUZZ
@given(valid_indexes())
def test_gate_accepts_what_geopile_writes(index):
    _holds_invariants(parse_index(json.dumps(index, indent=1), "fuzz/index.json", "fix"))


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_gate_refuses_any_bytes_cleanly(data):
    try:
        _holds_invariants(parse_index(data, "fuzz/index.json", "fix"))
    except BuildIndexError:
        pass


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


sample_members = st.lists(
    st.tuples(st.sampled_from(["jpg", "json", "cls", "tif", "png"]), st.binary(max_size=700)),
    min_size=1, max_size=3, unique_by=lambda m: m[0])


@FUZZ
@given(sample_members)
def test_tar_reader_reads_what_a_tar_writer_wrote(members):
    data = _tar([(f"src/key.{ext}", payload) for ext, payload in members])
    assert parse_members(data) == dict(members)


@FUZZ
@given(sample_members, st.data())
def test_tar_reader_refuses_damaged_bytes_cleanly(members, data):
    raw = bytearray(_tar([(f"src/key.{ext}", payload) for ext, payload in members]))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    blob = bytes(raw[:cut])
    try:
        out = parse_members(blob)
    except tarfile.ReadError:
        return
    for payload in out.values():  # what it returns lies inside the bytes it was given
        assert len(payload) <= len(blob) and bytes(payload) in blob
