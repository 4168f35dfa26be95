"""A killed ingest restarts where it stopped and ends with exactly the records of a clean run."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from geopile.ingest import ingest
from geopile.records import records_path, rejects_path
from tests.conftest import make_source
from tests.killing import kill_once

RUNNER = """
import sys, yaml
from pathlib import Path
from geopile.ingest import ingest
from tests.conftest import make_source
from tests.killing import kill_once
params = yaml.safe_load(open(sys.argv[1]))
name = sys.argv[2]
src = make_source(params, name, Path(params["paths"]["data"]), progress=False)
ingest(src, workers=1, chunk_size=2, flush_every=2, progress=False)
"""


def _run(params: dict, name: str, data: Path) -> tuple[list, list]:
    source = make_source(params, name, data, progress=False)
    ingest(source, workers=2, progress=False)
    return (pq.read_table(records_path(data, name)).to_pylist(),
            pq.read_table(rejects_path(data, name)).to_pylist())


@pytest.mark.parametrize("name", ["naip", "resisc45"])
def test_killed_ingest_resumes_to_identical_records(params, tmp_path, name):
    if name == "naip":
        params["sources"]["naip"]["count"] = 24
    killed = tmp_path / "killed"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**params, "paths": {"data": str(killed)}}))
    parts = killed / "records" / ".parts" / name
    kill_once(RUNNER, [str(params_file), name], parts, "part-*.parquet", 3)
    assert parts.is_dir() and not records_path(killed, name).exists()

    resumed = _run(params, name, killed)
    clean = _run(params, name, tmp_path / "clean")
    assert resumed == clean
    assert not parts.exists()
