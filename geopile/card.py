"""The dataset card written beside every build: ``shards/BUILD/README.md``.

A Markdown file with the YAML header dataset hubs read (Hugging Face's card metadata): what the
build holds, where each source came from (URLs, checksums, licences), what curation removed, the
hashes that pin the shards, and how to cite. Everything comes from the build's index, the
curation report and the params that made them, so the card cannot drift from the data.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml

from geopile.sources.naip import NAIP_LICENCE
from geopile.sources.published import PUBLICATIONS
from geopile.urls import strip_secrets

CARD = "README.md"
NON_COMMERCIAL = ("resisc45",)  # CC-BY-NC sources
_CITATION = """@inproceedings{mendieta2023gfm,
  title     = {Towards Geospatial Foundation Models via Continual Pretraining},
  author    = {Mendieta, Mat{\\'\\i}as and Han, Boran and Shi, Xingjian and Zhu, Yi and Chen, Chen},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}"""


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _licence(source: str, params: dict[str, Any]) -> str:
    if source == "naip":
        return str((params.get("sources") or {}).get("naip", {}).get("licence", NAIP_LICENCE))
    return PUBLICATIONS[source].licence


def _origin(source: str, params: dict[str, Any]) -> list[str]:
    """Where a source was read from, as the params that built it say (secrets stripped)."""
    block = (params.get("sources") or {}).get(source) or {}
    if source == "naip":
        return [f"STAC {strip_secrets(str(block.get('stac_url')))} collection "
                f"`{block.get('collection', 'naip')}`, bbox {block.get('bbox')}, "
                f"{block.get('datetime')}"]
    if source == "rsd46":
        return ["supplied by the user (no public URL)"]
    urls, md5s = block.get("urls") or {}, block.get("md5s") or {}
    lines = []
    for which, download in PUBLICATIONS[source].downloads.items():
        url = strip_secrets(urls.get(which) or download.url)
        md5 = md5s.get(which, download.md5) if which in md5s else download.md5
        lines.append(f"{url} (md5 {md5})" if md5 else f"{url} (no published md5)")
    return lines


def render_card(index: dict[str, Any], params: dict[str, Any],
                curate: dict[str, Any] | None) -> str:
    """The card for one build, from its index, the params and the curation report."""
    build, sources = index["build"], index["sources"]
    licences = {s: _licence(s, params) for s in sources}
    index_sha = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()
    header = {
        "pretty_name": f"GeoPile ({build})",
        "license": "other",
        "license_name": "mixed: per source, see the card",
        "tags": ["remote-sensing", "earth-observation", "aerial-imagery", "pretraining",
                 "webdataset", "geopile"],
        "task_categories": ["image-feature-extraction"],
        "size_categories": [_size_category(index["samples"])],
        "source_datasets": sorted(sources),
        "configs": [{"config_name": build, "data_files": "*.tar"}],
        "geopile": {"build": build, "samples": index["samples"], "seed": index["seed"],
                    "index_sha256": index_sha, "licences": licences},
    }
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# GeoPile: `{build}`", "",
             f"{index['samples']:,} images in {len(index['shards'])} WebDataset shards "
             f"({sum(s['bytes'] for s in index['shards']) / 1e6:,.1f} MB), written by "
             "`geopile shard` from the curated records; the continual-pretraining corpus of "
             "GFM (Mendieta et al., ICCV 2023) rebuilt from its original sources.", "",
             "## Sources", "",
             "| source | images | licence | read from |", "|---|---:|---|---|"]
    for source in sorted(sources):
        origin = "<br>".join(_origin(source, params))
        lines.append(f"| {source} | {sources[source]:,} | {licences[source]} | {origin} |")
    nc = [s for s in sources if s in NON_COMMERCIAL and sources[s]]
    lines += ["", "### What the licences mean for this build", ""]
    if nc:
        lines.append(f"This build contains {', '.join(nc)} images under CC-BY-NC-4.0: the "
                     "build as a whole may be used for non-commercial purposes only, and so "
                     "may models trained on it if you read the licence strictly. For commercial "
                     "work use a build without them (`paper_no_resisc45`). Attribute every "
                     "source.")
    else:
        lines.append("No source in this build carries a non-commercial clause; attribute every "
                     "source, and check RSD46-WHU's terms (research use) if it is included.")
    lines += ["", "## Curation", ""]
    cur = params.get("curate") or {}
    lines.append(
        f"Exact duplicates by a hash of the decoded pixels; near duplicates by pHash within "
        f"Hamming radius {cur.get('radius')} confirmed by a thumbnail correlation of at least "
        f"{cur.get('min_correlation')}; the copy kept follows the priority "
        f"{cur.get('priority')}. Images resembling the evaluation sets "
        f"{sorted(cur.get('eval_sets') or {})} were removed (decontamination).")
    if curate and "counts" in curate:
        lines += ["", "| source | in | exact dup. | near dup. | contaminated | low entropy | "
                  "nodata | out |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for source, c in curate["counts"].items():
            lines.append(f"| {source} | {c['in']} | {c['exact_duplicate']} | "
                         f"{c['near_duplicate']} | {c['contaminated']} | {c['low_entropy']} | "
                         f"{c['nodata']} | {c['out']} |")
    lines += ["", "## Integrity", "",
              f"`index.json` (sorted-key JSON) sha256 `{index_sha}`; build seed {index['seed']}.",
              "", "| shard | samples | sha256 |", "|---|---:|---|"]
    lines += [f"| {s['name']} | {s['samples']} | `{s['sha256']}` |" for s in index["shards"]]
    lines += ["", "## Citation", "", "```bibtex", _CITATION, "```", "",
              "and the sources: NAIP (USDA FSA), RSD46-WHU (Long et al. 2017; Xiao et al. "
              "2017), MLRSNet (Qi et al. 2020), NWPU-RESISC45 (Cheng et al. 2017), PatternNet "
              "(Zhou et al. 2018).", ""]
    return "\n".join(lines)
