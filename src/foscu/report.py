"""``foscu report RUN``: one self-contained ``report.html`` (images embedded, no network) and ``report.md``.

The report reads only files the experiment wrote (``RUN/evaluation/*.json``, every ``metrics.jsonl`` under
RUN outside sample folders, ``RUN/samples/``, ``RUN/ladder/mask_to_image/``, the prepared set named in
``RUN/experiment.json``). A table whose inputs are missing says so instead of showing a placeholder; the
ladder and label-realism sections, and a figure without its inputs, are left out.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from foscu.data.layout import images_dir
from foscu.errors import InputError
from foscu.evaluation.ladder import CLASSES as LADDER_CLASSES
from foscu.figures import figure_label_realism, figure_ladder, figure_mask_to_image
from foscu.figures_run import figure_real_vs_synthetic, figure_training_curves, figure_views
from foscu.runs import RunFolder, atomic_path, write_text_atomic

Table = list[dict[str, Any]]


def _fmt(value: Any) -> str:
    """A number at the precision a reader can use: 0.853, 12.4, 454 (never 99.4184)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        # a pair is an interval (IQR, 95 % CI); longer lists are per-seed values
        return "–".join(_fmt(v) for v in value) if len(value) == 2 else ", ".join(_fmt(v) for v in value)
    return str(value)


def table_markdown(rows: Table, columns: list[str] | None = None) -> str:
    """A list of dicts as a Markdown table."""
    if not rows:
        return "_no rows_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table_html(rows: Table, columns: list[str] | None = None) -> str:
    """A list of dicts as an HTML table."""
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


class _Report:
    """A report's sections (title, Markdown, HTML) and figures (caption, PNG), in reading order."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, str]] = []
        self.figures: list[tuple[str, bytes]] = []

    def bullets(self, title: str, lines: list[str]) -> None:
        md = "\n".join(f"- {line}" for line in lines) + "\n"
        self.sections.append(
            (title, md, "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
        )

    def table(self, title: str, rows: Table | None, note: str = "") -> None:
        """A table section; ``rows`` None says the run did not compute it."""
        if rows is None:
            text = f"not computed in this run ({title})"
            self.sections.append((title, f"_{text}_\n", f"<p><em>{html.escape(text)}</em></p>"))
            return
        md = (note + "\n\n" if note else "") + table_markdown(rows)
        self.sections.append((title, md, (f"<p>{html.escape(note)}</p>" if note else "") + table_html(rows)))


# the evaluation files the report reads: RUN/evaluation/<name>.json
EVIDENCE = ("ladder", "label_realism", "table1", "table2", "pair_fidelity", "diversity", "memorization")


def build_report(run: Path) -> tuple[Path, Path]:
    """Write ``RUN/report.html`` and ``RUN/report.md`` (figures as ``RUN/report_files/*.png``)."""
    folder = RunFolder(run)
    if not folder.root.is_dir():
        raise InputError(folder.root, "run folder not found")
    experiment = _load_json(folder.experiment_record) or {}
    evidence = {name: _load_json(folder.evidence(name)) for name in EVIDENCE}
    report = _Report()
    summary = evidence_summary(folder.root, experiment)
    if summary:
        report.bullets("What this run shows", summary)
    _evidence_tables(report, evidence, experiment.get("timings"))
    scarcity = _load_json(folder.evidence("scarcity"))
    if scarcity:  # the data-scarcity curve: sentences, table and figure (figures_scarcity.py)
        from foscu.figures_scarcity import add_to_report

        add_to_report(report, scarcity)
    _evidence_figures(report, folder, evidence, experiment)
    return _write(folder, experiment, report)


def _evidence_tables(report: _Report, evidence: dict[str, Any], timings: dict | None) -> None:
    """The tables of the evidence files, in the report's order; a missing file says so where it must."""
    ladder, realism = evidence["ladder"], evidence["label_realism"]
    if ladder:
        cols = ["description", "n"] + [f"dice {c}" for c in LADDER_CLASSES] + ["dice mean"]
        cols += [f"fraction {c}" for c in LADDER_CLASSES]
        note = f"{ladder['note']}. {ladder['conditioning']['text']} {ladder['where_lost']}"
        report.table("Fidelity ladder", [{c: r.get(c) for c in cols} for r in ladder["rows"]], note)
    if realism:
        report.table("Label realism: generated vs real training labels", realism["features"], realism["note"])
        report.table("Label realism: share of labels in which each class is present", realism["presence"])
    for name, title in (
        ("table1", "Table I: generative quality"),
        ("table2", "Table II: segmentation Dice, real vs each protocol with synthetic data"),
        ("pair_fidelity", "Pair fidelity"),
    ):
        found = evidence[name]
        report.table(title, found["rows"] if found else None, found.get("note", "") if found else "")
        if name == "table2" and found and found.get("cells"):
            report.table("Table II: what each cell trained on", _cell_rows(found["cells"]), CELLS_NOTE)
    div = evidence["diversity"]
    report.table("Diversity (MS-SSIM among samples; lower is more diverse)", div["rows"] if div else None)
    mem = evidence["memorization"]
    mem_rows = [{"sample": k, **v} for k, v in mem["samples"].items()] if mem else None
    note = (mem["method"] + f"; near copies: {mem['near_copies']}") if mem else ""
    report.table("Memorization audit", mem_rows, note)
    rows = [{"step": k, "seconds": v} for k, v in timings.items()] if timings else None
    report.table("Wall time per step (s)", rows)


CELL_KEYS = (
    "arch",
    "protocol",
    "seed",
    "real_cases",
    "synthetic_cases",
    "steps",
    "best_step",
    "stopped_early",
)
CELLS_NOTE = (
    "One line per segmenter (cell): the real and synthetic training cases it saw, the steps it trained "
    "(set by the budget rule), the step of its best real validation Dice (the weights scored) and whether it "
    "stopped early."
)


def _cell_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{k: c.get(k) for k in CELL_KEYS}, "val dice": c.get("val_dice")} for c in cells]


def _evidence_figures(report: _Report, folder: RunFolder, evidence: dict[str, Any], experiment: dict) -> None:
    """Ladder, mask-to-image, label realism, training curves, synthetic views and real vs synthetic."""
    ladder, realism = evidence["ladder"], evidence["label_realism"]
    prepared = Path(experiment["data"]) if experiment.get("data") else None
    if ladder:
        report.figures.append(("Fidelity ladder", figure_ladder(ladder)))
        m2i = folder.ladder("mask_to_image")
        items = _test_items(prepared) if prepared and images_dir(m2i).is_dir() else None
        fig = figure_mask_to_image(items, m2i) if items else None
        if fig:
            report.figures.append(
                ("Mask to image: real test case beside the image generated from its mask", fig)
            )
    if realism:
        report.figures.append(
            ("Label realism: distributions, real vs generated", figure_label_realism(realism))
        )
    curves = figure_training_curves(folder.root)
    if curves:
        report.figures.append(("Training curves", curves))
    if images_dir(folder.samples).is_dir():
        report.figures += figure_views(folder.samples, 3, "synthetic (Duo-Diffusion)")
        if prepared and images_dir(prepared).is_dir():
            fig4 = figure_real_vs_synthetic(prepared, folder.samples)
            if fig4:
                report.figures.append(("Real vs synthetic, tumor and tumor-free (Fig. 4)", fig4))
    lesions = folder.root / "lesions" / "before_after.png"  # Table II's lesions protocol (RUN/lesions)
    if lesions.is_file():
        report.figures.append(
            ("Lesion synthesis: real training cases before and after", lesions.read_bytes())
        )


def _test_items(prepared: Path) -> dict[str, tuple[Path, Path]]:
    """Case id -> (image, label) of the prepared set's test split; none where it is not a prepared set."""
    from foscu.data.prepare import read_prepared

    try:
        test = read_prepared(prepared).datalist["test"]
    except InputError:
        return {}
    return {item["case_id"]: (Path(item["image"]), Path(item["label"])) for item in test}


BUDGET = {
    "demo": "This is the demo preset: about 10 minutes on 2 CPU cores, at 64x64x32 with tiny networks. It can "
    "show that every step of the protocol runs, that the segmenter learns the phantom's liver, whether images "
    "generated from a mask follow it (ladder rungs (c) against (e)) and whether generated labels hold one "
    "liver of a plausible size. It cannot show vessels and tumors in generated labels and images (the label "
    "model draws few vessels and scatters small tumors), FID-level image quality, or a Table II gain beyond "
    "seed noise: see docs/results/proof/ and docs/tuning.md in the FOSCU repository.",
}


def evidence_summary(run: Path, experiment: dict) -> list[str]:
    """Plain-words lines from the evidence files: segmenter, ladder verdict, label realism, near copies,
    budget."""
    folder = RunFolder(run)
    lines = []
    preset = str(experiment.get("config", ""))
    ladder = _load_json(folder.evidence("ladder"))
    if ladder:
        real = next((r for r in ladder["rows"] if r["rung"] == "real"), None)
        if real:
            per_class = ", ".join(f"{c.replace('_', ' ')} {_fmt(real[f'dice {c}'])}" for c in LADDER_CLASSES)
            lines.append(f"The real-only segmenter scores on the real test images: {per_class} (Dice).")
        lines.append(ladder["conditioning"]["text"])
        lines.append(ladder["where_lost"])
    table2 = _load_json(folder.evidence("table2"))
    lines += (table2.get("findings") or {}).get("lines", []) if table2 else []  # Table II in words
    realism = _load_json(folder.evidence("label_realism"))
    if realism:
        f = {r["feature"]: r for r in realism["features"]}
        liver = f.get("liver_ml")
        share = f.get("organ_largest_share")
        presence = {p["class"]: p for p in realism["presence"] if p.get("min_ml") is None}
        sized = [p for p in realism["presence"] if p.get("min_ml") is not None]
        if liver and share:
            lines.append(
                f"Generated labels: median liver {_fmt(liver['generated median'])} mL against "
                f"{_fmt(liver['real median'])} mL real; largest organ component holds a median "
                f"{_fmt(share['generated median'])} of the organ (real {_fmt(share['real median'])}); "
                + ", ".join(
                    f"{c.replace('_', ' ')} present in {p['generated']:.0%} (real {p['real']:.0%})"
                    for c, p in presence.items()
                )
                + f"; summary distance {_fmt(realism['summary_distance'])} (0 = real)."
            )
        for p in sized:
            lines.append(
                f"Counted at the smallest real tumor ({_fmt(p['min_ml'])} mL), tumor is present in "
                f"{p['generated']:.0%} of generated labels against {p['real']:.0%} of real ones (difference "
                f"{p['difference']:+.0%}, 95 % interval {p['difference_low']:+.0%} to {p['difference_high']:+.0%})."
            )
        if "features_rejected" in realism:
            n_tested = sum(r.get("p_holm") is not None for r in realism["features"])
            lines.append(
                f"{realism['features_rejected']} of {n_tested} label features differ from the real ones at 5 % "
                f"(Kolmogorov-Smirnov, Holm-corrected over the features; {realism['n_generated']} generated "
                f"against {realism['n_real']} real labels)."
            )
    memorization = _load_json(folder.evidence("memorization"))
    if memorization and memorization.get("near_copies"):
        lines.append(
            f"{memorization['near_copies']} of {len(memorization['samples'])} samples are near copies of a "
            f"training image (correlation above the held-out {memorization['percentile']:.0f}th percentile, "
            f"{_fmt(memorization['threshold'])}): see the memorization audit."
        )
    if preset in BUDGET:
        lines.append(BUDGET[preset])
    return lines


def _write(folder: RunFolder, experiment: dict, report: _Report) -> tuple[Path, Path]:
    title = "FOSCU report"
    subtitle = html.escape(
        f"run {folder.root.name} · preset {experiment.get('config', '?')} · data {experiment.get('data', '?')}"
    )
    md = [f"# {title}\n", f"{subtitle}\n"]
    body = [f"<h1>{title}</h1><p class='sub'>{subtitle}</p>"]
    for heading, text_md, text_html in report.sections:
        md.append(f"## {heading}\n\n{text_md}")
        body.append(f"<h2>{html.escape(heading)}</h2>{text_html}")
    files = folder.root / "report_files"
    files.mkdir(exist_ok=True)
    for i, (caption, png) in enumerate(report.figures):
        name = f"figure_{i:02d}.png"
        with atomic_path(files / name) as tmp:
            tmp.write_bytes(png)
        md.append(f"### {caption}\n\n![{caption}]({files.name}/{name})\n")
        data = base64.b64encode(png).decode()
        body.append(
            f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #bbb;padding:4px 8px;"
        "text-align:right}th{background:#eee}img{max-width:100%;border:1px solid #ddd}.sub{color:#666}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>"
    )
    write_text_atomic(folder.report_html, page)
    write_text_atomic(folder.report_md, "\n".join(md))
    return folder.report_html, folder.report_md
