"""Fault trials for published files with several mirrors (issue 15, items 2 and 10a).

Every published file is an ordered list of mirrors verified by one md5. A dead mirror (404, 410,
403, connection refused, 5xx after retries) or a wrong one (md5 mismatch) falls through to the
next with exactly one warning; when all fail, one error lists every mirror and why. Retry-After
is honoured on 429/503. No secret query ever reaches a message or a file name. The world keeps
the UC Merced publisher's dead split lists dead, so its runs take the fall-through every time.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path

import pytest

import geopile.download as dl
from tests.conftest import REPO, make_source
from tests.httpserver import FlakyServer

SIZE = 300_000


def _root(tmp_path: Path) -> tuple[Path, bytes, str]:
    """A server root holding the good file at good/ and mirror/, and wrong bytes at bad/."""
    root = tmp_path / "srv"
    data = bytes(range(256)) * (SIZE // 256)
    for folder, payload in (("good", data), ("mirror", data), ("bad", b"<html>moved</html>" * 99)):
        (root / folder).mkdir(parents=True)
        (root / folder / "a.zip").write_bytes(payload)
    return root, data, hashlib.md5(data).hexdigest()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the waits instead of sleeping them."""
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    return waits


@pytest.mark.parametrize("status", [404, 410, 403])
def test_final_status_falls_through_with_one_warning(tmp_path, caplog, no_sleep, status):
    root, data, md5 = _root(tmp_path)
    caplog.set_level(logging.INFO)
    with FlakyServer(root) as srv:
        srv.status_for["/dead/a.zip"] = status
        got = dl.download_first([f"{srv.url}/dead/a.zip", f"{srv.url}/good/a.zip"],
                                tmp_path / "dl" / "a.zip", md5, progress=False)
        dead = [r for r in srv.requests if r[0] == "/dead/a.zip"]
    assert len(dead) == 1 and no_sleep == []  # final for that mirror: not retried
    assert got.url == f"{srv.url}/good/a.zip" and got.path.read_bytes() == data
    warns = _warnings(caplog)
    assert len(warns) == 1, warns
    assert f"{srv.url}/dead/a.zip" in warns[0] and f"HTTP {status}" in warns[0]


def test_wrong_bytes_fall_through_and_are_not_kept(tmp_path, caplog):
    root, data, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        got = dl.download_first([f"{srv.url}/bad/a.zip", f"{srv.url}/good/a.zip"],
                                tmp_path / "dl" / "a.zip", md5, progress=False)
        assert got.url == f"{srv.url}/good/a.zip" and got.path.read_bytes() == data
        warns = _warnings(caplog)
        assert len(warns) == 1 and "/bad/a.zip" in warns[0] and "md5" in warns[0]
        # the only mirror is wrong: nothing of its bytes stays behind
        with pytest.raises(dl.DownloadError, match="md5"):
            dl.download_first([f"{srv.url}/bad/a.zip"], tmp_path / "dl2" / "a.zip", md5,
                              progress=False)
    assert [p for p in (tmp_path / "dl2").rglob("*") if p.is_file()] == []


def test_all_mirrors_dead_one_error_lists_each(tmp_path, caplog, no_sleep):
    root, _, md5 = _root(tmp_path)
    refused = f"http://127.0.0.1:{_closed_port()}/a.zip"
    with FlakyServer(root) as srv:
        srv.status_for["/gone/a.zip"] = 404
        srv.status_for["/broken/a.zip"] = 500
        mirrors = [f"{srv.url}/gone/a.zip", f"{srv.url}/broken/a.zip", refused]
        with pytest.raises(dl.DownloadError) as err:
            dl.download_first(mirrors, tmp_path / "dl" / "a.zip", md5, retries=2,
                              progress=False)
    msg = str(err.value)
    assert "a.zip" in msg and "every mirror failed" in msg
    for mirror, why in zip(mirrors, ("HTTP 404", "HTTP 500", "connection"), strict=True):
        line = next(x for x in msg.splitlines() if mirror in x)
        assert why in line, msg
    assert len(_warnings(caplog)) == 2  # one per mirror fallen through; the last is the error
    assert not (tmp_path / "dl" / "a.zip").exists()


def test_retry_after_seconds_is_honoured_on_429(tmp_path, no_sleep):
    root, data, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.errors_left, srv.error_status, srv.retry_after = 1, 429, "1"
        got = dl.download(f"{srv.url}/good/a.zip", tmp_path / "a.zip", md5, backoff_s=0.25,
                          progress=False)
    assert got.md5 == md5 and no_sleep == [1.0]


@pytest.mark.parametrize(("header", "wait"), [
    ("Fri, 31 Dec 2999 23:59:59 GMT", 3.0),  # far future: capped
    ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # already past: no wait
    ("7", 3.0),                               # seconds above the cap
    ("soon", 0.25),                           # unparseable: the back-off
])
def test_retry_after_on_503_date_and_cap(tmp_path, no_sleep, header, wait):
    root, _, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.errors_left, srv.error_status, srv.retry_after = 1, 503, header
        dl.download(f"{srv.url}/good/a.zip", tmp_path / "a.zip", md5, backoff_s=0.25,
                    retry_after_cap_s=3.0, progress=False)
    assert no_sleep == [wait]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_then_fall_through(tmp_path, caplog, no_sleep, status):
    root, data, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.status_for["/flaky/a.zip"] = status
        got = dl.download_first([f"{srv.url}/flaky/a.zip", f"{srv.url}/good/a.zip"],
                                tmp_path / "a.zip", md5, retries=2, backoff_s=0.5,
                                progress=False)
        flaky = [r for r in srv.requests if r[0] == "/flaky/a.zip"]
    assert len(flaky) == 3 and no_sleep == [0.5, 1.0]
    assert got.url == f"{srv.url}/good/a.zip" and got.path.read_bytes() == data
    warns = _warnings(caplog)
    assert len(warns) == 1 and f"HTTP {status}" in warns[0] and "/flaky/a.zip" in warns[0]


def test_dropped_connection_resumes_with_range_on_the_same_mirror(tmp_path, caplog, no_sleep):
    root, data, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.drop_after, srv.drops_left = 100_000, 1
        got = dl.download_first([f"{srv.url}/good/a.zip", f"{srv.url}/mirror/a.zip"],
                                tmp_path / "a.zip", md5, progress=False)
        ranges = [r for _, r, _ in srv.requests]
    assert got.url == f"{srv.url}/good/a.zip" and got.path.read_bytes() == data
    assert ranges[0] is None and len(ranges) == 2
    assert 0 < int(ranges[1][6:-1]) < SIZE
    assert _warnings(caplog) == []  # a retry is not a fall-through


def test_stale_part_file_is_restarted_not_blamed_on_the_mirror(tmp_path, caplog):
    root, data, md5 = _root(tmp_path)
    (tmp_path / "a.zip.part").write_bytes(b"x" * 1234)  # left by another file, another run
    with FlakyServer(root) as srv:
        got = dl.download_first([f"{srv.url}/good/a.zip"], tmp_path / "a.zip", md5,
                                progress=False)
        ranges = [r for _, r, _ in srv.requests]
    assert got.path.read_bytes() == data and ranges == ["bytes=1234-", None]


def test_existing_file_keeps_the_mirror_it_came_from(tmp_path):
    root, _, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.status_for["/dead/a.zip"] = 404
        mirrors = [f"{srv.url}/dead/a.zip", f"{srv.url}/good/a.zip"]
        first = dl.download_first(mirrors, tmp_path / "a.zip", md5, progress=False)
        seen = len(srv.requests)
        again = dl.download_first(mirrors, tmp_path / "a.zip", md5, progress=False)
        assert len(srv.requests) == seen  # verified on disk, not fetched again
    assert again.url == first.url == f"{srv.url}/good/a.zip"


def test_secret_queries_never_shown(tmp_path, caplog, no_sleep):
    root, _, md5 = _root(tmp_path)
    caplog.set_level(logging.INFO)  # urllib3's DEBUG lines quote the raw request line (see README)
    query = "?token=SECRET1&X-Amz-Signature=SECRET2&key=SECRET3"
    refused = f"http://127.0.0.1:{_closed_port()}/a.zip{query}"
    dest = tmp_path / "dl" / "a.zip"
    with FlakyServer(root) as srv:
        srv.status_for["/dead/a.zip"] = 404
        srv.status_for["/busy/a.zip"] = 503
        bad = [f"{srv.url}/dead/a.zip{query}", f"{srv.url}/bad/a.zip{query}",
               f"{srv.url}/busy/a.zip{query}", refused]
        with pytest.raises(dl.DownloadError) as err:
            dl.download_first(bad, dest, md5, retries=1, progress=False)
        got = dl.download_first([bad[0], f"{srv.url}/good/a.zip{query}"], dest, md5,
                                progress=False)
    shown = [str(err.value), caplog.text, got.url, str(got.path)]
    names = [p.name for p in tmp_path.joinpath("dl").rglob("*")]
    names += [p.read_text() for p in tmp_path.joinpath("dl").rglob("*") if p.suffix != ".zip"]
    for text in shown + names:
        assert "SECRET" not in text, text
    assert all("?" not in name for name in names)
    assert got.url == f"{srv.url}/good/a.zip" and got.path == dest


def test_a_mirror_list_needs_at_least_one_url(tmp_path):
    with pytest.raises(ValueError, match="no URL"):
        dl.download_first([], tmp_path / "a.zip", None, progress=False)


# -- the published tables ----------------------------------------------------------------------

# torchgeo (microsoft/torchgeo, torchgeo/datasets/ucmerced.py after PR #2433): the split lists
# re-hosted on its Hugging Face dataset, same md5s as the publisher's.
TORCHGEO_UCM = ("https://hf.co/datasets/torchgeo/ucmerced/resolve/"
                "7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a/")
TORCHGEO_UCM_SPLIT_MD5S = {"train": "f2fb12eb2210cfb53f93f063a35ff374",
                           "val": "11ecabfc52782e5ea6a9c7c0d263aca0",
                           "test": "046aff88472d8fc07c4678d03749e28d"}


def test_ucm_split_lists_fall_back_to_torchgeos_rehost():
    from geopile.sources.ucmerced import UCMerced

    downloads = UCMerced.publication.downloads
    for split, md5 in TORCHGEO_UCM_SPLIT_MD5S.items():
        item = downloads[f"split_{split}"]
        assert item.mirrors == (
            f"https://storage.googleapis.com/remote_sensing_representations/uc_merced-{split}.txt",
            f"{TORCHGEO_UCM}uc_merced-{split}.txt")
        assert item.md5 == md5 and item.url == item.mirrors[0]
        assert item.filename == f"uc_merced-{split}.txt"
    assert downloads["archive"].mirrors[-1] == f"{TORCHGEO_UCM}UCMerced_LandUse.zip"


def test_every_published_file_has_mirrors_with_one_local_name():
    from geopile.sources import SOURCES
    from pipelines.tasks import downstream_sets

    for pub in (c.publication for c in SOURCES.values() if c.publication):
        for item in pub.downloads.values():
            assert item.mirrors and all(u.startswith(("http://", "https://"))
                                        for u in item.mirrors)
            assert all(u.rsplit("/", 1)[-1] == item.filename for u in item.mirrors)
            assert "?" not in "".join(item.mirrors)
    for published in downstream_sets().values():
        for item in published.files.values():
            assert item.url == (item.mirrors[0] if item.mirrors else None)


def test_params_mirrors_go_first_and_mirror_root_replaces_the_published():
    from geopile.params import ParamsError, load_params
    from geopile.settings import check_params
    from geopile.sources.published import Mirrors
    from geopile.sources.ucmerced import UCMerced

    item = UCMerced.publication.downloads["split_test"]
    assert Mirrors({"split_test": "http://mine/x.txt"}).urls_for(item, "split_test") == \
        ["http://mine/x.txt", *item.mirrors]
    assert Mirrors({"split_test": ["http://a/x", "http://b/x"]}).urls_for(
        item, "split_test")[:2] == ["http://a/x", "http://b/x"]
    rooted = Mirrors(root="http://127.0.0.1:9/world/").urls_for(item, "split_test")
    assert rooted == [
        "http://127.0.0.1:9/world/storage.googleapis.com/remote_sensing_representations/"
        "uc_merced-test.txt",
        "http://127.0.0.1:9/world/" + TORCHGEO_UCM.removeprefix("https://") + "uc_merced-test.txt"]
    params = load_params([REPO / "params.yaml"])
    params["sources"]["ucmerced"]["urls"] = {"split_test": 3}
    with pytest.raises(ParamsError, match=r"sources\.ucmerced\.urls\.split_test: 3 is invalid"):
        check_params(params)


def test_downstream_fetch_falls_through_and_records_the_mirror_used(tmp_path, monkeypatch,
                                                                    caplog):
    import json

    from geopile.downstream import DownstreamSet, PublishedFile, fetch
    from geopile.sources.published import Mirrors

    root, data, md5 = _root(tmp_path)
    with FlakyServer(root) as srv:
        srv.status_for["/dead/a.zip"] = 404
        item = PublishedFile((f"{srv.url}/dead/a.zip", f"{srv.url}/good/a.zip"), md5, "a.bin")
        published = DownstreamSet("tiny", "none", "nowhere", {"blob": item})
        out = fetch("tiny", published, Mirrors(), tmp_path / "data", progress=False)
    assert (out / "a.bin").read_bytes() == data
    record = json.loads((tmp_path / "data" / "fetched" / "tiny.json").read_text())
    assert record["files"]["blob"]["url"] == f"{srv.url}/good/a.zip"
    assert len(_warnings(caplog)) == 1


# -- `geopile sources --check` -----------------------------------------------------------------

def test_sources_check_probes_head_then_range_and_flags_unserved_files(tmp_path, capsys):
    from pipelines.sources_check import Wanted, check, table

    root, _, _ = _root(tmp_path)
    query = "?sig=SECRET"
    with FlakyServer(root) as srv:
        srv.head_status = 405  # HEAD refused: the 1-byte Range GET answers
        srv.status_for["/dead/a.zip"] = 404
        files = [Wanted("x", "archive", (f"{srv.url}/dead/a.zip{query}",
                                         f"{srv.url}/good/a.zip{query}")),
                 Wanted("y", "archive", (f"{srv.url}/gone/a.zip{query}",)),
                 Wanted("z", "archive", ())]
        report, unserved = table(check(files, timeout_s=5))
        gets = [r for r, m in zip(srv.requests, srv.methods, strict=True) if m == "GET"]
    assert unserved == 2 and "SECRET" not in report
    assert ("/good/a.zip", "bytes=0-0", 206) in gets
    lines = report.splitlines()
    dead = next(x for x in lines if x.endswith("/dead/a.zip"))
    good = next(x for x in lines if x.endswith("/good/a.zip"))
    assert "HTTP 404" in dead and "used" not in dead
    assert " ok " in good and " used " in good and "0.3 MB" in good


def test_sources_cli_exit_status(tmp_path, capsys):
    import yaml

    from pipelines.cli import main

    repo = Path(__file__).resolve().parents[1]
    root, _, _ = _root(tmp_path)
    with FlakyServer(root) as srv:
        # only UC Merced, every file at the loopback server (nothing asks the internet)
        only = {name: {"enabled": name == "ucmerced"}
                for name in ("naip", "rsd46", "mlrsnet", "resisc45", "patternnet", "ucmerced")}
        only["ucmerced"].update({"mirror_root": f"{srv.url}/nowhere", "urls": {
            w: f"{srv.url}/good/a.zip" for w in ("archive", "split_train", "split_val",
                                                 "split_test")}})
        overlay = {"sources": only, "downstream_sets": []}
        params = tmp_path / "p.yaml"
        params.write_text(yaml.safe_dump(overlay))
        argv = ["sources", "--check", "--params", str(repo / "params.yaml"),
                "--params", str(params)]
        assert main(argv) == 0
        overlay["downstream_sets"] = ["whu"]  # handed out by request: no mirror
        params.write_text(yaml.safe_dump(overlay))
        assert main(argv) == 1
    out = capsys.readouterr().out
    assert "downstream.whu.urls.archive" in out and "NONE" in out


# -- the offline world -------------------------------------------------------------------------

def _ucm(params: dict, tmp_path: Path):
    return make_source(params, "ucmerced", tmp_path / "data", progress=False)


def test_world_serves_ucm_lists_from_the_rehost_only(world_dir):
    http = world_dir / "http"
    for split in TORCHGEO_UCM_SPLIT_MD5S:
        assert (http / TORCHGEO_UCM.removeprefix("https://") / f"uc_merced-{split}.txt").is_file()
        assert not (http / "storage.googleapis.com" / "remote_sensing_representations"
                    / f"uc_merced-{split}.txt").exists()


def test_world_ucm_split_lists_fall_through_the_dead_publisher(params, tmp_path, caplog):
    source = _ucm(params, tmp_path)
    for split in TORCHGEO_UCM_SPLIT_MD5S:
        got = source.download_file(f"split_{split}")
        assert got.path.name == f"uc_merced-{split}.txt"
        assert got.url.endswith(TORCHGEO_UCM.removeprefix("https:/") + got.path.name)
    warns = _warnings(caplog)
    assert len(warns) == 3 and all("storage.googleapis.com" in w and "HTTP 404" in w
                                   for w in warns), warns


def test_world_user_mirrors_500_garbage_then_the_worlds(params, tmp_path, caplog, no_sleep):
    root, _, _ = _root(tmp_path)
    (root / "junk").mkdir()
    (root / "junk" / "uc_merced-train.txt").write_text("not the list\n")
    with FlakyServer(root) as srv:
        srv.status_for["/500/uc_merced-train.txt"] = 500
        params["sources"]["ucmerced"]["urls"] = {"split_train": [
            f"{srv.url}/500/uc_merced-train.txt?token=SECRET",
            f"{srv.url}/junk/uc_merced-train.txt?token=SECRET"]}
        got = _ucm(params, tmp_path).download_file("split_train")
    assert TORCHGEO_UCM.removeprefix("https:/") in got.url
    warns = _warnings(caplog)
    assert [("HTTP 500" in w, "md5" in w, "HTTP 404" in w) for w in warns] == [
        (True, False, False), (False, True, False), (False, False, True)], warns
    assert "SECRET" not in caplog.text
    assert sorted(p.name for p in got.path.parent.iterdir()) == [
        "uc_merced-train.txt", "uc_merced-train.txt.url"]


def test_sources_check_against_the_world(world, world_dir, capsys):
    from geopile.world.world import PARAMS_OVERLAY
    from pipelines.cli import main

    repo = Path(__file__).resolve().parents[1]
    rc = main(["sources", "--check", "--params", str(repo / "params.yaml"),
               "--params", str(world_dir / PARAMS_OVERLAY)])
    out = capsys.readouterr().out
    assert rc == 0, out
    for split in TORCHGEO_UCM_SPLIT_MD5S:
        name = f"uc_merced-{split}.txt"
        dead = next(x for x in out.splitlines() if x.endswith(
            f"storage.googleapis.com/remote_sensing_representations/{name}"))
        used = next(x for x in out.splitlines() if x.endswith(
            TORCHGEO_UCM.removeprefix("https:/") + name))
        assert dead.startswith("ucmerced") and "HTTP 404" in dead and "used" not in dead
        assert " ok " in used and " used " in used
