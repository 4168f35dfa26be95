"""NAIP fault trials: tokens never leak, unreadable windows are rejects, a bad STAC is one line.

Each trial plays one way the outside world fails (a 404 tile, a corrupt COG, an expired or
leaky signer, a download that breaks, a STAC API that is down or is not a STAC API) and checks
what a user sees: the CLI's stderr, its log lines, and every file it leaves behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from rasterio.windows import Window

from geopile.cog import CogReadError, read_window
from geopile.ingest import IngestError, ingest
from geopile.records import read_records, records_path, rejects_path
from geopile.stac import StacError, search_tiles
from geopile.urls import redact
from geopile.world import servers
from geopile.world.corpora import mirror_path
from geopile.world.world import BUCKET, PARAMS_OVERLAY, world_env
from tests import signers
from tests.conftest import source_of
from tests.httpserver import FlakyServer

REPO = Path(__file__).resolve().parents[1]
GEOPILE = str(Path(sys.executable).with_name("geopile"))
SECRET = "SECRETSIGNATURE"  # what tests.signers.fake_sas and the URLs below carry


# -- helpers ---------------------------------------------------------------------------------
def _geopile(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real CLI in a child process, so that its stderr is what a user would see."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([GEOPILE, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _overlay(tmp_path: Path, overlay: dict) -> Path:
    """A params overlay, kept apart from the outputs (it holds the secret on purpose)."""
    path = tmp_path / "inputs" / "overlay.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(overlay))
    return path


def _workdir(tmp_path: Path) -> Path:
    """Where the CLI runs: anything it writes there is an output to search."""
    path = tmp_path / "work"
    path.mkdir(exist_ok=True)
    return path


def _leaks(roots: list[Path], *texts: str) -> list[str]:
    """Every place under ``roots`` (file names and contents) or in ``texts`` holding the secret."""
    found = [f"text {i}: ...{t[max(0, t.find(SECRET) - 120):t.find(SECRET) + 40]}..."
             for i, t in enumerate(texts) if SECRET in t]
    for root in roots:
        for path in sorted(root.rglob("*")):
            if SECRET in path.name or "sig=" in path.name:
                found.append(f"file name {path}")
            if not path.is_file():
                continue
            if path.suffix == ".parquet":  # compressed: compare the decoded rows
                text = repr(pq.read_table(path).to_pylist())
            else:
                text = path.read_bytes().decode("latin-1")
            if SECRET in text:
                found.append(f"contents of {path}")
    return found


def _tile(truth: dict, state: str, year: str) -> dict:
    return next(t for t in truth["naip"]["tiles"] if t["state"] == state and t["year"] == year)


@contextmanager
def _catalog(tmp_path: Path, world_dir: Path, truth: dict,
             hrefs: dict[str, str]) -> Iterator[str]:
    """A STAC API (rustac, by PID) over the world's items, with some ``image`` hrefs replaced."""
    items = json.loads((world_dir / truth["naip"]["items"]).read_text())
    for item in items["features"]:
        if item["id"] in hrefs:
            item["assets"]["image"]["href"] = hrefs[item["id"]]
    run = tmp_path / "stac-run"
    run.mkdir()
    (run / "items.json").write_text(json.dumps(items))
    server = servers.start_stac(run, [world_dir / truth["naip"]["collection"], run / "items.json"])
    try:
        yield server.url
    finally:
        servers.stop(run, "stac")


@contextmanager
def _broken_cogs(tmp_path: Path) -> Iterator[FlakyServer]:
    """A COG server where ``/missing/...`` is a 404 and ``/corrupt/x.tif`` is not a TIFF."""
    root = tmp_path / "cogs"
    (root / "corrupt").mkdir(parents=True)
    (root / "corrupt" / "x.tif").write_bytes(b"this is not a GeoTIFF\n" * 4000)
    with FlakyServer(root) as srv:
        yield srv


class _Html(BaseHTTPRequestHandler):
    """Answers every GET with a web page: a proxy's login page, a typo'd host, ..."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _html_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _naip(params: dict, **overrides):
    sp = {**params["sources"]["naip"], **overrides}
    data = Path(params["paths"]["data"])
    source = source_of("naip", sp, data, progress=False)
    return ingest(source, workers=4, progress=False)


# -- redaction, unit level ---------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    # GDAL, through rasterio's error handler
    "`/vsicurl/https://naipeuwest.blob.core.windows.net/naip/x.tif?st=1&sig=SECRETSIGNATURE%3D'"
    " not recognized as being in a supported file format.",
    # curl's request line (CPL_CURL_VERBOSE) and urllib3's debug line: paths without a host
    "CURL_INFO_HEADER_OUT: GET /naip/x.tif?code=SECRETSIGNATURE HTTP/1.1",
    'http://127.0.0.1:8333 "GET /world/a.tar?X-Amz-Credential=k&X-Amz-Signature=SECRETSIGNATURE'
    ' HTTP/1.1" 206 100',
    # botocore's signer and its prepared requests
    "Signature:\nSECRETSIGNATURE0123456789abcdef",
    "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=k/x, Signature=SECRETSIGNATURE',"
    " 'X-Amz-Security-Token': b'SECRETSIGNATURE'}",
    "Authorization: SharedKey acct:SECRETSIGNATURE",
])
def test_redact_masks_every_secret_shape(text):
    assert SECRET not in redact(text)


def test_cog_read_error_is_a_redacted_oserror(tmp_path):
    with _broken_cogs(tmp_path) as srv, pytest.raises(CogReadError) as err:
        read_window(f"{srv.url}/corrupt/x.tif", Window(0, 0, 8, 8), 8, signers.fake_sas,
                    retries=1, backoff_s=0.01)
    message = str(err.value)
    assert SECRET not in message and "sig=" not in message.replace("sig=<redacted>", "")
    assert f"{srv.url}/corrupt/x.tif" in message  # the unsigned href: what to look at
    assert isinstance(err.value, OSError)  # an unreadable input, not a program error
    assert err.value.__cause__ is None  # GDAL's own exception quotes the signed href


# -- item 7: no secret reaches stderr, logs or files ------------------------------------------
def test_cli_never_shows_a_token(world, world_dir, truth, tmp_path):
    """``geopile ingest naip -v`` with a SAS-like signer, one 404 tile and one corrupt tile.

    One stratum (Texas 2016, six tiles) and 24 patches: about 30 draws, so both broken tiles
    are drawn whatever the sampler's seed.
    """
    tiles = [t for t in truth["naip"]["tiles"] if t["state"] == "tx" and t["year"] == "2016"]
    missing, corrupt = tiles[0], tiles[1]
    with _broken_cogs(tmp_path) as srv, _catalog(tmp_path, world_dir, truth, {
        missing["item_id"]: f"{srv.url}/missing/{mirror_path(missing['href'])}",
        corrupt["item_id"]: f"{srv.url}/corrupt/x.tif",
    }) as stac:
        data = tmp_path / "data"
        overlay = _overlay(tmp_path, {"paths": {"data": str(data)}, "sources": {"naip": {
            "stac_url": stac, "signer": "tests.signers:fake_sas", "count": 24,
            "states": ["tx"], "years": ["2016"], "retries": 1, "backoff_s": 0.01,
            "max_error_fraction": 1.0}}})  # a third of the windows fail here: never stop
        run = _geopile(["ingest", "naip", "-v", "--params", str(REPO / "params.yaml"),
                        "--params", str(world_dir / PARAMS_OVERLAY), "--params", str(overlay)],
                       cwd=_workdir(tmp_path))
        requested = [p for p, _, _ in srv.requests]
    assert run.returncode == 0, run.stderr[-3000:]
    assert any(p.startswith("/corrupt/") for p in requested)  # both faults were really hit
    assert any(p.startswith("/missing/") for p in requested)
    assert " DEBUG " in run.stderr  # -v took effect
    assert f"/vsicurl/{srv.url}/corrupt/x.tif?<redacted>" in run.stderr  # GDAL's, redacted
    assert not _leaks([tmp_path / "data", tmp_path / "work"], run.stdout, run.stderr)
    rejects = read_records(rejects_path(data, "naip")).to_pylist()
    reasons = {r["origin"]: r["reason"] for r in rejects}
    assert "HTTP response code: 404" in reasons[f"{srv.url}/missing/{mirror_path(missing['href'])}"]
    assert "not recognized" in reasons[f"{srv.url}/corrupt/x.tif"]


def test_failing_download_never_shows_a_token(tmp_path):
    """A signed archive URL that drops once, then has the wrong md5: no secret anywhere."""
    root = tmp_path / "srv"
    root.mkdir()
    (root / "NWPU-RESISC45.zip").write_bytes(bytes(range(256)) * 400)
    data = tmp_path / "data"
    with FlakyServer(root) as srv:
        srv.drop_after, srv.drops_left = 5000, 1
        url = f"{srv.url}/NWPU-RESISC45.zip?X-Amz-Credential=k&X-Amz-Signature={SECRET}"
        overlay = _overlay(tmp_path, {"paths": {"data": str(data)}, "sources": {"resisc45": {
            "urls": {"archive": url}, "md5s": {"archive": "0" * 32},
            "mirror_root": f"{srv.url}/nowhere"}}})  # the published mirrors: loopback 404s
        run = _geopile(["ingest", "resisc45", "-v", "--params", str(REPO / "params.yaml"),
                        "--params", str(overlay)], cwd=_workdir(tmp_path), timeout=120)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "geopile: error:" in run.stderr and "Traceback" not in run.stderr
    assert f"{srv.url}/NWPU-RESISC45.zip" in run.stderr  # the mirror is named, its query not
    assert not _leaks([tmp_path / "data", tmp_path / "work"], run.stdout, run.stderr)


def test_s3_debug_logs_hide_presigned_urls(world, world_dir, truth, tmp_path):
    """``-v`` while streaming from S3: urllib3 logs every presigned URL, botocore its signing.

    A session token (the world's S3 ignores it) is a secret known in advance; the signature is
    not, so it is checked by shape.
    """
    key = mirror_path(truth["naip"]["tiles"][0]["href"])
    prefix, name = key.rsplit("/", 1)
    script = (
        "import argparse\n"
        "from pipelines.common import setup\n"
        "from geopile.stream import S3Storage\n"
        f"setup(argparse.Namespace(verbose=True, params=[{str(REPO / 'params.yaml')!r}]))\n"
        f"store = S3Storage('s3://{BUCKET}/{prefix}', endpoint_url={world['s3']!r})\n"
        f"assert len(store.read_range({name!r}, 0, 100)) == 100\n"
    )
    env = {**os.environ, **world_env(world["s3"]), "AWS_SESSION_TOKEN": SECRET,
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", script], cwd=_workdir(tmp_path), env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f'"GET /{BUCKET}/{prefix}/{name}?<redacted> HTTP/1.1" 206' in run.stderr  # logged
    assert not _leaks([tmp_path / "work"], run.stdout, run.stderr)
    assert not re.search(r"(?i)signature=(?!<redacted>)|signature:\s+(?!<redacted>)\S",
                         run.stderr)


# -- item 8: an unreadable window is a reject; too many stop the run --------------------------
def test_one_missing_tile_is_a_reject_and_reruns_are_identical(world, world_dir, truth, params,
                                                                tmp_path):
    missing = _tile(truth, "tx", "2020")
    with _broken_cogs(tmp_path) as srv, _catalog(tmp_path, world_dir, truth, {
        missing["item_id"]: f"{srv.url}/missing/{mirror_path(missing['href'])}",
    }) as stac:
        first = _naip(params, stac_url=stac)  # 96 patches: ~30 draws on the broken tile's stratum
        data = Path(params["paths"]["data"])
        records = read_records(records_path(data, "naip"))
        rejects = read_records(rejects_path(data, "naip"))
        second = _naip(params, stac_url=stac)
    assert first.images == second.images == params["sources"]["naip"]["count"]
    lost = [r for r in rejects.to_pylist() if "/missing/" in r["origin"]]
    assert lost and all(r["reason"].startswith("CogReadError: cannot read") for r in lost)
    assert all("HTTP response code: 404" in r["reason"] for r in lost)
    assert read_records(records_path(data, "naip")).equals(records)
    assert read_records(rejects_path(data, "naip")).equals(rejects)


def test_too_many_unreadable_windows_stop_the_run(world, world_dir, truth, params, tmp_path):
    with _broken_cogs(tmp_path) as srv, _catalog(tmp_path, world_dir, truth, {
        t["item_id"]: f"{srv.url}/missing/{mirror_path(t['href'])}"
        for t in truth["naip"]["tiles"] if t["state"] == "ca"
    }) as stac, pytest.raises(IngestError) as err:
        _naip(params, stac_url=stac, count=48, signer="tests.signers:fake_sas")
    message = str(err.value)
    assert message.startswith("naip: ")
    assert "sources.naip.max_error_fraction" in message and "0.05" in message
    assert "HTTP response code: 404" in message and "/missing/" in message  # the last errors
    assert SECRET not in message
    data = Path(params["paths"]["data"])
    assert not records_path(data, "naip").exists()  # no half-finished table


# -- item 10: a STAC API that is down, or is not one, is one line --------------------------------
def _one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("geopile: error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    return errors[0]


def test_unreachable_stac_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{servers.free_port()}/api/stac/v1"
    overlay = _overlay(tmp_path, {"paths": {"data": str(tmp_path / "data")},
                                  "sources": {"naip": {"stac_url": f"{url}?token={SECRET}"}}})
    run = _geopile(["ingest", "naip", "-v", "--params", str(REPO / "params.yaml"),
                    "--params", str(overlay)], cwd=_workdir(tmp_path), timeout=120)
    line = _one_line_error(run)
    assert url in line and "connection refused" in line and "sources.naip.stac_url" in line
    assert not _leaks([tmp_path / "data", tmp_path / "work"], run.stdout, run.stderr)


def test_stac_returning_html_is_one_line(tmp_path):
    with _html_server() as url:
        overlay = _overlay(tmp_path, {"paths": {"data": str(tmp_path / "data")},
                                      "sources": {"naip": {"stac_url": url}}})
        run = _geopile(["ingest", "naip", "--params", str(REPO / "params.yaml"),
                        "--params", str(overlay)], cwd=_workdir(tmp_path), timeout=120)
    line = _one_line_error(run)
    assert url in line and "not a STAC API" in line and "sources.naip.stac_url" in line


def test_stac_that_never_answers_times_out():
    with socket.socket() as sock:  # listening, never accepting: the connect succeeds, then nothing
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(StacError) as err:
            list(search_tiles(url, collection="naip", bbox=None, datetime=None, timeout_s=0.5))
    assert url in str(err.value) and "timed out" in str(err.value)
