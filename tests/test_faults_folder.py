"""Fault trials: a user's folder and a params file are input (issue 27, items 5 and 6).

A folder source keeps every image: names that differ only in punctuation, accents or extension
get distinct keys; links are not followed out of the folder, loops and special files are counted
rejects; EXIF orientation is applied. Worker counts and YAML are bounded. Everything runs through
the real CLI (``pipelines.cli.main`` in process, or ``geopile`` in a child for the bomb).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import simplejpeg
import yaml
from PIL import Image, ImageOps

from geopile.payloads import LocalPayloads
from geopile.records import records_path, rejects_path
from geopile.settings import Shard
from geopile.shards import encode_sample
from pipelines.cli import main
from tests.test_faults_params import PARAMS, REPO

SOURCE = "mine"


def _jpeg(seed: int, size: tuple[int, int] = (48, 40), exif: Image.Exif | None = None) -> bytes:
    """A small textured JPEG that no other seed reproduces (distinct pixels per image)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92, exif=exif or Image.Exif())
    return buf.getvalue()


def _ingest(capsys, tmp_path: Path, folder: Path, extra: dict | None = None,
            argv: tuple[str, ...] = ()) -> tuple[int, str]:
    """``geopile ingest mine`` on ``folder`` with every other source disabled."""
    base = yaml.safe_load(PARAMS.read_text())
    sources = {name: {"enabled": False} for name in base["sources"]}
    sources[SOURCE] = {"type": "folder", "role": "pretrain", "path": str(folder),
                       "licence": "CC0-1.0"}
    overlay = {"paths": {"data": str(tmp_path / "data"), "reports": str(tmp_path / "reports"),
                         "shards": str(tmp_path / "shards"), "runs": str(tmp_path / "runs")},
               "sources": sources,
               "curate": {"priority": [SOURCE],
                          "eval_sets": {name: [] for name in base["curate"]["eval_sets"]}},
               **(extra or {})}
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    capsys.readouterr()
    code = main(["ingest", SOURCE, *argv, "--params", str(PARAMS), "--params", str(path),
                 "--no-progress"])
    return code, capsys.readouterr().err


def _records(tmp_path: Path) -> list[dict]:
    return pq.read_table(records_path(tmp_path / "data", SOURCE)).to_pylist()


def _rejects(tmp_path: Path) -> dict[str, str]:
    rows = pq.read_table(rejects_path(tmp_path / "data", SOURCE)).to_pylist()
    return {r["origin"]: r["reason"] for r in rows}


def test_names_that_differ_only_in_punctuation_keep_every_image(tmp_path, capsys):
    """Trial: ``a b``, ``a_b``, ``a.b``, ``img.jpg``/``img.png``, ``ü``, ``é``: 10 images.

    On 9298ec4 they became 6 keys (4 images lost, exit 0). Expected: 10 records, 10 keys; safe
    names keep their old keys; the rule depends on the file alone.
    """
    folder = tmp_path / "in"
    (folder / "cls").mkdir(parents=True)
    names = ["a b.jpg", "a_b.jpg", "a.b.jpg", "img.jpg", "img.png", "ü.jpg", "é.jpg",
             "x1.jpg", "x2.jpg", "x3.jpg"]
    for seed, name in enumerate(names):
        data = _jpeg(seed)
        if name.endswith(".png"):
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, "PNG")
            data = buf.getvalue()
        (folder / "cls" / name).write_bytes(data)
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 0, err
    records = _records(tmp_path)
    assert len(records) == 10 and len({r["key"] for r in records}) == 10
    by_origin = {r["origin"]: r["key"] for r in records}
    assert by_origin["cls/a_b.jpg"] == "mine/cls_a_b"  # safe names: keys as before
    assert by_origin["cls/x1.jpg"] == "mine/cls_x1"
    assert by_origin["cls/img.jpg"] == "mine/cls_img_jpg"  # they differ only in extension
    assert by_origin["cls/img.png"] == "mine/cls_img_png"
    lossy = [by_origin[f"cls/{n}"] for n in ("a b.jpg", "a.b.jpg", "ü.jpg", "é.jpg")]
    assert all(k.count("_") >= 1 and len(k.rsplit("_", 1)[1]) == 8 for k in lossy), lossy
    assert all("." not in k.rsplit("/", 1)[1] for k in by_origin.values())

    # the same file gets the same key when others come and go
    (folder / "cls" / "a_b.jpg").unlink()
    (folder / "cls" / "new one.jpg").write_bytes(_jpeg(99))
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 0, err
    again = {r["origin"]: r["key"] for r in _records(tmp_path)}
    assert again["cls/a b.jpg"] == by_origin["cls/a b.jpg"]
    assert again["cls/ü.jpg"] == by_origin["cls/ü.jpg"]


def test_a_key_still_shared_is_refused_naming_the_files(tmp_path, capsys):
    """``img.jpg``, ``img.png`` and ``img_jpg.jpg``: no rule can keep all three apart safely.

    Expected: exit 2 before any work, naming the key and both files; no records written.
    """
    folder = tmp_path / "in"
    (folder / "cls").mkdir(parents=True)
    for seed, name in enumerate(["img.jpg", "img.png", "img_jpg.jpg"]):
        (folder / "cls" / name).write_bytes(_jpeg(seed))
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 2
    assert "mine/cls_img_jpg: cls/img.jpg and cls/img_jpg.jpg" in err
    assert "their images would be lost" in err and "rename them" in err
    assert not records_path(tmp_path / "data", SOURCE).exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_links_loops_and_special_files_are_counted_rejects(tmp_path, capsys):
    """Trial: a symlink loop, links out of the folder, a FIFO and a dangling link.

    On 9298ec4 the loop recorded every image twice under a phantom class, the outside folder
    was ingested, and the FIFO and dangling link appeared nowhere. Expected: each is a reject
    with its reason; no image from outside; a link to a file inside is read; the FIFO is never
    opened (the run ends).
    """
    folder, outside = tmp_path / "in", tmp_path / "outside"
    (folder / "cls").mkdir(parents=True)
    outside.mkdir()
    (folder / "cls" / "a.jpg").write_bytes(_jpeg(1))
    (folder / "cls" / "b.jpg").write_bytes(_jpeg(2))
    (outside / "o.jpg").write_bytes(_jpeg(3))
    (folder / "cls" / "loop").symlink_to("..", target_is_directory=True)
    (folder / "cls" / "out").symlink_to(outside, target_is_directory=True)
    (folder / "cls" / "outfile.jpg").symlink_to(outside / "o.jpg")
    (folder / "cls" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "cls" / "inside.jpg").symlink_to(folder / "cls" / "a.jpg")
    (folder / "cls" / "self.jpg").symlink_to(folder / "cls" / "self.jpg")
    os.mkfifo(folder / "cls" / "fifo.jpg")
    (folder / "elsewhere").symlink_to(outside, target_is_directory=True)  # a class folder link
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 0, err
    records = _records(tmp_path)
    assert sorted(r["origin"] for r in records) == ["cls/a.jpg", "cls/b.jpg", "cls/inside.jpg"]
    assert {r["label"] for r in records} == {"cls"}  # no phantom class
    rejects = _rejects(tmp_path)
    assert rejects["cls/loop"].startswith("symlink to a folder:")
    assert rejects["cls/out"].startswith("symlink out of the folder:")
    assert rejects["cls/outfile.jpg"].startswith("symlink out of the folder:")
    assert rejects["cls/dangling.jpg"].startswith("dangling symlink:")
    assert rejects["cls/self.jpg"].startswith("symlink loop:")
    assert rejects["cls/fifo.jpg"] == "not a regular file: a FIFO, not read"
    assert rejects["elsewhere"].startswith("symlink out of the folder:")


def test_exif_orientation_is_applied_and_counted(tmp_path, capsys):
    """Trial: a JPEG stored sideways with EXIF orientation 6 (a phone's portrait photo).

    On 9298ec4 it was stored and delivered unrotated, with no warning. Expected: the record
    measures the upright image (width and height swapped) and keeps ``orientation: 6``; the
    shard holds an upright JPEG without the tag; the loader's transform sees it upright;
    curate.json counts it.
    """
    folder = tmp_path / "in"
    (folder / "cls").mkdir(parents=True)
    exif = Image.Exif()
    exif[274] = 6
    stored = _jpeg(5, size=(64, 40), exif=exif)
    (folder / "cls" / "phone.jpg").write_bytes(stored)
    (folder / "cls" / "plain.jpg").write_bytes(_jpeg(6, size=(64, 40)))
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 0, err
    rows = {r["origin"]: r for r in _records(tmp_path)}
    phone = rows["cls/phone.jpg"]
    assert (phone["width"], phone["height"], phone["orientation"]) == (40, 64, 6)
    assert rows["cls/plain.jpg"]["orientation"] is None

    sample = encode_sample(phone, LocalPayloads(tmp_path / "data"), Shard(
        max_samples=10, max_bytes=1 << 20, naip_bands=3, jpeg_quality=95, mtime=0,
        cap_scale=1.0))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(stored)))).astype(int)
    shard_pixels = simplejpeg.decode_jpeg(sample["jpg"]).astype(int)
    assert shard_pixels.shape == upright.shape == (64, 40, 3)
    error = np.abs(shard_pixels - upright).mean()  # one more JPEG generation, at quality 95
    assert error < 6 and error < np.abs(shard_pixels - upright[::-1, ::-1]).mean() / 4
    assert Image.open(io.BytesIO(sample["jpg"])).getexif().get(274, 1) == 1
    plain = rows["cls/plain.jpg"]
    assert encode_sample(plain, LocalPayloads(tmp_path / "data"), Shard(
        max_samples=10, max_bytes=1 << 20, naip_bands=3, jpeg_quality=95, mtime=0,
        cap_scale=1.0))["jpg"] == (folder / "cls" / "plain.jpg").read_bytes()  # copied

    capsys.readouterr()
    overlay = tmp_path / "overlay.yaml"
    assert main(["curate", "--params", str(PARAMS), "--params", str(overlay),
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "reports" / "curate.json").read_text())
    assert report["counts"][SOURCE]["exif_rotated"] == 1


# ---------------------------------------------------------------------------------------------
# limits with reasons (item 6)


def test_worker_counts_past_the_machine_are_refused_with_the_number(tmp_path, capsys):
    """Trial: ``ingest.workers: 100000`` and ``--workers 100000`` (load 184, killed at 180 s).

    Expected: exit 2 at once naming the key or flag, the value and the limit; nothing written.
    """
    folder = tmp_path / "in"
    (folder / "cls").mkdir(parents=True)
    (folder / "cls" / "a.jpg").write_bytes(_jpeg(1))
    code, err = _ingest(capsys, tmp_path, folder, {"ingest": {"workers": 100000}})
    assert code == 2
    assert "ingest.workers: 100000 is invalid: more than 16 workers per CPU" in err
    code, err = _ingest(capsys, tmp_path, folder, argv=("--workers", "100000"))
    assert code == 2
    assert "--workers: 100000 is invalid: more than 16 workers per CPU" in err
    code, err = _ingest(capsys, tmp_path, folder, {"pretrain": {"workers": 100000}})
    assert code == 2 and "pretrain.workers: 100000 is invalid" in err
    assert not (tmp_path / "data" / "records").exists()


BOMB = """
sources:
  naip:
    states: &l9 [*l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8, *l8]
"""


def _bomb() -> str:
    lines = ["a0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + BOMB


@pytest.mark.parametrize("text, message", [
    (_bomb(), "expands to more than 100,000 values"),
    ("sources: &s {naip: {states: [*s]}}\n", "a value contains itself"),
    ("sources: !!python/object:os.system {}\n", "is not valid YAML"),
])
def test_hostile_yaml_is_refused_before_it_is_expanded(tmp_path, text, message):
    """Trial: a YAML alias bomb under ``sources.naip.states`` (77 s and 525 MB on 9298ec4).

    Expected: exit 2 naming the file and why, in a child that is given far less than that;
    a recursive alias and a ``!!python/object`` tag are refused the same way.
    """
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(text)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "summary", "--params",
                           str(PARAMS), "--params", str(bomb)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and str(bomb) in done.stderr
    assert len(done.stderr) < 2000  # the value is never rendered whole


def test_pillows_orientation_fixtures_come_out_upright(tmp_path, capsys):
    """Outside reference: Pillow's ``hopper_orientation_2..8.jpg`` (tests/data/pillow).

    Each is ``hopper.jpg`` stored under another EXIF orientation. Expected: every record keeps
    its orientation, and every shard member decodes, with no EXIF reader involved, to
    ``hopper.jpg`` within one JPEG generation (about 5 grey levels on average; stored as is,
    they are 59-82 away from it).
    """
    fixtures = REPO / "tests" / "data" / "pillow"
    folder = tmp_path / "in"
    (folder / "cls").mkdir(parents=True)
    for n in range(2, 9):
        (folder / "cls" / f"o{n}.jpg").write_bytes(
            (fixtures / f"hopper_orientation_{n}.jpg").read_bytes())
    code, err = _ingest(capsys, tmp_path, folder)
    assert code == 0, err
    upright = np.asarray(Image.open(fixtures / "hopper.jpg").convert("RGB")).astype(int)
    config = Shard(max_samples=10, max_bytes=1 << 20, naip_bands=3, jpeg_quality=95,
                         mtime=0, cap_scale=1.0)
    for row in _records(tmp_path):
        n = int(row["origin"][len("cls/o"):-len(".jpg")])
        assert row["orientation"] == n
        member = encode_sample(row, LocalPayloads(tmp_path / "data"), config)["jpg"]
        shown = simplejpeg.decode_jpeg(member).astype(int)  # no EXIF reader involved
        assert np.abs(shown - upright).mean() < 8, n
