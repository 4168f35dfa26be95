"""A real Ray cluster on loopback for tests: a head and nodes, started and stopped by process group.

``hide``: every other node runs in its own mount namespace (``unshare -rm``) where that folder is
an empty tmpfs, with its own temp directory: it shares no data directory with the driver or with
another node, as on a cluster whose machines have only object storage in common. Ray's own
session folder stays on the disk these loopback nodes do share; that is Ray's plumbing, not data.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from geopile.engines import wait_for_cpus

RAY = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[1] / ".venv")) / "bin/ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_hide(folder: Path) -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs over ``folder``."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs none {shlex.quote(str(folder))}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _node(args: list[str], temp: Path, env: dict[str, str], cpus: int = 1,
          hide: Path | None = None) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group: killing the group kills the node.

    ``env``: the node's S3 credentials and endpoint (the world's), as a real node would have.
    """
    cmd = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus",
           str(cpus), "--disable-usage-stats", *args]
    env = {**os.environ, **env}
    if hide is not None:  # its own namespace: the folder is empty there, TMPDIR its own
        own = Path(tempfile.mkdtemp(prefix="node-", dir=temp))
        env["TMPDIR"] = str(own)
        script = f"mount -t tmpfs none {shlex.quote(str(hide))} && exec {shlex.join(cmd)}"
        cmd = ["unshare", "-rm", "sh", "-c", script]
    log = open(temp / f"node-{len(list(temp.glob('node-*.log')))}.log", "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


class Cluster:
    """A head (``head_cpus``) and ``nodes`` more on 127.0.0.1; ``add_node``/``kill_node``."""

    def __init__(self, env: dict[str, str], *, head_cpus: int = 1, nodes: int = 1,
                 hide: Path | None = None) -> None:
        self.env, self.hide, self.head_cpus = env, hide, head_cpus
        # unix socket paths must stay short: not pytest's tmp_path
        self.temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = _node(["--head", "--port", str(self.port), "--include-dashboard=false",
                           "--temp-dir", str(self.temp), "--ray-client-server-port",
                           str(free_port()), "--node-manager-port", str(free_port()),
                           "--object-manager-port", str(free_port())], self.temp, env,
                          cpus=head_cpus)
        self.nodes: list[subprocess.Popen] = []
        for _ in range(nodes):
            self.add_node()

    def add_node(self) -> None:
        self.nodes.append(_node(["--address", self.address, "--node-manager-port",
                                 str(free_port()), "--object-manager-port",
                                 str(free_port())], self.temp, self.env, hide=self.hide))
        self.wait_cpus(self.head_cpus + len(self.nodes))

    def wait_cpus(self, n: int) -> None:
        wait_for_cpus(self.address, n, logs=str(self.temp))

    def kill_node(self) -> None:
        _stop(self.nodes.pop())

    def stop(self) -> None:
        import ray

        ray.shutdown()
        for proc in [*self.nodes, self.head]:
            _stop(proc)
        left = subprocess.run(["pgrep", "-f", str(self.temp)], capture_output=True, text=True)
        shutil.rmtree(self.temp, ignore_errors=True)
        assert not left.stdout.strip(), f"Ray processes left behind: {left.stdout}"
