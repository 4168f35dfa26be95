"""Fault trials: bad parameters are refused up front, by key, and never cost earlier output.

Every trial goes through the real CLI (``pipelines.cli.main`` in process) with the shipped
``params.yaml`` plus a small overlay holding the one bad value, and checks the exit code, the
message (the key, the value, the fix) and that nothing under the data, shards or runs
directories was written or deleted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from geopile.params import ParamsError, deep_merge, load_params
from geopile.settings import SOURCE_SETTINGS, check_params, field_at
from geopile.sources import SOURCES
from geopile.world.world import PARAMS_OVERLAY, s3_client, world_env
from pipelines.cli import main
from tests.conftest import source_of

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a connect fails at once


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: mtime and sha256 (empty when ``root`` does not exist)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _paths(root: Path) -> dict[str, Any]:
    return {"paths": {"data": str(root / "data"), "reports": str(root / "reports"),
                      "shards": str(root / "shards"), "runs": str(root / "runs")}}


def _geopile(capsys, argv: list[str], overlay: str | dict, tmp_path: Path,
             *before: Path) -> tuple[int, str]:
    """``geopile ARGV --params params.yaml [BEFORE...] --params OVERLAY``: (exit code, stderr)."""
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay if isinstance(overlay, str) else yaml.safe_dump(overlay))
    files = [PARAMS, *before, path]
    capsys.readouterr()
    code = main([*argv, *[a for f in files for a in ("--params", str(f))], "--no-progress"])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# each bad value of issue 15, item 9, through the CLI


def test_negative_naip_count_keeps_earlier_records_and_patches(world, world_dir, tmp_path,
                                                               capsys):
    """``count: -5`` once emptied the records and deleted every raw NAIP patch."""
    root = tmp_path / "out"
    code, err = _geopile(capsys, ["ingest", "naip"],
                         deep_merge(_paths(root), {"sources": {"naip": {"count": 4}}}),
                         tmp_path, world_dir / PARAMS_OVERLAY)
    assert code == 0, err
    before = _snapshot(root)
    assert any(name.startswith("raw/naip/") for name in
               (k.removeprefix("data/") for k in before)), before
    code, err = _geopile(capsys, ["ingest", "naip"],
                         deep_merge(_paths(root), {"sources": {"naip": {"count": -5}}}),
                         tmp_path, world_dir / PARAMS_OVERLAY)
    assert code == 2
    assert "sources.naip.count: -5 is invalid: must be >= 1 (a patch count)" in err
    assert "overlay.yaml" in err and "params.yaml" in err  # the files it read
    assert "Traceback" not in err
    assert _snapshot(root) == before  # nothing written, nothing deleted


@pytest.mark.parametrize("overlay, argv, message", [
    ({"sources": {"naip": {"cuont": 5, "stac_url": CLOSED}}}, ["ingest", "naip"],
     "sources.naip.cuont: unknown key (did you mean 'count'?)"),
    ({"shard": {"cap_scale": 0}}, ["shard", "paper"],
     "shard.cap_scale: 0 is invalid: must be > 0"),
    ({"shard": {"max_samples": "ten"}}, ["shard", "paper"],
     "shard.max_samples: 'ten' is invalid: must be a whole number >= 1 (samples per shard)"),
    ("seed: abc\n", ["summary"],
     "seed: 'abc' is invalid: must be a whole number >= 0"),
    ({"sources": {"naip": {"count": "ten", "stac_url": CLOSED}}}, ["ingest", "naip"],
     "sources.naip.count: 'ten' is invalid: must be a whole number >= 1 (a patch count)"),
    ({"shards": {"max_samples": 8}}, ["shard", "paper"],
     "shards: unknown key (did you mean 'shard'?)"),
    ({"builds": {"paper": {"patternet": 3400}}}, ["shard", "paper"],
     "builds.paper.patternet: no source 'patternet' under sources (did you mean 'patternnet'?)"),
    ({"builds": {"paper": {"naip": 0}}}, ["shard", "paper"],
     "builds.paper.naip: 0 is invalid: must be an image count >= 1, or 'all'"),
    ({"pretrain": {"stream": {"url": "s3:/bucket"}}}, ["push", "paper"],
     "pretrain.stream.url: 's3:/bucket' is invalid: must match ^s3://"),
    ({"sources": {"mine": {"path": "/nowhere"}}}, ["ingest", "mine"],
     "sources.mine: no source kind 'mine': set sources.mine.type to one of naip,"),
])
def test_bad_value_is_refused_by_key_before_any_work(overlay, argv, message, tmp_path, capsys):
    root = tmp_path / "out"
    if isinstance(overlay, dict):
        overlay = deep_merge(_paths(root), overlay)
    else:
        overlay = yaml.safe_dump(_paths(root)) + overlay
    code, err = _geopile(capsys, argv, overlay, tmp_path)
    assert code == 2, err
    assert message in err, err
    assert err.startswith("geopile: error: ") and "Traceback" not in err
    assert not root.exists()  # no stage started


@pytest.mark.parametrize("digits", [
    "12345678901234567890123456789012",  # YAML 1.1: a decimal integer
    "01234567012345670123456701234567",  # YAML 1.1: an octal integer (decimal would be wrong)
])
def test_all_digit_md5_must_be_quoted(digits, tmp_path, capsys):
    """An unquoted all-digit md5 is an int to YAML (leading zeros gone); it used to crash."""
    root = tmp_path / "out"
    overlay = yaml.safe_dump(_paths(root)) + (
        "sources:\n  resisc45:\n"
        f"    urls: {{archive: '{CLOSED}/NWPU-RESISC45.zip'}}\n"
        f"    md5s: {{archive: {digits}}}\n")
    assert not isinstance(yaml.safe_load(overlay)["sources"]["resisc45"]["md5s"]["archive"], str)
    code, err = _geopile(capsys, ["ingest", "resisc45"], overlay, tmp_path)
    assert code == 2, err
    assert "sources.resisc45.md5s.archive:" in err and "quote it" in err, err
    assert "archive: '<the 32 characters as published>'" in err
    assert not root.exists()


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    root = tmp_path / "out"
    overlay = deep_merge(_paths(root), {"seed": "abc", "shard": {"cap_scale": 0},
                                    "sources": {"naip": {"count": -5, "cuont": 1}}})
    code, err = _geopile(capsys, ["ingest", "naip"], overlay, tmp_path)
    assert code == 2
    assert "4 invalid parameters (nothing was run):" in err
    for line in ("  seed: 'abc' is invalid", "  shard.cap_scale: 0 is invalid",
                 "  sources.naip.count: -5 is invalid", "  sources.naip.cuont: unknown key"):
        assert line in err, err
    assert not root.exists()


def test_missing_params_yaml_names_what_is_missing(tmp_path, capsys):
    """An overlay passed alone (params.yaml forgotten): each missing block, and the fix."""
    overlay = tmp_path / "only.yaml"
    overlay.write_text(yaml.safe_dump(_paths(tmp_path / "out")))
    code = main(["summary", "--params", str(overlay)])
    err = capsys.readouterr().err
    assert code == 2
    assert "shard: missing (shard writing): params.yaml sets it; pass --params params.yaml " \
        "before any overlay" in err


# ---------------------------------------------------------------------------------------------
# what must keep validating


def test_shipped_params_validate():
    settings = check_params(load_params([PARAMS]), [PARAMS])
    assert settings.sources["naip"].count == 300000
    assert {name: type(s).__name__ for name, s in settings.sources.items()}["rsd46"] == \
        "Rsd46Settings"


def test_params_with_world_overlay_validate(world, world_dir):
    check_params(load_params([PARAMS, world_dir / PARAMS_OVERLAY]))


def test_every_source_kind_has_a_schema():
    assert set(SOURCE_SETTINGS) == set(SOURCES)


def _keys(node: Any, path: tuple[str, ...] = ()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, str(key))
            yield from _keys(value, (*path, str(key)))


def test_every_key_of_params_and_the_world_overlay_has_a_schema_field(world, world_dir):
    """A key added to params.yaml (or written by the world) without a schema field fails here."""
    for params in (load_params([PARAMS]), load_params([PARAMS, world_dir / PARAMS_OVERLAY])):
        missing = [".".join(p) for p in _keys(params) if field_at(p, params) is None]
        assert not missing, missing
    assert field_at(("sources", "naip", "cuont"), params) is None  # the walk does catch one


def test_yaml_exponent_strings_are_numbers_and_a_folder_source_needs_little():
    """PyYAML reads 1e-8 as a string; a user's folder source needs only type and path."""
    params = load_params([PARAMS])
    params["pretrain"]["eps"] = "1e-8"
    params["sources"]["mine"] = {"type": "folder", "path": "/data/mine.zip"}
    settings = check_params(params)
    assert settings.pretrain.eps == 1e-8 and settings.sources["mine"].enabled is None
    params["sources"]["mine"]["enabled"] = None
    with pytest.raises(ParamsError, match=r"sources\.mine\.enabled: null is invalid: must not be "
                                          "null: leave the key out"):
        check_params(params)


# ---------------------------------------------------------------------------------------------
# issue 15, item 10: pretrain checks its cheap preconditions before loading the teacher


@pytest.fixture
def no_teacher(monkeypatch):
    """Loading the teacher is the expensive step (a download): it must not be reached."""
    import pipelines.pretrain

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the preconditions were checked")

    monkeypatch.setattr(pipelines.pretrain, "FrozenTeacher", refuse)


def test_pretrain_without_shards_fails_fast(no_teacher, tmp_path, capsys):
    root = tmp_path / "out"
    code, err = _geopile(capsys, ["pretrain", "paper"],
                         deep_merge(_paths(root), {"pretrain": {"stream": {"url": None}}}),
                         tmp_path)
    assert code == 2, err
    assert f"build 'paper' has no shards: {root / 'shards' / 'paper' / 'index.json'} does " \
        "not exist (paths.shards)" in err
    assert "geopile shard paper" in err
    assert not (root / "runs").exists()  # and the teacher was never built (no_teacher)


def test_pretrain_without_shards_on_s3_fails_fast(no_teacher, world, tmp_path, capsys,
                                                   monkeypatch):
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    url = f"s3://{world['bucket']}/nothing-pushed-here"
    code, err = _geopile(capsys, ["pretrain", "paper"],
                         deep_merge(_paths(tmp_path / "out"),
                                    {"pretrain": {"stream": {"url": url}}}),
                         tmp_path)
    assert code == 2, err
    assert f"build 'paper' has no shards: {url}/paper/index.json does not exist " \
        "(pretrain.stream.url)" in err
    assert "geopile push paper" in err
    # once pushed, the same check passes (a HEAD of index.json, nothing more)
    from geopile.settings import check_params
    from pipelines.pretrain import check_inputs

    s3_client(world["s3"]).put_object(Bucket=world["bucket"], Key="pushed/paper/index.json",
                                      Body=b"{}")
    check_inputs("paper", f"s3://{world['bucket']}/pushed/paper",
                 check_params(load_params([PARAMS])).pretrain, "pretrain.stream.url")


def test_pretrain_with_a_missing_teacher_file_fails_fast(no_teacher, tmp_path, capsys):
    root = tmp_path / "out"
    (root / "shards" / "paper").mkdir(parents=True)
    (root / "shards" / "paper" / "index.json").write_text("{}")
    missing = tmp_path / "swin_base_patch4_window7_224_22k.pth"
    code, err = _geopile(capsys, ["pretrain", "paper"], deep_merge(_paths(root), {"pretrain": {
        "stream": {"url": None}, "teacher": {"file": str(missing)}}}), tmp_path)
    assert code == 2, err
    assert f"pretrain.teacher.file: {missing} does not exist" in err
    assert not (root / "runs").exists()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", [{"count": -5}, {"min_entropy": 99.0}])
def test_ingest_driver_never_empties_earlier_output(params, tmp_path, bad):
    """Below the schema (a library caller): quotas asking for nothing, or a run whose filter
    keeps nothing, stop with an IngestError and leave earlier records and patches as they were."""
    from geopile.ingest import IngestError, ingest
    from geopile.sources import create_source, source_settings

    data = Path(params["paths"]["data"])
    block = {**params["sources"]["naip"], "count": 4}
    ingest(source_of("naip", block, data, progress=False), workers=2, progress=False)
    def outputs() -> tuple[dict, dict]:  # the run's own checkpoint (.parts) may stay
        records = {k: v for k, v in _tree(data / "records").items() if ".parts" not in k}
        return _tree(data / "raw" / "naip"), records

    before = outputs()
    assert before[0] and before[1]
    # model_copy skips validation: what a caller building settings by hand could pass
    settings = source_settings("naip", block).model_copy(update=bad)
    source = create_source("naip", settings, data, progress=False)
    with pytest.raises(IngestError, match="no image|kept no image") as err:
        ingest(source, workers=2, progress=False)
    assert "naip" in str(err.value)
    assert outputs() == before


def test_an_overlay_deletes_with_the_delete_tag_and_null_stays_a_value(tmp_path):
    """Deep merge alone cannot drop a source from a build (`resisc45: null` is refused)."""
    overlay = tmp_path / "drop.yaml"
    overlay.write_text("builds:\n  full:\n    resisc45: !delete\n    nosuch: !delete\n"
                       "  paper_patternnet_full: !delete\n"
                       "sources:\n  naip: {bbox: null}\n"
                       "curate:\n  eval_sets:\n    extra:\n      - test\n      - !delete\n")
    params = load_params([REPO / "params.yaml", overlay])
    assert "resisc45" not in params["builds"]["full"] and "naip" in params["builds"]["full"]
    assert "paper_patternnet_full" not in params["builds"]
    assert params["sources"]["naip"]["bbox"] is None  # null is a value
    assert params["curate"]["eval_sets"]["extra"] == ["test"]  # nothing to delete in a new list
    full = check_params({**params, "curate": load_params([REPO / "params.yaml"])["curate"]})
    assert set(full.builds["full"].caps) == {"naip", "rsd46", "mlrsnet", "patternnet"}
    refused = tmp_path / "null.yaml"
    refused.write_text("builds:\n  full: {resisc45: null}\n")
    with pytest.raises(ParamsError, match=r"builds\.full\.resisc45: null is invalid"):
        check_params(load_params([REPO / "params.yaml", refused]))


def test_renamed_keys_say_what_took_their_place():
    params = load_params([REPO / "params.yaml"])
    old = {**params, "pretrain_builds": ["paper"], "finetune": {**params["finetune"],
                                                             "pretrained": "paper"}}
    with pytest.raises(ParamsError) as err:
        check_params(old)
    text = str(err.value)
    assert "pretrain_builds: renamed; use ablation" in text
    assert "finetune.pretrained: renamed; use ablation (its first build is --init ours)" in text
    assert "extra" not in text.lower()  # not also the schema's "not a known key"
