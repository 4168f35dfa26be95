"""Fault trials: a build is untrusted input (issue 27).

``index.json`` and the shard tars are written by whoever published the build. Each trial plays
a hostile or clumsy writer against a copy of the world's ``full`` build (local, on a loopback
'S3' or on the world's SeaweedFS) and checks that nothing outside the build is read, written or
deleted, that nothing is lost, and that the error names the index, the field and the value.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from geopile.stream import ShardStream, StreamConfig, parse_members, read_index
from geopile.stream.index import INDEX, PUBLISHING, BuildIndexError, StreamError
from geopile.world.world import s3_client, world_env
from geopile.writelock import build_lock, write_lock
from pipelines.cli import main
from pipelines.loader import GeoPileLoader
from pipelines.push import push_build
from pipelines.shard import run_shard
from pipelines.verify import verify_build
from tests.conftest import s3_objects, typed
from tests.test_faults_params import PARAMS, REPO
from tests.test_faults_stream import BUCKET_URL, _index
from tests.test_stream import BATCH

NOT_PLAIN = r"is invalid: a shard is a plain file name NAME\.tar"


def _rename_shard(build: Path, name: str, shard: int = 0) -> None:
    index = _index(build)
    index["shards"][shard]["name"] = name
    (build / INDEX).write_text(json.dumps(index))


# ---------------------------------------------------------------------------------------------
# one gate for a build: names


def test_s3_index_naming_a_local_file_leaves_it_alone(build, s3, tmp_path):
    """Trial: an S3 index names a shard by an absolute local path or ``../``, with a cache.

    On 9298ec4 the cache hashed that local file, found a mismatch and deleted it. Expected: the
    index is refused, naming the field and the value; the file is untouched; nothing cached.
    """
    victim = tmp_path / "victim.tar"
    victim.write_bytes(b"precious" * 128)
    cache = tmp_path / "cache"
    for name in (str(victim), "../../victim.tar", "../victim.tar"):
        _rename_shard(build, name)
        with pytest.raises(BuildIndexError, match=rf"shards\[0\]\.name: .* {NOT_PLAIN}"):
            ShardStream(BUCKET_URL, StreamConfig(), cache_dir=cache, cache_bytes=1 << 30)
        assert victim.read_bytes() == b"precious" * 128
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_local_index_naming_a_file_outside_the_build_is_refused(build, tmp_path, how):
    """Trial: a local index names ``../outside/x.tar`` or an absolute path.

    On 9298ec4 the loader read and delivered samples from the file outside the build. Expected:
    refused at open, naming the build and the field; no sample delivered.
    """
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(build / "shard-000000.tar", outside / "x.tar")
    name = "../../outside/x.tar" if how == "relative" else str(outside / "x.tar")
    _rename_shard(build, name)
    with pytest.raises(BuildIndexError, match=rf"{INDEX} \(build 'full'\): shards\[0\]\.name"):
        GeoPileLoader(str(build), batch_size=BATCH, workers=0)


@pytest.mark.parametrize("name", ["../other/shard-000000.tar", "http://198.51.100.1/x.tar",
                                  "s3://elsewhere/x.tar", "sub/shard-000000.tar", "..tar",
                                  ".hidden.tar", "index.json", "a\\b.tar", "x.tar\n"])
def test_s3_index_naming_anything_but_a_plain_shard_is_refused(build, s3, tmp_path, name):
    """Trial: an S3 index names ``../other-prefix/shard.tar`` (and URLs, sub-folders, ...).

    On 9298ec4 samples came from another prefix of the bucket. Expected: refused before any
    shard is read; the only request is for the index itself.
    """
    shutil.copytree(build, tmp_path / "bucket" / "other")
    _rename_shard(build, name, shard=1)
    s3.requests.clear()
    with pytest.raises(BuildIndexError, match=rf"shards\[1\]\.name: .* {NOT_PLAIN}"):
        ShardStream(BUCKET_URL, StreamConfig())
    assert {path for path, _, _ in s3.requests} == {f"/bucket/full/{INDEX}"}


# ---------------------------------------------------------------------------------------------
# one gate for a build: sizes and counts


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("field, value, message", [
    ("offsets", -512, r"shards\[2\]\.offsets\[3\]: -512 is invalid: an offset is a whole number"),
    ("offsets", 10**13, r"shards\[2\]\.offsets\[3\]: 10000000000000 is invalid"),
    ("overlap", None, r"shards\[2\]\.offsets\[3\]: \d+ is invalid: offsets start at 0 and rise"),
    ("bytes", 10**13, r"shards\[2\]\.offsets\[\d+\]: \d+ is invalid: the sample would span "
                      r"9,99\d"),
    ("keys", None, r"shards\[2\]\.keys: .* is invalid: a key appears twice in the build"),
    ("samples", 7, r"samples: 7 is invalid: the shards hold \d+ samples"),
    ("sha256", "../x", r"shards\[2\]\.sha256: '\.\./x' is invalid"),
    ("xxh3", 12, r"shards\[2\]\.xxh3: 12 is invalid: a digest is 16 lowercase"),
])
def test_index_sizes_and_counts_are_checked_at_open(build, s3, where, field, value, message):
    """Trial: index offsets -512 or 10^13, overlapping, a huge shard, a repeated key, ...

    On 9298ec4: ``OSError: Invalid argument`` or a bare ``MemoryError``, nothing named, and no
    check when the build opened. Expected: refused at open, naming the index, the build, the
    field and the value.
    """
    index = _index(build)
    shard = index["shards"][2]
    if field == "offsets":
        shard["offsets"][3] = value
    elif field == "overlap":
        shard["offsets"][3] = shard["offsets"][2]
    elif field == "bytes":
        shard["bytes"] = value
    elif field == "keys":
        shard["keys"][3] = index["shards"][0]["keys"][0]
    elif field == "samples":
        index["samples"] = value
    elif field == "sha256":
        shard["sha256"] = value
    else:
        shard["xxh3"][5] = value
    (build / INDEX).write_text(json.dumps(index))
    url = str(build) if where == "local" else BUCKET_URL
    with pytest.raises(BuildIndexError, match=rf"\(build 'full'\): {message}"):
        GeoPileLoader(url, batch_size=BATCH, workers=0)


@pytest.mark.parametrize("text, message", [
    ('{"shards": [], "build": "x", "samples": 0, "build": "y"}', "appears twice"),
    ('{"shards": [], "build": "x", "samples": NaN}', "NaN is not a JSON number"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"version": 9, "shards": [], "build": "x", "samples": 0}', "index versions 1, 2"),
])
def test_index_text_that_is_not_plain_json_is_refused(build, text, message):
    (build / INDEX).write_text(text)
    with pytest.raises(BuildIndexError, match=message):
        read_index(str(build))


def test_huge_s3_index_is_refused_unread(build, s3, monkeypatch):
    """An index over the limit is refused after one ranged GET of at most limit + 1 bytes."""
    from geopile.stream import storage

    monkeypatch.setattr(storage, "MAX_INDEX_BYTES", 1000)
    s3.requests.clear()
    with pytest.raises(BuildIndexError, match="over the limit of 1,000 bytes"):
        read_index(BUCKET_URL)
    assert s3.requests[0][1] == "bytes=0-1000"


def test_tar_members_are_parsed_never_written(tmp_path):
    """Still true: a member named ``../x`` is only a payload; an 8 GiB declared size is refused."""
    def member(name: str, data: bytes, size: int | None = None) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
        if size is not None:  # a header that lies about its size (checksum redone)
            digits = f"{size:o}"
            header[124:136] = (digits.rjust(11, "0") + "\0" if len(digits) <= 11
                               else digits).encode()
            header[148:156] = b" " * 8
            header[148:156] = f"{sum(header):06o}\0 ".encode()
        return bytes(header) + data + b"\0" * (-len(data) % 512)

    escaping = member("../../evil.jpg", b"\xff\xd8jpeg")
    assert parse_members(escaping) == {"jpg": b"\xff\xd8jpeg"}
    assert not list(tmp_path.iterdir())
    with pytest.raises(tarfile.ReadError, match="truncated"):
        parse_members(member("big.jpg", b"x" * 600, size=8 << 30))


# ---------------------------------------------------------------------------------------------
# push publishes, it does not trust


@pytest.fixture
def world_s3(world, monkeypatch):
    """boto3's chain pointed at the world's SeaweedFS (which keeps S3 checksums)."""
    for key, value in world_env(world["s3"]).items():
        monkeypatch.setenv(key, value)
    return world


def _geopile(capsys, argv: list[str], shards_root: Path, tmp_path: Path) -> tuple[int, str]:
    overlay = tmp_path / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"shards": str(shards_root),
                                                 "data": str(tmp_path / "data")}}))
    capsys.readouterr()
    code = main([*argv, "--params", str(PARAMS), "--params", str(overlay), "--no-progress"])
    return code, capsys.readouterr().err


def test_push_of_an_index_naming_a_system_file_sends_nothing(build, world_s3, tmp_path,
                                                             capsys):
    """Trial: ``geopile push`` of a build whose index names ``/etc/hostname``.

    On 9298ec4: exit 0, the file uploaded. Expected: exit 2 naming the field; nothing sent.
    """
    _rename_shard(build, "/etc/hostname")
    url = f"s3://{world_s3['bucket']}/trial-etc"
    code, err = _geopile(capsys, ["push", "full", "--to", url], build.parent, tmp_path)
    assert code == 2
    assert "shards[0].name: '/etc/hostname' is invalid" in err
    assert s3_objects(world_s3["s3"], world_s3["bucket"], "trial-etc") == {}


def test_push_hashes_before_sending_and_a_repush_repairs_s3(build, world_s3, tmp_path):
    """Trial: a shard damaged, pushed, rebuilt, pushed again (``0 sent, 5 already there``).

    On 9298ec4 push tagged bytes with the index's sha256 unchecked, so the re-push the README
    advises never repaired S3. Expected: a damaged local build is refused whole (S3 keeps its
    good copy), and an S3 object whose bytes differ (its old sha256 metadata kept) is sent again.
    """
    url = f"s3://{world_s3['bucket']}/trial-repair/full"
    client = s3_client(world_s3["s3"])
    done = push_build(build, url, progress=False)
    assert done["sent"] == done["shards"]
    name = _index(build)["shards"][1]["name"]
    good = (build / name).read_bytes()
    before = s3_objects(world_s3["s3"], world_s3["bucket"], "trial-repair/full")

    bad = bytearray(good)
    bad[4000] ^= 0xFF
    (build / name).write_bytes(bad)
    with pytest.raises(StreamError, match=rf"{name} has sha256 .* the local build is damaged, "
                                          "so nothing was pushed"):
        push_build(build, url, progress=False)
    assert s3_objects(world_s3["s3"], world_s3["bucket"], "trial-repair/full") == before

    (build / name).write_bytes(good)  # rebuilt; S3's copy rots under its old metadata
    sha = _index(build)["shards"][1]["sha256"]
    client.put_object(Bucket=world_s3["bucket"], Key=f"trial-repair/full/{name}",
                      Body=bytes(bad), Metadata={"sha256": sha})
    done = push_build(build, url, progress=False)
    assert done["sent"] == 1 and done["skipped"] == done["shards"] - 1
    assert s3_objects(world_s3["s3"], world_s3["bucket"], "trial-repair/full") == before
    assert verify_build(url, progress=False)["damaged"] == 0


KILLABLE_PUSH = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from geopile import shardstore
    put, sent = shardstore.S3Store.put_file, []
    def slow(self, *a, **k):
        out = put(self, *a, **k)
        sent.append(1)
        if len(sent) == 2:  # two new shards are in: now wait to be killed
            Path(sys.argv[3]).write_text("ready")
            time.sleep(600)
        return out
    shardstore.S3Store.put_file = slow
    from pipelines.push import push_build
    push_build(Path(sys.argv[1]), sys.argv[2], progress=False)
""")


def test_push_killed_over_an_earlier_push_never_serves_the_old_index(build, curated, world_s3,
                                                                    tmp_path):
    """Trial: ``kill -9`` during a push over an earlier push of the same build.

    On 9298ec4 S3 kept the old index over the new shards: unreadable (or wrong) until a rerun.
    Expected: meanwhile a reader is told the build is being published and by which command;
    the rerun completes it, equal to the new build.
    """
    url = f"s3://{world_s3['bucket']}/trial-kill/full"
    push_build(build, url, progress=False)
    params = {**curated, "paths": {**curated["paths"], "shards": str(tmp_path / "v2")},
              "shard": {**curated["shard"], "max_samples": 50}}
    run_shard(typed(params), "full", progress=False)
    v2 = Path(params["paths"]["shards"]) / "full"
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLABLE_PUSH, str(v2), url, str(ready)],
                             cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the push ended first"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)

    with pytest.raises(BuildIndexError, match=r"being published by `geopile push` \(pid "
                                              rf"{child.pid} on host"):
        ShardStream(url, StreamConfig())
    done = push_build(v2, url, progress=False)
    assert done["skipped"] == 2  # the two shards the killed push had sent
    assert read_index(url) == _index(v2)
    objects = s3_objects(world_s3["s3"], world_s3["bucket"], "trial-kill/full")
    assert PUBLISHING not in objects
    assert sorted(n for n in objects if n.endswith(".tar")) == sorted(
        p.name for p in v2.glob("*.tar"))
    assert verify_build(url, progress=False)["damaged"] == 0


# ---------------------------------------------------------------------------------------------
# one writer at a time


SLOW_SHARD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from geopile import shards
    encode = shards.encode_sample
    def slow(*a, **k):
        Path(sys.argv[2]).touch()  # the lock is held by now
        time.sleep(0.05)
        return encode(*a, **k)
    shards.encode_sample = slow
    from pipelines.shard import run_shard
    from tests.conftest import typed
    params = json.loads(Path(sys.argv[1]).read_text())
    run_shard(typed(params), "full", progress=False)
""")


def test_a_second_shard_run_of_a_build_stops_naming_the_first(curated, tmp_path, capsys):
    """Trial: two ``geopile shard`` runs of one build at once (different ``max_samples``).

    On 9298ec4: an index that does not match its shards, or a ``FileNotFoundError``. Expected:
    the second stops at once (exit 2) naming the first (command, pid, host, since); the first
    completes a build that verifies.
    """
    params = {**curated, "paths": {**curated["paths"], "shards": str(tmp_path / "shards")}}
    (tmp_path / "params.json").write_text(json.dumps(params))
    started = tmp_path / "started"
    first = subprocess.Popen([sys.executable, "-c", SLOW_SHARD, str(tmp_path / "params.json"),
                              str(started)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not started.exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump({**params, "shard": {**params["shard"],
                                                          "max_samples": 50}}))
    capsys.readouterr()
    code = main(["shard", "full", "--params", str(merged), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "build full is being written by `" in err and f"(pid {first.pid} on host" in err
    assert first.wait(timeout=300) == 0
    assert verify_build(str(tmp_path / "shards" / "full"), progress=False)["damaged"] == 0
    assert all(len(s["keys"]) <= params["shard"]["max_samples"]
               for s in read_index(str(tmp_path / "shards" / "full"))["shards"])


def test_a_lock_left_by_a_killed_writer_is_taken_over(curated, tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from geopile.writelock import write_lock
        with write_lock(Path(sys.argv[1]), "build full"):
            Path(sys.argv[2]).touch()
            time.sleep(600)
    """), str(build_lock(tmp_path / "shards", "full")), str(tmp_path / "held")], cwd=REPO)
    deadline = time.monotonic() + 60
    while not (tmp_path / "held").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(RuntimeError, match="is being written by"), \
            write_lock(build_lock(tmp_path / "shards", "full"), "build full"):
        pass
    holder.kill()
    holder.wait(timeout=30)
    params = {**curated, "paths": {**curated["paths"], "shards": str(tmp_path / "shards")}}
    run_shard(typed(params), "full", progress=False)
    assert "taking over the lock of" in caplog.text


def test_concurrent_identical_ingests_leave_one_whole_result(world, world_dir, tmp_path):
    """Still true: two identical ingests at once end with correct records.

    Expected: one run ingests; the other, if it starts while the first holds the data
    directory, stops at once naming it (exit 2); the records equal a run alone.
    """
    from geopile.world.world import PARAMS_OVERLAY

    overlay = tmp_path / "paths.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"data": str(tmp_path / "data")}}))
    argv = [sys.executable, "-m", "pipelines.cli", "ingest", "resisc45", "--no-progress",
            "--params", str(PARAMS), "--params", str(world_dir / PARAMS_OVERLAY),
            "--params", str(overlay)]
    runs = [subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in runs)
    assert [code for code, _ in results] in ([0, 0], [0, 2]), results
    if results[1][0] == 2:
        assert "the data directory" in results[1][1] and "is being written by" in results[1][1]
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump({"paths": {"data": str(tmp_path / "data2")}}))
    assert subprocess.run([*argv[:-1], str(alone)], cwd=REPO, timeout=300).returncode == 0
    for name in ("resisc45.parquet", "resisc45.rejects.parquet"):
        assert (tmp_path / "data" / "records" / name).read_bytes() == \
            (tmp_path / "data2" / "records" / name).read_bytes()


# ---------------------------------------------------------------------------------------------
# full and read-only disks


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs unprivileged mount namespaces")
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_shard_onto_a_full_or_read_only_disk_is_one_line(curated, tmp_path, disk):
    """Trial: ``geopile shard`` onto a full or read-only disk (a real tmpfs, in a namespace).

    On 9298ec4: a 38-line traceback naming no path, ``shard-000002.tar.tmp`` left behind.
    Expected: exit 2, one line naming the path, the bytes needed and free; no temp file left.
    """
    mount = tmp_path / "mnt"
    mount.mkdir()
    params = {**curated, "paths": {**curated["paths"], "shards": str(mount)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    setup = (f"mount -t tmpfs -o size=64k tmpfs {mount}" if disk == "full" else
             f"mount -t tmpfs tmpfs {mount} && mkdir {mount}/full && "
             f"mount -o remount,ro {mount}")
    script = (f"{setup} && {sys.executable} -m pipelines.cli shard full --no-progress "
              f"--params {tmp_path / 'params.yaml'}; echo rc=$?; "
              f"find {mount} -name '*.tmp*' -o -name '*.tar'")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert "rc=2" in done.stdout, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "Traceback" in line
              or line.startswith("geopile: error:")]
    assert len(errors) == 1 and "Traceback" not in errors[0], done.stderr[-3000:]
    why = "needs about" if disk == "full" else "read-only file system (needs "
    assert str(mount) in errors[0] and why in errors[0] and "free" in errors[0], errors[0]
    assert not [line for line in done.stdout.splitlines() if str(mount) in line]


def test_disk_filling_up_mid_build_leaves_no_temp_file(curated, tmp_path, monkeypatch, capsys):
    """The disk fills after the up-front check (another writer): one line, no temp file."""
    import errno

    from geopile import shards as writer

    params = {**curated, "paths": {**curated["paths"], "shards": str(tmp_path / "shards")},
              "shard": {**curated["shard"], "max_samples": 50}}
    real, calls = writer._ShardFile.add, []

    def filling(self, sample, size):
        calls.append(1)
        if len(calls) == 120:  # in the third shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, sample, size)

    monkeypatch.setattr(writer._ShardFile, "add", filling)
    merged = tmp_path / "params.yaml"
    merged.write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert main(["shard", "full", "--params", str(merged), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geopile: error: cannot write ")
    assert "no space left on device (needs " in err[0] and " free)" in err[0]
    build = tmp_path / "shards" / "full"
    assert not [p for p in build.iterdir() if ".tmp" in p.name]
    assert not (build / INDEX).exists() and (build / PUBLISHING).exists()
    with pytest.raises(BuildIndexError, match="is being published by `geopile shard"):
        read_index(str(build))
