"""The dataset card written beside every build: ``shards/BUILD/README.md``.

A Markdown file with the YAML header dataset hubs read (Hugging Face's card metadata): what the
build holds, where each source came from (URLs, checksums, licences), what curation removed, the
hashes that pin the shards, and how to cite. Everything comes from the build's index, the
curation report and the params that made them, so the card cannot drift from the data. Each
source's licence, origin and citation come from the source object itself (its class for a
published corpus, its params for a user's folder), never from a table keyed by name.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import yaml

from geopile.settings import Settings
from geopile.shards import shortfalls
from geopile.sources import create_source
from geopile.sources.base import Source

CARD = "README.md"
BOUNDARY_PLOT = "near_duplicate_boundary.png"  # curate's plot, copied beside every build
_CITATION = """@inproceedings{mendieta2023gfm,
  title     = {Towards Geospatial Foundation Models via Continual Pretraining},
  author    = {Mendieta, Mat{\\'\\i}as and Han, Boran and Shi, Xingjian and Zhu, Yi and Chen, Chen},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}"""
# "CC-BY-NC-4.0", "CC BY-NC-SA", "non-commercial use only": the NC clause, however it is written
_NON_COMMERCIAL = re.compile(r"(?<![A-Za-z])NC(?![A-Za-z])|(?i:non[- ]?commercial)")
_RESEARCH_ONLY = re.compile(r"(?i:research)")
UNKNOWN = "unknown"
# the per-build curation table of the card and the report (one row per source)
BUILD_COLUMNS = ("source", "in", "filtered", "contaminated", "exact duplicates",
                 "near duplicates (by kind)", "available", "asked", "selected", "shortfall")


def non_commercial(licence: str) -> bool:
    """Whether a licence text carries a non-commercial clause (CC ``-NC-`` or spelled out)."""
    return bool(_NON_COMMERCIAL.search(licence))


# what a build may be used for, from the most restrictive licence among its sources
USES = ("any use, with attribution", "research use only", "non-commercial use only",
        "unknown: a source has no licence")


def licence_use(licence: str) -> str:
    """One licence text's use (:data:`USES`), from the text alone."""
    if licence == UNKNOWN:
        return USES[3]
    if non_commercial(licence):
        return USES[2]
    return USES[1] if _RESEARCH_ONLY.search(licence) else USES[0]


def build_use(build: str, settings: Settings) -> str:
    """What ``build`` may be used for: the most restrictive use among its sources' licences.

    The card, the README's build table and ``geopile`` all say this, so they cannot disagree.
    """
    sources = build_sources(list(settings.builds[build].caps), settings)
    return max((licence_use(src.licence) for src in sources.values()), key=USES.index)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def build_sources(names: list[str], settings: Settings) -> dict[str, Source]:
    """The source objects of a build, made from the settings that ingested them (no disk access)."""
    return {name: create_source(name, settings.sources[name], settings.paths.data,
                                progress=False) for name in names}


def _licence_notes(sources: dict[str, int], licences: dict[str, str],
                   settings: Settings) -> list[str]:
    """What the licences mean for the build, derived from the licence texts alone."""
    present = [s for s in sorted(sources) if sources[s]]
    nc = [s for s in present if non_commercial(licences[s])]
    research = [s for s in present if s not in nc and _RESEARCH_ONLY.search(licences[s])]
    unknown = [s for s in present if licences[s] == UNKNOWN]
    notes = []
    if nc or research:
        free = [b for b in settings.builds if build_use(b, settings) == USES[0]]
        alternative = (f" (here: {', '.join(f'`{b}`' for b in free)})" if free
                       else " (no build here is one)")
    if nc:
        notes.append(
            f"This build contains images under a non-commercial licence ({', '.join(nc)}): the "
            "build as a whole may be used for non-commercial purposes only, and so may models "
            "trained on it if you read the licence strictly. For commercial work use a build "
            f"free of non-commercial and research-only sources{alternative}.")
    if research:
        notes.append(f"{', '.join(research)}: the publisher grants research use only; check "
                     "its terms before any other use"
                     + ("." if nc else f"; a build for any use{alternative}."))
    if unknown:
        fixes = ", ".join(f"`sources.{s}.licence`" for s in unknown)
        notes.append(f"No licence is known for {', '.join(unknown)}: set {fixes} and rebuild "
                     "before publishing this build or models trained on it.")
    if not notes:
        notes.append("No source in this build carries a non-commercial or research-only clause.")
    notes.append("Attribute every source (see Citation).")
    return [line for note in notes for line in (note, "")][:-1]  # one paragraph each


def _citation_block(name: str, citation: str) -> list[str]:
    if citation == UNKNOWN:
        return [f"**{name}**: no citation given (set `sources.{name}.citation`)", ""]
    if citation.lstrip().startswith("@"):
        return [f"**{name}**:", "", "```bibtex", citation, "```", ""]
    return [f"**{name}**: {citation}", ""]


def near_cell(counts: dict[str, Any]) -> str:
    """Near duplicates with their breakdown by edit kind: ``3 (crop: 2, flip_h+colour: 1)``."""
    kinds = counts.get("near_kinds") or {}
    detail = ", ".join(f"{k}: {n:,}" for k, n in kinds.items())
    return f"{counts['near_duplicate']:,}" + (f" ({detail})" if detail else "")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("-" if value is None else str(value))


def build_rows(curation: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The per-build curation table's rows (one per source, in the order sources claim copies).

    Columns: source, in, filtered, contaminated, exact duplicates, near duplicates (by kind),
    available, asked, selected, shortfall; ``-`` where curate's report was not at hand.
    """
    return [[source, _number(c.get("in")), _number(c.get("filtered")),
             _number(c.get("contaminated")), _number(c["exact_duplicate"]), near_cell(c),
             _number(c["available"]), _number(c["asked"]), _number(c["selected"]),
             _number(c["shortfall"])] for source, c in curation.items()]


def shortfall_lines(build: str, curation: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per source that falls short of its cap."""
    return [f"{source}: the build asks {c['asked']:,} images, {c['available']:,} are left after "
            f"curation, so it holds {c['shortfall']:,} fewer (`allow_short: true` in "
            f"`builds.{build}`)." for source, c in curation.items() if c.get("shortfall")]


def _curation_section(index: dict[str, Any], settings: Settings,
                      curate: dict[str, Any] | None, boundary_plot: str | None) -> list[str]:
    """How duplicates and contaminants were handled, and what this build lost to each."""
    cur = settings.curate
    lines = [
        "Exact duplicates by a hash of the decoded pixels; near copies (crops of up to 10% a "
        "side, rescales, re-encodes, brightness and contrast, mirrors and quarter turns) by "
        f"crop-pyramid DCT hashes within {cur.radius} / {cur.total_radius} bits, "
        "confirmed when the aligned grey thumbnails correlate at least "
        f"{cur.min_correlation}. Images resembling the evaluation sets "
        f"{sorted(cur.eval_sets)} were removed (decontamination). Copies of one "
        "image form a cluster; this build keeps exactly one image of every cluster that has a "
        "member among its sources, the copy of the earliest of them in the priority "
        f"{cur.priority}, so it never loses an image to a copy in a source it leaves "
        "out. Within a source, images are taken in a seeded hash order up to the cap."]
    curation = index.get("curation")
    if curation:
        lines += ["", "What curation removed from this build, per source (*available*: images "
                  "left after filters, decontamination and duplicates; *asked*: the cap):", "",
                  "| " + " | ".join(BUILD_COLUMNS) + " |",
                  "|---|" + "---:|" * (len(BUILD_COLUMNS) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in build_rows(curation)]
        short = shortfall_lines(index["build"], curation)
        if short:
            lines += ["", "**Short of the caps.** " + " ".join(short)]
    elif curate and "counts" in curate:  # an index written before the curation block
        lines += ["", "| source | in | filtered | contaminated | in a duplicate cluster | out |",
                  "|---|---:|---:|---:|---:|---:|"]
        for source, c in curate["counts"].items():
            lines.append(f"| {source} | {c['in']:,} | {c['low_entropy'] + c['nodata']:,} | "
                         f"{c['contaminated']:,} | {c.get('clustered', 0):,} | {c['out']:,} |")
    if boundary_plot:
        lines += ["", f"The sheet below shows candidate near-duplicate pairs whose aligned "
                  f"thumbnails correlate just above and just below `curate.min_correlation` "
                  f"({cur.min_correlation}): pairs above it were treated as copies, "
                  "pairs below as distinct images, so you can judge the threshold by eye.", "",
                  f"![near-duplicate pairs either side of the threshold]({boundary_plot})"]
    return lines


def render_card(index: dict[str, Any], settings: Settings,
                curate: dict[str, Any] | None, *, boundary_plot: str | None = None) -> str:
    """The card for one build, from its index, the settings and the curation report.

    ``boundary_plot``: the file name, beside the card, of curate's contact sheet of pairs
    either side of the correlation threshold (embedded when given).
    """
    build, sources = index["build"], index["sources"]
    objects = build_sources(sorted(sources), settings)
    licences = {s: objects[s].licence for s in sources}
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
    short = shortfalls(index.get("curation") or {})
    if short:
        header["geopile"]["shortfall"] = short
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# GeoPile: `{build}`", "",
             f"{index['samples']:,} images in {len(index['shards'])} WebDataset shards "
             f"({sum(s['bytes'] for s in index['shards']) / 1e6:,.1f} MB), written by "
             "`geopile shard` from the curated records; the continual-pretraining corpus of "
             "GFM (Mendieta et al., ICCV 2023) rebuilt from its original sources.", "",
             "## Sources", "",
             "| source | images | licence | read from |", "|---|---:|---|---|"]
    for source in sorted(sources):
        origin = "<br>".join(objects[source].origin_lines())
        lines.append(f"| {source} | {sources[source]:,} | {licences[source]} | {origin} |")
    lines += ["", "### What the licences mean for this build", ""]
    lines += _licence_notes(sources, licences, settings)
    lines += ["", "## Curation", ""]
    lines += _curation_section(index, settings, curate, boundary_plot)
    lines += ["", "## Integrity", "",
              f"`index.json` (sorted-key JSON) sha256 `{index_sha}`; build seed {index['seed']}.",
              "", "| shard | samples | sha256 |", "|---|---:|---|"]
    lines += [f"| {s['name']} | {s['samples']} | `{s['sha256']}` |" for s in index["shards"]]
    lines += ["", "## Citation", "", "```bibtex", _CITATION, "```", "", "and the sources:", ""]
    for source in sorted(sources):
        lines += _citation_block(source, objects[source].citation)
    return "\n".join(lines)
