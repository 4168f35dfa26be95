"""Every labeled source ingests from the offline world with the right counts, labels and classes."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from geopile.ingest import ingest
from geopile.params import source_params
from geopile.records import RECORD_SCHEMA, read_records, records_path, rejects_path
from geopile.sources import SOURCES, create_source

LABELED = [k for k in SOURCES if k not in ("naip", "folder")]


def _ingest(params: dict, name: str, workers: int = 2):
    data = Path(params["paths"]["data"])
    source = create_source(name, source_params(params, name), data, progress=False)
    summary = ingest(source, workers=workers, progress=False)
    return summary, read_records(records_path(data, name)), pq.read_table(rejects_path(data, name))


@pytest.mark.parametrize("name", LABELED)
def test_labeled_source_ingests(params, truth, name):
    expected = truth["sources"][name]
    summary, records, rejects = _ingest(params, name)
    assert records.num_rows == expected["valid_images"] == summary.images
    assert rejects.num_rows == expected["rejects"]
    assert records.schema.equals(RECORD_SCHEMA, check_metadata=True)
    rows = records.to_pylist()
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert all("." not in k.split("/", 1)[1] and k.startswith(f"{name}/") for k in keys)
    cls = SOURCES[name].classes
    assert Counter(r["label"] for r in rows) == Counter(expected["per_class"])
    for r in rows:
        assert r["label"] in cls and cls[r["label_id"]] == r["label"]
        assert r["bands"] == 3 and r["width"] > 0 and len(r["xxh3_pixels"]) == 32
        assert r["licence"] and r["origin_sha256"] and r["path"].startswith(f"raw/{name}/")
        assert (Path(params["paths"]["data"]) / r["path"]).is_file()
    # every planted corrupt member of this source is rejected, with a reason
    planted = {c["ref"]["member"] for c in truth["corrupt"] if c["ref"]["source"] == name}
    assert set(rejects["origin"].to_pylist()) == planted
    assert all(rejects["reason"].to_pylist())


def test_ucmerced_splits_and_sizes(params, truth):
    _, records, _ = _ingest(params, "ucmerced")
    splits = Counter(records["split"].to_pylist())
    assert splits == Counter(truth["sources"]["ucmerced"]["splits"])
    assert {(w, h) for w, h in zip(records["width"].to_pylist(), records["height"].to_pylist(),
                                   strict=True)} > {(256, 256)}  # not every UCM image is square


def test_mlrsnet_multilabels(params):
    _, records, _ = _ingest(params, "mlrsnet")
    labels_ids = zip(
        records["multilabels"].to_pylist(), records["multilabel_ids"].to_pylist(), strict=True
    )
    for labels, ids in labels_ids:
        assert labels and len(labels) == len(ids)
    assert all(o.endswith(".parquet#" + o.rsplit("#", 1)[1]) for o in records["origin"].to_pylist())


def test_rsd46_without_archive_explains_where_to_get_it(params, tmp_path):
    sp = source_params(params, "rsd46")
    sp["archive"] = None
    source = create_source("rsd46", sp, tmp_path)
    with pytest.raises(FileNotFoundError, match="no public download URL"):
        source.fetch()


def test_folder_source(params, tmp_path, world_dir):
    """A user's own ImageFolder zip goes through the same path (here: the world's RSD46 zip)."""
    sp = {"type": "folder", "path": str(world_dir / "user" / "RSD46-WHU.zip"),
          "image_root": "RSD46-WHU/train", "licence": "mine", "gsd_m": 0.5}
    params["sources"]["mine"] = sp
    summary, records, _ = _ingest(params, "mine")
    assert summary.images > 0 and set(records["licence"].to_pylist()) == {"mine"}
    assert set(records["gsd_min"].to_pylist()) == {0.5}
