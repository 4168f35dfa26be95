"""Downstream evaluation sets: where they are published, and ``fetch`` into torchgeo's layout.

UC Merced is an ingest source (curation decontaminates against it); the other downstream sets are
only fetched: downloaded with resume and checksum, extracted safely, and laid out under
``DATA/downstream/<name>`` exactly as the torchgeo dataset that reads them expects. URLs and md5s
are overridable per set in ``params.yaml: downstream.<name>.urls/md5s`` (a mirror, the offline
world), as for the ingest sources. A file may have several mirrors; they are tried in order and
the first that serves the published md5 is used (:func:`geopile.download.download_first`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geopile.download import download_first, extract_archive, verify_file
from geopile.params import ParamsError
from geopile.sources.published import mirror_urls
from geopile.urls import strip_secrets


@dataclass(frozen=True, init=False)
class PublishedFile:
    """One published file: its mirrors in order, MD5 (the publisher's, via torchgeo), local name.

    No mirror (``url`` None) where the publisher hands files out by request or through a web
    form: the user downloads them and sets ``downstream.<set>.urls.<key>`` to the local path.
    """

    mirrors: tuple[str, ...]
    md5: str | None
    filename: str  # the name the download gets (torchgeo's name for it)
    archive: bool = False  # extracted, its top-level entries linked into the root

    def __init__(self, mirrors: str | Sequence[str] | None, md5: str | None, filename: str,
                 archive: bool = False) -> None:
        found = () if mirrors is None else (mirrors,) if isinstance(mirrors, str) else mirrors
        object.__setattr__(self, "mirrors", tuple(found))
        object.__setattr__(self, "md5", md5)
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "archive", archive)

    @property
    def url(self) -> str | None:
        """The first mirror (the publisher's), or None if the file has no public URL."""
        return self.mirrors[0] if self.mirrors else None


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
                                "5a64e9ce38deb036a435a7b59494924c",
                                "BigEarthNet-S2-v1.0.tar.gz", archive=True),
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
    "vaihingen": DownstreamSet(
        name="ISPRS 2D Semantic Labeling Vaihingen",
        licence="ISPRS benchmark terms: research use, cite the benchmark; no redistribution",
        homepage="https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx",
        files={  # handed out by ISPRS on request: no public URL
            "images": PublishedFile(None, "462b8dca7b6fa9eaf729840f0cdfc7f3",
                                    "ISPRS_semantic_labeling_Vaihingen.zip", archive=True),
            "labels": PublishedFile(None, "4802dd6326e2727a352fb735be450277",
                                    "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
                                    archive=True),
        },
    ),
    "whu": DownstreamSet(
        name="WHU Building Dataset, aerial imagery (cropped 512 px tiles)",
        licence="research use; cite Ji, Wei & Lu 2019",
        homepage="http://gpcv.whu.edu.cn/data/building_dataset.html",
        files={  # the publisher's page links a zip with {train,val,test}/{image,label}/*.tif
            "archive": PublishedFile(None, None, "whu-aerial.zip", archive=True),
        },
    ),
    "oscd": DownstreamSet(
        name="Onera Satellite Change Detection (OSCD)",
        licence="CC-BY-NC-SA-4.0",
        homepage="https://rcdaudt.github.io/oscd/",
        files={  # torchgeo's URLs and md5s
            "images": PublishedFile("https://partage.imt.fr/index.php/s/gKRaWgRnLMfwMGo/download",
                                    "c50d4a2941da64e03a47ac4dec63d915",
                                    "Onera Satellite Change Detection dataset - Images.zip",
                                    archive=True),
            "train_labels": PublishedFile(
                "https://partage.mines-telecom.fr/index.php/s/2D6n03k58ygBSpu/download",
                "4d2965af8170c705ebad3d6ee71b6990",
                "Onera Satellite Change Detection dataset - Train Labels.zip", archive=True),
            "test_labels": PublishedFile(
                "https://partage.imt.fr/index.php/s/gpStKn4Mpgfnr63/download",
                "8177d437793c522653c442aa4e66c617",
                "Onera Satellite Change Detection dataset - Test Labels.zip", archive=True),
        },
    ),
    "dsifn": DownstreamSet(
        name="DSIFN change detection (Zhang et al. 2020)",
        licence="research use; cite Zhang et al., ISPRS J. 2020",
        homepage="https://github.com/GeoZcx/A-deeply-supervised-image-fusion-network-for-change-detection-in-remote-sensing-images",
        files={  # shared through a cloud drive: {train,val,test}/{t1,t2,mask}/
            "archive": PublishedFile(None, None, "DSIFN.zip", archive=True),
        },
    ),
    "sn2": DownstreamSet(
        name="SpaceNet 2: Building Detection v2 (the four training AOIs)",
        licence="CC-BY-SA-4.0",
        homepage="https://spacenet.ai/spacenet-buildings-dataset-v2/",
        files={  # the AWS open-data bucket; torchgeo's md5s
            f"aoi_{aoi}": PublishedFile(
                f"https://spacenet-dataset.s3.amazonaws.com/spacenet/SN2_buildings/tarballs/"
                f"SN2_buildings_train_AOI_{aoi}_{city}.tar.gz", md5,
                f"SN2_buildings_train_AOI_{aoi}_{city}.tar.gz", archive=True)
            for aoi, city, md5 in ((2, "Vegas", "307da318bc43aaf9481828f92eda9126"),
                                   (3, "Paris", "4db469e3e4e7bf025368ad730aec0888"),
                                   (4, "Shanghai", "986129eecd3e842ebc2063d43b407adb"),
                                   (5, "Khartoum", "462b4bf0466c945d708befabd4d9115b"))
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


def _wanted(name: str, params: dict[str, Any]) -> dict[str, tuple[PublishedFile, list[str],
                                                                   str | None]]:
    """Each file of ``name``: (its table entry, mirrors or a local path, md5), params first.

    The mirrors are ``downstream.<name>.urls.<file>`` (a URL, a list of them, or a local path)
    followed by the published ones (see :func:`geopile.sources.published.mirror_urls`).
    """
    block = ((params.get("downstream") or {}).get(name)) or {}
    md5s = block.get("md5s") or {}
    return {which: (item, mirror_urls(item, block, which, f"downstream.{name}"),
                    md5s[which] if which in md5s else item.md5)
            for which, item in DOWNSTREAM[name].files.items()}


def mirrors_of(name: str, params: dict[str, Any]) -> dict[str, list[str]]:
    """Each file of the set ``name`` and the URLs (or local path) it would be fetched from."""
    if name not in DOWNSTREAM:
        raise ParamsError(f"unknown downstream set {name!r}; known: {sorted(DOWNSTREAM)}")
    return {which: urls for which, (_, urls, _) in _wanted(name, params).items()}


def fetched_root(name: str, params: dict[str, Any], data: Path) -> Path:
    """The torchgeo root of ``name``, fetching only if no fetch of the same files is recorded.

    Finetuning calls this on every run (and every rank): re-hashing a 66 GB archive each time
    would cost minutes, and ``geopile fetch`` (the dvc stage) has verified it already.
    """
    record_path, root = manifest_path(data, name), downstream_root(data, name)
    if name in DOWNSTREAM and record_path.is_file() and root.is_dir():
        record = json.loads(record_path.read_text())["files"]
        if all(which in record and record[which]["url"] in {strip_secrets(u) for u in urls}
               and md5 in (None, record[which]["md5"])
               for which, (_, urls, md5) in _wanted(name, params).items()):
            return root
    return fetch(name, params, data, progress=False)


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
    data = Path(data)
    root = downstream_root(data, name)
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"name": published.name, "licence": published.licence,
                              "root": str(root), "files": {}}
    for which, (item, urls, md5) in _wanted(name, params).items():
        if not urls:
            raise ParamsError(
                f"{name}: {item.filename} has no public URL ({published.homepage} hands it "
                f"out); download it and set downstream.{name}.urls.{which} to its path")
        if "://" not in urls[0]:  # a file the user downloaded: checked in place
            if not Path(urls[0]).is_file():
                raise FileNotFoundError(f"downstream.{name}.urls.{which}: {urls[0]} not found")
            got = verify_file(Path(urls[0]), urls[0], md5)
        else:
            got = download_first(urls, root.parent / "downloads" / item.filename, md5,
                                 progress=progress)
        record["files"][which] = {"url": got.url, "md5": got.md5, "sha256": got.sha256,
                                  "size": got.size}
        if item.archive:
            extracted = extract_archive(got.path, root.parent / "extracted" / which)
            for entry in sorted(extracted.iterdir()):
                link(entry, root / entry.name)
        else:
            link(got.path, root / item.filename)
    out = manifest_path(data, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return root
