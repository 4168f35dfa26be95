"""Fault suite: SIGKILL in the middle of ingest and of shard, then a rerun, is byte-identical.

A clean run and a killed-then-rerun run of the same stage must leave the same bytes behind:
the NAIP patches ingest wrote and their records, and every shard tar and the index. Anything
less (a half-written file under its final name, a rerun that re-draws, a part file counted
twice) would mean a user's crash silently changes their corpus.
"""

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from geopile.ingest import ingest
from geopile.records import records_path
from geopile.stream.index import INDEX
from pipelines.shard import run_shard
from tests.conftest import make_source, typed
from tests.killing import kill_once

INGEST = """
import sys, yaml
from pathlib import Path
from geopile.ingest import ingest
from tests.conftest import make_source
params = yaml.safe_load(open(sys.argv[1]))
src = make_source(params, "naip", Path(params["paths"]["data"]),
                    progress=False)
ingest(src, workers=1, chunk_size=2, flush_every=2, progress=False)
"""

SHARD = """
import sys, yaml
from pathlib import Path
from pipelines.shard import run_shard
from tests.conftest import typed
params = yaml.safe_load(open(sys.argv[1]))
run_shard(typed(params), "full", progress=False)
"""


def _digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern)) if p.is_file()}


def test_kill9_during_naip_ingest_then_rerun_is_byte_identical(params, tmp_path):
    """Trial: SIGKILL NAIP ingest after a few flushed parts. Expected: the rerun resumes and
    leaves the very patch files and records of an uninterrupted run."""
    params["sources"]["naip"]["count"] = 24
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**params, "paths": {"data": str(killed)}}))
    parts = killed / "records" / ".parts" / "naip"
    kill_once(INGEST, [str(params_file)], parts, "part-*.parquet", 2)
    assert not records_path(killed, "naip").exists()

    for data in (killed, clean):
        source = make_source(params, "naip", data, progress=False)
        ingest(source, workers=2, progress=False)
    raw_killed = _digests(killed / "raw" / "naip", "*")
    assert raw_killed and raw_killed == _digests(clean / "raw" / "naip", "*")
    assert (pq.read_table(records_path(killed, "naip")).to_pylist()
            == pq.read_table(records_path(clean, "naip")).to_pylist())
    assert not list((killed / "raw").rglob("*.tmp*"))


def test_kill9_during_shard_then_rerun_is_byte_identical(curated, tmp_path):
    """Trial: SIGKILL `geopile shard full` after 3 of its shards. Expected: the rerun writes
    shards and an index byte-identical to a clean build's, and no temp file is left."""
    base = {**curated, "shard": {**curated["shard"], "max_samples": 8}}
    runs = {}
    for name in ("killed", "clean"):
        runs[name] = {**base, "paths": {**base["paths"], "shards": str(tmp_path / name)}}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(runs["killed"]))
    out = tmp_path / "killed" / "full"
    kill_once(SHARD, [str(params_file)], out, "shard-*.tar", 3)
    assert not (out / INDEX).exists()

    for name in ("killed", "clean"):
        run_shard(typed(runs[name]), "full", progress=False)
    killed, clean = _digests(out, "*"), _digests(tmp_path / "clean" / "full", "*")
    assert len([k for k in killed if k.endswith(".tar")]) > 3
    assert killed == clean  # every shard, index.json and the card
    index = json.loads((out / INDEX).read_text())
    assert sorted(p.name for p in out.glob("*.tar")) == [s["name"] for s in index["shards"]]
