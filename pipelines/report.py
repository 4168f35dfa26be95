"""``geopile report``: one self-contained HTML page (and a Markdown twin) of a pipeline run.

It reads what the stages wrote: curation's counts, entropy histograms, contact sheets,
duplicate clusters and the near-duplicate threshold sheet, what each written build lost to
deduplication (and any shortfall, from its ``index.json``), each pretraining run's curve,
metrics and energy, and the finetuning ARP table. Images are embedded as data URIs, so the
HTML is one file to mail or attach; the Markdown twin links the same PNGs from
``report_files/``. A small script at the end of the page checks that every image decoded and
writes the result into ``#selfcheck`` (the browser test reads it).
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from geopile.atomic import write_text
from geopile.card import BOUNDARY_PLOT, BUILD_COLUMNS, build_rows, shortfall_lines
from geopile.curate import rgb_thumbnail
from geopile.payloads import PayloadStore
from geopile.records import read_records, records_path, rejects_path
from geopile.settings import Settings
from geopile.stream import LocalStorage, read_build_index
from geopile.stream.index import INDEX, StreamError
from pipelines.arp import from_rows, paper_arp, paper_scores
from pipelines.curate import DUPLICATES, REPORT
from pipelines.energy import energy_line

_SELFCHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const tables = document.querySelectorAll('table').length;
  document.getElementById('selfcheck').textContent =
    `images ${ok}/${imgs.length} loaded, ${tables} tables`;
});
</script>"""
_STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}
td.n{text-align:right}img{max-width:100%}.pair img{width:160px;margin-right:4px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}.grid img{max-width:340px}
figcaption{font-size:12px}
</style>"""


class _Page:
    """Collects sections as HTML and Markdown at once."""

    def __init__(self, files: Path) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.files = files
        self.n_images = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["", "#" * level + " " + text, ""]

    def text(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def table(self, head: list[str], rows: list[list[Any]]) -> None:
        def cell(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
            return f"{v:,}" if isinstance(v, int) else str(v)

        cells = [[cell(v) for v in row] for row in rows]
        self.html.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                         + "</tr>" + "".join(
                             "<tr>" + "".join(
                                 f'<td class="n">{html.escape(c)}</td>'
                                 if isinstance(v, int | float) else f"<td>{html.escape(c)}</td>"
                                 for c, v in zip(row, raw, strict=True)) + "</tr>"
                             for row, raw in zip(cells, rows, strict=True)) + "</table>")
        self.md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        self.md += ["| " + " | ".join(row) + " |" for row in cells]
        self.md.append("")

    def _save(self, png: bytes) -> tuple[str, str]:
        self.n_images += 1
        name = f"{self.n_images:03d}.png"
        (self.files / name).write_bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        return uri, f"{self.files.name}/{name}"

    def image(self, png: bytes, caption: str) -> None:
        uri, rel = self._save(png)
        self.html.append(f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md += [f"![{caption}]({rel})", ""]

    def images(self, items: list[tuple[bytes, str]]) -> None:
        self.html.append('<div class="grid">')
        for png, caption in items:
            self.image(png, caption)
        self.html.append("</div>")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _side_by_side(store: PayloadStore, names: list[str], size: int = 160) -> bytes:
    thumbs = [rgb_thumbnail(store.read(n), size) for n in names]
    sheet = Image.new("RGB", (sum(t.width for t in thumbs) + 6 * (len(thumbs) - 1),
                              max(t.height for t in thumbs)), "white")
    x = 0
    for t in thumbs:
        sheet.paste(t, (x, 0))
        x += t.width + 6
    return _png(sheet)


def _key_paths(data: Path, sources: list[str]) -> dict[str, str]:
    paths = {}
    for source in sources:
        path = records_path(data, source)
        if path.exists():
            table = read_records(path).select(["key", "path"])
            paths.update(zip(table["key"].to_pylist(), table["path"].to_pylist(), strict=True))
    return paths


def _curation(page: _Page, settings: Settings, examples: int) -> None:
    data, reports = settings.paths.data, settings.paths.reports
    report = json.loads((reports / REPORT).read_text())
    page.heading("Curation: per source")
    rows = []
    at_ingest = {s: read_records(rejects_path(data, s)).num_rows
                 for s in report["counts"] if rejects_path(data, s).exists()}
    at_ingest["total"] = sum(at_ingest.values())
    for source, c in report["counts"].items():
        ent = (report.get("entropy", {}).get(source, {}).get("entropy_global", {})
               .get("mean")) if source != "total" else None
        rows.append([source, c["in"], c["contaminated"],
                     at_ingest.get(source, 0) + c["low_entropy"] + c["nodata"], c["out"],
                     c.get("clustered", 0), round(ent, 2) if ent is not None else "-"])
    page.table(["source", "in", "contaminants", "rejected", "out", "in a duplicate cluster",
                "entropy (bits)"], rows)
    page.text("Rejected: unreadable at ingest, plus curation's entropy and nodata filters. "
              "Out: every clean image, copies included; each build keeps one image of each "
              "duplicate cluster among its sources (see Duplicates removed per build).")
    rotated = {s: c["exif_rotated"] for s, c in report["counts"].items()
               if s != "total" and c.get("exif_rotated")}
    if rotated:
        page.text("Turned upright by their EXIF orientation (stored sideways by a camera or "
                  "phone; measured and sharded as shown): "
                  + ", ".join(f"{s} {n}" for s, n in rotated.items()) + ".")
    plots = reports / "plots"
    page.heading("Entropy histograms")
    page.images([(p.read_bytes(), p.stem) for p in sorted(plots.glob("entropy_*.png"))])
    page.heading("Contact sheets")
    for p in sorted(plots.glob("contact_*.png")):
        page.image(p.read_bytes(), p.stem.removeprefix("contact_"))
    dups = json.loads((reports / DUPLICATES).read_text())
    sources = sorted({*settings.sources, *settings.curate.eval_sets})
    paths = _key_paths(data, sources)
    store = settings.paths.payload_store()
    page.heading("Duplicate clusters (every copy, side by side; a build keeps one)")
    sheets = []
    for cluster in dups["clusters"]:
        members = [k for k in cluster["members"] if k in paths]
        if len(members) >= 2:
            sheets.append((_side_by_side(store, [paths[k] for k in members]),
                           " | ".join(members)))
        if len(sheets) == examples:
            break
    page.images(sheets)
    boundary = plots / BOUNDARY_PLOT
    if boundary.exists():
        page.heading("Near-duplicate threshold")
        page.text("Candidate pairs whose aligned thumbnails correlate just above and just below "
                  f"curate.min_correlation ({settings.curate.min_correlation}"
                  "): above it they count as copies, below it as distinct images. Judge the "
                  "threshold by eye.")
        page.image(boundary.read_bytes(), "pairs either side of the correlation threshold")
    page.heading("Contaminants removed (pretraining image | evaluation image)")
    pairs = []
    for item in dups["contaminated"][:examples]:
        match = item["matches"][0]
        if item["key"] in paths and match in paths:
            pairs.append((_side_by_side(store, [paths[item["key"]], paths[match]]),
                          f"{item['key']} | {match}"))
    page.images(pairs)


def _builds(page: _Page, settings: Settings) -> None:
    """Per build (each written one's index.json): what curation and deduplication removed."""
    indexes, refused = [], []
    for build in settings.builds:
        folder = settings.paths.shards / build
        if not (folder / INDEX).exists():
            continue
        try:  # through the gate, as every reader of a build: it may come from anywhere
            index, _ = read_build_index(LocalStorage(folder), str(folder))
        except StreamError as err:
            refused.append(str(err))
            continue
        if index.get("curation"):
            indexes.append(index)
    if not indexes and not refused:
        return
    page.heading("Duplicates removed per build")
    page.text("A build keeps one image of every duplicate cluster among its sources, the copy "
              "of its source earliest in curate.priority; available: images left after "
              "filters, decontamination and duplicates; asked: the cap.")
    for index in indexes:
        build, curation = index["build"], index["curation"]
        page.heading(f"{build}: {index['samples']:,} images", 3)
        page.table(list(BUILD_COLUMNS), build_rows(curation))
        for line in shortfall_lines(build, curation):
            page.text(line)
    for line in refused:
        page.text(f"not shown: {line}")


def _pretraining(page: _Page, settings: Settings) -> None:
    runs = settings.paths.runs
    builds = [b for b in settings.ablation if (runs / b / "metrics.json").exists()]
    if not builds:
        return
    page.heading("Pretraining")
    rows = []
    for build in builds:
        m = json.loads((runs / build / "metrics.json").read_text())
        cost = runs / build / "energy.json"
        e = (json.loads(cost.read_text()) if cost.exists() else None) or {}
        rows.append([build, m.get("steps"), m.get("images_seen"), m.get("loss"), m.get("mim"),
                     m.get("feat"), e.get("kwh"), e.get("kg_co2e")])
    page.table(["build", "steps", "images", "loss", "L_MIM", "L_feat", "kWh", "kg CO2e"], rows)
    for build in builds:
        curve = runs / build / "loss.png"
        if curve.exists():
            page.image(curve.read_bytes(), f"{build}: loss curves")
        energy = runs / build / "energy.json"
        if energy.exists() and (e := json.loads(energy.read_text())):
            page.text(f"{build}: {energy_line(e)}")


def _downstream(page: _Page, settings: Settings) -> None:
    arp_file = settings.paths.reports / "arp.json"
    if not arp_file.exists():
        return
    result = json.loads(arp_file.read_text())
    page.heading("Downstream: ARP against the baseline")
    table = paper_scores()
    rows = [[r["task"], r["metric"], r["model"], r["baseline"],
             "n/a" if r["relative"] is None else f"{r['relative']:+.2%}",
             *table.get((r["task"], r["metric"]), ("-", "-"))]
            for r in result["rows"]]
    page.table(["task", "metric", "ours", "baseline", "rel.", "paper GFM", "paper base"], rows)
    ours, paper = from_rows(result["rows"]), paper_arp()
    page.text(f"ARP over the {len(ours.datasets)} datasets shared (each dataset's scores "
              "averaged first): " + ("n/a" if ours.arp is None else f"{ours.arp:+.2%}")
              + f"; the paper's ARP over its {len(paper.datasets)} datasets (Table 1): "
              f"{paper.arp:+.2%}.")
    from pipelines.tasks import TASKS

    shown = dict.fromkeys(r["task"] for r in result["rows"] if r["task"] in TASKS)
    page.table(["task", "dataset", "evaluation protocol (its task file)"],
               [[t, TASKS[t].dataset, " ".join(TASKS[t].protocol.split())] for t in shown])


def _ablation(page: _Page, settings: Settings) -> None:
    study_file = settings.paths.reports / "ablation.json"
    if not study_file.exists():
        return
    study = json.loads(study_file.read_text())
    page.heading("Ablation: every build against the baseline")
    datasets = list(dict.fromkeys(d for row in study["builds"] for d in row["datasets"]))
    page.text(f"ARP of each build of the ablation against {study['baseline']} (each dataset's "
              "scores averaged first), and the paper's row for the same sources dropped "
              "(its ARP is against an ImageNet-22k Swin-B on the full sets).")
    rows = [[r["build"], r["images"], "n/a" if r["arp"] is None else f"{r['arp']:+.2%}",
             *(f"{r['datasets'][d]:+.2%}" if d in r["datasets"] else "-" for d in datasets),
             r["paper"]["row"] if r["paper"] else "-",
             f"{r['paper']['arp']:+.2%}" if r["paper"] else "-",
             r["paper"]["images"] if r["paper"] else "-"] for r in study["builds"]]
    page.table(["build", "images", "ARP", *datasets, "paper", "paper ARP", "paper images"],
               rows)


def build_report(settings: Settings, out: Path, examples: int = 8) -> tuple[Path, Path]:
    """Write ``out``.html and ``out``.md (+ ``out``_files/); returns both paths."""
    out = Path(out)
    files = out.with_name(out.name + "_files")
    files.mkdir(parents=True, exist_ok=True)
    page = _Page(files)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page.heading("GeoPile report", 1)
    page.text(f"Generated {stamp} from {Path.cwd()}.")
    _curation(page, settings, examples)
    _builds(page, settings)
    _pretraining(page, settings)
    _downstream(page, settings)
    _ablation(page, settings)
    body = "\n".join(page.html)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>GeoPile report</title>"
           f"{_STYLE}</head><body>{body}<p id='selfcheck'>checking...</p>{_SELFCHECK}"
           "</body></html>")
    html_path, md_path = out.with_suffix(".html"), out.with_suffix(".md")
    write_text(html_path, doc)
    write_text(md_path, "\n".join(page.md) + "\n")
    return html_path, md_path

