"""Fault trials for sources: hostile archives, decompression bombs, stale extractions, MLRSNet.

Every input here is built in the test from real bytes (PIL-encoded images, zip and tar files
written with the standard library, one hand-assembled PNG bomb); nothing needs the offline world.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geopile.card import render_card
from geopile.download import UnsafeArchiveError
from geopile.imagestats import MAX_PIXELS, MIN_SIDE, BadImage, image_stats
from geopile.ingest import ingest
from geopile.params import load_params
from geopile.records import read_records, records_path, rejects_path
from geopile.sources.mlrsnet import MLRSNet
from geopile.staging import INPUT_STAMP
from tests.conftest import source_of, typed

REPO = Path(__file__).resolve().parents[1]


# -- inputs ---------------------------------------------------------------------------------------
def _image(seed: int, size: int = 48, fmt: str = "JPEG") -> bytes:
    """A small aerial-looking image: a seeded gradient with noise, so every seed differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = (x * rng.uniform(1, 4) + y * rng.uniform(1, 4)) % 256
    pixels = np.clip(base[..., None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def zero_png(width: int, height: int, bands: int = 3) -> bytes:
    """An all-zero 8-bit PNG (gray or RGB) of any size, built in milliseconds.

    Deflate segments ending in a full flush reference nothing before them, so one compressed
    segment of zero rows is repeated; the zlib trailer (Adler-32 of N zero bytes) is closed-form.
    """
    row = width * bands + 1  # filter byte + pixels
    per = max(1, (1 << 22) // row)
    n, rest = divmod(height, per)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = raw.compress(bytes(row * per)) + raw.flush(zlib.Z_FULL_FLUSH)
    tail = raw.compress(bytes(row * rest)) + raw.flush()
    adler = (((row * height) % 65521) << 16) | 1
    idat = b"\x78\xda" + segment * n + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, {1: 0, 3: 2}[bands], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def test_zero_png_is_a_valid_png():
    """The generator itself, at a size that decodes cheaply and repeats its segment."""
    for bands in (1, 3):
        with Image.open(io.BytesIO(zero_png(1500, 2000, bands))) as img:
            pixels = np.asarray(img)
        assert pixels.shape[:2] == (2000, 1500) and not pixels.any()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """The issue's bomb: 17000 x 17000 RGB pixels (289 MP, 867 MB decoded) in about 840 KB."""
    return zero_png(17000, 17000)


def _folder(tmp_path: Path, path: Path, name: str = "mine", **extra) -> tuple:
    """Ingest a folder source; returns (summary, records, rejects)."""
    data = tmp_path / "data"
    params = {"type": "folder", "path": str(path), "licence": "CC0-1.0", **extra}
    source = source_of(name, params, data, progress=False)
    summary = ingest(source, workers=1, progress=False)
    return (summary, read_records(records_path(data, name)).to_pylist(),
            pq.read_table(rejects_path(data, name)).to_pylist())


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _write_tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _write_dir(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# -- hostile archives -----------------------------------------------------------------------------
GOOD = {"fields/a0.jpg": _image(1), "fields/a1.jpg": _image(2)}


def _zip_absolute(path: Path, outside: Path) -> str:
    name = str(outside / "evil.jpg")
    _write_zip(path, {**GOOD, name: _image(3)})
    return name


def _tar_absolute(path: Path, outside: Path) -> str:
    name = str(outside / "evil.jpg")
    _write_tar(path, {**GOOD, name: _image(3)})
    return name


def _zip_symlink(path: Path, outside: Path) -> str:
    _write_zip(path, GOOD)
    info = zipfile.ZipInfo("fields/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(info, str(outside / "evil.jpg"))  # a symlink's target is its content
    return "fields/link.jpg"


def _tar_hardlink(path: Path, outside: Path) -> str:
    _write_tar(path, GOOD)
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo("fields/hard.jpg")
        info.type, info.linkname = tarfile.LNKTYPE, str(outside / "evil.jpg")
        tf.addfile(info)
    return "fields/hard.jpg"


def _tar_device(path: Path, outside: Path) -> str:
    _write_tar(path, GOOD)
    with tarfile.open(path, "a") as tf:
        info = tarfile.TarInfo("fields/dev.jpg")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
        tf.addfile(info)
    return "fields/dev.jpg"


def _zip_huge_member(path: Path, outside: Path) -> str:
    """A member whose headers declare 4 GB uncompressed (a zip bomb's signature)."""
    name = "fields/bomb.jpg"
    _write_zip(path, {**GOOD, name: b"\xff\xd8" + bytes(30)})
    blob = bytearray(path.read_bytes())
    huge = struct.pack("<I", 0xF000_0000)
    local = blob.rindex(b"PK\x03\x04", 0, blob.index(name.encode()))
    blob[local + 22:local + 26] = huge  # local header: uncompressed size
    central = blob.rindex(b"PK\x01\x02", 0, blob.rindex(name.encode()))
    blob[central + 24:central + 28] = huge  # central directory: uncompressed size
    path.write_bytes(bytes(blob))
    return name


ATTACKS = {
    "zip_absolute_path": ("evil.zip", _zip_absolute),
    "tar_absolute_path": ("evil.tar", _tar_absolute),
    "zip_symlink_member": ("evil.zip", _zip_symlink),
    "tar_hardlink": ("evil.tar", _tar_hardlink),
    "tar_device_file": ("evil.tar", _tar_device),
    "zip_huge_declared_size": ("evil.zip", _zip_huge_member),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_hostile_archive_is_refused_naming_the_member(tmp_path, attack):
    filename, make = ATTACKS[attack]
    outside = tmp_path / "outside"
    archive = tmp_path / "in" / filename
    archive.parent.mkdir()
    member = make(archive, outside)
    data = tmp_path / "data"
    source = source_of("mine", {"type": "folder", "path": str(archive), "licence": "CC0-1.0"},
                           data, progress=False)
    with pytest.raises(UnsafeArchiveError) as err:
        source.fetch()
    assert repr(member) in str(err.value) and filename in str(err.value)
    assert not outside.exists()  # nothing written outside the destination ...
    assert not (data / "raw" / "mine").exists() and not (data / "raw" / "mine").is_symlink()
    extracted = data / "extracted"  # ... and nothing half-extracted inside it
    assert not extracted.exists() or list(extracted.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", "data"] if data.exists()
                                                                 else ["in"])


# -- decompression bombs and images too small to use ----------------------------------------------
def test_bomb_is_rejected_from_its_header_without_decoding(tmp_path, bomb):
    """In a fresh process, so its peak memory is this call's: well under 100 MB, not 3+ GB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    script = f"""
import json, resource, sys
from geopile.imagestats import BadImage, image_stats
data = open({str(path)!r}, "rb").read()
# a hard ceiling, so a regression fails here instead of taking the machine's memory
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    image_stats(data)
    reason = None
except BadImage as err:
    reason = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"reason": reason, "grew_kb": after - before}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["reason"] is not None, "a 289-megapixel PNG was accepted"
    assert result["reason"].startswith("image too large: 17000x17000 px")
    assert f"{MAX_PIXELS:,}" in result["reason"]
    assert result["grew_kb"] < 100 * 1024


@pytest.mark.parametrize("size", [(1, 1), (MIN_SIDE - 1, 64), (64, MIN_SIDE - 1)])
def test_image_under_the_minimum_side_is_rejected(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    with pytest.raises(BadImage, match=rf"^image too small: {size[0]}x{size[1]} px.*{MIN_SIDE}"):
        image_stats(buf.getvalue())


def test_image_at_the_minimum_side_is_kept():
    buf = io.BytesIO()
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (10, 20, 30)).save(buf, "PNG")
    assert image_stats(buf.getvalue()).width == MIN_SIDE


def test_bad_images_in_a_folder_are_rejected_and_counted(tmp_path, bomb):
    """Bomb, 1x1, truncated JPEG and a text file named .jpg: rejected with reasons, counted."""
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "PNG")
    good = {f"fields/ok{i}.jpg": _image(10 + i) for i in range(3)}
    root = _write_dir(tmp_path / "mine", {
        **good,
        "fields/bomb.png": bomb,
        "fields/tiny.png": tiny.getvalue(),
        "fields/cut.jpg": _image(20, 64)[:600],
        "fields/notes.jpg": b"field notes, not an image\n",
    })
    summary, records, rejects = _folder(tmp_path, root)
    assert sorted(r["origin"] for r in records) == sorted(good)
    reasons = {r["origin"]: r["reason"] for r in rejects}
    assert reasons["fields/bomb.png"].startswith("image too large: 17000x17000 px")
    assert reasons["fields/tiny.png"].startswith("image too small: 1x1 px")
    assert reasons["fields/cut.jpg"].startswith("corrupt or truncated image")
    assert reasons["fields/notes.jpg"].startswith("not an image")
    assert summary.images == 3 and summary.rejects == 4
    assert summary.reasons == {"image too large": 1, "image too small": 1,
                               "corrupt or truncated image": 1, "not an image (no decoder "
                               "recognises the bytes)": 1}


# -- stale extractions ----------------------------------------------------------------------------
def _bytes_by_origin(records: list[dict]) -> dict[str, str]:
    return {r["origin"]: r["xxh3_bytes"] for r in records}


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_changed_archive_is_extracted_again(tmp_path, kind):
    import xxhash

    write = _write_zip if kind == "zip" else _write_tar
    archive = tmp_path / "in" / f"mine.{kind}"
    write(archive, {"fields/a.jpg": _image(1), "fields/b.jpg": _image(2)})
    _, first, _ = _folder(tmp_path, archive)
    write(archive, {"fields/a.jpg": _image(3), "fields/b.jpg": _image(2)})  # one image changed
    _, second, _ = _folder(tmp_path, archive)
    assert _bytes_by_origin(second)["fields/a.jpg"] == xxhash.xxh3_128_hexdigest(_image(3))
    assert _bytes_by_origin(second)["fields/b.jpg"] == _bytes_by_origin(first)["fields/b.jpg"]
    assert {r["origin_sha256"] for r in second} != {r["origin_sha256"] for r in first}
    raw = tmp_path / "data" / "raw" / "mine"
    # a real directory (what DVC tracks and restores), stamped with the archive it holds
    assert not raw.is_symlink() and (raw / "fields/a.jpg").read_bytes() == _image(3)
    assert (raw / INPUT_STAMP).read_text().strip() == second[0]["origin_sha256"]
    # nothing staged is left behind
    extracted = tmp_path / "data" / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []


def test_directory_source_follows_a_changed_path(tmp_path):
    import xxhash

    one = _write_dir(tmp_path / "one", {"fields/a.jpg": _image(1)})
    two = _write_dir(tmp_path / "two", {"fields/a.jpg": _image(4)})
    _folder(tmp_path, one)
    _, records, _ = _folder(tmp_path, two)
    assert _bytes_by_origin(records)["fields/a.jpg"] == xxhash.xxh3_128_hexdigest(_image(4))
    assert (tmp_path / "data" / "raw" / "mine").resolve() == two.resolve()
    assert (one / "fields/a.jpg").read_bytes() == _image(1)  # the user's folders are untouched


def test_archive_replaces_an_earlier_directory_and_back(tmp_path):
    import xxhash

    folder = _write_dir(tmp_path / "one", {"fields/a.jpg": _image(1)})
    archive = _write_zip(tmp_path / "in" / "mine.zip", {"fields/a.jpg": _image(5)})
    _folder(tmp_path, folder)
    _, records, _ = _folder(tmp_path, archive)
    assert _bytes_by_origin(records)["fields/a.jpg"] == xxhash.xxh3_128_hexdigest(_image(5))
    _, records, _ = _folder(tmp_path, folder)
    assert _bytes_by_origin(records)["fields/a.jpg"] == xxhash.xxh3_128_hexdigest(_image(1))
    assert (folder / "fields/a.jpg").read_bytes() == _image(1)
    assert not (tmp_path / "data" / "extracted").exists() or not any(
        (tmp_path / "data" / "extracted").iterdir())


def test_raw_directory_of_an_older_layout_is_replaced(tmp_path):
    """Data dirs made before hash-keyed extraction hold raw/<name> as a plain directory."""
    archive = _write_zip(tmp_path / "in" / "mine.zip", {"fields/a.jpg": _image(6)})
    old = _write_dir(tmp_path / "data" / "raw" / "mine", {"fields/a.jpg": _image(7)})
    _, records, _ = _folder(tmp_path, archive)
    assert (old / "fields/a.jpg").read_bytes() == _image(6) and not old.is_symlink()
    assert len(records) == 1


def test_current_extraction_is_kept_and_a_kill_between_the_renames_recovers(tmp_path):
    """An unchanged archive is not extracted again (after `dvc pull` too: the stamp travels
    with raw/<name>); a kill after raw/<name> was moved aside and before the new one was moved
    in leaves no raw/<name>, and the next run completes the swap from the staged copy."""
    archive = _write_zip(tmp_path / "in" / "mine.zip", {"fields/a.jpg": _image(8)})
    _folder(tmp_path, archive)
    raw = tmp_path / "data" / "raw" / "mine"
    marker = raw / "fields" / "kept"
    marker.write_text("unchanged input: not re-extracted")
    _folder(tmp_path, archive)
    assert marker.exists()
    _write_zip(archive, {"fields/a.jpg": _image(9)})
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    staged = tmp_path / "data" / "extracted" / f"mine-{sha[:16]}"
    staged.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staged)  # the kill came after staging ...
    moved = raw.with_name(f".mine.old-{_dead_pid()}")
    os.replace(raw, moved)  # ... and after the first rename
    _, records, _ = _folder(tmp_path, archive)
    assert (raw / "fields/a.jpg").read_bytes() == _image(9) and len(records) == 1
    assert not moved.exists() and not staged.exists()


# -- MLRSNet: the scene category comes from image.path --------------------------------------------
def _hf_table(rows: list[tuple[str | None, bytes, list[int]]]) -> pa.Table:
    """Rows as the hub's parquet holds them: ``image {bytes, path}``, ``label list<ClassLabel>``."""
    features = {"image": {"_type": "Image"},
                "label": {"feature": {"names": list(MLRSNet.multilabels), "_type": "ClassLabel"},
                          "_type": "Sequence"}}
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
         ("label", pa.list_(pa.int64()))],
        metadata={"huggingface": json.dumps({"info": {"features": features}})})
    return pa.table({"image": [{"bytes": b, "path": p} for p, b, _ in rows],
                     "label": [labels for _, _, labels in rows]}, schema=schema)


def _mlrsnet(tmp_path: Path, with_path: bool, **params):
    """The three hub parquet files, placed where the downloader finds (and only re-hashes) them."""
    data = tmp_path / "data"
    names = ["airplane_00001.jpg", "harbor&port_00002.jpg", "snowberg_00003.jpg"]
    downloads = sorted(MLRSNet.publication.downloads.items())
    for i, (_, dl) in enumerate(downloads):
        dest = data / "downloads" / "mlrsnet" / dl.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_hf_table([(names[i] if with_path else None, _image(30 + i), [0, i + 1])]),
                       dest)
    block = {"enabled": True, "role": "pretrain", **params}
    return source_of("mlrsnet", block, data, progress=False)


def test_mlrsnet_category_from_image_path(tmp_path):
    source = _mlrsnet(tmp_path, with_path=True)
    ingest(source, workers=1, progress=False)
    records = read_records(records_path(tmp_path / "data", "mlrsnet")).to_pylist()
    assert sorted(r["label"] for r in records) == ["airplane", "harbor&port", "snowberg"]
    assert all(r["label_id"] is not None and r["multilabels"][0] == "airplane" for r in records)


def test_mlrsnet_without_image_path_fails_naming_the_column(tmp_path):
    source = _mlrsnet(tmp_path, with_path=False)
    with pytest.raises(ValueError, match=r"image\.path") as err:
        source.fetch()
    assert "train-00000-of-00003" in str(err.value) and "require_category" in str(err.value)
    assert not (tmp_path / "data" / "raw" / "mlrsnet").exists()
    extracted = tmp_path / "data" / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []  # no temporary left


def test_mlrsnet_without_image_path_can_be_taken_without_categories(tmp_path, caplog):
    source = _mlrsnet(tmp_path, with_path=False, require_category=False)
    with caplog.at_level(logging.WARNING):
        ingest(source, workers=1, progress=False)
    records = read_records(records_path(tmp_path / "data", "mlrsnet")).to_pylist()
    assert len(records) == 3 and {r["label"] for r in records} == {None}
    assert all(r["multilabels"] for r in records)  # the multi-labels are still there
    assert "image.path" in caplog.text


# -- the card for a user's folder -----------------------------------------------------------------
def _index(source: str) -> dict:
    return {"build": "mine_only", "sources": {source: 3}, "samples": 3, "seed": 0,
            "shards": [{"name": "mine_only-000000.tar", "samples": 3, "bytes": 1000,
                        "sha256": "0" * 64}]}


def _with_source(tmp_path: Path, name: str, block: dict):  # Settings
    """params.yaml with one more source and its data under ``tmp_path``, typed."""
    params = load_params([REPO / "params.yaml"])
    params["sources"][name] = block
    params["paths"]["data"] = str(tmp_path)
    return typed(params)


def test_card_of_a_folder_source_names_its_licence_origin_and_citation(tmp_path):
    settings = _with_source(tmp_path, "survey", {
        "type": "folder", "path": str(tmp_path / "x.zip"), "licence": "CC-BY-NC-SA-4.0",
        "origin": "https://example.org/survey-2024", "citation": "Doe et al., Survey 2024"})
    card = render_card(_index("survey"), settings, None)
    assert "| survey | 3 | CC-BY-NC-SA-4.0 | https://example.org/survey-2024" in card
    assert "Doe et al., Survey 2024" in card
    assert "non-commercial purposes only" in card  # derived from the licence text, not the name


def test_card_of_a_folder_source_without_licence_says_unknown(tmp_path, caplog):
    settings = _with_source(tmp_path, "survey", {"type": "folder", "path": str(tmp_path / "x")})
    card = render_card(_index("survey"), settings, None)
    assert "| survey | 3 | unknown |" in card
    assert "sources.survey.licence" in card
    folder = _write_dir(tmp_path / "x", {"fields/a.jpg": _image(1)})
    source = source_of("survey", {"type": "folder", "path": str(folder)}, tmp_path / "d")
    with caplog.at_level(logging.WARNING):
        source.fetch()
    assert "sources.survey.licence" in caplog.text


def test_folder_archive_is_keyed_by_hash_not_name(tmp_path):
    """Two different archives under one name never share an extraction."""
    archive = _write_zip(tmp_path / "in" / "mine.zip", {"fields/a.jpg": _image(1)})
    _folder(tmp_path, archive)
    stamp = tmp_path / "data" / "raw" / "mine" / INPUT_STAMP
    first = stamp.read_text()
    _write_zip(archive, {"fields/a.jpg": _image(2)})
    _folder(tmp_path, archive)
    assert stamp.read_text() != first
    assert (stamp.parent / "fields/a.jpg").read_bytes() == _image(2)


def test_same_file_name_in_two_class_folders_gives_two_records(tmp_path):
    """A user's folders reuse names (001.jpg in every class): keys come from the whole path."""
    root = _write_dir(tmp_path / "mine", {"fields/001.jpg": _image(1), "forest/001.jpg": _image(2),
                                          "forest/old/001.jpg": _image(3)})
    summary, records, _ = _folder(tmp_path, root)
    assert sorted(r["origin"] for r in records) == [
        "fields/001.jpg", "forest/001.jpg", "forest/old/001.jpg"]
    assert len({r["key"] for r in records}) == 3 and summary.images == 3


def test_extraction_left_by_a_killed_run_is_removed(tmp_path):
    """A SIGKILLed extraction leaves ``.<name>-<hash>.tmp-<pid>``; the next fetch removes it."""
    extracted = tmp_path / "data" / "extracted"
    dead = extracted / f".mine-{'ab' * 8}.tmp-{_dead_pid()}"
    alive = extracted / f".mine-{'cd' * 8}.tmp-{os.getpid()}"  # a live extraction: kept
    other = extracted / f".other-{'ab' * 8}.tmp-{_dead_pid()}"  # another source's: kept
    for d in (dead, alive, other):
        _write_dir(d, {"fields/a.jpg": b"partial"})
    archive = _write_zip(tmp_path / "in" / "mine.zip", {"fields/a.jpg": _image(1)})
    _folder(tmp_path, archive)
    assert not dead.exists() and alive.exists() and other.exists()


def _dead_pid() -> int:
    """A process id that is not running (a finished child's)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)
