"""Build, start and stop the offline world: GeoPile's outside systems in miniature, on loopback.

``build`` writes everything to ``DIR`` (archives at paths mirroring their real URLs under
``DIR/http``, the user-supplied RSD46 archive under ``DIR/user``, NAIP COGs and STAC JSON, and
``ground_truth.json``). ``up`` starts SeaweedFS, uploads ``DIR/http`` into the bucket ``world``
so every live published mirror has a loopback twin with HTTP Range support (a mirror dead in the
real world answers 404 there too), starts a STAC API whose NAIP asset hrefs point there, and
writes ``DIR/world.params.yaml``: the overlay that sends ``params.yaml``'s sources to the world
(``mirror_root``: every published mirror is asked at its twin, in the published order).
``down`` stops both servers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from geopile.atomic import write_text
from geopile.downstream import DownstreamSet
from geopile.world import servers
from geopile.world.corpora import (
    LAYOUTS,
    WorldWriter,
    build_corpora,
    live_mirrors,
    mirror_path,
    user_archive,
)
from geopile.world.downstream import Fixture, build_downstream
from geopile.world.naip import AZURE_PREFIX, build_naip
from geopile.world.sentinel2 import S2_PREFIX, build_sentinel2

WORLD_VERSION = 7  # bumped whenever build_world writes something new; older worlds are rebuilt
log = logging.getLogger(__name__)
BUCKET = "world"
GROUND_TRUTH = "ground_truth.json"
PARAMS_OVERLAY = "world.params.yaml"
# written by `geopile world build` (pipelines.world_teacher): geopile does not train models
TEACHER_FILE = "teacher/swin-tiny-teacher.pth"
SHARDS_PREFIX = "shards"  # where `geopile push` puts builds in the world's bucket
ENDPOINTS = "run/endpoints.json"
# Anything works as credentials for SeaweedFS started without AWS_ACCESS_KEY_ID.
WORLD_CREDENTIALS = {"aws_access_key_id": "world", "aws_secret_access_key": "world-secret"}


def build_world(world_dir: Path, seed: int = 0, per_class: int = 3,
                downstream: Mapping[str, tuple[DownstreamSet, Fixture]] | None = None,
                ) -> dict[str, Any]:
    """Generate the whole world into ``world_dir`` (replacing a previous one).

    ``downstream``: each downstream set's published files and world fixture (the task files
    hold both; ``pipelines.world.build`` passes the registry's). None: no downstream sets.
    """
    world_dir = Path(world_dir)
    for sub in ("http", "user", "stac", "run"):
        shutil.rmtree(world_dir / sub, ignore_errors=True)
    world_dir.mkdir(parents=True, exist_ok=True)
    truth = build_corpora(world_dir, seed=seed, per_class=per_class)
    truth["naip"] = build_naip(world_dir, seed=seed)
    truth["sentinel2"] = build_sentinel2(world_dir, seed=seed)
    truth["downstream"] = build_downstream(WorldWriter(world_dir), downstream or {}, seed=seed)
    truth["seed"] = seed
    truth["version"] = WORLD_VERSION
    tmp = world_dir / f".{GROUND_TRUTH}.tmp"
    tmp.write_text(json.dumps(truth, indent=1, sort_keys=True))
    os.replace(tmp, world_dir / GROUND_TRUTH)
    return truth


def load_truth(world_dir: Path) -> dict[str, Any]:
    """The ground truth written by :func:`build_world`."""
    path = Path(world_dir) / GROUND_TRUTH
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `geopile world build {world_dir}` first")
    return json.loads(path.read_text())


def s3_client(endpoint: str):  # a boto3 S3 client
    """A boto3 client for the world's S3 server."""
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", **WORLD_CREDENTIALS,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


# The world's STAC items keep their published hrefs (Azure blob URLs); this signer, named in the
# world's params overlay, sends a read of one to its copy on the world's S3, whose URL the
# environment holds (world_env; `geopile world up` prints it). world_up leaves os.environ alone:
# a process that starts a second world must not redirect the reads of the first.
WORLD_S3 = "GEOPILE_WORLD_S3"
LOOPBACK_SIGNER = "geopile.world.world:loopback_signer"


def loopback_signer(href: str) -> str:
    """``href`` of a published world asset as its loopback twin; any other href unchanged."""
    if not href.startswith((AZURE_PREFIX, S2_PREFIX)):
        return href
    endpoint = os.environ.get(WORLD_S3)
    if not endpoint:
        raise RuntimeError(f"{WORLD_S3} is not set: the offline world's assets are read from its "
                           "S3 (`geopile world up`, then the variables of world_env)")
    return f"{endpoint}/{BUCKET}/{mirror_path(href)}"


def world_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3 (the standard AWS chain) at the world's S3."""
    return {WORLD_S3: endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": WORLD_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": WORLD_CREDENTIALS["aws_secret_access_key"]}


def upload_tree(endpoint: str, root: Path, prefix: str = "") -> str:
    """Upload every file under ``root`` to the world's bucket under ``prefix``; its s3:// URL."""
    client = s3_client(endpoint)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:  # a restart keeps the server's data
        pass
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        client.upload_file(str(path), BUCKET, f"{prefix}/{key}" if prefix else key)
    return f"s3://{BUCKET}/{prefix}" if prefix else f"s3://{BUCKET}"


def _overlay(world_dir: Path, truth: dict[str, Any], s3: str, stac: str) -> dict[str, Any]:
    """``params.yaml`` overlay pointing every source at the world (mirrors, md5s, STAC, archive).

    Published files keep their mirror lists: ``mirror_root`` makes each mirror's loopback twin
    (``<s3>/world/<host>/<path>``) stand in for it, so the dead publisher of a file is asked
    first and answers 404, exactly as on the internet. The md5s are the world's bytes'.
    """
    files = {}
    for source in truth["sources"].values():
        files.update(source["files"])
    root = f"{s3}/{BUCKET}"
    sources: dict[str, Any] = {}
    for name, layout in LAYOUTS.items():  # the corpora the world serves, by their published files
        source = layout.source
        md5s = {which: files["http/" + mirror_path(live_mirrors(d.mirrors)[0])]["md5"]
                if d.md5 else None for which, d in source.publication.downloads.items()}
        sources[name] = {"mirror_root": root, "md5s": md5s} if md5s else {}
        if source.user_input:  # no public URL: the user's own copy
            sources[name][source.user_input] = str((world_dir / user_archive(source)).resolve())
    downstream = {}
    for name, made in truth["downstream"].items():  # where build_downstream put each file
        urls, md5s = {}, {}
        for which, place in made["placed"].items():
            if "mirrors" in place:  # served by the world's S3 at the twin of each live mirror
                rel = "http/" + mirror_path(live_mirrors(place["mirrors"])[0])
            else:  # no public URL: a local file, as a user's own download would be
                rel = place["path"]
                urls[which] = str(world_dir / rel)
            md5s[which] = made["files"][rel]["md5"] if place["md5"] else None
        downstream[name] = {"mirror_root": root, "urls": urls, "md5s": md5s}
    naip = truth["naip"]
    sources["naip"] = {
        "stac_url": stac,
        "signer": LOOPBACK_SIGNER,
        "bbox": naip["bbox"],
        "datetime": f"{min(naip['years'])}-01-01/{max(naip['years'])}-12-31",
        "states": [],
        "years": [],
        "count": 96,
        "patch_size": 128,
        "max_nodata": 0.05,
        "workers": 4,
    }
    s2 = truth["sentinel2"]
    dates = sorted(i["datetime"][:10] for i in s2["item_truth"])
    # on in the world (off in params.yaml): 64 px patches of the partly cloudy and clear items
    sources["sentinel2"] = {
        "enabled": True,
        "stac_url": stac,
        "signer": LOOPBACK_SIGNER,
        "bbox": s2["bbox"],
        "datetime": f"{dates[0]}/{dates[-1]}",
        "query": {"eo:cloud_cover": {"lt": 50}},  # drops the overcast date
        "count": 24,
        "patch_size": 64,
        "workers": 4,
    }
    # the paper's builds at about 1/2500 of their size, several small shards each
    shard = {"cap_scale": 0.0004, "max_samples": 64}
    # the `tiny` model, its teacher from the world's file, streamed from the world's S3; the
    # lrs are per 512 images, so a batch of 16 needs larger ones to move in a few hundred steps
    pretrain = {
        "model": "tiny",
        "teacher": {"file": str((world_dir / TEACHER_FILE).resolve())},
        "batch_size": 16, "steps": 200, "workers": 2,
        "base_lr": 0.016, "warmup_lr": 0.0001, "min_lr": 0.0016,
        "checkpoint_every": 100, "log_every": 10,
        "stream": {"url": f"s3://{BUCKET}/{SHARDS_PREFIX}"},
    }
    # the tiny model on the world's 105-image UC Merced: no mixup (too few images to need it),
    # 128 px with window 8 (so a checkpoint pretrained at 96 px / window 6 is resized); no
    # loader workers: on sets this small, starting them costs more than they save (a third
    # of a BigEarthNet run on 2 cores)
    finetune = {
        "model": "tiny", "epochs": 8, "warmup_epochs": 1, "batch_size": 16,
        "base_lr": 0.016, "warmup_lr": 0.0001, "min_lr": 0.0001, "workers": 0,
        "mixup": 0.0, "cutmix": 0.0,
        "tasks": {"ucm": {"img_size": 128, "window_size": 8},
                  # the dense tasks on 128 px crops (sn2: a 32 px input, 4x)
                  **{t: {"img_size": 128, "window_size": 4}
                     for t in ("whu", "vaihingen", "oscd", "dsifn", "sn2")}},
        "dense": {"iterations": 40, "warmup_iters": 4, "batch_size": 4, "lr": 0.001,
                  "decoder_channels": 64, "eval_every": 20, "workers": 0},
    }
    return {"sources": sources, "downstream": downstream, "shard": shard, "pretrain": pretrain,
            "finetune": finetune,
            # one task per kind, each on a torchgeo reader where there is one (the demo stays
            # under 15 minutes on 2 cores; every task is in the tests, all eight take 3 more)
            "finetune_tasks": ["ucm", "ben10", "vaihingen", "oscd", "sn2"],
            # a small ablation: the paper's build and the one without NAIP, each pretrained and
            # finetuned on every task; no ImageNet weights offline, so random is the baseline
            "ablation": ["paper", "paper_no_naip"],
            "finetune_baselines": ["random"]}


def world_up(world_dir: Path) -> dict[str, str]:
    """Start the world's servers and write its endpoints and params overlay."""
    world_dir = Path(world_dir).resolve()
    truth = load_truth(world_dir)
    run = world_dir / "run"
    world_down(world_dir)
    ports = _last_ports(run)
    s3 = servers.start_s3(run, run / "s3data", ports=ports.get("s3"))
    try:
        upload_tree(s3.url, world_dir / "http")
        hrefs = []
        # the items keep their published hrefs (records and cards name what a real run would);
        # reads reach the loopback twins through loopback_signer
        for name in ("naip", "sentinel2"):
            hrefs += [world_dir / truth[name]["collection"], world_dir / truth[name]["items"]]
        stac = servers.start_stac(run, hrefs, port=ports.get("stac", {}).get("stac"))
    except BaseException:
        servers.stop(run, "s3")
        raise
    write_text(run / PORTS, json.dumps({"s3": s3.ports, "stac": stac.ports}, indent=1))
    endpoints = {"s3": s3.url, "stac": stac.url, "bucket": BUCKET}
    (world_dir / ENDPOINTS).write_text(json.dumps(endpoints, indent=1))
    overlay = _overlay(world_dir, truth, s3.url, stac.url)
    (world_dir / PARAMS_OVERLAY).write_text(
        "# Written by `geopile world up`: points params.yaml's sources at the offline world.\n"
        + yaml.safe_dump(overlay, sort_keys=True)
    )
    return endpoints


PORTS = "ports.json"


def _last_ports(run: Path) -> dict[str, dict[str, int]]:
    """The ports of the world's last start, where every one is free again (else none).

    The same ports on every ``world up`` keep the params overlay, and with it every DVC stage,
    unchanged across a restart: the URLs are parameters.
    """
    try:
        last = json.loads((run / PORTS).read_text())
        wanted = [int(p) for server in last.values() for p in server.values()]
    except (OSError, ValueError, AttributeError, TypeError):
        return {}
    if not all(servers.port_free(p) for p in wanted):
        log.warning("the world's last ports are taken; new ones change its params overlay, so "
                    "DVC stages that read its URLs will run again")
        return {}
    return last


def world_down(world_dir: Path) -> list[str]:
    """Stop whatever servers of this world are running; returns the names stopped."""
    run = Path(world_dir).resolve() / "run"
    return [name for name in ("stac", "s3") if servers.stop(run, name)]
