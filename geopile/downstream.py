"""Downstream evaluation sets: where they are published, and ``fetch`` into torchgeo's layout.

UC Merced is an ingest source (curation decontaminates against it); the other downstream sets are
only fetched: downloaded with resume and checksum, extracted safely, and laid out under
``DATA/downstream/<name>`` exactly as the torchgeo dataset that reads them expects. URLs and md5s
are overridable per set in ``params.yaml: downstream.<name>.urls/md5s`` (a mirror, the offline
world), as for the ingest sources.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopile.download import download, extract_archive
from geopile.params import ParamsError


@dataclass(frozen=True)
class PublishedFile:
    """One published file: URL, MD5 (the publisher's, via torchgeo) and the name torchgeo wants."""

    url: str
    md5: str | None
    filename: str  # the name it gets in the torchgeo root
    archive: bool = False  # extracted into the root rather than placed there


@dataclass(frozen=True)
class DownstreamSet:
    """The published facts of one downstream set."""

    name: str
    licence: str
    homepage: str
    files: dict[str, PublishedFile] = field(default_factory=dict)


_BEN_SPLITS = ("https://git.tu-berlin.de/rsim/BigEarthNet-MM_19-classes_models/-/raw/"
               "9a5be07346ab0884b2d9517475c27ef9db9b5104/splits")

DOWNSTREAM: dict[str, DownstreamSet] = {
    "bigearthnet": DownstreamSet(
        name="BigEarthNet-S2 v1.0 (19-class nomenclature)",
        licence="CDLA-Permissive-1.0",
        homepage="https://bigearth.net",
        files={
            # 66 GB, 590,326 Sentinel-2 patches; only S2 is fetched (the reference uses RGB)
            "s2": PublishedFile("https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz",
                                "5a64e9ce38deb036a435a7b59494924c", "BigEarthNet-v1.0",
                                archive=True),
            # the BigEarthNet-MM splits (cloud, shadow and seasonal-snow patches left out)
            "split_train": PublishedFile(f"{_BEN_SPLITS}/train.csv",
                                         "623e501b38ab7b12fe44f0083c00986d",
                                         "bigearthnet-train.csv"),
            "split_val": PublishedFile(f"{_BEN_SPLITS}/val.csv",
                                       "22efe8ed9cbd71fa10742ff7df2b7978", "bigearthnet-val.csv"),
            "split_test": PublishedFile(f"{_BEN_SPLITS}/test.csv",
                                        "697fb90677e30571b9ac7699b7e5b432",
                                        "bigearthnet-test.csv"),
        },
    ),
}


def link(target: Path, name: Path) -> None:
    """Point the symlink ``name`` at ``target`` (replacing a stale link)."""
    if name.is_symlink() or name.exists():
        if name.resolve() == target.resolve():
            return
        name.unlink()
    os.symlink(target.resolve(), name)


def downstream_root(data: Path, name: str) -> Path:
    """Where the torchgeo layout of ``name`` is assembled.

    It links into ``downloads`` and ``extracted`` beside it, all under ``DATA/downstream/<name>``
    and apart from ingest's ``raw`` and ``downloads``, which curation depends on.
    """
    return Path(data) / "downstream" / name / "torchgeo"


def manifest_path(data: Path, name: str) -> Path:
    """The record of what ``fetch`` got for ``name`` (a dvc output: finetuning depends on it)."""
    return Path(data) / "fetched" / f"{name}.json"


def fetch(name: str, params: dict[str, Any], data: Path, *, progress: bool = True) -> Path:
    """Download, verify and extract the set ``name``; returns its torchgeo root (idempotent).

    Downloads go to ``DATA/downstream/<name>/downloads`` (resumed, checked), archives are
    extracted to ``.../extracted`` (atomically, refusing path escapes), and the torchgeo root
    ``.../torchgeo`` holds links to both.
    ``DATA/fetched/<name>.json`` records each file's URL (secrets stripped), md5 and sha256.
    """
    try:
        published = DOWNSTREAM[name]
    except KeyError:
        raise ParamsError(f"unknown downstream set {name!r}; known: {sorted(DOWNSTREAM)}") from None
    block = ((params.get("downstream") or {}).get(name)) or {}
    urls, md5s = block.get("urls") or {}, block.get("md5s") or {}
    data = Path(data)
    root = downstream_root(data, name)
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"name": published.name, "licence": published.licence,
                              "root": str(root), "files": {}}
    for which, item in published.files.items():
        url = urls.get(which) or item.url
        md5 = md5s[which] if which in md5s else item.md5
        got = download(url, root.parent / "downloads" / url.rsplit("/", 1)[-1], md5,
                       progress=progress)
        record["files"][which] = {"url": got.url, "md5": got.md5, "sha256": got.sha256,
                                  "size": got.size}
        if item.archive:
            raw = extract_archive(got.path, root.parent / "extracted" / which)
            inner = raw / item.filename
            if not inner.is_dir():
                raise FileNotFoundError(f"{got.path}: the archive holds no {item.filename}/ "
                                        "(is this the published file?)")
            link(inner, root / item.filename)
        else:
            link(got.path, root / item.filename)
    out = manifest_path(data, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return root
