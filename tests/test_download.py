import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from geopile.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    extract_archive,
)
from tests.httpserver import FlakyServer


def _payload(tmp_path: Path, size: int = 300_000) -> tuple[Path, str]:
    root = tmp_path / "srv"
    root.mkdir()
    data = bytes(range(256)) * (size // 256)
    (root / "archive.zip").write_bytes(data)
    return root, hashlib.md5(data).hexdigest()


def test_download_verifies_md5(tmp_path):
    root, md5 = _payload(tmp_path)
    with FlakyServer(root) as srv:
        target = tmp_path / "dl" / "archive.zip"
        got = download(f"{srv.url}/archive.zip", target, md5, progress=False)
    assert got.md5 == md5 and got.path.read_bytes() == (root / "archive.zip").read_bytes()
    assert not (tmp_path / "dl" / "archive.zip.part").exists()


def test_bad_checksum_names_file_and_both_sums(tmp_path):
    root, md5 = _payload(tmp_path)
    wrong = "0" * 32
    with FlakyServer(root) as srv, pytest.raises(ChecksumError) as err:
        download(f"{srv.url}/archive.zip", tmp_path / "dl" / "archive.zip", wrong, progress=False)
    msg = str(err.value)
    assert "archive.zip" in msg and wrong in msg and md5 in msg
    assert not (tmp_path / "dl" / "archive.zip").exists()  # nothing unverified is left behind
    assert not (tmp_path / "dl" / "archive.zip.part").exists()


def test_dropped_connection_resumes_with_range(tmp_path):
    root, md5 = _payload(tmp_path)
    with FlakyServer(root) as srv:
        srv.drop_after, srv.drops_left = 100_000, 2
        got = download(
            f"{srv.url}/archive.zip", tmp_path / "archive.zip", md5, backoff_s=0.01, progress=False
        )
        ranges = [r for _, r, _ in srv.requests]
    assert got.md5 == md5
    offsets = [int(r[6:-1]) for r in ranges[1:]]
    assert ranges[0] is None and len(ranges) == 3
    assert 0 < offsets[0] < offsets[1]  # each retry continued where the last one stopped


def test_resume_from_existing_part_file(tmp_path):
    root, md5 = _payload(tmp_path)
    data = (root / "archive.zip").read_bytes()
    (tmp_path / "archive.zip.part").write_bytes(data[:1234])
    with FlakyServer(root) as srv:
        download(f"{srv.url}/archive.zip", tmp_path / "archive.zip", md5, progress=False)
        assert srv.requests[0][1] == "bytes=1234-"
    assert (tmp_path / "archive.zip").read_bytes() == data


def test_forbidden_is_final_and_url_is_redacted(tmp_path):
    root, _ = _payload(tmp_path)
    with FlakyServer(root) as srv:
        srv.valid_token = "fresh"
        with pytest.raises(DownloadError) as err:
            download(f"{srv.url}/archive.zip?token=stale&sig=SECRET", tmp_path / "a.zip",
                     progress=False, backoff_s=0.01)
        assert len(srv.requests) == 1
    assert "SECRET" not in str(err.value) and "403" in str(err.value)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("evil", ["../escape.txt", "/etc/evil.txt", "ok/../../escape.txt"])
def test_path_escaping_zip_is_refused(tmp_path, evil):
    archive = _zip(tmp_path / "evil.zip", {"good/a.txt": b"a", evil: b"pwned"})
    dest = tmp_path / "out" / "x"
    with pytest.raises(UnsafeArchiveError) as err:
        extract_archive(archive, dest)
    assert evil in str(err.value) and "evil.zip" in str(err.value)
    assert not dest.exists() and not (tmp_path / "out" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary directory left either


def test_tar_with_symlink_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(archive, tmp_path / "out")


def test_extract_zip_and_tar(tmp_path):
    archive = _zip(tmp_path / "ok.zip", {"top/cls/a.jpg": b"a", "top/cls/b.jpg": b"b"})
    out = extract_archive(archive, tmp_path / "z")
    assert (out / "top/cls/b.jpg").read_bytes() == b"b"
    tar_path = tmp_path / "ok.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo("top/cls/c.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"c"))
    assert (extract_archive(tar_path, tmp_path / "t") / "top/cls/c.jpg").read_bytes() == b"c"
